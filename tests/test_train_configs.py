"""Every training config in configs/ is complete and consistent: its sections validate and its model builds
for the dataset's token grid (without reading any recording)."""

from __future__ import annotations

import pytest

from evmamba.core.config import CONFIG_DIR, load_config
from evmamba.datasets.registry import dataset_class
from evmamba.model.checkpoint import DataInfo
from evmamba.pipeline.augment import AugmentConfig
from evmamba.pipeline.binning import BinningConfig, vocab_size
from evmamba.training.data import model_type, section, token_grid
from evmamba.training.models import build_model
from evmamba.training.settings import train_settings

TRAINING_CONFIGS = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if "model" in load_config(p))
REQUIRED = {"synthetic", "nmnist_small", "poker_dvs", "dvsgesture_samples", "dvsgesture", "nmnist", "shd", "ssc",
            "nmnist_small_frames", "poker_dvs_frames", "dvsgesture_samples_frames"}


def sensor_size(cfg) -> tuple[int, int, int]:
    ds = section(cfg, "dataset")
    if "sensor_size" in ds:
        return tuple(ds["sensor_size"])
    known = getattr(dataset_class(ds["name"]), "sensor_size", None)
    # The staged local datasets set theirs per instance; these are their sensors.
    return tuple(known) if known else {"nmnist_small": (34, 34, 2), "poker_dvs": (35, 35, 2),
                                       "dvsgesture_samples": (128, 128, 2)}[ds["name"]]


def test_the_required_configs_exist():
    assert REQUIRED <= set(TRAINING_CONFIGS)


@pytest.mark.parametrize("name", TRAINING_CONFIGS)
def test_config_sections_validate_and_model_builds(name):
    cfg = load_config(name)
    tc = train_settings(cfg)
    assert tc["epochs"] >= 1 and tc["lr"] > 0
    AugmentConfig.from_dict(section(cfg, "augment"))
    dataset_class(section(cfg, "dataset")["name"])  # a registered dataset
    sensor = sensor_size(cfg)
    if model_type(cfg) == "event_mamba":
        binning = BinningConfig.from_dict(section(cfg, "binning"))
        info = DataInfo(kind="event_mamba", n_classes=10, classes=[str(i) for i in range(10)],
                        sensor_size=list(sensor), vocab_size=vocab_size(sensor, binning),
                        grid=token_grid(sensor, binning))
    else:
        frames = section(cfg, "frames")
        k = frames.get("downsample", 1)
        w, h, p = sensor
        info = DataInfo(kind="frame_resnet", n_classes=10, classes=[str(i) for i in range(10)],
                        sensor_size=list(sensor), n_time_bins=frames["n_time_bins"],
                        frame_size=[-(-w // k), -(-h // k), p])
        assert set(frames) <= {"n_time_bins", "downsample", "memoize"}
    model = build_model(cfg, info)
    assert sum(p.numel() for p in model.parameters()) > 0
