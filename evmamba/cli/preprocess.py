"""``evmamba preprocess``: bin a dataset into tokens and write one HDF5 token cache per split.

    evmamba preprocess --config nmnist_small [key.sub=value ...] [--workers N] [--splits train test]
                       [--cache-dir DIR] [--force]

The config's ``dataset`` and ``binning`` sections and the data themselves (every recording's label, size and
modification time) decide the content and the file name (see :mod:`evmamba.datasets.cache`); the whole
config is checked first (unknown sections or keys are errors). An up-to-date cache is left alone unless
``--force``; an interrupted run is continued. Prints one line per split: file, samples, tokens, empty
samples and seconds.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from ..core.config import load_config
from ..datasets.cache import inspect_cache, update_cache

EXAMPLE = "evmamba preprocess --config nmnist_small --workers 2"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="config name in configs/ (e.g. nmnist_small) or a YAML path")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    parser.add_argument(
        "--workers",
        type=int,
        default=min(os.cpu_count() or 1, 8),
        help="processes that read and bin (default: the number of CPUs, at most 8)",
    )
    parser.add_argument("--splits", nargs="+", default=["train", "test"], metavar="SPLIT", help="splits to write")
    parser.add_argument(
        "--cache-dir", default=None, help="output folder (default: the config's cache_dir, else ./cache)"
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if an up-to-date file exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if args.workers < 1:
        print(f"evmamba preprocess: --workers must be >= 1; got {args.workers}", file=sys.stderr)
        return 2
    from ..training.auto import resolve_config  # imports torch: only when the command runs
    from ..training.sections import check_config

    try:
        cfg = load_config(args.config, args.overrides)
        check_config(cfg)
        # A config without binning (or model) section: the binning `evmamba train` would choose.
        cfg = resolve_config(cfg, progress=not args.no_progress)
        for split in args.splits:
            start = time.perf_counter()
            path, built = update_cache(
                cfg, split, args.workers, force=args.force, progress=not args.no_progress, cache_dir=args.cache_dir
            )
            info = inspect_cache(path)
            took = time.perf_counter() - start
            status = f"written in {took:.2f} s" if built else "up to date"
            print(
                f"{split}: {path} -- {info['n_samples']} samples, {info['n_tokens']} tokens "
                f"(vocab {info['vocab_size']}), {info['n_empty']} empty; {status}"
            )
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"evmamba preprocess: {exc}", file=sys.stderr)
        return 1
    return 0
