"""``train.ema_decay``: validation, the test split, ``best.pt`` and ``model.pt`` use the moving average of the
weights; the weights the optimizer works on are kept for resuming, and a resumed run continues exactly."""

from __future__ import annotations

import pytest
import torch
from test_train import tiny_config

from evmamba.cli import main
from evmamba.model.checkpoint import load_checkpoint, model_from_checkpoint
from evmamba.training.ema import WeightAverage


def test_the_average_follows_its_formula():
    lin = torch.nn.Linear(3, 2)
    w0 = lin.weight.detach().clone()
    ema = WeightAverage(lin, 0.9)
    with torch.no_grad():
        lin.weight.add_(1.0)
    ema.update(lin)  # first update: d = min(0.9, 1/10) = 0.1
    assert torch.allclose(ema.average["weight"], 0.1 * w0 + 0.9 * (w0 + 1.0))
    for _ in range(200):
        ema.update(lin)
    assert torch.allclose(ema.average["weight"], w0 + 1.0, atol=1e-6)  # constant weights: the average meets them
    with pytest.raises(ValueError, match="ema_decay"):
        WeightAverage(lin, 1.0)


def test_swapping_in_and_back():
    lin = torch.nn.Linear(3, 2)
    ema = WeightAverage(lin, 0.5)
    trained = {k: v.clone() for k, v in lin.state_dict().items()}
    with torch.no_grad():
        ema.average["weight"].fill_(7.0)
    with ema.swapped_into(lin):
        assert torch.all(lin.weight == 7.0)
    assert all(torch.equal(v, trained[k]) for k, v in lin.state_dict().items())


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ema")
    cfg = tiny_config(folder, train={"save_every": 1, "ema_decay": 0.9, "test_every": 1})
    out = folder / "run"
    assert main(["train", "--config", str(cfg), "--out", str(out), "--no-progress"]) == 0
    return out


def test_the_run_says_it_averages(tmp_path, capsys):
    cfg = tiny_config(tmp_path, train={"epochs": 1, "ema_decay": 0.99})
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "r"), "--no-progress"]) == 0
    assert "moving average of the weights (train.ema_decay 0.99: about 100 optimizer steps)" in capsys.readouterr().out


def test_checkpoints_hold_the_average_as_the_model(ema_run, tmp_path):
    last = load_checkpoint(ema_run / "last.pt", need_training_state=True)
    assert last["ema_updates"] == last["step"] > 0
    trained = last["trained_model"]
    differs = [k for k, v in last["model"].items() if v.is_floating_point() and not torch.equal(v, trained[k])]
    assert differs, "the averaged weights equal the trained ones"
    shipped = load_checkpoint(ema_run / "model.pt")
    assert "trained_model" not in shipped
    best = load_checkpoint(ema_run / "best.pt")
    assert all(torch.equal(v, best["model"][k]) for k, v in shipped["model"].items())
    # What the run reported for the selected model is what evaluating the shipped model gives.
    json_path = tmp_path / "eval.json"
    assert main(["evaluate", "--checkpoint", str(ema_run / "model.pt"), "--json", str(json_path)]) == 0
    import json

    reported = json.loads(json_path.read_text())["accuracy"]
    epoch = best["epoch"]
    rows = [line for line in (ema_run / "metrics.jsonl").read_text().splitlines() if f'"epoch": {epoch},' in line
            and "test_accuracy" in line]
    assert rows and json.loads(rows[-1])["test_accuracy"] == pytest.approx(reported)
    model_from_checkpoint(shipped)  # loads as a plain model


def test_resume_with_an_average_continues_exactly(ema_run, tmp_path):
    out = tmp_path / "resumed"
    assert main(["train", "--resume", str(ema_run / "epoch_001.pt"), "--out", str(out), "--no-progress"]) == 0
    straight = torch.load(ema_run / "last.pt", weights_only=True)
    resumed = torch.load(out / "last.pt", weights_only=True)
    for key in ("model", "trained_model"):
        for name, value in straight[key].items():
            assert torch.equal(value, resumed[key][name]), (key, name)
    assert straight["ema_updates"] == resumed["ema_updates"]
    assert straight["metrics"]["test_accuracy"] == resumed["metrics"]["test_accuracy"]
