"""``evmamba baseline``: the nearest-neighbour accuracy a model has to beat, for any config.

    evmamba baseline --config NAME [key.sub=value ...] [--json PATH] [--k K] [--cell C] [--time-bins T]
                     [--sqrt|--no-sqrt]

The recordings come from the config exactly as ``evmamba train`` reads and splits them (same dataset,
folds and validation hold-out); binning, model and augmentation sections are not used. Every recording
becomes a count histogram over square spatial cells (channel groups on 1-D spike data) x equal time slices
of its duration x polarity, L2-normalised; a test recording gets the label of its nearest training recording
by cosine distance (or the majority of the k nearest). With a validation split in the config, the cell
size, time bins, square roots and k are chosen on it from a small grid; without one, fixed defaults are used
(options fix any of them). Prints a table -- split, samples, accuracy, the majority-class answer, settings --
and writes it as JSON with ``--json`` (``correct``, ``n_samples`` and ``accuracy`` of the test split at the top
level, so ``scripts/summarize_folds.py`` pools folds as it does for ``evmamba evaluate``).
"""

from __future__ import annotations

import argparse
import sys

from ..core.config import load_config
from ..core.output import format_table, write_json
from ..training.auto import resolve_config
from ..training.sections import check_config

DEFAULT_CONFIG = "synthetic"
EXAMPLE = "evmamba baseline --config nmnist_small --json baseline.json"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", default=DEFAULT_CONFIG, help=f"config name in configs/ or a YAML path (default {DEFAULT_CONFIG})"
    )
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides, e.g. dataset.fold=2")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON here")
    parser.add_argument("--split", default="test", help="split of queries (default test)")
    parser.add_argument(
        "--k", type=int, default=None, help="neighbours that vote (default: chosen on validation, else 1)"
    )
    parser.add_argument("--cell", type=int, default=None,
                        help="cell size in pixels, channels on 1-D data (default: chosen on validation, else the "
                             "smallest giving at most 256 cells)")
    parser.add_argument("--time-bins", type=int, default=None,
                        help="equal time slices of each recording (default: chosen on validation, else 4)")
    parser.add_argument("--sqrt", action=argparse.BooleanOptionalAction, default=None,
                        help="square roots of the counts before normalising (default: chosen on validation, else on)")
    parser.add_argument("--max-memory-gb", type=float, default=4.0, help="memory for the histograms (default 4)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from ..evaluation.nn_baseline import BaselineOptions, run_baseline

    options = BaselineOptions(cell=args.cell, time_bins=args.time_bins, sqrt=args.sqrt, k=args.k,
                              test_split=args.split, max_memory_gb=args.max_memory_gb,
                              progress=not args.no_progress)
    try:
        cfg = load_config(args.config, args.overrides)
        check_config(cfg)
        # A dataset-only config: the hold-out of a folder without splits and the validation share, as
        # `evmamba train` chooses them (the binning and model are not needed here).
        cfg = resolve_config(cfg, progress=not args.no_progress, dataset_only=True)
        record = run_baseline(cfg, options)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"evmamba baseline: {exc}", file=sys.stderr)
        return 1
    record = {"config": str(args.config), "overrides": list(args.overrides), **record}
    settings = record["settings"]["describe"]
    rows = [(r["split"], r["n_samples"], r["n_reference"], f"{100 * r['accuracy']:.1f} %",
             f"{100 * r['chance']:.1f} % ({r['majority_class']})", settings) for r in record["rows"]]
    print(format_table(["split", "n", "references", "accuracy", "chance (majority class)", "settings"], rows))
    for note in record["notes"]:
        print(f"note: {note}")
    how = "chosen on the validation split" if record["selected_on"] == "validation" else "fixed defaults"
    print(f"{record['dataset']} nearest-neighbour baseline: {record['accuracy']:.4f} "
          f"({record['correct']}/{record['n_samples']} {record['split']} samples; settings {how}; "
          f"{record['seconds']:.1f} s)")
    write_json(args.json, record)
    return 0
