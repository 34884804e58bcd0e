"""Settings chosen from the data (``evmamba.training.auto``): token counts per bin width, the choices for
cameras of several sizes and for spike data, explicit keys winning, and a dataset-only config end to end."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import yaml

from evmamba.cli import main
from evmamba.datasets.base import EventDataset
from evmamba.model.classifier import EventClassifier
from evmamba.model.memory import training_step_bytes
from evmamba.pipeline import BinningConfig, bin_events, make_events
from evmamba.pipeline.augment import AugmentConfig
from evmamba.pipeline.token_counts import token_counts
from evmamba.training import auto
from evmamba.training.settings import train_settings
from seeds import stable_seed


class Recordings(EventDataset):
    """Recordings held in memory, as a dataset."""

    def __init__(self, name, sensor_size, recordings, n_classes=4):
        self.name, self.sensor_size, self.recordings = name, tuple(sensor_size), list(recordings)
        self.classes = [f"c{i}" for i in range(n_classes)]
        self.labels = [i % n_classes for i in range(len(self.recordings))]

    def _load(self, i):
        return self.recordings[i]


def bursts(rng, sensor, n_bursts, per_burst, duration_us, spread_us):
    """``n_bursts`` pixels each firing ``per_burst`` events within ``spread_us`` (an edge passing a pixel)."""
    w, h, npol = sensor
    x = np.repeat(rng.integers(0, w, n_bursts), per_burst)
    y = np.repeat(rng.integers(0, h, n_bursts), per_burst)
    p = np.repeat(rng.integers(0, npol, n_bursts), per_burst)
    start = np.repeat(rng.integers(0, max(duration_us - spread_us, 1), n_bursts), per_burst)
    t = start + rng.integers(0, spread_us, n_bursts * per_burst)
    t[0], t[-1] = 0, duration_us - 1  # every recording spans the full duration
    order = np.argsort(t, kind="stable")
    return make_events(x[order], y[order], t[order], p[order])


def expected_bin_us(recordings, sensor, k):
    """The rule of ``choose_bin_us``, evaluated with the binner itself: the finest width of the ladder (at most
    an eighth of the median duration) whose median token count is <= 4096, or else the finest within twice the
    widest allowed width's count."""
    duration = np.median([ev["t"][-1] - ev["t"][0] for ev in recordings])
    allowed = [b for b in auto.BIN_LADDER_US if b <= duration / 8] or [0]
    median = {b: np.median([bin_events(ev, sensor, BinningConfig(downsample=k, bin_us=b)).num_tokens
                            for ev in recordings]) for b in allowed}
    for b in allowed:
        if median[b] <= 4096:
            return b, median[b]
    widest = max(allowed)
    b = next(b for b in allowed if median[b] <= 2 * median[widest])
    return b, median[b]


# -- token counts ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("binning", [
    {},
    {"downsample": 3, "polarity": False},
    {"t_start_us": 2_500, "t_stop_us": 40_000, "denoise_us": 3_000},
    {"refractory_us": 200, "max_events": 1_500},
])
def test_token_counts_equal_the_binner_at_every_width(binning):
    rng = np.random.default_rng(stable_seed("token_counts", sorted(binning.items())))
    sensor = (40, 30, 2)
    events = bursts(rng, sensor, 300, 8, 50_000, 700)
    events["t"] += 1_000_003  # a clock that does not start at zero: bins align to the first event
    widths = (0, 1, 7, 100, 333, 1_000, 5_000, 50_000, 10_000_000)
    cfg = BinningConfig(**binning)
    counts = token_counts(events, sensor, cfg, widths)
    for b, n in zip(widths, counts, strict=True):
        assert n == bin_events(events, sensor, BinningConfig(**{**binning, "bin_us": b})).num_tokens, b
    assert token_counts(events[:0], sensor, cfg, widths).tolist() == [0] * len(widths)
    with pytest.raises(ValueError, match="bin widths"):
        token_counts(events, sensor, cfg, [-1])


