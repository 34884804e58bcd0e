"""Compiled loop behind :mod:`evmamba.pipeline.surfaces`: local surfaces around each token, token by token.

The carried state (the time of the last token of every cell and, for count surfaces, its decayed count) is
updated in place, so one call on a whole recording and many calls on consecutive chunks of it compute the
same values in the same order -- the offline and the streaming paths agree exactly.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# The last-token time of a cell that has never seen a token; its surface value is 0.
NEVER = -(1 << 62)

KIND_CODES = {"time": 0, "count": 1}


@njit(cache=True, nogil=True)
def surfaces_into(tokens, t_us, counts, grid_w, grid_h, grid_p, rx, ry, scales, inv_tau, kind, last_t, acc, out):
    """Fill ``out`` ``(n, F)`` float32 with the surfaces of ``n`` tokens and advance the state.

    ``tokens`` (n,) ids ``((y * W' + x) * P + p)`` of a ``(grid_w, grid_h, grid_p)`` grid; ``t_us`` (n,) int64
    token times (non-decreasing); ``counts`` (n,) events per token; ``rx``/``ry`` patch radii in cells;
    ``scales`` (S,) cell sizes in grid pixels; ``inv_tau`` (T,) 1 / time constant in 1/µs; ``kind`` 0 (time:
    ``exp(-(t - t_last) / tau)``) or 1 (count: ``log1p`` of the exponentially decayed count); ``last_t``
    ``(S, Hmax, Wmax, P)`` int64 and ``acc`` ``(S, T, Hmax, Wmax, P)`` float64 the state.

    Features are ordered (scale, tau, dy, dx, polarity). A token reads its neighbourhood *before* it
    updates its own cell, so the centre says how recently this cell fired, not that it fires now.
    """
    n_scales = scales.shape[0]
    n_tau = inv_tau.shape[0]
    for i in range(tokens.shape[0]):
        tok = np.int64(tokens[i])
        p = tok % grid_p
        xy = tok // grid_p
        x = xy % grid_w
        y = xy // grid_w
        ti = t_us[i]
        f = 0
        for s in range(n_scales):
            sc = scales[s]
            cx = x // sc
            cy = y // sc
            wl = (grid_w + sc - 1) // sc
            hl = (grid_h + sc - 1) // sc
            for j in range(n_tau):
                for dy in range(-ry, ry + 1):
                    yy = cy + dy
                    for dx in range(-rx, rx + 1):
                        xx = cx + dx
                        inside = 0 <= yy < hl and 0 <= xx < wl
                        for q in range(grid_p):
                            v = 0.0
                            if inside:
                                lt = last_t[s, yy, xx, q]
                                if lt != NEVER:
                                    decay = math.exp(-float(ti - lt) * inv_tau[j])
                                    if kind == 0:
                                        v = decay
                                    else:
                                        v = math.log1p(acc[s, j, yy, xx, q] * decay)
                            out[i, f] = v
                            f += 1
        c = float(counts[i])
        for s in range(n_scales):
            sc = scales[s]
            cx = x // sc
            cy = y // sc
            lt = last_t[s, cy, cx, p]
            if kind == 1:
                for j in range(n_tau):
                    old = 0.0 if lt == NEVER else acc[s, j, cy, cx, p] * math.exp(-float(ti - lt) * inv_tau[j])
                    acc[s, j, cy, cx, p] = old + c
            last_t[s, cy, cx, p] = ti
