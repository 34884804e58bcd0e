"""Prophesee EVT 2.0 and EVT 3.0 event streams: bytes after the ``%`` header -> ``EVENT_DTYPE`` events.

Written from Prophesee's format specifications (docs.prophesee.ai, "EVT 2.0 Format" and "EVT 3.0 Format");
both are little-endian, with the word type in the top 4 bits.

**EVT 2.0** -- 32-bit words:

=============  ======  ====================================================================================
word           type    payload
=============  ======  ====================================================================================
CD_OFF/CD_ON   0x0/1   bits 22-27 timestamp LSB (6 bits), bits 11-21 x, bits 0-10 y; the type is the polarity
EVT_TIME_HIGH  0x8     bits 0-27: timestamp bits 6-33 (units of 64 µs)
EXT_TRIGGER    0xA     trigger edge (channel, value): counted, not returned
OTHERS         0xE     extensions: counted and skipped
CONTINUED      0xF     extra data of the previous word: counted and skipped
=============  ======  ====================================================================================

A CD event's time is ``TIME_HIGH * 64 + LSB`` µs, a 34-bit counter (about 4.8 hours); wrap-arounds of it
are counted, so the times returned keep increasing.

**EVT 3.0** -- 16-bit words, each updating a decoder state:

================  ====  ===========================================================================
word              type  payload / effect
================  ====  ===========================================================================
EVT_ADDR_Y        0x0   bits 0-10 y (bit 11: master/slave camera, ignored): sets the row
EVT_ADDR_X        0x2   bit 11 polarity, bits 0-10 x: one event at (x, row, time base)
VECT_BASE_X       0x3   bit 11 polarity, bits 0-10 x: sets the vector base
VECT_12           0x4   bits 0-11 valid mask: an event at base + i for each set bit i; base += 12
VECT_8            0x5   bits 0-7 valid mask: likewise; base += 8
EVT_TIME_LOW      0x6   bits 0-11 of the 24-bit time base
CONTINUED_4       0x7   extra data: counted and skipped
EVT_TIME_HIGH     0x8   bits 12-23 of the 24-bit time base
EXT_TRIGGER       0xA   trigger edge: counted, not returned
OTHERS            0xE   extensions: counted and skipped
CONTINUED_12      0xF   extra data: counted and skipped
================  ====  ===========================================================================

The 24-bit time base wraps every 16.8 s; a TIME_HIGH that falls back by more than half its range counts a
wrap, so the times returned keep increasing. A decrease of the 12-bit TIME_LOW alone is *not* a carry
(the sensor sends TIME_HIGH whenever the upper bits change): treating it as one is the mistake that made
``expelliarmus`` 1.1 stretch EVT 3.0 recordings with spurious 4,096 µs gaps.

Both decoders: the other word types are reserved and are skipped and counted (``EvtStats.unknown``);
events that come before the first TIME_HIGH (no time base) or, in EVT 3.0, before the first row or vector
base are dropped and counted; a partial word at the end (a stream cut mid-word) is left undecoded and
reported in ``EvtStats.trailing_bytes``. Times are the sensor's, in µs, as ``int64``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evmamba.core.events import EVENT_DTYPE

#: Bytes per word of each encoding.
WORD_BYTES = {"evt2": 4, "evt3": 2}


@dataclass(frozen=True)
class EvtStats:
    """What a decoder met besides the events it returned (all counts of words unless said otherwise).

    ``events``: CD events returned; ``words``: whole words decoded; ``trailing_bytes``: bytes of a partial
    last word, not decoded; ``time_high``: TIME_HIGH words; ``time_wraps``: wrap-arounds of the time counter
    (34-bit in EVT 2.0, 24-bit in EVT 3.0); ``time_backwards``: TIME_HIGH words that fell back by less than
    a wrap (reordered data: the times then go backwards there); ``ext_triggers``, ``others``, ``continued``:
    words of those types, skipped; ``unknown``: words of a reserved type, skipped; ``before_time``: events
    dropped because no TIME_HIGH had come yet; ``unplaced``: EVT 3.0 events dropped because no EVT_ADDR_Y (or,
    for vectors, no VECT_BASE_X) had come yet. Of the events returned: ``backward_steps``, how many are earlier
    than the event before them (0 for a sorted stream); ``max_x``, ``max_y``, their largest coordinates (-1
    when there are none).
    """

    events: int
    words: int
    trailing_bytes: int
    time_high: int
    time_wraps: int
    time_backwards: int
    ext_triggers: int
    others: int
    continued: int
    unknown: int
    before_time: int
    unplaced: int
    backward_steps: int
    max_x: int
    max_y: int


def _as_bytes(data, what: str) -> np.ndarray:
    """``data`` (bytes-like or a 1-D uint8 array) as a uint8 array without copying."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8 or data.ndim != 1:
            raise TypeError(
                f"{what}: expected bytes or a 1-D uint8 array; got an array of {data.dtype} with shape {data.shape}"
            )
        return np.ascontiguousarray(data)  # the words are a view of these bytes
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(data, dtype=np.uint8)
    raise TypeError(f"{what}: expected bytes or a 1-D uint8 array; got {type(data).__name__}")


