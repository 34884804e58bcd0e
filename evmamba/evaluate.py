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
``per_class_accuracy``, ``confusion``, ``online`` and the machine. The online curve is the accuracy after
the first 10 %, 20 %, ..., 100 % of each stream's events: for token models, the shortest token prefix
that holds that share of the stream's events (token counts); for frame models, frames made from that
share of the events.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .core.config import load_config
from .core.files import write_text_atomic
from .core.output import format_table, write_json
from .model.checkpoint import FRAME_MODEL, check_same_data, find_checkpoint, load_checkpoint, model_from_checkpoint
from .training.auto import resolve_config
from .training.data import build_data, make_loader, section
from .training.distributed import DistInfo
from .training.models import to_device
from .training.plots import plot_confusion, plot_online_curve
from .training.sections import check_config

FRACTIONS = tuple(round(0.1 * k, 1) for k in range(1, 11))

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
    try:
        result = evaluate(args)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"evmamba evaluate: {exc}", file=sys.stderr)
        return 1
    rows = [(f"{int(f * 100)} %", a) for f, a in zip(result["online"]["fractions"], result["online"]["accuracy"])]
    print(format_table(["events seen", "accuracy"], rows))
    per_class = [(c, n, a if a is not None else "-") for (c, a), n in
                 zip(result["per_class_accuracy"].items(), result["per_class_count"].values())]
    print(format_table(["class", "samples", "accuracy"], per_class))
    print(f"accuracy: {result['accuracy']:.4f} ({result['correct']}/{result['n_samples']} {result['split']} samples); "
          f"figures in {result['out']}")
    return 0


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available")
    return dev


def prefix_ends(counts: torch.Tensor, lengths: torch.Tensor, fractions=FRACTIONS) -> torch.Tensor:
    """``(B, Q)`` token prefix lengths: the shortest prefix of each row holding at least ``f`` of its events
    (``counts`` (B, L), zero in the padding); the last fraction, 1.0, is the whole row."""
    cum = counts.double().cumsum(1)
    total = cum.gather(1, (lengths - 1).clamp_min(0)[:, None])  # (B, 1)
    targets = total * torch.tensor(fractions, dtype=torch.float64, device=counts.device)[None, :]
    ends = torch.searchsorted(cum.contiguous(), (targets - 1e-9).contiguous()) + 1
    ends = torch.minimum(ends, lengths[:, None]).clamp_min(0)
    ends[:, -1] = lengths
    return torch.where(lengths[:, None] > 0, ends, 0)


@torch.no_grad()
def _token_predictions(model, loader, device, max_chunk, progress) -> tuple[np.ndarray, np.ndarray]:
    from tqdm.auto import tqdm

    preds, labels = [], []
    for batch in tqdm(loader, desc="evaluate", unit="batch", disable=not progress, leave=False):
        batch = to_device(batch, device)
        ends = prefix_ends(batch["counts"], batch["lengths"])
        logits = model.forward_prefixes(batch["tokens"], batch["dt"], ends, batch["counts"], batch["lengths"],
                                        max_chunk=max_chunk, surfaces=batch.get("surfaces"))
        preds.append(logits.argmax(-1).cpu().numpy())  # (B, Q)
        labels.append(batch["labels"].cpu().numpy())
    return np.concatenate(preds), np.concatenate(labels)


