"""A checkpoint's accuracy on full test streams, per class, and as events arrive (``evmamba evaluate``).

The model comes from the checkpoint; the data from a config with overrides, or else from the config saved in
the checkpoint. The config is checked whole first, and data whose classes or sensor size differ from the
checkpoint's are refused, naming both. Streams are never truncated: token models run each batch through the
classifier's inference cache in chunks of at most ``max_chunk`` tokens, so memory stays bounded however long
a recording is.

The record holds ``accuracy``, ``n_samples``, ``correct``, ``per_class_accuracy``, ``confusion``, ``errors``
(each misclassified recording: index in the split, source, true and predicted class) and ``online``: the
accuracy after the first 10 %, 20 %, ..., 100 % of each stream's events -- for token models, the shortest
token prefix that holds that share of the stream's events (token counts); for frame models, frames made from
that share of the events. ``confusion.png``, ``online.png`` and ``online.json`` are written
to the output folder.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.config import load_config
from ..core.files import write_text_atomic
from ..core.output import write_json
from ..model.checkpoint import FRAME_MODEL, check_same_data, find_checkpoint, load_checkpoint, model_from_checkpoint
from ..training.auto import resolve_config
from ..training.data import build_data, make_loader, section
from ..training.distributed import DistInfo
from ..training.models import to_device
from ..training.plots import plot_confusion, plot_online_curve
from ..training.sections import check_config

FRACTIONS = tuple(round(0.1 * k, 1) for k in range(1, 11))


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


def _errors(dataset, order: np.ndarray, labels: np.ndarray, final: np.ndarray, classes: list) -> list[dict]:
    """The misclassified recordings, in dataset order: index in the split, source (file name or generator
    id, where the dataset knows it), true and predicted class."""
    wrong = sorted((int(order[r]), int(labels[r]), int(final[r])) for r in np.flatnonzero(labels != final))
    source = getattr(dataset, "source", None)  # the datasets and their wrappers say where item i came from
    return [{"index": i, "source": source(i) if callable(source) else None, "label": classes[y],
             "predicted": classes[p]} for i, y, p in wrong]


def evaluate_checkpoint(checkpoint: str | os.PathLike, config: str | os.PathLike | None = None,
                        overrides: Sequence[str] = (), *, split: str = "test", batch_size: int = 16,
                        max_chunk: int = 65536, device: str = "auto", out: str | os.PathLike | None = None,
                        json_path: str | os.PathLike | None = None, progress: bool = True,
                        force: bool = False) -> dict[str, Any]:
    """Evaluate ``checkpoint`` (a ``.pt`` file or a run folder's ``model.pt``) on ``split`` of the data of
    ``config`` (with ``overrides``; default: the config saved in the checkpoint) and return the record
    (see the module docstring). ``batch_size`` streams per batch, ``max_chunk`` tokens per stream and chunk;
    ``out``: folder of the figures and ``online.json`` (default ``<checkpoint folder>/eval-<split>``);
    ``json_path``: also write the record there; ``force`` rebuilds the token cache.
    """
    for name, value in (("batch_size", batch_size), ("max_chunk", max_chunk)):
        if value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1; got {value}")
    ckpt_path = find_checkpoint(checkpoint, "model.pt")
    ckpt = load_checkpoint(ckpt_path)
    if config:
        cfg = load_config(config, overrides)
        check_config(cfg)
        cfg = resolve_config(cfg, progress=progress)  # a dataset-only config, as training resolved it
    else:
        from omegaconf import OmegaConf

        cfg = OmegaConf.merge(OmegaConf.create(ckpt["config"]), OmegaConf.from_dotlist(list(overrides)))
    check_config(cfg)
    device = _device(device)
    model, info = model_from_checkpoint(ckpt)
    model.to(device).eval()
    cfg_train = dict(section(cfg, "train"))
    if (cfg.get("model") or {}).get("type", "event_mamba") != ckpt["model_type"]:
        raise ValueError(f"{ckpt_path}: holds a {ckpt['model_type']!r} model but the config's model.type differs")
    start = time.perf_counter()
    data = build_data(cfg, DistInfo(device=device), train=False, test_split=split, progress=progress,
                      force=bool(force))
    check_same_data(ckpt["data"], data.info, ckpt_path)
    if ckpt["model_type"] == FRAME_MODEL:
        preds, labels = _frame_predictions(model, data.test, device, batch_size, progress)
        order = np.arange(len(labels))
    else:
        # The checkpoint's loader workers were set for the machine it was trained on: no more than this one has.
        workers = min(int(cfg_train.get("workers", 0) or 0), os.cpu_count() or 1)
        loader, batches = make_loader(data.test, data.lengths["test"], batch_size, data.collate, shuffle=False,
                                      seed=0, workers=workers, even=False)
        preds, labels = _token_predictions(model, loader, device, max_chunk, progress)
        # The loader groups recordings of similar length: row r of the predictions is recording order[r].
        order = np.array([i for batch in batches for i in batch], np.int64)
    seconds = time.perf_counter() - start

    classes = list(info.classes)
    n = int(labels.shape[0])
    final = preds[:, -1]
    confusion = np.zeros((len(classes), len(classes)), np.int64)
    np.add.at(confusion, (labels, final), 1)
    counts = confusion.sum(1)
    per_class = {c: (float(confusion[i, i] / counts[i]) if counts[i] else None) for i, c in enumerate(classes)}
    online = [float((preds[:, q] == labels).mean()) if n else math.nan for q in range(len(FRACTIONS))]
    out = Path(out) if out else ckpt_path.parent / f"eval-{split}"
    record = {
        "checkpoint": str(ckpt_path),
        "dataset": section(cfg, "dataset").get("name"),
        "split": split,
        "model_type": ckpt["model_type"],
        "n_samples": n,
        "correct": int(np.trace(confusion)),
        "accuracy": float(np.trace(confusion) / n) if n else math.nan,
        "classes": classes,
        "per_class_accuracy": per_class,
        "per_class_count": {c: int(k) for c, k in zip(classes, counts)},
        "confusion": confusion.tolist(),
        "errors": _errors(data.test, order, labels, final, classes),
        "online": {"fractions": list(FRACTIONS), "accuracy": online},
        "seconds": seconds,
        "out": str(out),
    }
    out.mkdir(parents=True, exist_ok=True)
    title = f"{record['dataset']} {split}: {record['accuracy']:.3f}"
    plot_confusion(confusion, classes, out / "confusion.png", title=title)
    plot_online_curve(FRACTIONS, online, out / "online.png", title=f"{record['dataset']} {split}: online accuracy")
    write_text_atomic(out / "online.json", json.dumps(record["online"], indent=2) + "\n")
    write_json(json_path, record)
    return record


__all__ = ["FRACTIONS", "evaluate_checkpoint", "prefix_ends"]
