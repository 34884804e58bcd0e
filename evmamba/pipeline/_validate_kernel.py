"""Compiled single-pass check behind :func:`evmamba.pipeline.events.validate_events`.

Kept apart from ``events.py`` so that importing the event definitions does not import numba.
"""

from __future__ import annotations

from numba import njit


@njit(cache=True, nogil=True)
def first_bad_event(ev, t_lower, width, height, npol):
    """``(code, index)`` of the first rule an event array breaks, or ``(0, -1)``.

    Codes: 1 -- first timestamp below ``t_lower``; 2 -- timestamp smaller than the previous one;
    3, 4, 5 -- ``x``, ``y``, ``p`` not below ``width``, ``height``, ``npol``. ``ev`` is non-empty.
    """
    n = ev.size
    if ev[0].t < t_lower:
        return 1, 0
    # One branch-free sweep: the common case (valid data) never leaves the loop early, and the flags are
    # cheaper than four predictable branches per event. The index is searched only after a failure.
    prev = ev[0].t
    bad = False
    for i in range(n):
        e = ev[i]
        bad |= (e.t < prev) | (e.x >= width) | (e.y >= height) | (e.p >= npol)
        prev = e.t
    if not bad:
        return 0, -1
    prev = ev[0].t
    for i in range(n):
        e = ev[i]
        if e.t < prev:
            return 2, i
        if e.x >= width:
            return 3, i
        if e.y >= height:
            return 4, i
        if e.p >= npol:
            return 5, i
        prev = e.t
    return 0, -1


@njit(cache=True, nogil=True)
def backward_steps(t):
    """``(count, index)``: how many times ``t[i + 1] < t[i]``, and the first such ``i`` (-1 if none).

    One pass without the temporaries of ``np.diff(t) < 0`` (an int64 and a bool array as long as ``t``).
    """
    count = 0
    for i in range(t.size - 1):
        count += t[i + 1] < t[i]
    if count == 0:
        return 0, -1
    for i in range(t.size - 1):
        if t[i + 1] < t[i]:
            return count, i
    return count, -1  # pragma: no cover - count > 0 means the loop found one
