"""Cosine nearest neighbours in blocks, and the k-NN majority vote.

The rows passed in are unit vectors (:func:`evmamba.evaluation.histograms.feature_vectors`), so the cosine
similarity is a dot product and the cosine distance is one minus it. Similarities are computed for a block of
queries against all references at a time, with the block sized so that it holds at most ``block_bytes``:
memory stays bounded for any number of queries (70 000 x 70 000 would be 20 GB at once).

Ties: similarities are compared after rounding to multiples of ``2**-20`` (about 1e-6), so that the rounding
noise of a float32 matrix product cannot order references with identical histograms; among equally similar
references the one that comes first in the reference set is nearer. The vote breaks a tie between classes
in favour of the class whose nearest member is nearest.
"""

from __future__ import annotations

import numpy as np

#: Similarities are compared as integers ``rint(similarity * TIE_SCALE)``.
TIE_SCALE = float(1 << 20)
#: Default memory for one block of similarities.
BLOCK_BYTES = 64 << 20


def _check_rows(name: str, x) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"nearest_neighbours: {name} must be a numpy array; got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"nearest_neighbours: {name} must have shape (n, dims); got {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


def nearest_neighbours(queries: np.ndarray, references: np.ndarray, k: int = 1, *,
                       block_bytes: int = BLOCK_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` references most similar to each query, nearest first.

    ``queries`` (M, D) and ``references`` (N, D) are float rows of unit L2 norm (or zero). Returns
    ``indices`` (M, k) int64 into ``references`` and ``similarities`` (M, k) float64 (cosine similarity,
    rounded to multiples of ``2**-20``; the cosine distance is ``1 - similarity``). With ``N < k`` the
    missing slots hold index -1 and similarity -inf.
    """
    from ._kernels import top_k_rows

    q, r = _check_rows("queries", queries), _check_rows("references", references)
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"nearest_neighbours: queries have {q.shape[1]} dims but references {r.shape[1]}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"nearest_neighbours: k must be a positive integer; got {k!r}")
    if isinstance(block_bytes, bool) or not isinstance(block_bytes, (int, np.integer)) or block_bytes < 1:
        raise ValueError(f"nearest_neighbours: block_bytes must be a positive integer; got {block_bytes!r}")
    m, n = q.shape[0], r.shape[0]
    indices = np.full((m, k), -1, np.int64)
    sims = np.full((m, k), -np.inf, np.float64)
    if m == 0 or n == 0:
        return indices, sims
    rows = max(1, int(block_bytes) // (4 * n))
    rt = r.T  # a view: BLAS reads it transposed
    for start in range(0, m, rows):
        stop = min(start + rows, m)
        block = q[start:stop] @ rt  # (rows, N) float32
        top_k_rows(block, int(k), TIE_SCALE, indices[start:stop], sims[start:stop])
    sims /= TIE_SCALE
    return indices, sims


def knn_vote(neighbour_labels: np.ndarray) -> np.ndarray:
    """Majority class of each row of ``neighbour_labels`` (M, k) int, neighbours nearest first; a tie between
    classes goes to the class that appears first in the row (whose nearest member is nearest). Entries
    below zero (missing neighbours) do not vote; a row without any votes gives -1."""
    labels = np.asarray(neighbour_labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"knn_vote: neighbour_labels must be an (M, k) integer array; got {labels.dtype} {labels.shape}"
        )
    m, k = labels.shape
    if m == 0:
        return np.zeros(0, np.int64)
    valid = labels >= 0
    n_classes = int(labels.max()) + 1 if valid.any() else 1
    counts = np.zeros((m, n_classes), np.int64)
    rows = np.repeat(np.arange(m), k).reshape(m, k)
    np.add.at(counts, (rows[valid], labels[valid]), 1)
    best = counts.max(axis=1)
    votes = np.where(valid, counts[rows, np.where(valid, labels, 0)], -1)  # each neighbour's class count
    first = np.argmax(votes == best[:, None], axis=1)  # the nearest neighbour of a top-voted class
    pred = labels[np.arange(m), first].astype(np.int64)
    return np.where(best > 0, pred, -1)
