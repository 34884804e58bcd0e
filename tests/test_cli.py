"""The ``evmamba`` command line: argument handling shared by every command."""

from __future__ import annotations

import pytest

import evmamba.train
from evmamba import cli


def test_overrides_may_come_before_between_and_after_options(monkeypatch):
    seen = {}
    monkeypatch.setattr(evmamba.train, "run", lambda args: seen.update(vars(args)) or 0)
    argv = ["train", "train.workers=1", "--config", "synthetic", "model.d_model=32", "--no-progress",
            "model.pool_stride=[4,1]", "--out", "runs/x", "train.seed=1"]
    assert cli.main(argv) == 0
    assert seen["overrides"] == ["train.workers=1", "model.d_model=32", "model.pool_stride=[4,1]", "train.seed=1"]
    assert seen["config"] == "synthetic" and seen["out"] == "runs/x" and seen["no_progress"]


def test_unknown_arguments_are_still_errors(monkeypatch, capsys):
    monkeypatch.setattr(evmamba.train, "run", lambda args: 0)
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--config", "synthetic", "--epochs", "3"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --epochs" in capsys.readouterr().err
