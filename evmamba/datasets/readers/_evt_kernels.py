"""Compiled word loops behind :mod:`evmamba.datasets.readers.evt` (Prophesee EVT 2.0 and EVT 3.0).

Both formats are stateful: a CD word carries only the low bits of its timestamp (EVT 2.0) or only what
changed since the previous word (EVT 3.0), so the words are walked in order, once to count the events and
once to write them. One function does both walks (``fill`` selects which), so the count can never disagree
with what the second walk writes.

Each loop returns its counters as an int64 array indexed by the ``C_*`` constants below; the wrapper in
``evt.py`` turns them into an :class:`~evmamba.datasets.readers.evt.EvtStats`. The loops trust their
caller: ``out`` has room for every event when ``fill`` is true.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Counter slots (see EvtStats for their meaning).
C_EVENTS = 0
C_TIME_HIGH = 1
C_TIME_WRAPS = 2
C_EXT_TRIGGER = 3
C_OTHERS = 4
C_CONTINUED = 5
C_UNKNOWN = 6
C_BEFORE_TIME = 7
C_UNPLACED = 8
C_TIME_BACKWARDS = 9
N_COUNTERS = 10

# EVT 2.0: 32-bit words, type in bits 28-31.
EVT2_CD_OFF = 0x0
EVT2_CD_ON = 0x1
EVT2_TIME_HIGH = 0x8
EVT2_EXT_TRIGGER = 0xA
EVT2_OTHERS = 0xE
EVT2_CONTINUED = 0xF
# A TIME_HIGH word holds bits 6-33 of the 34-bit timestamp (28 bits, in units of 64 µs).
EVT2_HIGH_BITS = 28
EVT2_LOW_BITS = 6

# EVT 3.0: 16-bit words, type in bits 12-15.
EVT3_ADDR_Y = 0x0
EVT3_ADDR_X = 0x2
EVT3_VECT_BASE_X = 0x3
EVT3_VECT_12 = 0x4
EVT3_VECT_8 = 0x5
EVT3_TIME_LOW = 0x6
EVT3_CONTINUED_4 = 0x7
EVT3_TIME_HIGH = 0x8
EVT3_EXT_TRIGGER = 0xA
EVT3_OTHERS = 0xE
EVT3_CONTINUED_12 = 0xF
# TIME_HIGH sets bits 12-23 and TIME_LOW bits 0-11 of the 24-bit time base.
EVT3_HALF_BITS = 12


@njit(cache=True, nogil=True)
def decode_evt2_words(words, out, fill):
    """Walk EVT 2.0 words (``uint32``, already in host order); write CD events to ``out`` when ``fill``.

    Time: ``t = wraps * 2**34 + TIME_HIGH * 64 + (the CD word's 6-bit LSB)``. A TIME_HIGH value more than
    half its 28-bit range below the previous one is the counter wrapping (``wraps += 1``); a smaller decrease
    is a reordering in the data, counted in ``C_TIME_BACKWARDS`` and left for the caller's sort policy, since
    calling it a wrap would push every later event 4.8 hours ahead. CD words before the first TIME_HIGH have
    no time base: they are dropped and counted (``C_BEFORE_TIME``).
    """
    counts = np.zeros(N_COUNTERS, dtype=np.int64)
    half_range = np.int64(1) << (EVT2_HIGH_BITS - 1)
    wrap_step = np.int64(1) << (EVT2_HIGH_BITS + EVT2_LOW_BITS)
    have_time = False
    high = np.int64(0)
    base = np.int64(0)  # wraps * 2**34 + high * 64
    wraps = np.int64(0)
    n = 0
    for i in range(words.size):
        w = np.int64(words[i])
        kind = w >> 28
        if kind == EVT2_CD_OFF or kind == EVT2_CD_ON:
            if not have_time:
                counts[C_BEFORE_TIME] += 1
                continue
            if fill:
                out[n].x = (w >> 11) & 0x7FF
                out[n].y = w & 0x7FF
                out[n].t = base + ((w >> 22) & 0x3F)
                out[n].p = kind
            n += 1
        elif kind == EVT2_TIME_HIGH:
            new_high = w & 0xFFFFFFF
            if have_time and new_high < high:
                if high - new_high > half_range:
                    wraps += 1
                    counts[C_TIME_WRAPS] += 1
                else:
                    counts[C_TIME_BACKWARDS] += 1
            high = new_high
            have_time = True
            base = wraps * wrap_step + (high << EVT2_LOW_BITS)
            counts[C_TIME_HIGH] += 1
        elif kind == EVT2_EXT_TRIGGER:
            counts[C_EXT_TRIGGER] += 1
        elif kind == EVT2_OTHERS:
            counts[C_OTHERS] += 1
        elif kind == EVT2_CONTINUED:
            counts[C_CONTINUED] += 1
        else:
            counts[C_UNKNOWN] += 1
    counts[C_EVENTS] = n
    return counts


@njit(cache=True, nogil=True, inline="always")
def _emit_vector(out, n, fill, mask, width, x_base, y, t, p):
    """Write one event per set bit of ``mask`` (bit i -> x_base + i); return the new event count."""
    if not fill:
        while mask:
            mask &= mask - 1  # clears the lowest set bit: one event each
            n += 1
        return n
    for i in range(width):
        if (mask >> i) & 1:
            out[n].x = x_base + i
            out[n].y = y
            out[n].t = t
            out[n].p = p
            n += 1
    return n


@njit(cache=True, nogil=True)
def decode_evt3_words(words, out, fill):
    """Walk EVT 3.0 words (``uint16``, already in host order); write CD events to ``out`` when ``fill``.

    State: the row ``y`` (EVT_ADDR_Y), the vector base ``x`` and polarity (VECT_BASE_X; VECT_12 / VECT_8
    emit one event per set bit, at base + bit index, then advance the base by 12 / 8) and the 24-bit time
    base (TIME_HIGH: bits 12-23, TIME_LOW: bits 0-11). A TIME_HIGH value more than half its 12-bit range
    below the previous one is the 24-bit base wrapping (``t`` gains 2**24 µs from there on); a smaller
    decrease is a reordering, counted in ``C_TIME_BACKWARDS`` and left for the caller's sort policy.
    TIME_LOW never carries into the upper bits: the sensor sends a TIME_HIGH word whenever those change.

    Events before the first TIME_HIGH are dropped and counted in ``C_BEFORE_TIME``; events before the first
    EVT_ADDR_Y (no row) or vectors before the first VECT_BASE_X (no base) in ``C_UNPLACED``.
    """
    counts = np.zeros(N_COUNTERS, dtype=np.int64)
    half_range = np.int64(1) << (EVT3_HALF_BITS - 1)
    wrap_step = np.int64(1) << (2 * EVT3_HALF_BITS)
    have_time = False
    have_y = False
    have_base = False
    high = np.int64(0)
    low = np.int64(0)
    wraps = np.int64(0)
    t = np.int64(0)
    y = np.int64(0)
    x_base = np.int64(0)
    p_base = np.int64(0)
    n = 0
    for i in range(words.size):
        w = np.int64(words[i])
        kind = w >> 12
        if kind == EVT3_ADDR_X:
            if not (have_time and have_y):
                if not have_time:
                    counts[C_BEFORE_TIME] += 1
                else:
                    counts[C_UNPLACED] += 1
                continue
            if fill:
                out[n].x = w & 0x7FF
                out[n].y = y
                out[n].t = t
                out[n].p = (w >> 11) & 1
            n += 1
        elif kind == EVT3_VECT_12 or kind == EVT3_VECT_8:
            width = 12 if kind == EVT3_VECT_12 else 8
            mask = w & ((1 << width) - 1)
            if have_time and have_y and have_base:
                n = _emit_vector(out, n, fill, mask, width, x_base, y, t, p_base)
            else:
                missed = 0
                while mask:
                    mask &= mask - 1
                    missed += 1
                counts[C_BEFORE_TIME if not have_time else C_UNPLACED] += missed
            x_base += width
        elif kind == EVT3_ADDR_Y:
            y = w & 0x7FF
            have_y = True
        elif kind == EVT3_VECT_BASE_X:
            x_base = w & 0x7FF
            p_base = (w >> 11) & 1
            have_base = True
        elif kind == EVT3_TIME_LOW:
            low = w & 0xFFF
            t = wraps * wrap_step + (high << EVT3_HALF_BITS) + low
        elif kind == EVT3_TIME_HIGH:
            new_high = w & 0xFFF
            if have_time and new_high < high:
                if high - new_high > half_range:
                    wraps += 1
                    counts[C_TIME_WRAPS] += 1
                else:
                    counts[C_TIME_BACKWARDS] += 1
            high = new_high
            have_time = True
            t = wraps * wrap_step + (high << EVT3_HALF_BITS) + low
            counts[C_TIME_HIGH] += 1
        elif kind == EVT3_EXT_TRIGGER:
            counts[C_EXT_TRIGGER] += 1
        elif kind == EVT3_OTHERS:
            counts[C_OTHERS] += 1
        elif kind == EVT3_CONTINUED_4 or kind == EVT3_CONTINUED_12:
            counts[C_CONTINUED] += 1
        else:
            counts[C_UNKNOWN] += 1
    counts[C_EVENTS] = n
    return counts
