"""The memory estimate of a training step against a measured peak, and the clear error before an
out-of-memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from evmamba.cli import main
from evmamba.model.classifier import EventClassifier
from evmamba.model.memory import inference_bytes, stage_lengths, training_step_bytes
from evmamba.training.memory import check_training_memory, largest_batch

# One training step in a fresh process: the growth of its peak resident memory over the memory it held before
# the step (parameters, a warm-up step's compiled kernels and allocator pools included), against the estimate
# without the parameters (they exist before the step).
MEASURE = r"""
import json, sys
import torch
from evmamba.model.classifier import EventClassifier
from evmamba.model.memory import training_step_bytes

def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024

kwargs, batch, length = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
model = EventClassifier(2048, 10, **kwargs)

def step(b, n, opt):
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 2048, (b, n), generator=g)
    dt, counts = torch.rand(b, n, generator=g), torch.ones(b, n)
    logits = model(tokens, dt, counts, torch.full((b,), n))
    loss = torch.nn.functional.cross_entropy(logits, torch.zeros(b, dtype=torch.long))
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)

step(2, 64, torch.optim.AdamW(model.parameters()))  # compiles the CPU scan
opt = torch.optim.AdamW(model.parameters())  # fresh optimizer state, allocated in the measured step
before = status("VmRSS")
# The process's peak so far may be a compilation's (a fresh environment compiles the numba kernels in the
# warm-up step), not this step's: reset the high-water mark to the current size first (Linux: clear_refs 5).
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
step(batch, length, opt)
peak = status("VmHWM")
est = training_step_bytes(model, batch, length)
print(json.dumps({"measured": peak - before, "estimated": est.total - est.parameters}))
"""


@pytest.mark.parametrize("kwargs, batch, length", [
    ({"d_model": 64, "n_layers": 2, "d_state": 16}, 4, 4096),
    ({"d_model": 48, "n_layers": 3, "d_state": 8, "input_pool": 4, "pool_stride": [4, 1], "dropout": 0.2}, 8, 8192),
])
def test_the_estimate_is_within_a_factor_of_two_of_the_measured_peak(kwargs, batch, length):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(kwargs), str(batch), str(length)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["measured"] > 50e6  # large enough to measure
    assert 0.5 <= r["measured"] / r["estimated"] <= 2.0, r


def test_the_estimate_follows_the_shapes():
    model = EventClassifier(1000, 5, d_model=32, n_layers=3, d_state=8, input_pool=4, pool_stride=[2, 1])
    assert stage_lengths(model, 1001) == [1001, 251, 126]
    one, two = training_step_bytes(model, 1, 4096), training_step_bytes(model, 2, 4096)
    params = sum(p.numel() for p in model.parameters())
    assert one.parameters == one.gradients == 4 * params and one.optimizer == 8 * params
    assert two.activations == pytest.approx(2 * one.activations, rel=1e-6) and two.batch == 2 * 4096 * 16
    wider = EventClassifier(1000, 5, d_model=64, n_layers=3, d_state=8, input_pool=4, pool_stride=[2, 1])
    assert training_step_bytes(wider, 1, 4096).activations > 1.9 * one.activations
    assert inference_bytes(model, 2, 4096).activations < two.activations  # nothing kept for a backward pass
    with pytest.raises(ValueError, match="'batch' must be an int >= 1"):
        training_step_bytes(model, 0, 10)


def test_largest_batch_is_the_one_with_most_padded_tokens():
    lengths = np.array([10, 400, 30, 30, 0])
    assert largest_batch([[0, 2, 3], [1], [4]], lengths) == (1, 400)
    assert largest_batch([[0, 2, 3, 1]], lengths) == (4, 400)
    assert largest_batch([], lengths) == (1, 1)


# -- the clear error --------------------------------------------------------------------------------------------
MODEL = dict(d_model=32, n_layers=2, d_state=8, input_pool=2)


def test_a_budget_that_does_not_fit_names_the_setting_and_a_value_that_fits():
    model = EventClassifier(2048, 4, **MODEL)
    settings = {"batch_size": 32, "batch_tokens": 2_000_000, "max_tokens": 50_000, "max_memory_gb": 1.0}
    lines = []
    with pytest.raises(ValueError, match=r"lower train\.batch_tokens from 2,000,000 to at most ([\d,]+)") as err:
        check_training_memory(model, (40, 50_000), (40, 50_000), settings, echo=lines.append)
    fits = int(err.value.args[0].split("at most ")[1].replace(",", ""))
    assert (
        50_000 <= fits
        and training_step_bytes(model, 1, fits).total <= 1e9 < training_step_bytes(model, 40, 50_000).total
    )
    assert lines and lines[0].startswith("memory: a training step on the largest batch (40 x 50,000 tokens)")
    # batches by count: lower the batch size, or switch to a budget
    settings = {"batch_size": 32, "batch_tokens": None, "max_memory_gb": 1.0}
    with pytest.raises(
        ValueError, match=r"lower train\.batch_size from 32 to at most (\d+), or set train\.batch_tokens"
    ) as err:
        check_training_memory(model, (32, 50_000), None, settings, echo=None)
    b = int(err.value.args[0].split("at most ")[1].split(",")[0])
    assert b >= 1 and training_step_bytes(model, b, 50_000).total <= 1e9
    # one stream alone is too long: crop it
    with pytest.raises(ValueError, match=r"set train\.max_tokens to at most [\d,]+ \(now 5,000,000"):
        check_training_memory(model, (1, 5_000_000), None, {"batch_size": 1, "max_tokens": 5_000_000,
                                                            "max_memory_gb": 1.0}, echo=None)
    # within the limit: the estimate and the limit come back
    est, limit = check_training_memory(model, (4, 1000), (4, 1000), settings, echo=None)
    assert limit == 1_000_000_000 and est.total < limit


def test_evaluation_that_does_not_fit_is_refused_too():
    model = EventClassifier(2048, 4, **MODEL)
    settings = {"batch_size": 2, "max_memory_gb": 0.5}
    with pytest.raises(ValueError, match=r"evaluating .* lower train\.eval_batch_size to at most (\d+)") as err:
        check_training_memory(model, (2, 1000), (64, 100_000), settings, echo=None)
    b = int(err.value.args[0].rsplit("at most ", 1)[1])
    assert inference_bytes(model, b, 100_000).total <= 0.5e9 < inference_bytes(model, 64, 100_000).total
    with pytest.raises(ValueError, match=r"the longest test stream alone does not fit: shorten the streams"):
        check_training_memory(model, (2, 1000), (1, 4_000_000), settings, echo=None)


def test_train_stops_before_the_first_step_when_the_estimate_exceeds_the_limit(tmp_path, capsys):
    cfg = {
        "dataset": {"name": "synthetic", "n_samples": {"train": 12, "test": 4}, "sensor_size": [32, 32, 2],
                    "duration_us": 40000, "seed": 3},
        "binning": {"downsample": 2, "bin_us": 5000},
        "model": {"d_model": 16, "n_layers": 2, "d_state": 4},
        "train": {"epochs": 1, "batch_size": 8, "max_memory_gb": 0.0001, "preprocess_workers": 1},
        "cache_dir": str(tmp_path / "cache"),
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    assert main(["train", "--config", str(path), "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "evmamba train: memory: a training step on the largest batch" in err
    assert "more than the 0.00 GB available (train.max_memory_gb)" in err and "train." in err
    assert not out.exists()  # nothing was trained or written
