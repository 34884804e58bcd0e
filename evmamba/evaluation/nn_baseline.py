"""The nearest-neighbour baseline of a config: cosine k-NN on event-count histograms.

The recordings are split exactly as ``evmamba train`` splits them
(:func:`evmamba.training.data.recording_splits`): the train split is the reference set and the test split
the queries. When the config holds out a validation split (``train.val_fraction`` or ``train.val_split``),
the baseline chooses its own settings -- cell size, time bins, square roots, k -- from a small grid by
validation accuracy with the train-minus-validation recordings as references, and never looks at the test
split to choose; without one it uses fixed defaults. Each recording is read once; its count histograms at
the finest number of time slices of the grid are kept for every cell size, and fewer slices are sums of
those (:func:`evmamba.evaluation.histograms.coarsen_time`).

Recordings without events have an all-zero histogram, similar to nothing: they are left out of the
reference sets, and as queries they get the reference set's majority class (the trivial answer).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .histograms import (
    DEFAULT_MAX_CELLS,
    HistogramSettings,
    cell_grid,
    coarsen_time,
    count_histogram,
    default_cell,
    feature_vectors,
)
from .neighbours import BLOCK_BYTES, knn_vote, nearest_neighbours

# The selection grid. Cell sizes are given as the largest number of spatial cells they may make
# (about 8x8, 16x16 and 32x32 on a square sensor); every number of time bins divides the largest.
GRID_MAX_CELLS = (64, DEFAULT_MAX_CELLS, 1024)
GRID_TIME_BINS = (1, 2, 4, 8)
GRID_SQRT = (False, True)
GRID_K = (1, 3, 5, 7)

# Without a validation split. Fixed before any test accuracy was seen (see docs/training.md).
DEFAULT_TIME_BINS = 4
DEFAULT_SQRT = True
DEFAULT_K = 1


@dataclass
class BaselineOptions:
    """What the user fixed (``None``: chosen on validation, or the default without validation)."""

    cell: int | None = None
    time_bins: int | None = None
    sqrt: bool | None = None
    k: int | None = None
    test_split: str = "test"
    max_memory_gb: float = 4.0
    block_bytes: int = BLOCK_BYTES
    progress: bool = True

    def check(self) -> None:
        for name in ("cell", "time_bins", "k"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
                raise ValueError(f"baseline: --{name.replace('_', '-')} must be a positive integer; got {value!r}")
        if not (isinstance(self.max_memory_gb, (int, float)) and math.isfinite(self.max_memory_gb)
                and self.max_memory_gb > 0):
            raise ValueError(f"baseline: --max-memory-gb must be a positive number; got {self.max_memory_gb!r}")


@dataclass
class _Source:
    """The recordings of one dataset object whose histograms are computed: ``dataset[positions[i]]``."""

    dataset: Any
    positions: np.ndarray
    counts: dict[int, np.ndarray] = field(default_factory=dict)  # cell -> (n, T, n_y, n_x, P) float32
    n_events: np.ndarray | None = None


@dataclass
class _Role:
    """One role (train / val / test): rows ``rows`` of a source, with their labels."""

    source: _Source
    rows: np.ndarray
    labels: np.ndarray

    def nonempty(self) -> _Role:
        keep = self.source.n_events[self.rows] > 0
        return _Role(self.source, self.rows[keep], self.labels[keep])

    def features(self, s: HistogramSettings) -> np.ndarray:
        counts = self.source.counts[s.cell][self.rows]
        return feature_vectors(coarsen_time(counts, s.time_bins), s.sqrt)


def _majority(labels: np.ndarray) -> int:
    """The most frequent label (the smallest one of a tie); 0 for no labels."""
    return int(np.argmax(np.bincount(labels))) if labels.size else 0


def _predict(references: _Role, queries: _Role, s: HistogramSettings, ks: tuple[int, ...],
             block_bytes: int) -> dict[int, np.ndarray]:
    """Predicted labels of the queries for every k in ``ks``: k-NN among the references' non-empty
    recordings; empty queries get the references' majority class."""
    refs = references.nonempty()
    if refs.rows.size == 0:
        raise ValueError("baseline: every reference recording is empty (no events); nothing to compare with")
    idx, _ = nearest_neighbours(queries.features(s), refs.features(s), max(ks), block_bytes=block_bytes)
    neighbour_labels = np.where(idx >= 0, refs.labels[np.maximum(idx, 0)], -1)
    empty = queries.source.n_events[queries.rows] == 0
    out = {}
    for k in ks:
        pred = knn_vote(neighbour_labels[:, :k])
        out[k] = np.where(empty, _majority(refs.labels), pred)
    return out


