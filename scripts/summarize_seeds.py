"""Mean and standard deviation over seeds of the runs in a `scripts/sweep.py` summary.

Runs named ``<group>-s<seed>`` form a group; runs named ``<group>-f<fold>-s<seed>`` are pooled over the folds
of each seed first (the correct test answers of all folds over all their test recordings: every recording is
in exactly one test fold). Prints, per group: seeds, validation accuracy (best epoch) and test accuracy of the
selected models, as mean ± std (sample standard deviation over seeds), and writes them as JSON with --json.

    python scripts/summarize_seeds.py runs/final/summary.json [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections import defaultdict


def summarize(rows: list[dict]) -> dict[str, dict]:
    per_seed: dict[str, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        m = re.fullmatch(r"(.+?)(?:-f(\d+))?-s(\d+)", r["name"])
        if m:
            per_seed[m.group(1)][int(m.group(3))].append(r)
    out = {}
    for group, seeds in per_seed.items():
        tests, vals, complete = [], [], True
        for seed, runs in sorted(seeds.items()):
            if any(r.get("test_correct") is None for r in runs):
                complete = False
                continue
            tests.append(sum(r["test_correct"] for r in runs) / sum(r["test_n"] for r in runs))
            v = [r["val_best"] for r in runs if r.get("val_best") is not None]
            if v:
                vals.append(statistics.fmean(v))
        sd = lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0  # noqa: E731
        out[group] = {
            "seeds": len(tests), "complete": complete, "folds": max(len(r) for r in seeds.values()),
            "test_mean": statistics.fmean(tests) if tests else None, "test_std": sd(tests) if tests else None,
            "test_per_seed": tests,
            "val_mean": statistics.fmean(vals) if vals else None, "val_std": sd(vals) if vals else None,
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("summary", help="summary.json written by scripts/sweep.py")
    parser.add_argument("--json", default=None, help="write the table as JSON here")
    args = parser.parse_args()
    groups = summarize(json.load(open(args.summary)))
    pct = lambda m, s: "-" if m is None else f"{100 * m:.1f} ± {100 * s:.1f} %"  # noqa: E731
    print(f"{'group':<20} {'seeds':>5} {'folds':>5} {'validation (best)':>18} {'test (selected)':>18}  per seed")
    for g, r in groups.items():
        per = ", ".join(f"{100 * t:.1f}" for t in r["test_per_seed"])
        print(f"{g:<20} {r['seeds']:>5} {r['folds']:>5} {pct(r['val_mean'], r['val_std']):>18} "
              f"{pct(r['test_mean'], r['test_std']):>18}  {per}{'' if r['complete'] else ' (incomplete)'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(groups, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