def _decode(data, encoding: str, source: str) -> tuple[np.ndarray, EvtStats]:
    from . import _evt_kernels as k  # deferred: importing numba costs a fraction of a second

    raw = _as_bytes(data, source)
    size = WORD_BYTES[encoding]
    n_words = raw.size // size
    trailing = raw.size - n_words * size
    dtype = "<u4" if encoding == "evt2" else "<u2"
    words = raw[: n_words * size].view(dtype)
    if not words.dtype.isnative:  # big-endian hosts only: the compiled loops read native integers
        words = words.astype(words.dtype.newbyteorder("="))
    if encoding == "evt2":
        # At most one event per word, and nearly every word is a CD event: no counting pass. The slots of
        # the other words are never written, so their pages are never touched.
        bound, walk = words.size, k.decode_evt2_words
    else:
        bound, walk = k.evt3_event_bound(words), k.decode_evt3_words
    out = np.empty(bound + k.SLACK, dtype=EVENT_DTYPE)
    n, counts = walk(words, out)
    # The bound is exact unless events were dropped (no time base or row yet); past a few, give the memory back.
    out = out[:n] if n >= 0.9 * bound else out[:n].copy()
    stats = EvtStats(
        events=int(n),
        words=n_words,
        trailing_bytes=trailing,
        time_high=int(counts[k.C_TIME_HIGH]),
        time_wraps=int(counts[k.C_TIME_WRAPS]),
        time_backwards=int(counts[k.C_TIME_BACKWARDS]),
        ext_triggers=int(counts[k.C_EXT_TRIGGER]),
        others=int(counts[k.C_OTHERS]),
        continued=int(counts[k.C_CONTINUED]),
        unknown=int(counts[k.C_UNKNOWN]),
        before_time=int(counts[k.C_BEFORE_TIME]),
        unplaced=int(counts[k.C_UNPLACED]),
        backward_steps=int(counts[k.C_BACKWARD_STEPS]),
        max_x=int(counts[k.C_MAX_X]),
        max_y=int(counts[k.C_MAX_Y]),
    )
    return out, stats


def decode_evt2(data, source: str = "EVT 2.0 data") -> tuple[np.ndarray, EvtStats]:
    """Decode EVT 2.0 words (the bytes after a ``.raw`` file's header) into ``(events, stats)``.

    ``data``: bytes-like or a 1-D ``uint8`` array, little-endian 32-bit words; a partial last word is left
    undecoded (``stats.trailing_bytes``). ``events``: ``EVENT_DTYPE`` in stream order, t in µs (int64, the
    34-bit sensor time with wraps counted), p = 1 for CD_ON. No range checks: the file readers check the
    events against the sensor size. ``source`` names the data in error messages.
    """
    return _decode(data, "evt2", source)


def decode_evt3(data, source: str = "EVT 3.0 data") -> tuple[np.ndarray, EvtStats]:
    """Decode EVT 3.0 words (the bytes after a ``.raw`` file's header) into ``(events, stats)``.

    ``data``: bytes-like or a 1-D ``uint8`` array, little-endian 16-bit words; a partial last word is left
    undecoded (``stats.trailing_bytes``). ``events``: ``EVENT_DTYPE`` in stream order, t in µs (int64, the
    24-bit sensor time with wraps counted), p = the polarity bit of EVT_ADDR_X / VECT_BASE_X.
    """
    return _decode(data, "evt3", source)