# -- choices for synthetic dataset descriptions -------------------------------------------------------------------
def _camera(sensor, n_rec, n_bursts, per_burst, duration_us, spread_us, seed):
    rng = np.random.default_rng(seed)
    return [bursts(rng, sensor, n_bursts, per_burst, duration_us, spread_us) for _ in range(n_rec)]


def _spikes(channels, n_rec, n_spikes, duration_us, seed):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_rec):
        t = np.sort(rng.integers(0, duration_us, n_spikes))
        t[0], t[-1] = 0, duration_us - 1
        out.append(make_events(rng.integers(0, channels, n_spikes), np.zeros(n_spikes), t, np.zeros(n_spikes)))
    return out


# name: (sensor, recordings, expected downsample, expected time unit)
CASES = {
    "camera 34x34, short recordings":
        ((34, 34, 2), lambda: _camera((34, 34, 2), 12, 400, 6, 300_000, 2_000, 1), 1, "ms"),
    "camera 128x128":
        ((128, 128, 2), lambda: _camera((128, 128, 2), 4, 6_000, 10, 1_450_000, 3_000, 2), 4, "ms"),
    "ATIS 304x240, ~100 k events":
        ((304, 240, 2), lambda: _camera((304, 240, 2), 3, 10_000, 10, 1_000_000, 2_000, 3), 10, "ms"),
    "1280x720, long recordings":
        ((1280, 720, 2), lambda: _camera((1280, 720, 2), 3, 20_000, 10, 60_000_000, 5_000, 4), 40, "ms"),
    "1280x720, very long recordings":
        ((1280, 720, 2), lambda: _camera((1280, 720, 2), 3, 2_000, 5, 200_000_000, 5_000, 5), 40, "s"),
    "spike data, 700 channels x 1":
        ((700, 1, 1), lambda: _spikes(700, 6, 8_000, 1_000_000, 6), 1, "ms"),
    "camera 34x34, 0.5 ms recordings":
        ((34, 34, 2), lambda: _camera((34, 34, 2), 5, 60, 4, 500, 50, 7), 1, "us"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_chosen_settings_fit_the_data(case):
    sensor, make, k, unit = CASES[case]
    recordings = make()
    dataset = Recordings(case, sensor, recordings)
    chosen, reasons, stats = auto.choose_settings(dataset, {}, available_bytes=None, progress=False)
    binning, model, train = chosen["binning"], chosen["model"], chosen["train"]
    assert binning["downsample"] == k and binning["polarity"] is True and binning["time_unit"] == unit
    grid = (-(-sensor[0] // k), -(-sensor[1] // k))
    if sensor[1] == 1:
        limit = auto.MAX_CHANNELS
    else:
        limit = auto.MAX_CELLS if max(sensor[:2]) > auto.FULL_RESOLUTION_SIDE else auto.FULL_RESOLUTION_SIDE
    assert max(grid) <= limit
    bin_us, median = expected_bin_us(recordings, sensor, k)
    assert binning["bin_us"] == bin_us
    # input pooling: the smallest power of two (at most 32) that brings the median to 512 tokens or fewer
    pool = model["input_pool"]
    assert pool == 32 or median / pool <= 512
    assert pool == 1 or median / (pool // 2) > 512
    # time constants: three decades, the slowest covering half a median recording
    duration = np.median([ev["t"][-1] - ev["t"][0] for ev in recordings]) / {"us": 1, "ms": 1e3, "s": 1e6}[unit]
    assert duration / 2 <= model["tau_max"] < 5 * duration and model["tau_min"] == pytest.approx(
        model["tau_max"] / 1000
    )
    assert model["count_feature"] == (bin_us > 0) and model["embedding"] == auto.DEFAULT_EMBEDDING
    # the context stage (on up to pooling by 8: it runs before the pooling) decays 2.5x slower than the surface,
    # in the model's time unit
    if pool > auto.CONTEXT_MAX_INPUT_POOL:
        assert model["context"] is None
    else:
        surface_tau_us = model["surface"]["tau_us"][0]
        assert model["context"]["tau"] == pytest.approx(
            2.5 * surface_tau_us / {"us": 1, "ms": 1e3, "s": 1e6}[unit], rel=1e-2)
        assert {k: model["context"][k] for k in ("radius", "dilation", "channels")} == auto.DEFAULT_CONTEXT
    # the batch budget holds a cropped stream; settings are valid train keys
    assert train["max_tokens"] <= train["batch_tokens"]
    assert auto.MIN_EPOCHS <= train["epochs"] <= auto.MAX_EPOCHS
    # the printed reason states the steps the run really gets when a bound on the epochs binds
    steps_reason = next(r for r in reasons if r.startswith("train.epochs"))
    if train["epochs"] == auto.MAX_EPOCHS:
        assert "at most 80 epochs" in steps_reason and str(auto.TARGET_STEPS) in steps_reason
    # the average of the weights spans about a tenth of the run's optimizer steps (at least 10)
    why = next(r for r in reasons if r.startswith("train.ema_decay"))
    span, total = (int(x) for x in re.search(r"over about (\d+) of the run's (\d+) optimizer steps", why).groups())
    assert span == max(10, round(total / 10)) and total >= train["epochs"]
    assert 1.0 / (1.0 - train["ema_decay"]) == pytest.approx(span, rel=0.01)
    train_settings({"train": train})
    bc = BinningConfig(**binning)
    vocab = int(np.prod(grid)) * sensor[2]
    net = EventClassifier(vocab, stats.n_classes, grid=[*grid, sensor[2]],
                          **{key: v for key, v in model.items() if key != "type"})
    assert net.vocab_size == vocab and bc.downsample == k
    # one line of reason per chosen key, after the description of the data
    n_keys = sum(len(v) for v in chosen.values())
    assert len(reasons) == 1 + n_keys and reasons[0].startswith(case)


def test_the_batch_budget_fits_the_memory_it_is_given():
    recordings = CASES["ATIS 304x240, ~100 k events"][1]()
    dataset = Recordings("atis", (304, 240, 2), recordings)
    roomy, _, _ = auto.choose_settings(dataset, {}, available_bytes=None, progress=False)
    tight_bytes = 60_000_000
    tight, reasons, _ = auto.choose_settings(dataset, {}, available_bytes=tight_bytes, progress=False)
    budget = tight["train"]["batch_tokens"]
    assert budget < roomy["train"]["batch_tokens"]
    assert tight["train"]["max_tokens"] <= budget
    model = EventClassifier(
        31 * 24 * 2, 4, grid=[31, 24, 2], **{k: v for k, v in tight["model"].items() if k != "type"}
    )
    assert training_step_bytes(model, 1, budget).total <= auto.MEMORY_SHARE * tight_bytes
    assert any("lowered to fit" in r for r in reasons)


def test_explicit_keys_win_and_are_not_reported():
    recordings = CASES["camera 128x128"][1]()
    dataset = Recordings("gestures", (128, 128, 2), recordings)
    given = {"binning": {"downsample": 4, "bin_us": 10_000}, "model": {"d_model": 24, "input_pool": 2},
             "train": {"batch_size": 3, "epochs": 5, "val_fraction": 0.0}}
    chosen, reasons, stats = auto.choose_settings(dataset, given, progress=False)
    assert stats.binning.downsample == 4 and stats.bin_widths == (10_000,)
    for name, keys in given.items():
        assert not set(keys) & set(chosen[name]), name
    assert not any(r.startswith(("binning.downsample", "binning.bin_us", "model.d_model", "train.epochs"))
                   for r in reasons)
    # the choices that remain follow the given ones: the crop and budget come from 10 ms bins at 32x32
    tokens = [bin_events(ev, (128, 128, 2), BinningConfig(downsample=4, bin_us=10_000)).num_tokens for ev in recordings]
    assert chosen["train"]["max_tokens"] >= max(np.percentile(tokens, 90), 2 * np.median(tokens))
    assert chosen["train"]["batch_tokens"] >= 3 * np.median(tokens)


def test_cameras_get_augmentation_and_spike_data_none():
    cam = auto.choose_augment((34, 34, 2), None)
    assert cam.values == {"max_shift": 2, "max_rotation_deg": 15.0, "scale": [0.9, 1.1], "drop_rate": 0.2}
    assert [r.split(" = ")[0] for r in cam.reasons] == ["augment.max_shift", "augment.max_rotation_deg",
                                                        "augment.scale", "augment.drop_rate"]
    # the translation follows the smaller side (6 %)
    assert [auto.choose_augment(s, None).values["max_shift"] for s in [(304, 240, 2), (1280, 720, 2), (8, 8, 1)]] \
        == [14, 43, 1]
    spikes = auto.choose_augment((700, 1, 1), None).values  # spike channels: mixing, nothing spatial
    assert spikes == {"mix_p": 0.5}
    AugmentConfig.from_dict(spikes, source="test").check_sensor((700, 1, 1), "test")
    assert auto.choose_augment((34, 34, 2), {}).values == {}  # the config's own (empty) section
    AugmentConfig.from_dict(cam.values, source="test").check_sensor((34, 34, 2), "test")


def test_downsampling_keeps_a_small_grid():
    assert [
        auto.choose_downsample(s)[0]
        for s in [(34, 34, 2), (35, 35, 2), (64, 48, 2), (65, 65, 2), (128, 128, 2), (304, 240, 2), (346, 260, 2),
                  (640, 480, 2), (1280, 720, 2)]
    ] == [1, 1, 1, 3, 4, 10, 11, 20, 40]
    assert auto.choose_downsample((700, 1, 1))[0] == 1 and auto.choose_downsample((4096, 1, 2))[0] == 4


# -- configs ------------------------------------------------------------------------------------------------------
def _folder(root, n_per_class=6, sensor=(32, 32, 2)):
    from evmamba.pipeline.readers import write_events

    rng = np.random.default_rng(11)
    for cls in ("left", "right"):
        (root / cls).mkdir(parents=True)
        for k in range(n_per_class):
            ev = bursts(rng, sensor, 150, 6, 80_000, 1_500)
            if cls == "right":  # a learnable difference: the right class lives in the right half
                ev["x"] = ev["x"] // 2 + sensor[0] // 2
            else:
                ev["x"] //= 2
            write_events(root / cls / f"r{k}.npy", ev)


def test_auto_applies_to_configs_without_binning_and_model():
    assert auto.auto_enabled({"dataset": {"name": "synthetic"}})
    assert not auto.auto_enabled({"dataset": {"name": "synthetic"}, "binning": {"bin_us": 5}})
    assert auto.auto_enabled({"dataset": {"name": "synthetic"}, "binning": {"bin_us": 5}, "train": {"auto": True}})
    assert not auto.auto_enabled({"dataset": {}, "binning": {"bin_us": 5}, "model": {"d_model": 8}})
    assert auto.auto_enabled(
        {"dataset": {}, "binning": {"bin_us": 5}, "model": {"d_model": 8}, "train": {"auto": True}}
    )
    assert not auto.auto_enabled({"dataset": {}, "train": {"auto": False}})
    assert not auto.auto_enabled({"dataset": {}, "model": {"type": "frame_resnet"}})
    full = {"dataset": {"name": "synthetic"}, "binning": {"bin_us": 5}, "model": {"d_model": 8}}
    assert auto.resolve_config(full, echo=None) is full


def test_a_dataset_only_config_resolves_to_a_complete_checked_config(tmp_path):
    from evmamba.training.sections import check_config

    _folder(tmp_path / "data")
    lines = []
    cfg = auto.resolve_config({"dataset": {"name": "folder", "root": str(tmp_path / "data")}},
                              progress=False, echo=lines.append)
    check_config(cfg)
    assert cfg.dataset.test_fraction == auto.FOLDER_TEST_FRACTION and cfg.train.auto is False
    assert list(cfg)[:5] == ["dataset", "binning", "model", "augment", "train"]
    assert {"downsample", "bin_us", "time_unit"} <= set(cfg.binning) and "d_model" in cfg.model
    assert dict(cfg.augment) == {"max_shift": 2, "max_rotation_deg": 15.0, "scale": [0.9, 1.1], "drop_rate": 0.2}
    assert any(line.startswith("auto: augment.max_shift = 2: random translation by up to 2 px") for line in lines)
    # an augment section of the config's own, even an empty one, is kept as it is
    own = auto.resolve_config({"dataset": {"name": "folder", "root": str(tmp_path / "data")}, "augment": {}},
                              progress=False, echo=None)
    assert dict(own.augment) == {}
    assert lines[0].startswith("auto: folder: 10 training recordings of 2 classes, sensor 32 x 32 x 2")
    assert any(line.startswith("auto: dataset.test_fraction = 0.2") for line in lines)
    # resolving the resolved config changes nothing
    assert auto.resolve_config(cfg, echo=None) is cfg


def test_a_dataset_only_config_trains_end_to_end(tmp_path, capsys):
    _folder(tmp_path / "data")
    cfg = tmp_path / "mine.yaml"
    cfg.write_text(yaml.safe_dump({"dataset": {"name": "folder", "root": str(tmp_path / "data")},
                                   "cache_dir": str(tmp_path / "cache")}))
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(out), "--no-progress", "train.epochs=2"]) == 0
    printed = capsys.readouterr().out
    assert "auto: binning.downsample = 1" in printed and "auto: train.epochs" not in printed  # epochs given
    memory = next(line for line in printed.splitlines() if line.startswith("memory: a training step"))
    assert "GB" in memory and "limit" in memory
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["train"]["auto"] is False and saved["train"]["epochs"] == 2
    assert saved["binning"]["downsample"] == 1 and saved["model"]["type"] == "event_mamba"
    assert saved["train"]["batch_tokens"] >= saved["train"]["max_tokens"]
    assert math.isfinite(float(printed.strip().splitlines()[-1].split()[2]))  # "test accuracy: X (...)"
    # the saved config reproduces the run's settings without looking at the data again
    assert main(["train", "--config", str(out / "config.yaml"), "--out", str(tmp_path / "again"), "--no-progress",
                 "train.epochs=1"]) == 0
    assert "auto:" not in capsys.readouterr().out


def test_a_dataset_only_config_on_spike_channels_trains_with_mixing(tmp_path, capsys):
    """1-D spike data get the chosen mixing of two recordings (SPIKE_AUGMENT), and the run goes through it."""
    from evmamba.pipeline.readers import write_events

    rng = np.random.default_rng(12)
    sensor = (24, 1, 2)
    for cls in ("low", "high"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for k in range(6):
            ev = bursts(rng, sensor, 150, 6, 80_000, 1_500)
            ev["x"] = ev["x"] // 2 + (sensor[0] // 2 if cls == "high" else 0)
            write_events(tmp_path / "data" / cls / f"r{k}.npz", ev, sensor)
    cfg = tmp_path / "spikes.yaml"
    cfg.write_text(yaml.safe_dump({"dataset": {"name": "folder", "root": str(tmp_path / "data")},
                                   "cache_dir": str(tmp_path / "cache")}))
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run"), "--no-progress",
                 "train.epochs=2"]) == 0
    printed = capsys.readouterr().out
    assert "auto: augment.mix_p = 0.5: 50% of the training recordings take in 20%-50% of another" in printed
    assert "augment.max_shift" not in printed and "augment.max_rotation_deg" not in printed
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["augment"] == {"mix_p": 0.5}
    assert math.isfinite(float(printed.strip().splitlines()[-1].split()[2]))  # "test accuracy: X (...)"
