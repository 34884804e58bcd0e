"""Compiled loops behind :mod:`evmamba.pipeline.binning` and :mod:`evmamba.pipeline.filters`.

Every kernel takes its carried state as arrays it updates in place, so one call on a whole recording and
many calls on consecutive chunks of it do the same work in the same order: that is what makes the offline
and the streaming binner agree exactly. The Python wrappers validate; these loops trust their callers
(sorted timestamps, coordinates inside the sensor, output buffers large enough), except that
:func:`emit_tokens` also checks the events it reads, so that the offline binner without time bins needs no
separate validation pass.

The token state is an int64 array
``[has_prev, t_prev, bin_end, bin_stamp]`` -- whether a token was emitted yet, the time (µs) of the last
one, the end (µs, exclusive) of the open time bin and the stamp that marks the token ids seen in it (see
:func:`merge_tokens`).
"""

from __future__ import annotations

import numpy as np
from numba import njit

# A refractory memory entry for a pixel that has never fired: far enough in the past for any refractory
# period, and t - NEVER_FIRED does not overflow int64.
NEVER_FIRED = -(1 << 62)
# Bin stamps are int32 (half the cache footprint of int64); they restart before overflowing, which is safe
# because a restart only happens when a bin has just closed.
_STAMP_LIMIT = (1 << 31) - 2


@njit(cache=True, nogil=True)
def first_at_or_after(ev, t_value):
    """Index of the first event with ``t >= t_value`` in a sorted event array (``ev.size`` if none)."""
    lo = 0
    hi = ev.size
    while lo < hi:
        mid = (lo + hi) >> 1
        if ev[mid].t < t_value:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True, nogil=True)
def filter_events(ev, width, height, denoise_us, refractory_us, denoise_mem, refractory_mem, out):
    """Copy the events that pass the isolated-event and refractory filters to ``out``; return their count.

    Denoise (``denoise_us > 0``), with the semantics of tonic 1.7's ``Denoise``: every event writes its
    time into ``denoise_mem[y * width + x]`` (kept or not), and it is kept when one of its four direct
    neighbours inside the sensor holds a time ``t_n`` with ``t - t_n < denoise_us``. The memory starts at
    0, i.e. every pixel counts as having fired at t = 0 (as in tonic). Only earlier events (and earlier
    events with the same timestamp) count, so the filter is causal and needs no look-ahead.

    Refractory (``refractory_us > 0``), applied to the events that passed denoise: an event is dropped when
    its pixel (either polarity) emitted a *kept* event less than ``refractory_us`` earlier;
    ``refractory_mem`` holds the time of each pixel's last kept event (:data:`NEVER_FIRED` at first).
    """
    n = 0
    for i in range(ev.size):
        e = ev[i]
        x = np.int64(e.x)
        y = np.int64(e.y)
        t = e.t
        pix = y * width + x
        if denoise_us > 0:
            denoise_mem[pix] = t
            near = False
            if x > 0 and t - denoise_mem[pix - 1] < denoise_us:
                near = True
            elif x < width - 1 and t - denoise_mem[pix + 1] < denoise_us:
                near = True
            elif y > 0 and t - denoise_mem[pix - width] < denoise_us:
                near = True
            elif y < height - 1 and t - denoise_mem[pix + width] < denoise_us:
                near = True
            if not near:
                continue
        if refractory_us > 0:
            if t - refractory_mem[pix] < refractory_us:
                continue
            refractory_mem[pix] = t
        out[n] = e
        n += 1
    return n


@njit(cache=True, nogil=True, inline="always")
def _token_of(e, xtab, ytab, ptab):
    """``(token id, 1 if the event lies outside the sensor else 0)``.

    The id is ``ytab[y] + xtab[x] + ptab[p]``: the uint32 tables hold ``(y // k) * W' * P``, ``(x // k) * P``
    and ``p`` (or 0 when polarity is dropped), so the id of DESIGN §5 costs three loads and two adds
    (unsigned, so the compiler adds no negative-index wrap-around). The indices are clamped to the tables,
    which makes the lookup memory-safe on unvalidated input; the flag reports the clamping.
    """
    x = np.uint32(e.x)
    y = np.uint32(e.y)
    p = np.uint32(e.p)
    wm = np.uint32(xtab.size - 1)
    hm = np.uint32(ytab.size - 1)
    pm = np.uint32(ptab.size - 1)
    wrong = np.int64(x > wm) | np.int64(y > hm) | np.int64(p > pm)
    return ytab[min(y, hm)] + xtab[min(x, wm)] + ptab[min(p, pm)], wrong


