"""Deterministic, stratified train/test splits for datasets that ship without one.

Samples are ordered inside each class by a hash of ``(seed, key)`` -- ``key`` is a stable id such as the
file name -- so a split depends only on the keys, labels and seed: not on numpy's random streams, the
file system's listing order or the machine.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np


def _class_orders(keys: Sequence[str], labels: Sequence[int], seed: int) -> list[np.ndarray]:
    """For each class present, its sample indices in hash order."""
    if len(keys) != len(labels):
        raise ValueError(f"keys and labels differ in length ({len(keys)} vs {len(labels)})")
    labels = np.asarray(labels, dtype=np.int64)
    rank = [hashlib.sha256(f"{seed}:{k}".encode()).hexdigest() for k in keys]
    orders = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        orders.append(members[np.argsort([rank[i] for i in members], kind="stable")])
    return orders


def stratified_folds(keys: Sequence[str], labels: Sequence[int], n_folds: int, seed: int = 0) -> np.ndarray:
    """Fold index (``0..n_folds-1``) of every sample; each class is dealt round-robin over the folds.

    Fold sizes per class, and overall, differ by at most one. Raises ``ValueError`` when ``n_folds < 2``.
    """
    if not isinstance(n_folds, (int, np.integer)) or isinstance(n_folds, bool) or n_folds < 2:
        raise ValueError(f"n_folds must be an integer >= 2; got {n_folds!r}")
    fold = np.empty(len(keys), dtype=np.int64)
    start = 0  # each class continues the deal where the previous one stopped, keeping fold totals even
    for members in _class_orders(keys, labels, seed):
        fold[members] = (start + np.arange(len(members))) % n_folds
        start += len(members)
    return fold


def stratified_holdout(keys: Sequence[str], labels: Sequence[int], test_fraction: float, seed: int = 0) -> np.ndarray:
    """Boolean mask of the test samples: ``round(n_c * test_fraction)`` of every class ``c``.

    Raises ``ValueError`` unless ``0 < test_fraction < 1``.
    """
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be between 0 and 1; got {test_fraction!r}")
    test = np.zeros(len(keys), dtype=bool)
    for members in _class_orders(keys, labels, seed):
        test[members[: int(round(len(members) * float(test_fraction)))]] = True
    return test
