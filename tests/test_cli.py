"""The ``evmamba`` command line: argument handling shared by every command."""

from __future__ import annotations

import pytest

import evmamba.cli.train
from evmamba import cli


def test_overrides_may_come_before_between_and_after_options(monkeypatch):
    seen = {}
    monkeypatch.setattr(evmamba.cli.train, "run", lambda args: seen.update(vars(args)) or 0)
    argv = ["train", "train.workers=1", "--config", "synthetic", "model.d_model=32", "--no-progress",
            "model.pool_stride=[4,1]", "--out", "runs/x", "train.seed=1"]
    assert cli.main(argv) == 0
    assert seen["overrides"] == ["train.workers=1", "model.d_model=32", "model.pool_stride=[4,1]", "train.seed=1"]
    assert seen["config"] == "synthetic" and seen["out"] == "runs/x" and seen["no_progress"]


def test_unknown_arguments_are_still_errors(monkeypatch, capsys):
    monkeypatch.setattr(evmamba.cli.train, "run", lambda args: 0)
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--config", "synthetic", "--epochs", "3"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --epochs" in capsys.readouterr().err


HELP_PAGES = [[]] + [[c] for c in cli.COMMANDS] + [["bench"]] + [["bench", b] for b in cli.BENCHMARKS]


@pytest.mark.parametrize("argv", HELP_PAGES, ids=[" ".join(a) or "evmamba" for a in HELP_PAGES])
def test_every_help_page_is_plain_text_and_ends_with_one_example(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        cli.main([*argv, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for markup in ("``", ":class:", ":func:", ":mod:", ":meth:", ":data:"):
        assert markup not in text, markup
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert lines[-2] == "example:"
    assert lines[-1].startswith("  evmamba ") and lines[-1].split()[1:1 + len(argv)] == argv
    assert sum(ln == "example:" for ln in lines) == 1