@torch.no_grad()
def _frame_predictions(model, dataset, device, batch_size, progress) -> tuple[np.ndarray, np.ndarray]:
    from tqdm.auto import tqdm

    preds, labels = [], []
    for start in tqdm(
        range(0, len(dataset), batch_size), desc="evaluate", unit="batch", disable=not progress, leave=False
    ):
        frames, batch_labels = [], []
        for i in range(start, min(start + batch_size, len(dataset))):
            events, label = dataset.base[i]
            for f in FRACTIONS:
                frames.append(dataset.frames(events[: math.ceil(f * events.size)], source=dataset.base.source(i)))
            batch_labels.append(label)
        x = torch.from_numpy(np.stack(frames)).to(device)
        logits = model(x).view(len(batch_labels), len(FRACTIONS), -1)
        preds.append(logits.argmax(-1).cpu().numpy())
        labels.append(np.asarray(batch_labels))
    return np.concatenate(preds), np.concatenate(labels)


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Run the evaluation described by the parsed arguments; returns the JSON record."""
    for name in ("batch_size", "max_chunk"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")
    ckpt_path = find_checkpoint(args.checkpoint, "model.pt")
    ckpt = load_checkpoint(ckpt_path)
    if args.config:
        cfg = load_config(args.config, args.overrides)
        check_config(cfg)
        cfg = resolve_config(cfg, progress=not args.no_progress)  # a dataset-only config, as training resolved it
    else:
        from omegaconf import OmegaConf

        cfg = OmegaConf.merge(OmegaConf.create(ckpt["config"]), OmegaConf.from_dotlist(list(args.overrides)))
    check_config(cfg)
    device = _device(args.device)
    model, info = model_from_checkpoint(ckpt)
    model.to(device).eval()
    cfg_train = dict(section(cfg, "train"))
    if (cfg.get("model") or {}).get("type", "event_mamba") != ckpt["model_type"]:
        raise ValueError(f"{ckpt_path}: holds a {ckpt['model_type']!r} model but the config's model.type differs")
    progress = not args.no_progress
    start = time.perf_counter()
    data = build_data(cfg, DistInfo(device=device), train=False, test_split=args.split, progress=progress,
                      force=bool(getattr(args, "force", False)))
    check_same_data(ckpt["data"], data.info, ckpt_path)
    if ckpt["model_type"] == FRAME_MODEL:
        preds, labels = _frame_predictions(model, data.test, device, args.batch_size, progress)
    else:
        loader, _ = make_loader(data.test, data.lengths["test"], args.batch_size, data.collate, shuffle=False, seed=0,
                                workers=int(cfg_train.get("workers", 0) or 0), even=False)
        preds, labels = _token_predictions(model, loader, device, args.max_chunk, progress)
    seconds = time.perf_counter() - start

    classes = list(info.classes)
    n = int(labels.shape[0])
    final = preds[:, -1]
    confusion = np.zeros((len(classes), len(classes)), np.int64)
    np.add.at(confusion, (labels, final), 1)
    counts = confusion.sum(1)
    per_class = {c: (float(confusion[i, i] / counts[i]) if counts[i] else None) for i, c in enumerate(classes)}
    online = [float((preds[:, q] == labels).mean()) if n else math.nan for q in range(len(FRACTIONS))]
    out = Path(args.out) if args.out else ckpt_path.parent / f"eval-{args.split}"
    record = {
        "checkpoint": str(ckpt_path),
        "dataset": section(cfg, "dataset").get("name"),
        "split": args.split,
        "model_type": ckpt["model_type"],
        "n_samples": n,
        "correct": int(np.trace(confusion)),
        "accuracy": float(np.trace(confusion) / n) if n else math.nan,
        "classes": classes,
        "per_class_accuracy": per_class,
        "per_class_count": {c: int(k) for c, k in zip(classes, counts)},
        "confusion": confusion.tolist(),
        "online": {"fractions": list(FRACTIONS), "accuracy": online},
        "seconds": seconds,
        "out": str(out),
    }
    out.mkdir(parents=True, exist_ok=True)
    title = f"{record['dataset']} {args.split}: {record['accuracy']:.3f}"
    plot_confusion(confusion, classes, out / "confusion.png", title=title)
    plot_online_curve(FRACTIONS, online, out / "online.png", title=f"{record['dataset']} {args.split}: online accuracy")
    write_text_atomic(out / "online.json", json.dumps(record["online"], indent=2) + "\n")
    write_json(args.json, record)
    return record
