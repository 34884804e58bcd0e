"""Compiled loops behind :mod:`evmamba.pipeline.frames` (trusting their callers, like all kernels here)."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def search_times(ev, values):
    """For each value, the index of the first event with ``t >= value`` (numpy's ``searchsorted``, side
    "left", on the time field). ``values`` is float64, and int64 times are compared as float64, exactly as
    numpy compares an integer array with float boundaries."""
    out = np.empty(values.size, np.int64)
    n = ev.size
    for j in range(values.size):
        v = values[j]
        lo = 0
        hi = n
        while lo < hi:
            mid = (lo + hi) >> 1
            if np.float64(ev[mid].t) < v:
                lo = mid + 1
            else:
                hi = mid
        out[j] = lo
    return out


@njit(cache=True, nogil=True)
def accumulate_frames(ev, starts, stops, frames):
    """Frame ``i`` counts the events of ``ev[starts[i]:stops[i]]`` at ``[p, y, x]`` (validated events).

    ``frames`` is int16 (T, P, H, W) and need not be initialised: each frame is zeroed just before it is
    filled, so it is in cache for the scattered increments (zeroing all frames first would leave most of
    them cold, and a cache miss per increment costs more than the whole zeroing). Counts wrap past 32767
    exactly as numpy's ``add.at`` on int16 does. Slices may overlap (an event then counts in each frame).
    """
    for i in range(starts.size):
        frame = frames[i]
        frame[:] = 0
        for j in range(starts[i], stops[i]):
            e = ev[j]
            frame[e.p, e.y, e.x] += np.int16(1)


@njit(cache=True, nogil=True)
def scale_events(ev, fx, fy, ft, out):
    """``x' = trunc(x * fx)``, ``y' = trunc(y * fy)`` in float64, as numpy does when it multiplies a uint16 field
    by a float and stores the product back; ``t' = trunc(t * ft)`` unless ``ft == 1`` (then t is copied)."""
    scale_t = ft != 1.0
    for i in range(ev.size):
        e = ev[i]
        o = out[i]
        o.x = np.uint16(np.float64(e.x) * fx)
        o.y = np.uint16(np.float64(e.y) * fy)
        o.t = np.int64(np.float64(e.t) * ft) if scale_t else e.t
        o.p = e.p
