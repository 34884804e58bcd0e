"""``evmamba bench train``: what it measures and writes, on a tiny config on the CPU (no timing is asserted)."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import yaml

from evmamba.bench.train import PHASES, simulated_recordings
from evmamba.cli import main


def tiny_config(folder):
    cfg = {
        "dataset": {"name": "synthetic", "n_samples": {"train": 12, "test": 5}, "sensor_size": [32, 32, 2],
                    "duration_us": 40000, "seed": 3},
        "binning": {"downsample": 2, "bin_us": 5000},
        "cache_dir": str(folder / "cache"),
        "model": {"d_model": 8, "n_layers": 1, "d_state": 4, "embedding": "factorised"},
        "train": {"batch_size": 4, "max_tokens": 100, "preprocess_workers": 1, "val_fraction": 0.25},
    }
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_bench_train_reports_throughput_parts_and_memory(tmp_path, capsys):
    out = tmp_path / "train.json"
    argv = ["bench", "train", "--config", tiny_config(tmp_path), "--data", "config", "--device", "cpu", "--steps", "3",
            "--warmup", "1", "--workers", "0", "--json", str(out), "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "samples/s" in printed and "tokens/s" in printed and all(p in printed for p in (*PHASES, "step"))
    result = json.loads(out.read_text())
    assert result["benchmark"] == "train" and result["device"] == "cpu" and result["amp"] == "none"
    assert result["steps"] == 3 and all(len(result["per_step_ms"][p]) == 3 for p in PHASES)
    # The parts add up to the step, and the throughput is the timed samples over the timed seconds.
    shares = sum(result["phases"][p]["share"] for p in PHASES)
    assert shares == pytest.approx(1.0)
    assert result["samples_per_s"] == pytest.approx(3 * 4 / result["seconds"])
    # Every recording trains (no hold-out, 12 items cycled), each cropped to at most max_tokens tokens.
    assert 0 < result["tokens_per_sample"] <= 100
    assert result["padded_tokens_per_s"] >= result["tokens_per_s"] > 0
    assert result["loading_share"] == result["phases"]["data"]["share"]
    assert "machine" in result
    if sys.platform.startswith("linux"):
        assert result["host_peak_rss_main_mb"] > 10 and result["host_peak_pss_total_mb"] > 10
    else:  # pragma: no cover
        assert math.isnan(result["host_peak_rss_main_mb"])


def test_bench_train_refuses_what_it_cannot_measure(tmp_path, capsys):
    cfg = tiny_config(tmp_path)
    assert main(["bench", "train", "--config", cfg, "--data", "config", "--device", "cpu", "--amp", "bf16"]) == 1
    assert "--amp bf16 needs --device cuda" in capsys.readouterr().err
    assert main(["bench", "train", "--config", cfg, "--data", "config", "--steps", "0"]) == 1
    assert "--steps must be >= 1" in capsys.readouterr().err


def test_simulated_recordings_are_made_once(tmp_path):
    from evmamba.datasets.folder import FolderDataset

    folder = simulated_recordings(tmp_path, 2, workers=1, progress=False)
    files = sorted(folder.rglob("*.npy"))
    assert len(files) == 2
    stamps = [f.stat().st_mtime_ns for f in files]
    ds = FolderDataset(folder, split="train", sensor_size=(128, 128, 2))
    events, _ = ds[0]
    assert events["x"].max() < 128 and events["y"].max() < 128
    assert np.all(np.diff(events["t"]) >= 0) and events["t"][-1] > 5_000_000  # 6 s recordings
    assert simulated_recordings(tmp_path, 2, workers=1, progress=False) == folder
    assert [f.stat().st_mtime_ns for f in files] == stamps  # reused, not made again


def test_bench_train_compares_with_an_earlier_run(tmp_path, capsys):
    cfg = tiny_config(tmp_path)
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    common = ["bench", "train", "--config", cfg, "--data", "config", "--device", "cpu", "--steps", "2", "--warmup", "0",
              "--workers", "0", "--no-progress"]
    assert main([*common, "--json", str(first)]) == 0
    assert main([*common, "--compare", str(first), "--json", str(second)]) == 0
    assert "x the samples/s" in capsys.readouterr().out
    a, b = json.loads(first.read_text()), json.loads(second.read_text())
    assert b["compared"]["samples_per_s_ratio"] == pytest.approx(b["samples_per_s"] / a["samples_per_s"])
    (tmp_path / "other.json").write_text(json.dumps({"benchmark": "scan"}))
    assert main([*common, "--compare", str(tmp_path / "other.json")]) == 1
    assert "not the JSON of `evmamba bench train`" in capsys.readouterr().err
