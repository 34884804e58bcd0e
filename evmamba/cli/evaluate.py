"""``evmamba evaluate``: a checkpoint's accuracy on full test streams, per class, and as events arrive.

    evmamba evaluate --checkpoint RUN_DIR_OR_PT [--config NAME] [key.sub=value ...] [--json PATH] [--out DIR] [--force]

The model comes from the checkpoint (``model.pt``, ``best.pt`` or ``last.pt``; a run folder means its
``model.pt``); the data from ``--config`` with overrides, or else from the config saved in the checkpoint.
The config is checked whole first, and data whose classes or sensor size differ from the checkpoint's are
refused, naming both. ``--force`` rebuilds the token cache. Streams are never truncated: token models run each
batch through the classifier's inference cache in chunks of at most ``--max-chunk`` tokens, so memory stays
bounded however long a recording is.

Outputs (in ``--out``, default ``<checkpoint folder>/eval-<split>``): ``confusion.png``, ``online.png`` and
``online.json`` (the online curve), and ``--json PATH`` with ``accuracy``, ``n_samples``, ``correct``,
``per_class_accuracy``, ``confusion``, ``errors`` (the misclassified recordings, also printed), ``online``
and the machine. The online curve is the accuracy after the first 10 %, 20 %, ..., 100 % of each stream's
events: for token models, the shortest token prefix
that holds that share of the stream's events (token counts); for frame models, frames made from that
share of the events.
"""

from __future__ import annotations

import argparse
import sys

from ..core.output import format_table

EXAMPLE = "evmamba evaluate --checkpoint checkpoints/nmnist_small.pt --json eval.json"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a .pt file or a run folder (its model.pt)")
    parser.add_argument(
        "--config", default=None, help="config name or YAML path for the data (default: the checkpoint's)"
    )
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    parser.add_argument("--split", default="test", help="split to evaluate (default test)")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON here")
    parser.add_argument("--out", default=None, help="folder for the PNGs and online.json")
    parser.add_argument("--batch-size", type=int, default=16, help="streams per batch (default 16)")
    parser.add_argument("--max-chunk", type=int, default=65536, help="tokens per stream and chunk (default 65536)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:K")
    parser.add_argument("--force", action="store_true", help="rebuild the token cache even if up to date")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from ..evaluation.online import evaluate_checkpoint

    try:
        result = evaluate_checkpoint(args.checkpoint, args.config, args.overrides, split=args.split,
                                     batch_size=args.batch_size, max_chunk=args.max_chunk, device=args.device,
                                     out=args.out, json_path=args.json, progress=not args.no_progress,
                                     force=bool(args.force))
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"evmamba evaluate: {exc}", file=sys.stderr)
        return 1
    rows = [(f"{int(f * 100)} %", a) for f, a in zip(result["online"]["fractions"], result["online"]["accuracy"])]
    print(format_table(["events seen", "accuracy"], rows))
    per_class = [(c, n, a if a is not None else "-") for (c, a), n in
                 zip(result["per_class_accuracy"].items(), result["per_class_count"].values())]
    print(format_table(["class", "samples", "accuracy"], per_class))
    errors = result["errors"]
    if errors:
        shown = ", ".join(f"{e['source'] or '#' + str(e['index'])} ({e['label']} -> {e['predicted']})"
                          for e in errors[:10])
        more = f" and {len(errors) - 10} more (all in --json)" if len(errors) > 10 else ""
        print(f"misclassified: {shown}{more}")
    print(f"accuracy: {result['accuracy']:.4f} ({result['correct']}/{result['n_samples']} {result['split']} samples); "
          f"figures in {result['out']}")
    return 0
