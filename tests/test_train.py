"""``evmamba train``: optimizer groups, schedule, a tiny end-to-end run, checkpoints and exact resumption."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from evmamba.cli import main
from evmamba.model.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from evmamba.model.classifier import EventClassifier
from evmamba.training.optim import WarmupCosine, build_optimizer, classify_parameters

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_config(folder: Path, **sections) -> Path:
    """A synthetic dataset small enough to train in seconds (32x32 sensor, 40 ms recordings)."""
    cfg = {
        "dataset": {"name": "synthetic", "n_samples": {"train": 40, "test": 15}, "sensor_size": [32, 32, 2],
                    "duration_us": 40000, "seed": 3},
        "binning": {"downsample": 2, "bin_us": 5000},
        "cache_dir": str(folder / "cache"),
        "model": {"d_model": 16, "n_layers": 2, "d_state": 4, "pool_stride": 2, "input_pool": 2,
                  "embedding": "factorised", "dropout": 0.1},
        "train": {"epochs": 2, "batch_size": 8, "lr": 0.003, "val_fraction": 0.25, "log_every": 1,
                  "preprocess_workers": 1},
    }
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values}
    path = folder / f"tiny-{len(list(folder.glob('tiny-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("train")
    cfg = tiny_config(folder, train={"save_every": 1})
    out = folder / "run"
    assert main(["train", "--config", str(cfg), "--out", str(out), "--no-progress"]) == 0
    return out


def test_parameter_groups():
    model = EventClassifier(20, 3, d_model=8, n_layers=2, d_state=4)
    groups = classify_parameters(model)
    no_decay = set(groups["no_decay"]) | set(groups["ssm_no_decay"])
    for name in ("layers.0.A_log", "layers.0.D", "layers.0.dtA_proj.bias", "layers.1.dt_proj.bias",
                 "layers.0.conv1d.bias", "norms.0.weight", "final_norm.weight", "head.bias", "embedding.table.weight"):
        assert name in no_decay, name
    for name in ("layers.0.in_proj.weight", "layers.1.out_proj.weight", "layers.0.x_proj.weight", "head.weight"):
        assert name in groups["decay"], name
    assert set(groups["ssm_decay"]) == {"layers.0.dt_proj.weight", "layers.1.dt_proj.weight"}
    assert set(groups["ssm_no_decay"]) >= {"layers.0.A_log", "layers.1.D", "layers.0.dtA_proj.bias"}
    assert sum(map(len, groups.values())) == len(list(model.parameters()))
    assert "embedding.table.weight" in classify_parameters(model, decay_embeddings=True)["decay"]

    opt = build_optimizer(model, {"lr": 1e-3, "weight_decay": 0.1, "ssm_lr_scale": 0.25})
    by_name = {g["name"]: g for g in opt.param_groups}
    assert by_name["decay"]["weight_decay"] == 0.1 and by_name["no_decay"]["weight_decay"] == 0.0
    assert by_name["ssm_no_decay"]["lr"] == pytest.approx(0.25e-3) and by_name["decay"]["lr"] == 1e-3
    with pytest.raises(ValueError, match="train.lr"):
        build_optimizer(model, {"lr": -1})


def test_warmup_cosine_schedule():
    s = WarmupCosine(warmup=4, total=14, min_ratio=0.1)
    assert [s(i) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert s(9) == pytest.approx(0.55)  # half-way through the cosine
    assert s(14) == pytest.approx(0.1) and s(100) == pytest.approx(0.1)


def test_training_run_writes_metrics_plots_and_checkpoints(run_dir, capsys):
    for name in ("config.yaml", "metrics.csv", "metrics.jsonl", "curves.png", "last.pt", "best.pt", "model.pt",
                 "epoch_001.pt", "epoch_002.pt"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "curves.png").read_bytes()[:8] == PNG_MAGIC
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(0.0 <= float(r["train_accuracy"]) <= 1.0 and float(r["train_loss"]) > 0 for r in rows)
    assert rows[-1]["test_accuracy"] and rows[-1]["val_accuracy"]
    kinds = [json.loads(line)["kind"] for line in open(run_dir / "metrics.jsonl")]
    assert kinds.count("epoch") == 2 and kinds.count("step") >= 2
    saved = yaml.safe_load(open(run_dir / "config.yaml"))
    assert saved["train"]["epochs"] == 2 and saved["model"]["d_model"] == 16  # the resolved config of the run
    assert not list(run_dir.glob(".*tmp"))  # atomic writes leave no temporary files


def test_curves_are_redrawn_after_the_first_and_the_last_epoch_and_at_most_every_interval(tmp_path, monkeypatch):
    import evmamba.training.loop as loop

    drawn = []
    monkeypatch.setattr(loop, "plot_training_curves", lambda epochs, path: drawn.append(epochs[-1]["epoch"]))
    cfg = tiny_config(tmp_path, train={"epochs": 4, "val_fraction": 0.0})
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "r"), "--no-progress"]) == 0
    assert drawn == [1, 4]  # four short epochs inside one interval
    monkeypatch.setattr(loop, "CURVES_EVERY_S", 0.0)
    drawn.clear()
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "r2"), "--no-progress"]) == 0
    assert drawn == [1, 2, 3, 4]


def test_final_line_reports_test_accuracy(tmp_path, capsys):
    cfg = tiny_config(tmp_path, train={"epochs": 1, "val_fraction": 0.0})
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "r"), "--no-progress"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("test accuracy: ") and "/15 samples" in last


def test_checkpoints_load_with_weights_only(run_dir, tmp_path):
    raw = torch.load(run_dir / "last.pt", weights_only=True)
    assert raw["epoch"] == 2 and {"optimizer", "scheduler", "rng", "config", "model"} <= set(raw)
    exported = load_checkpoint(run_dir / "model.pt")
    assert "optimizer" not in exported
    model, info = model_from_checkpoint(exported)
    assert info.n_classes == 5 and isinstance(model, EventClassifier)
    # A checkpoint holding a pickled object is refused rather than executed.
    bad = tmp_path / "bad.pt"
    torch.save({"format": "evmamba-checkpoint", "version": 1, "payload": Path("x")}, bad)
    with pytest.raises(ValueError, match="bad.pt"):
        load_checkpoint(bad)


def test_unloadable_checkpoints_say_why_and_never_suggest_unsafe_loading(run_dir, tmp_path):
    pickled = tmp_path / "pickled.pt"
    torch.save({"format": "evmamba-checkpoint", "version": 1, "payload": Path("x")}, pickled)
    truncated = tmp_path / "truncated.pt"
    data = (run_dir / "model.pt").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    expected = {pickled: "not a safe checkpoint", truncated: "truncated or damaged", empty: "empty",
                text: "not in PyTorch's checkpoint format"}
    for path, reason in expected.items():
        with pytest.raises(ValueError) as info:
            load_checkpoint(path)
        message = str(info.value)
        assert message.startswith(f"{path}: ") and reason in message, message
        assert "weights_only" not in message and "trust" not in message, message
    with pytest.raises(ValueError, match="lacks"):
        load_checkpoint(run_dir / "model.pt", need_training_state=True)


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint({"x": torch.ones(2)}, path)

    def broken_save(obj, fh):
        fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint({"x": torch.zeros(2)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.ones(2))  # the old file is intact
    assert list(tmp_path.iterdir()) == [path]


def test_resume_continues_exactly(run_dir, tmp_path):
    cfg_resumed = tmp_path / "resumed"
    assert main(["train", "--resume", str(run_dir / "epoch_001.pt"), "--out", str(cfg_resumed), "--no-progress"]) == 0
    straight = torch.load(run_dir / "last.pt", weights_only=True)
    resumed = torch.load(cfg_resumed / "last.pt", weights_only=True)
    assert resumed["epoch"] == straight["epoch"] == 2 and resumed["step"] == straight["step"]
    for name, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][name]), name
    for a, b in zip(straight["optimizer"]["state"].values(), resumed["optimizer"]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert straight["metrics"]["test_accuracy"] == resumed["metrics"]["test_accuracy"]


def test_config_errors_are_reported(tmp_path, capsys):
    cfg = tiny_config(tmp_path)
    assert main(["train", "--config", str(cfg), "train.epochz=3", "--out", str(tmp_path / "r")]) == 1
    assert "train.epochz" in capsys.readouterr().err
    assert main(["train", "--config", str(cfg), "model.readout=max", "--out", str(tmp_path / "r")]) == 1
    assert "readout" in capsys.readouterr().err


def test_unknown_sections_and_keys_and_bad_values_are_named_before_any_work(tmp_path, capsys):
    cfg = tiny_config(tmp_path)
    out = tmp_path / "never"
    assert main(["train", "--config", str(cfg), "trian.epochs=3", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "unknown section(s) 'trian' (did you mean 'train'?)" in err and "'dataset'" in err
    assert main(["train", "--config", str(cfg), "train.lr=abc", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "config: key 'train.lr' must be a number" in err and "got 'abc'" in err
    assert main(["train", "--config", str(cfg), "model.d_modle=8", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "model.d_modle" in err and "d_model" in err
    assert not out.exists() and not (tmp_path / "cache").exists()  # refused before any data or run folder
    # preprocess reads only the data sections but checks the whole config.
    assert main(["preprocess", "--config", str(cfg), "train.epoch=3", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "train.epoch" in err and "epochs" in err


def test_train_force_rebuilds_the_token_caches(tmp_path):
    cfg = tiny_config(tmp_path, train={"epochs": 1, "val_fraction": 0.0})
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "a"), "--no-progress"]) == 0
    caches = sorted((tmp_path / "cache").glob("*.h5"))
    before = [p.stat().st_mtime_ns for p in caches]
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "b"), "--no-progress", "--force"]) == 0
    assert sorted((tmp_path / "cache").glob("*.h5")) == caches
    assert all(p.stat().st_mtime_ns != t for p, t in zip(caches, before))


def test_max_samples_is_understood_by_every_path(tmp_path):
    """Token caches, the augmentation path, frame models and stream sample: sources build the same subset."""
    import yaml as _yaml

    from evmamba.core.config import load_config
    from evmamba.datasets.registry import build_dataset
    from evmamba.streaming.sources import sample_recordings
    from evmamba.training.data import build_data

    cfg = load_config(tiny_config(tmp_path, dataset={"max_samples": 12}, augment={"drop_rate": 0.1},
                                  train={"val_fraction": 0.0}))
    tokens = build_data(cfg, progress=False)  # the augmentation path reads raw recordings
    assert len(tokens.train) == 12 and len(tokens.test) == 12
    subset = build_dataset(cfg["dataset"], "train")
    assert [tokens.train[i][1] for i in range(12)] == subset.labels  # the cache's samples, augmented
    frames_cfg = _yaml.safe_load(
        tiny_config(tmp_path, dataset={"max_samples": 7}, train={"val_fraction": 0.0}).read_text()
    )
    frames_cfg["model"] = {"type": "frame_resnet", "widths": [8], "blocks": [1]}
    frames = build_data(frames_cfg, progress=False)
    assert len(frames.train) == 7 and len(frames.test) == 7
    recs, sensor, classes = sample_recordings(cfg["dataset"], "test", [0, 11])
    assert len(recs) == 2 and tuple(sensor) == (32, 32, 2) and len(classes) == 5
    with pytest.raises(ValueError, match="outside"):
        sample_recordings(cfg["dataset"], "test", [12])


def test_an_empty_class_folder_in_train_keeps_every_class_index(tmp_path):
    """train/ has an empty class folder, test/ lacks a class: one class list, training and testing work."""
    from evmamba.core.events import make_events
    from evmamba.pipeline.readers import write_events

    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    layout = {"train": {"a": 6, "b": 6, "c": 0, "d": 6}, "test": {"a": 2, "c": 2, "d": 2}}
    for split, classes in layout.items():
        for cls, n in classes.items():
            (root / split / cls).mkdir(parents=True)
            for k in range(n):
                t = np.sort(rng.integers(0, 30_000, 80))
                write_events(root / split / cls / f"r{k}.npy",
                             make_events(rng.integers(0, 16, 80), rng.integers(0, 16, 80), t, rng.integers(0, 2, 80)))
    cfg = tiny_config(tmp_path, train={"epochs": 1, "val_fraction": 0.0, "batch_size": 6})
    data = yaml.safe_load(cfg.read_text())
    data["dataset"] = {"name": "folder", "root": str(root)}  # sensor size inferred over both splits
    data["model"] = {"d_model": 8, "n_layers": 1, "d_state": 4}
    cfg.write_text(yaml.safe_dump(data))
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(out), "--no-progress"]) == 0
    ckpt = load_checkpoint(out / "model.pt")
    assert ckpt["data"]["classes"] == ["a", "b", "c", "d"] and ckpt["data"]["sensor_size"] == [16, 16, 2]


def test_frame_baseline_trains_with_the_same_command(tmp_path):
    cfg = tiny_config(tmp_path, model={}, train={"epochs": 1, "val_fraction": 0.0}, frames={"n_time_bins": 4})
    data = yaml.safe_load(cfg.read_text())
    data["model"] = {"type": "frame_resnet", "widths": [8, 16], "blocks": [1, 1]}
    cfg.write_text(yaml.safe_dump(data))
    out = tmp_path / "frames"
    assert main(["train", "--config", str(cfg), "--out", str(out), "--no-progress"]) == 0
    ckpt = load_checkpoint(out / "model.pt")
    assert ckpt["model_type"] == "frame_resnet" and ckpt["data"]["n_time_bins"] == 4