def _row(split: str, references: _Role, queries: _Role, pred: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """One line of the result table: accuracy, the majority-class answer and per-class accuracy."""
    y = queries.labels
    n = int(y.size)
    correct = int(np.count_nonzero(pred == y))
    majority = _majority(references.nonempty().labels)
    per_class = {}
    for c, name in enumerate(classes):
        members = y == c
        per_class[name] = float(np.mean(pred[members] == c)) if members.any() else None
    return {
        "split": split, "n_samples": n, "n_reference": int(references.nonempty().rows.size), "correct": correct,
        "accuracy": correct / n if n else math.nan,
        "chance": float(np.mean(y == majority)) if n else math.nan, "majority_class": classes[majority],
        "n_empty": int(np.count_nonzero(queries.source.n_events[queries.rows] == 0)),
        "per_class_accuracy": per_class,
    }


def _compute_counts(sources: list[_Source], sensor_size, cells: list[int], time_bins: int, progress: bool) -> None:
    """Fill every source's ``counts`` and ``n_events``: one read of each recording, a progress bar."""
    from tqdm.auto import tqdm

    n_pol = sensor_size[2]
    total = sum(int(s.positions.size) for s in sources)
    with tqdm(total=total, desc="histograms", unit="rec", disable=not progress, leave=False) as bar:
        for src in sources:
            n = int(src.positions.size)
            src.n_events = np.zeros(n, np.int64)
            for c in cells:
                n_x, n_y = cell_grid(sensor_size, c)
                src.counts[c] = np.zeros((n, time_bins, n_y, n_x, n_pol), np.float32)
            for row, pos in enumerate(src.positions):
                events, _ = src.dataset[int(pos)]
                where = src.dataset.source(int(pos))
                src.n_events[row] = events.size
                for c in cells:
                    src.counts[c][row] = count_histogram(events, sensor_size, c, time_bins, source=where)
                bar.update(1)


def _feature_bytes(n_recordings: int, sensor_size, cells: list[int], time_bins: int) -> int:
    return n_recordings * time_bins * sensor_size[2] * 4 * sum(
        math.prod(cell_grid(sensor_size, c)) for c in cells)


def run_baseline(cfg: Mapping, options: BaselineOptions | None = None) -> dict[str, Any]:
    """Nearest-neighbour accuracy of the recordings a config describes; returns the JSON record.

    The record holds ``rows`` (one per evaluated split: ``split``, ``n_samples``, ``n_reference``, ``correct``,
    ``accuracy``, ``chance`` -- the accuracy of always answering the reference set's majority class --,
    ``majority_class``, ``n_empty``, ``per_class_accuracy``), the test row's ``correct``, ``n_samples`` and
    ``accuracy`` at the top level (as ``evmamba evaluate`` writes them), ``settings`` (``cell``, ``grid``,
    ``time_bins``, ``sqrt``, ``k``, ``describe``), ``selected_on`` (``"validation"`` or ``"defaults"``),
    ``selection`` (validation accuracy of every grid point), ``notes`` and ``seconds``.
    """
    from ..training.data import recording_splits, section

    options = options or BaselineOptions()
    options.check()
    start = time.perf_counter()
    parts = recording_splits(cfg, train=True, test_split=options.test_split)
    train_ds = parts["train"].dataset
    sensor_size = tuple(int(v) for v in train_ds.sensor_size)
    classes = [str(c) for c in train_ds.classes]
    for key, part in parts.items():
        if [str(c) for c in part.dataset.classes] != classes:
            raise ValueError(f"baseline: the {key} split's classes {list(part.dataset.classes)} differ from the "
                             f"train split's {classes}")
        if tuple(int(v) for v in part.dataset.sensor_size) != sensor_size:
            raise ValueError(f"baseline: the {key} split's sensor size {tuple(part.dataset.sensor_size)} differs "
                             f"from the train split's {sensor_size}")
    validating = "val" in parts
    notes: list[str] = []

    # ---- the settings to try
    cells = [options.cell] if options.cell is not None else (
        sorted({default_cell(sensor_size, m) for m in GRID_MAX_CELLS}, reverse=True) if validating
        else [default_cell(sensor_size)])
    time_bins = [options.time_bins] if options.time_bins is not None else (
        list(GRID_TIME_BINS) if validating else [DEFAULT_TIME_BINS])
    sqrts = [options.sqrt] if options.sqrt is not None else (list(GRID_SQRT) if validating else [DEFAULT_SQRT])
    ks = (options.k,) if options.k is not None else (GRID_K if validating else (DEFAULT_K,))
    t_max = max(time_bins)

    # ---- recordings: each dataset object once (a held-out validation part shares the train split's)
    sources: dict[int, _Source] = {}
    roles: dict[str, _Role] = {}
    for key, part in parts.items():
        src = sources.get(id(part.dataset))
        if src is None:
            src = sources[id(part.dataset)] = _Source(part.dataset, np.arange(len(part.dataset), dtype=np.int64))
        roles[key] = _Role(src, part.indices, part.labels)
    n_rec = sum(int(s.positions.size) for s in sources.values())
    budget = int(options.max_memory_gb * (1 << 30))
    while _feature_bytes(n_rec, sensor_size, cells, t_max) > budget and len(cells) > 1:
        notes.append(
            f"cells of {cells[-1]} left out of the grid to stay within --max-memory-gb {options.max_memory_gb}"
        )
        cells = cells[:-1]
    need = _feature_bytes(n_rec, sensor_size, cells, t_max)
    if need > budget:
        raise ValueError(f"baseline: the histograms of {n_rec} recordings need {need / (1 << 30):.2f} GiB, more than "
                         f"--max-memory-gb {options.max_memory_gb}; use a larger --cell, fewer --time-bins or a "
                         "larger --max-memory-gb")
    _compute_counts(list(sources.values()), sensor_size, cells, t_max, options.progress)
    for src in sources.values():
        if np.any(src.n_events == 0):
            notes.append(f"{int(np.count_nonzero(src.n_events == 0))} recording(s) of {src.dataset.name} have no "
                         "events: left out of the references, answered with the majority class as queries")

    # ---- choose on validation, or take the defaults
    selection: list[dict[str, Any]] = []
    if validating:
        from tqdm.auto import tqdm

        grid = [HistogramSettings(c, t, bool(s)) for c, t, s in itertools.product(cells, time_bins, sqrts)]
        best = None
        for s in tqdm(grid, desc="validation grid", unit="setting", disable=not options.progress, leave=False):
            preds = _predict(roles["train"], roles["val"], s, ks, options.block_bytes)
            for k in ks:
                acc = float(np.mean(preds[k] == roles["val"].labels)) if roles["val"].labels.size else math.nan
                selection.append(
                    {"cell": s.cell, "time_bins": s.time_bins, "sqrt": s.sqrt, "k": k, "val_accuracy": acc}
                )
                # Ties prefer the simpler setting: smaller k, fewer time bins, coarser cells, plain counts.
                rank = (-acc, k, s.time_bins, -s.cell, s.sqrt)
                if best is None or rank < best[0]:
                    best = (rank, s, k)
        settings, k = best[1], best[2]
        selected_on = "validation"
    else:
        settings, k = HistogramSettings(cells[0], time_bins[0], bool(sqrts[0])), ks[0]
        selected_on = "defaults"
        fixed = [n for n, v in (("cell", options.cell), ("time_bins", options.time_bins), ("sqrt", options.sqrt),
                                ("k", options.k)) if v is not None]
        notes.append("no validation split in the config (train.val_fraction / train.val_split): fixed settings"
                     + (f" (given: {', '.join(fixed)})" if fixed else " (the defaults)"))

    # ---- the results at the chosen settings
    rows = []
    if validating:
        pred = _predict(roles["train"], roles["val"], settings, (k,), options.block_bytes)[k]
        rows.append(_row("val", roles["train"], roles["val"], pred, classes))
    # The whole train split is the reference set of the test queries (with a held-out validation part
    # that means the validation recordings too).
    train_all = roles["train"]
    if "val" in roles and roles["val"].source is roles["train"].source:
        both = np.concatenate([roles["train"].rows, roles["val"].rows])
        train_all = _Role(roles["train"].source, both, np.concatenate([roles["train"].labels, roles["val"].labels]))
    pred = _predict(train_all, roles["test"], settings, (k,), options.block_bytes)[k]
    rows.append(_row(options.test_split, train_all, roles["test"], pred, classes))
    test = rows[-1]
    n_x, n_y = cell_grid(sensor_size, settings.cell)
    return {
        "dataset": section(cfg, "dataset").get("name"),
        "sensor_size": list(sensor_size),
        "classes": classes,
        "split": options.test_split,
        "n_samples": test["n_samples"],
        "correct": test["correct"],
        "accuracy": test["accuracy"],
        "chance": test["chance"],
        "settings": {
            **asdict(settings),
            "k": int(k),
            "grid": [n_x, n_y],
            "describe": describe(settings, k, sensor_size),
        },
        "selected_on": selected_on,
        "rows": rows,
        "selection": selection,
        "notes": notes,
        "seconds": time.perf_counter() - start,
    }


def describe(settings: HistogramSettings, k: int, sensor_size) -> str:
    """``"3 px cells (12x12), 4 time bins, sqrt counts, 1-NN"``."""
    return f"{settings.describe(sensor_size)}, {k}-NN"