@njit(cache=True, nogil=True)
def fill_dt(out_t, out_dt, lo, hi, unit_us, first_dt, state):
    """``out_dt[i] = float32((out_t[i] - t_prev) / unit_us)`` for ``lo <= i < hi``, where ``t_prev`` is the time of
    the token before (``state[1]`` for the first one); the first token of a stream gets ``first_dt``.

    A separate pass rather than part of the token loops: there the division would run for every event,
    here it runs once per token in a loop the compiler vectorises.
    """
    if hi <= lo:
        return
    out_dt[lo] = np.float32((out_t[lo] - state[1]) / unit_us) if state[0] else first_dt
    for i in range(lo + 1, hi):
        out_dt[i] = np.float32((out_t[i] - out_t[i - 1]) / unit_us)
    state[0] = 1
    state[1] = out_t[hi - 1]


@njit(cache=True, nogil=True)
def emit_tokens(ev, xtab, ytab, ptab, unit_us, first_dt, state, out_tok, out_cnt, out_dt, out_t):
    """One token per event (no time-bin merging); writes ``ev.size`` tokens. Returns 1 if an event broke the
    input rules (outside the sensor, see :func:`_token_of`, or out of time order), else 0: the caller then
    discards the output and reports the error. Checking inside this loop costs less than a separate
    validation pass; in :func:`merge_tokens` it is the other way round (measured), so that one trusts its
    input.
    """
    bad = 0
    t_last = ev[0].t if ev.size else 0
    for i in range(ev.size):
        e = ev[i]
        t = e.t
        tok, wrong = _token_of(e, xtab, ytab, ptab)
        bad |= wrong | (t < t_last)
        t_last = t
        out_tok[i] = tok
        out_cnt[i] = 1
        out_t[i] = t
    fill_dt(out_t, out_dt, 0, ev.size, unit_us, first_dt, state)
    return bad


@njit(cache=True, nogil=True)
def merge_tokens(
    ev, xtab, ytab, ptab, bin_us, origin_us, unit_us, first_dt, stamps, counts, state,
    out_tok, out_cnt, out_dt, out_t, n0,
):
    """Tokens with time-bin merging, on validated events; returns ``(n, open_start)``.

    Bins are ``[origin + j * bin_us, origin + (j + 1) * bin_us)``. Inside a bin, the first event of a token id
    appends a token (time = that event's time) and later events of the same id add to its count, so tokens
    keep the order of their first occurrence.

    Per token id, ``stamps[tok]`` equals the open bin's stamp ``state[3]`` when ``tok`` already has a token in
    that bin, and ``counts[tok]`` is its event count so far. The loop has no data-dependent branch: every event
    writes its id and time at index ``n`` and ``n`` only advances for a new token, so a repeated id is simply
    overwritten by the next event (the buffers need one spare slot). Counts are copied out when a bin closes.

    The caller may have placed the open bin's earlier tokens in ``[0, n0)``. ``open_start`` is the index of the
    first token of the bin still open after the last event: tokens before it are final. The counts written
    for the open bin are the counts so far.
    """
    bin_end = state[2]
    stamp = np.int32(state[3])
    n = n0
    open_start = 0
    for i in range(ev.size):
        e = ev[i]
        t = e.t
        tok = ytab[e.y] + xtab[e.x] + ptab[e.p]
        if t >= bin_end:
            # Entering a new bin closes the open one. The common case is the next bin; a gap of several
            # bins needs one division.
            for j in range(open_start, n):
                out_cnt[j] = counts[out_tok[j]]
            open_start = n
            if t < bin_end + bin_us:
                bin_end += bin_us
            else:
                bin_end = t - (t - origin_us) % bin_us + bin_us
            if stamp >= _STAMP_LIMIT:
                stamps[:] = 0
                stamp = np.int32(0)
            stamp += np.int32(1)
        new = stamps[tok] != stamp
        stamps[tok] = stamp
        c = counts[tok]
        counts[tok] = np.int32(1) if new else c + np.int32(1)
        out_tok[n] = tok
        out_t[n] = t
        n += new
    for j in range(open_start, n):
        out_cnt[j] = counts[out_tok[j]]
    fill_dt(out_t, out_dt, n0, n, unit_us, first_dt, state)
    state[2] = bin_end
    state[3] = stamp
    return n, open_start
