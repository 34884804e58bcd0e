"""PNG figures (matplotlib, Agg backend): training curves, confusion matrix, online-accuracy curve.

Every figure is written atomically (rendered into memory, then a temporary file renamed into place).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.files import write_bytes_atomic


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> Path:
    plt = _figure()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return write_bytes_atomic(path, buf.getvalue())


def plot_training_curves(epochs: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Loss and accuracy per epoch for the splits present (``train``, ``val``, ``test``)."""
    plt = _figure()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    x = [r["epoch"] for r in epochs]
    for split, style in (("train", "-"), ("val", "--"), ("test", ":")):
        for ax, metric in ((ax_loss, "loss"), (ax_acc, "accuracy")):
            ys = [r.get(f"{split}_{metric}") for r in epochs]
            pts = [(a, b) for a, b in zip(x, ys) if b is not None]
            if pts:
                ax.plot(*zip(*pts), style, marker="o", ms=3, label=split)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.02))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    return _save(fig, path)


def plot_confusion(confusion: np.ndarray, classes: Sequence[str], path: str | os.PathLike, title: str = "") -> Path:
    """Confusion matrix (rows: true class, columns: predicted), counts printed in the cells."""
    plt = _figure()
    confusion = np.asarray(confusion)
    n = confusion.shape[0]
    size = max(4.0, 0.45 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    rows = confusion.sum(1, keepdims=True)
    ax.imshow(confusion / np.maximum(rows, 1), cmap="Blues", vmin=0, vmax=1)
    if n <= 40:
        for i in range(n):
            for j in range(n):
                if confusion[i, j]:
                    ax.text(j, i, str(int(confusion[i, j])), ha="center", va="center", fontsize=7,
                            color="white" if confusion[i, j] > 0.6 * max(rows[i, 0], 1) else "black")
        ax.set_xticks(range(n), [str(c) for c in classes], rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(n), [str(c) for c in classes], fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title=title or "confusion matrix")
    return _save(fig, path)


def plot_online_curve(fractions: Sequence[float], accuracy: Sequence[float], path: str | os.PathLike,
                      title: str = "") -> Path:
    """Accuracy after the first fraction of each stream's events."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot([100 * f for f in fractions], accuracy, marker="o")
    ax.set(xlabel="events seen (% of each stream)", ylabel="accuracy", ylim=(0, 1.02), xlim=(0, 102),
           title=title or "online accuracy")
    ax.grid(alpha=0.3)
    return _save(fig, path)
