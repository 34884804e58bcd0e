"""Pool the ``evmamba evaluate --json`` records of cross-validation folds into one accuracy.

    python scripts/summarize_folds.py runs/poker_dvs-fold*/eval.json

Every recording is in exactly one test fold, so the pooled accuracy is correct predictions over all
recordings. Prints one line per fold and the pooled result.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(paths: list[str]) -> int:
    if not paths:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    correct = total = 0
    for p in paths:
        record = json.loads(Path(p).read_text())
        for key in ("correct", "n_samples", "accuracy"):
            if key not in record:
                print(f"{p}: not an evaluate record (no {key!r})", file=sys.stderr)
                return 1
        correct += int(record["correct"])
        total += int(record["n_samples"])
        print(f"{p}: {record['accuracy']:.4f} ({record['correct']}/{record['n_samples']})")
    print(f"pooled over {len(paths)} folds: {correct / total:.4f} ({correct}/{total})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
