"""Compiled word loops behind :mod:`evmamba.pipeline.readers.evt` (Prophesee EVT 2.0 and EVT 3.0).

Both formats are stateful: a CD word carries only the low bits of its timestamp (EVT 2.0) or only what
changed since the previous word (EVT 3.0), so the words are walked in order, into an output sized by an
upper bound on the number of events: the number of words for EVT 2.0 (a word is at most one event), a
cheap branch-free count for EVT 3.0 (:func:`evt3_event_bound`: each EVT_ADDR_X is at most one event, each
vector word at most one per set bit; an event dropped for lack of a time base or row only makes the bound
loose).

The walks write every candidate event before knowing whether to keep it, and advance the output index only
for the ones kept: a data-dependent branch per word costs more than a discarded 13-byte store, because the
word types follow each other unpredictably. ``out`` therefore needs :data:`SLACK` spare slots past the
bound. Each walk returns ``(n_events, counters)``, the counters an int64 array indexed by the ``C_*``
constants below; the wrapper in ``evt.py`` turns them into an
:class:`~evmamba.pipeline.readers.evt.EvtStats`. The walks also note what the readers would otherwise check
in another pass over the output: the largest x and y, and how many events are earlier than the event
before them (``C_BACKWARD_STEPS``).
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
C_BACKWARD_STEPS = 10
C_MAX_X = 11
C_MAX_Y = 12
N_COUNTERS = 13

#: Output slots past the event bound that the walks may write into (a VECT_12 writes 12 candidates).
SLACK = 12

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
def decode_evt2_words(words, out):
    """Walk EVT 2.0 words (``uint32``, host order) and write the CD events to ``out``.

    Time: ``t = wraps * 2**34 + TIME_HIGH * 64 + (the CD word's 6-bit LSB)``. A TIME_HIGH value more than
    half its 28-bit range below the previous one is the counter wrapping (``wraps += 1``); a smaller decrease
    is a reordering in the data, counted in ``C_TIME_BACKWARDS`` and left for the caller's sort policy, since
    calling it a wrap would push every later event 4.8 hours ahead. CD words before the first TIME_HIGH have
    no time base: they are dropped and counted (``C_BEFORE_TIME``). ``out`` holds at least
    ``words.size + SLACK`` events.
    """
    counts = np.zeros(N_COUNTERS, dtype=np.int64)
    half_range = np.int64(1) << (EVT2_HIGH_BITS - 1)
    wrap_step = np.int64(1) << (EVT2_HIGH_BITS + EVT2_LOW_BITS)
    have_time = False
    high = np.int64(0)
    base = np.int64(0)  # wraps * 2**34 + high * 64
    wraps = np.int64(0)
    last_t = np.int64(-1)
    back = 0  # events earlier than the one before
    max_x = np.int64(-1)
    max_y = np.int64(-1)
    n = 0
    for i in range(words.size):
        w = np.int64(words[i])
        kind = w >> 28
        # candidate CD event, kept (n advances) only for a CD word with a time base
        x = (w >> 11) & 0x7FF
        y = w & 0x7FF
        t = base + ((w >> 22) & 0x3F)
        out[n].x = x
        out[n].y = y
        out[n].t = t
        out[n].p = kind & 1
        is_cd = kind <= EVT2_CD_ON
        n += is_cd & have_time
        if is_cd:
            if have_time:
                back += t < last_t
                last_t = t
                max_x = max(max_x, x)
                max_y = max(max_y, y)
            else:
                counts[C_BEFORE_TIME] += 1
            continue
        if kind == EVT2_TIME_HIGH:
            new_high = w & 0xFFFFFFF
            if have_time and new_high < high:
                if high - new_high > half_range:
                    wraps += 1
                    counts[C_TIME_WRAPS] += 1
                else:
                    counts[C_TIME_BACKWARDS] += 1
            high = new_high
            base = wraps * wrap_step + (high << EVT2_LOW_BITS)
            have_time = True
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
    counts[C_BACKWARD_STEPS] = back
    counts[C_MAX_X] = max_x
    counts[C_MAX_Y] = max_y
    return n, counts


@njit(cache=True, nogil=True, inline="always")
def _popcount12(m):
    """Set bits among the low 12 bits of ``m`` (branch-free)."""
    m = m - ((m >> 1) & 0x555)
    m = (m & 0x333) + ((m >> 2) & 0x333)
    m = (m + (m >> 4)) & 0x0F0F
    return (m + (m >> 8)) & 0x1F


@njit(cache=True, nogil=True)
def evt3_event_bound(words):
    """EVT_ADDR_X words plus the set bits of VECT_12 / VECT_8 masks: an upper bound on the events."""
    n = 0
    for i in range(words.size):
        w = np.int64(words[i])
        kind = w >> 12
        n += (kind == EVT3_ADDR_X) + (kind == EVT3_VECT_12) * _popcount12(w & 0xFFF) + (
            kind == EVT3_VECT_8
        ) * _popcount12(w & 0xFF)
    return n


@njit(cache=True, nogil=True)
def decode_evt3_words(words, out):
    """Walk EVT 3.0 words (``uint16``, host order) and write the CD events to ``out``.

    State: the row ``y`` (EVT_ADDR_Y), the vector base ``x`` and polarity (VECT_BASE_X; VECT_12 / VECT_8
    emit one event per set bit, at base + bit index, then advance the base by 12 / 8) and the 24-bit time
    base (TIME_HIGH: bits 12-23, TIME_LOW: bits 0-11). A TIME_HIGH value more than half its 12-bit range
    below the previous one is the 24-bit base wrapping (``t`` gains 2**24 µs from there on); a smaller
    decrease is a reordering, counted in ``C_TIME_BACKWARDS`` and left for the caller's sort policy.
    TIME_LOW never carries into the upper bits: the sensor sends a TIME_HIGH word whenever those change.

    Events before the first TIME_HIGH are dropped and counted in ``C_BEFORE_TIME``; events before the first
    EVT_ADDR_Y (no row) or vectors before the first VECT_BASE_X (no base) in ``C_UNPLACED``. ``out`` holds
    at least ``evt3_event_bound(words) + SLACK`` events.
    """
    counts = np.zeros(N_COUNTERS, dtype=np.int64)
    half_range = np.int64(1) << (EVT3_HALF_BITS - 1)
    wrap_step = np.int64(1) << (2 * EVT3_HALF_BITS)
    have_time = False
    have_y = False
    have_base = False
    placed = False  # have_time and have_y: an EVT_ADDR_X can be kept
    high = np.int64(0)
    low = np.int64(0)
    wraps = np.int64(0)
    t = np.int64(0)
    y = np.int64(0)
    x_base = np.int64(0)
    p_base = np.int64(0)
    last_t = np.int64(-1)
    back = 0  # events earlier than the one before
    max_x = np.int64(-1)
    max_y = np.int64(-1)
    n = 0
    for i in range(words.size):
        w = np.int64(words[i])
        kind = w >> 12
        if kind == EVT3_ADDR_X:
            x = w & 0x7FF
            out[n].x = x
            out[n].y = y
            out[n].t = t
            out[n].p = (w >> 11) & 1
            n += placed
            if placed:
                back += t < last_t
                last_t = t
                max_x = max(max_x, x)
                max_y = max(max_y, y)
            else:
                counts[C_UNPLACED if have_time else C_BEFORE_TIME] += 1
        elif kind == EVT3_ADDR_Y:
            y = w & 0x7FF
            have_y = True
            placed = have_time
        elif kind == EVT3_VECT_12 or kind == EVT3_VECT_8:
            width = 12 if kind == EVT3_VECT_12 else 8
            mask = w & ((1 << width) - 1)
            if placed and have_base:
                for j in range(width):
                    bit = (mask >> j) & 1
                    out[n].x = x_base + j
                    out[n].y = y
                    out[n].t = t
                    out[n].p = p_base
                    n += bit
                    max_x = max(max_x, (x_base + j) * bit)
                if mask:
                    back += t < last_t
                    last_t = t
                    max_y = max(max_y, y)
            else:
                counts[C_UNPLACED if have_time else C_BEFORE_TIME] += _popcount12(mask)
            x_base += width
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
            t = wraps * wrap_step + (high << EVT3_HALF_BITS) + low
            have_time = True
            placed = have_y
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
    counts[C_BACKWARD_STEPS] = back
    counts[C_MAX_X] = max_x
    counts[C_MAX_Y] = max_y
    return n, counts
