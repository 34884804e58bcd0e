"""Run several `evmamba train` runs side by side and tabulate validation and test accuracy.

A plan is a JSON file: a list of runs, each ``{"name": ..., "config": ..., "overrides": [...]}``. Each run
trains into ``OUT/<name>`` (its output in ``OUT/<name>.log``); at most ``--jobs`` run at a time. The summary
(``OUT/summary.json`` and a printed table) gives, per run, the validation accuracy of the last epoch and the
best one, the test accuracy of the last epoch and that of the selected model (``model.pt``, with its
counts). Choices are made on the validation columns; the test
column is reported, never used to choose.

    python scripts/sweep.py PLAN.json --out runs/sweep --jobs 8 [--timeout SECONDS] [--set key.sub=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path


_SELECTED = re.compile(r"test accuracy: ([0-9.]+) \((\d+)/(\d+) samples, ([^;]+);")


def selected_result(log: Path) -> dict:
    """The test result of the run's selected model (``model.pt``: best validation epoch, else the last), from
    the last line ``evmamba train`` prints."""
    found = _SELECTED.findall(log.read_text(errors="replace")) if log.exists() else []
    if not found:
        return {"test_selected": None, "test_correct": None, "test_n": None, "selected": None}
    acc, correct, n, what = found[-1]
    return {"test_selected": float(acc), "test_correct": int(correct), "test_n": int(n), "selected": what}


def read_metrics(folder: Path) -> dict:
    """Last and best validation accuracy, last test accuracy and epochs done, from ``metrics.jsonl``."""
    path = folder / "metrics.jsonl"
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("kind") == "epoch":
                rows.append(rec)
    val = [r["val_accuracy"] for r in rows if r.get("val_accuracy") is not None]
    test = [r["test_accuracy"] for r in rows if r.get("test_accuracy") is not None]
    return {
        "epochs": len(rows),
        "val_last": val[-1] if val else None,
        "val_best": max(val) if val else None,
        "test_last": test[-1] if test else None,
        "train_last": rows[-1].get("train_accuracy") if rows else None,
        "seconds": sum(r.get("epoch_seconds", 0.0) for r in rows),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plan", help="JSON list of {name, config, overrides}")
    parser.add_argument("--out", required=True, help="folder for the runs and the summary")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (default 2)")
    parser.add_argument("--timeout", type=float, default=None, help="stop runs still going after this many seconds")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="key.sub=value",
                        help="an override added to every run (repeatable)")
    parser.add_argument("--summarize-only", action="store_true",
                        help="run nothing: tabulate the plan's runs already in --out (e.g. after an interruption)")
    args = parser.parse_args()
    plan = json.loads(Path(args.plan).read_text())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pending = [] if args.summarize_only else list(plan)
    running: list[tuple[dict, subprocess.Popen, object]] = []
    start = time.monotonic()
    while pending or running:
        while pending and len(running) < args.jobs:
            run = pending.pop(0)
            log = open(out / f"{run['name']}.log", "w")
            cmd = [sys.executable, "-m", "evmamba", "train", "--config", run["config"], "--out", str(out / run["name"]),
                   *run.get("overrides", []), *args.extra]
            log.write(" ".join(cmd) + "\n")
            log.flush()
            running.append((run, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ), log))
        time.sleep(1.0)
        if args.timeout is not None and time.monotonic() - start > args.timeout:
            for _, proc, _ in running:
                proc.kill()
            pending.clear()
        still = []
        for run, proc, log in running:
            if proc.poll() is None:
                still.append((run, proc, log))
            else:
                log.close()
                run["returncode"] = proc.returncode
        running = still
    rows = []
    for run in plan:
        rows.append({"name": run["name"], "config": run["config"], "overrides": run.get("overrides", []),
                     "returncode": run.get("returncode"), **read_metrics(out / run["name"]),
                     **selected_result(out / f"{run['name']}.log")})
    (out / "summary.json").write_text(json.dumps(rows, indent=1))
    fmt = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    print(f"{'run':<24} {'rc':>3} {'ep':>3} {'val last':>8} {'val best':>8} {'test last':>9} {'test sel':>8} "
          f"{'train':>6} {'s':>6}")
    for r in rows:
        print(f"{r['name']:<24} {str(r['returncode']):>3} {r['epochs']:>3} {fmt(r['val_last']):>8} "
              f"{fmt(r['val_best']):>8} {fmt(r['test_last']):>9} {fmt(r['test_selected']):>8} "
              f"{fmt(r['train_last']):>6} {r['seconds']:>6.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
