"""``evmamba evaluate``: JSON record, figures, online curve, agreement with the plain forward pass."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from evmamba.cli import main
from evmamba.core.config import load_config
from evmamba.datasets.batching import collate
from evmamba.datasets.cache import TokenCache, ensure_cache
from evmamba.evaluation.online import FRACTIONS, prefix_ends
from evmamba.model.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_config(folder: Path, model: dict, **extra) -> Path:
    cfg = {
        "dataset": {"name": "synthetic", "n_samples": {"train": 30, "test": 12}, "sensor_size": [32, 32, 2],
                    "duration_us": 40000, "seed": 5},
        "binning": {"downsample": 2, "bin_us": 5000},
        "cache_dir": str(folder / "cache"),
        "model": model,
        "train": {"epochs": 1, "batch_size": 8, "lr": 0.003, "preprocess_workers": 1},
        **extra,
    }
    path = folder / f"{model.get('type', 'event_mamba')}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("evaluate")
    cfg = write_config(folder, {"d_model": 16, "n_layers": 2, "d_state": 4, "pool_stride": 3, "readout": "dt_mean"})
    assert main(["train", "--config", str(cfg), "--out", str(folder / "run"), "--no-progress"]) == 0
    return folder, cfg


def run_eval(folder: Path, *extra: str) -> dict:
    out = folder / f"eval{len(list(folder.glob('eval*')))}"
    assert main(["evaluate", "--checkpoint", str(folder / "run"), "--json", str(out / "r.json"), "--out", str(out),
                 "--no-progress", *extra]) == 0
    return json.loads((out / "r.json").read_text())


def test_json_record_and_figures(trained):
    folder, _ = trained
    r = run_eval(folder)
    assert r["n_samples"] == 12 and 0.0 <= r["accuracy"] <= 1.0
    assert r["correct"] == round(r["accuracy"] * 12)
    assert set(r["per_class_accuracy"]) == {"square", "triangle", "ring", "bar_cw", "bar_ccw"}
    assert np.asarray(r["confusion"]).sum() == 12 and np.trace(r["confusion"]) == r["correct"]
    assert r["online"]["fractions"] == list(FRACTIONS) and len(r["online"]["accuracy"]) == 10
    assert r["online"]["accuracy"][-1] == pytest.approx(r["accuracy"])  # 100 % of the events = the full stream
    assert "machine" in r
    out = Path(r["out"])
    for name in ("confusion.png", "online.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    assert json.loads((out / "online.json").read_text()) == r["online"]


def test_chunked_evaluation_matches_the_forward_pass(trained):
    folder, cfg_path = trained
    model, _ = model_from_checkpoint(load_checkpoint(folder / "run" / "model.pt"))
    cfg = load_config(cfg_path)
    cache = TokenCache(ensure_cache(cfg, "test", progress=False))
    batch = collate([cache[i] for i in range(len(cache))])
    with torch.no_grad():
        logits = model.eval()(batch["tokens"], batch["dt"], batch["counts"], batch["lengths"])
    accuracy = float((logits.argmax(-1) == batch["labels"]).float().mean())
    # Small chunks and batches: the streams go through the inference cache in many pieces.
    r = run_eval(folder, "--max-chunk", "7", "--batch-size", "5")
    assert r["accuracy"] == pytest.approx(accuracy)
    # The misclassified recordings it names are those of the forward pass, in the split's own order (the
    # evaluation loader groups recordings by length, so its rows are not in that order).
    classes = list(r["per_class_accuracy"])
    pred, labels = logits.argmax(-1).numpy(), batch["labels"].numpy()
    want = [{"index": int(i), "source": cache.source(int(i)), "label": classes[labels[i]],
             "predicted": classes[pred[i]]} for i in np.flatnonzero(pred != labels)]
    assert want, "a model that gets every recording right cannot check the list"
    assert r["errors"] == want


def test_loader_workers_are_capped_at_this_machines_cpus(trained, monkeypatch):
    """A checkpoint trained with many loader workers (a GPU machine's) evaluates on a small machine with at most
    one worker per CPU, and gives the same answer."""
    import os

    import evmamba.evaluation.online as online

    asked, make = [], online.make_loader
    monkeypatch.setattr(online, "make_loader", lambda *a, **k: asked.append(k["workers"]) or make(*a, **k))
    folder, _ = trained
    wide = run_eval(folder, "train.workers=64")
    assert asked == [min(64, os.cpu_count() or 1)]
    assert wide["accuracy"] == run_eval(folder)["accuracy"]


def test_prefix_ends_follow_the_share_of_events():
    counts = torch.tensor([[1.0, 2.0, 3.0, 4.0, 0.0], [5.0, 0.0, 0.0, 0.0, 0.0], [0.0] * 5])
    ends = prefix_ends(counts, torch.tensor([4, 1, 0]))
    # Row 0 holds 10 events: 1 event needs 1 token, 2 need 2, 5 need 3, 10 need all 4.
    assert ends[0].tolist() == [1, 2, 2, 3, 3, 3, 4, 4, 4, 4]
    assert ends[1].tolist() == [1] * 10 and ends[2].tolist() == [0] * 10


def test_mismatched_config_is_refused(trained, capsys):
    folder, cfg = trained
    code = main(["evaluate", "--checkpoint", str(folder / "run"), "--config", str(cfg), "binning.downsample=4",
                 "--no-progress", "--out", str(folder / "bad")])
    assert code == 1 and "vocab_size" in capsys.readouterr().err


def test_data_with_other_classes_than_the_checkpoint_is_refused(trained, tmp_path, capsys):
    folder, _ = trained
    ckpt = load_checkpoint(folder / "run" / "model.pt")
    classes = list(ckpt["data"]["classes"])
    # Same number of classes, other order: every class index would mean another class.
    ckpt["data"]["classes"] = classes[::-1]
    save_checkpoint({k: v for k, v in ckpt.items() if k not in ("format", "version")}, tmp_path / "other.pt")
    code = main(["evaluate", "--checkpoint", str(tmp_path / "other.pt"), "--no-progress", "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert code == 1 and "other.pt" in err
    assert str(classes[::-1]) in err and str(classes) in err


def test_frame_model_evaluates_with_the_same_command(tmp_path):
    cfg = write_config(tmp_path, {"type": "frame_resnet", "widths": [8], "blocks": [1]}, frames={"n_time_bins": 3})
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    r = run_eval(tmp_path)
    assert r["model_type"] == "frame_resnet" and r["n_samples"] == 12 and len(r["online"]["accuracy"]) == 10


@pytest.mark.parametrize("name,floor", [("poker_dvs", 26 / 27), ("nmnist_small", 0.99)])
def test_committed_checkpoints_score_on_the_real_recordings(name, floor, tmp_path):
    """The checkpoints in checkpoints/ reach the accuracy the README reports, on the held-out recordings."""
    from evmamba.datasets.paths import data_root

    ckpt = Path(__file__).resolve().parents[1] / "checkpoints" / f"{name}.pt"
    if not (data_root() / name).is_dir():
        pytest.skip(f"recordings not found in {data_root() / name}")
    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(ckpt), f"cache_dir={tmp_path / 'cache'}", "--out", str(out),
                 "--json", str(out / "r.json"), "--no-progress"]) == 0
    r = json.loads((out / "r.json").read_text())
    assert r["accuracy"] >= floor and r["n_samples"] == {"poker_dvs": 27, "nmnist_small": 100}[name]
