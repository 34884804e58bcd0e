"""Compiled loops behind :mod:`evmamba.evaluation.histograms` and :mod:`evmamba.evaluation.neighbours`
(trusting their callers, like all kernels here)."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def accumulate_cells(ev, cell, n_x, n_pol, time_bins, t0, span, out):
    """Add one to ``out[((b * n_y + y // cell) * n_x + x // cell) * n_pol + p]`` for every event, where
    ``b = (t - t0) * time_bins // span`` is its time slice (``span`` = last minus first timestamp plus one,
    so ``b`` lies in ``[0, time_bins)``). ``out`` is a zeroed float32 vector of the whole histogram; ``n_y``
    is implied by its length."""
    n_y = out.size // (time_bins * n_x * n_pol)
    for i in range(ev.size):
        e = ev[i]
        b = (np.int64(e.t) - t0) * time_bins // span
        j = ((b * n_y + np.int64(e.y) // cell) * n_x + np.int64(e.x) // cell) * n_pol + np.int64(e.p)
        out[j] += np.float32(1.0)


@njit(cache=True, nogil=True)
def top_k_rows(sims, k, scale, out_idx, out_val):
    """The ``k`` largest entries of each row of ``sims`` (float32, (M, N)), best first, as column indices
    ``out_idx`` (int64, (M, k)) and values ``out_val`` (float64, (M, k)).

    Values are compared after rounding ``sims * scale`` to an integer, so that rounding noise of the matrix
    product below ``1 / scale`` cannot order equal rows; between equal values the smaller column wins
    (a later column must be strictly better to displace an earlier one). Rows with fewer than ``k``
    columns leave index -1 and value -inf in the unused slots."""
    m, n = sims.shape
    for r in range(m):
        for q in range(k):
            out_idx[r, q] = -1
            out_val[r, q] = -np.inf
        for j in range(n):
            v = np.rint(np.float64(sims[r, j]) * scale)
            if v <= out_val[r, k - 1]:
                continue
            q = k - 1
            while q > 0 and out_val[r, q - 1] < v:  # strictly: an equal earlier value stays ahead
                out_val[r, q] = out_val[r, q - 1]
                out_idx[r, q] = out_idx[r, q - 1]
                q -= 1
            out_val[r, q] = v
            out_idx[r, q] = j
