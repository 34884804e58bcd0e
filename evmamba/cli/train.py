"""``evmamba train``: train a classifier from a YAML config.

    evmamba train [--config synthetic] [key.sub=value ...] [--out DIR] [--resume RUN_DIR_OR_CKPT] [--force]
    torchrun --nproc_per_node 4 -m evmamba train --config dvsgesture      # one process per GPU (DDP)

The run folder (``--out``, default ``runs/<config>-<date>-<time>``) receives the resolved ``config.yaml``,
``metrics.csv`` and ``metrics.jsonl``, ``curves.png``, ``last.pt`` (full training state, written after every
epoch), ``best.pt`` (best validation accuracy, when there is a validation split), ``epoch_NNN.pt`` (with
``train.save_every``) and ``model.pt``: the weights of the selected model -- best on validation if there is
a validation split, else the last -- for ``evmamba evaluate`` and streaming. ``--resume`` continues from a
full checkpoint exactly where the run stopped, with the config saved in it (``key=value`` overrides still
apply, e.g. ``train.epochs=N`` for more; the data must still have the checkpoint's classes and sensor
size). The last line printed is the test accuracy of the selected model.

The whole config is checked first: an unknown section or key, or a value of the wrong kind, is an error
naming it. A token-model config with neither a ``binning`` nor a ``model`` section (say, only ``dataset``)
gets the settings it leaves out chosen from the data (:mod:`evmamba.training.auto`; one printed line per
decision). Token caches are built on first use and rebuilt when the data change; ``--force`` rebuilds
them regardless. Before the first step, the peak memory of the largest training and evaluation batches is
estimated and printed; a run that would not fit stops with an error naming the setting to lower
(:mod:`evmamba.training.memory`).
"""

from __future__ import annotations

import argparse
import sys

from ..training.loop import DEFAULT_CONFIG

EXAMPLE = "evmamba train --config nmnist_small train.epochs=20 --out runs/nmnist_small"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", default=DEFAULT_CONFIG, help=f"config name in configs/ or a YAML path (default {DEFAULT_CONFIG})"
    )
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides, e.g. train.epochs=3")
    parser.add_argument("--out", default=None, help="run folder (default runs/<config>-<date>-<time>)")
    parser.add_argument(
        "--resume", default=None, metavar="RUN_DIR_OR_CKPT", help="continue from a run folder's last.pt or a checkpoint"
    )
    parser.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:K (default: train.device)")
    parser.add_argument("--force", action="store_true", help="rebuild the token caches even if up to date")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from ..training.loop import train

    try:
        train(args.config, args.overrides, out=args.out, resume=args.resume, device=args.device,
              force=bool(args.force), progress=not args.no_progress)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"evmamba train: {exc}", file=sys.stderr)
        return 1
    return 0
