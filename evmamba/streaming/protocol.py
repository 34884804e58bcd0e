"""Wire formats of the live sources: evmamba's own event packets, and jAER's unicast AER datagrams.

**evmamba packets** (version 1), used over UDP (one packet per datagram) and on stdin (packets back to
back). All fields little-endian::

    offset  size  field
    0       4     magic  b"EVMB"
    4       1     version = 1
    5       1     flags: bit 0 = END (the recording ends after this packet's events); other bits 0
    6       2     reserved = 0
    8       4     seq: packet sequence number (uint32, +1 per packet, wraps); gaps count lost packets
    12      4     count: number of events that follow
    16      13*n  events: x uint16, y uint16, t int64 (µs), p uint8 -- exactly EVENT_DTYPE, packed

The records are :data:`~evmamba.pipeline.events.EVENT_DTYPE` byte for byte, so decoding is one
``np.frombuffer`` with no per-event work; 64-bit microsecond timestamps never wrap; the magic and the exact
length (``16 + 13 * count``) reject foreign and damaged packets; ``seq`` reveals losses; END is the explicit
end-of-recording marker that resets the classifier. A 1 500-byte Ethernet MTU carries 112 events per
datagram (1 472 bytes of UDP payload), the loopback interface up to 5 037 (65 507 bytes).

**jAER unicast** (``AEUnicastOutput`` with its defaults: sequence number on, address first, 4-byte address
and timestamp, big-endian, timestamp multiplier 1): a datagram is an int32 sequence number followed by
(int32 address, int32 timestamp in µs) pairs. Addresses are decoded with the DVS128 layout (x in bits
1-7, y in bits 8-14, bit 0 = OFF, bit 15 = special event, skipped), the layout that
:func:`~evmamba.pipeline.readers.read_aedat2_dvs128` reads; like that reader's default, x is the address
field as sent, not mirrored as jAER's own display shows it (x = 127 - field). The 32-bit timestamps wrap
every 71.6 minutes; :class:`JaerDecoder` unwraps them across datagrams.

Every decode raises :class:`PacketError` with a ``kind`` (``"short"``, ``"oversized"``, ``"garbage"``)
for a packet that is skipped; the sources count them per kind.
"""

from __future__ import annotations

import struct

import numpy as np

from ..core.events import EVENT_DTYPE

MAGIC = b"EVMB"
VERSION = 1
FLAG_END = 0x01
HEADER = struct.Struct("<4sBBHII")
HEADER_SIZE = HEADER.size  # 16
RECORD_SIZE = EVENT_DTYPE.itemsize  # 13
#: Largest UDP payload (IPv4): the default limit on a datagram's size.
MAX_DATAGRAM = 65507
#: Events per datagram that fit a 1 500-byte MTU (1 472 bytes of UDP payload).
MTU_EVENTS = (1472 - HEADER_SIZE) // RECORD_SIZE
#: Events per datagram that fit the largest UDP payload.
MAX_DATAGRAM_EVENTS = (MAX_DATAGRAM - HEADER_SIZE) // RECORD_SIZE

PACKET_KINDS = ("short", "oversized", "garbage")


class PacketError(ValueError):
    """A packet that cannot be decoded; ``kind`` is one of :data:`PACKET_KINDS`."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def encode_packet(events: np.ndarray, seq: int = 0, end: bool = False) -> bytes:
    """One evmamba packet holding ``events`` (an ``EVENT_DTYPE`` array); ``end`` sets the END flag."""
    if not isinstance(events, np.ndarray) or events.dtype != EVENT_DTYPE or events.ndim != 1:
        raise TypeError("encode_packet: argument 'events' must be a 1-D EVENT_DTYPE array")
    header = HEADER.pack(MAGIC, VERSION, FLAG_END if end else 0, 0, int(seq) & 0xFFFFFFFF, events.size)
    return header + np.ascontiguousarray(events).tobytes()


def encode_packets(events: np.ndarray, max_events: int = MTU_EVENTS, end: bool = True, seq0: int = 0) -> list[bytes]:
    """``events`` split into packets of at most ``max_events``; the last one carries END when ``end``."""
    if isinstance(max_events, bool) or not isinstance(max_events, int) or max_events < 1:
        raise ValueError(f"encode_packets: argument 'max_events' must be a positive int; got {max_events!r}")
    n = max(1, -(-events.size // max_events))
    return [
        encode_packet(events[i * max_events:(i + 1) * max_events], seq0 + i, end and i == n - 1) for i in range(n)
    ]


def max_events(max_packet: int) -> int:
    """The most events a packet of at most ``max_packet`` bytes (header included) can announce."""
    return max(0, (int(max_packet) - HEADER_SIZE) // RECORD_SIZE)


def decode_header(buf, source: str = "packet", max_packet: int = MAX_DATAGRAM) -> tuple[int, int, int]:
    """``(flags, seq, count)`` of a packet header (the first 16 bytes of ``buf``); ``PacketError`` if bad.

    A header that announces more events than fit in ``max_packet`` bytes is ``oversized``: every source
    bounds a packet by the same limit, so a corrupt count never makes a reader wait for gigabytes.
    """
    if len(buf) < HEADER_SIZE:
        raise PacketError("short", f"{source}: {len(buf)} bytes, shorter than the {HEADER_SIZE}-byte header")
    magic, version, flags, reserved, seq, count = HEADER.unpack_from(buf, 0)
    if magic != MAGIC:
        raise PacketError("garbage", f"{source}: bad magic {bytes(magic)!r} (expected {MAGIC!r})")
    if version != VERSION or flags & ~FLAG_END or reserved:
        raise PacketError(
            "garbage", f"{source}: unsupported version {version} / flags {flags:#x} / reserved {reserved}"
        )
    if count > max_events(max_packet):
        raise PacketError(
            "oversized",
            f"{source}: header announces {count} events ({HEADER_SIZE + RECORD_SIZE * count} bytes), more than "
            f"the {max_packet}-byte packet limit allows ({max_events(max_packet)} events)",
        )
    return flags, seq, count


def decode_packet(buf, source: str = "packet", max_packet: int = MAX_DATAGRAM) -> tuple[np.ndarray, bool, int]:
    """``(events, end, seq)`` of one whole evmamba packet (a datagram).

    Raises :class:`PacketError`: ``short`` when the datagram holds fewer bytes than its header announces,
    ``oversized`` when it holds more or its header announces more than ``max_packet`` bytes, ``garbage`` for
    a bad magic, version or flags. The events are a copy (the buffer may be reused); their values are
    checked by the caller.
    """
    flags, seq, count = decode_header(buf, source, max_packet)
    want = HEADER_SIZE + RECORD_SIZE * count
    if len(buf) < want:
        raise PacketError(
            "short", f"{source}: {len(buf)} bytes, but its header announces {count} events ({want} bytes)"
        )
    if len(buf) > want:
        raise PacketError("oversized", f"{source}: {len(buf)} bytes, more than the {want} its header announces")
    events = np.frombuffer(buf, dtype=EVENT_DTYPE, count=count, offset=HEADER_SIZE).copy()
    return events, bool(flags & FLAG_END), seq


class JaerDecoder:
    """Datagrams of jAER's ``AEUnicastOutput`` (defaults; see the module docstring) -> ``EVENT_DTYPE``.

    Keeps the state that spans datagrams: the last sequence number (for losses) and the 32-bit timestamp
    unwrapping. ``sequence_numbers=False`` reads datagrams sent with jAER's sequence numbers switched off.
    """

    def __init__(self, sequence_numbers: bool = True):
        self.sequence_numbers = bool(sequence_numbers)
        self._wraps = 0
        self._last_raw: int | None = None

    def decode(self, buf, source: str = "jaer datagram") -> tuple[np.ndarray, int | None]:
        """``(events, seq or None)``; ``PacketError`` (``short``) when the length is not header + 8k."""
        head = 4 if self.sequence_numbers else 0
        body = len(buf) - head
        if body < 0 or body % 8:
            raise PacketError("short", f"{source}: {len(buf)} bytes is not a {head}-byte header plus 8-byte events")
        seq = struct.unpack_from(">i", buf, 0)[0] if self.sequence_numbers else None
        rec = np.frombuffer(buf, dtype=[("a", ">u4"), ("t", ">u4")], offset=head)
        addr = rec["a"].astype(np.int64)
        if (addr >> 16).any():
            raise PacketError("garbage", f"{source}: addresses use bits above 15: not DVS128 events")
        t = rec["t"].astype(np.int64)
        # Unwrap the 32-bit counter, across datagrams as well as inside this one.
        if t.size:
            prev = np.concatenate([[self._last_raw if self._last_raw is not None else t[0]], t[:-1]])
            wrapped = (t - prev) < -(1 << 31)
            offsets = self._wraps + np.cumsum(wrapped)
            self._wraps = int(offsets[-1])
            self._last_raw = int(t[-1])
            t = t + (offsets.astype(np.int64) << 32)
        pixel = (addr & (1 << 15)) == 0
        addr, t = addr[pixel], t[pixel]
        events = np.empty(addr.size, EVENT_DTYPE)
        events["x"] = (addr >> 1) & 0x7F
        events["y"] = (addr >> 8) & 0x7F
        events["t"] = t
        events["p"] = 1 - (addr & 1)
        return events, seq


def encode_jaer(events: np.ndarray, seq: int) -> bytes:
    """A jAER unicast datagram (DVS128 addresses) holding ``events`` -- for tests and demos."""
    a = (events["y"].astype(np.int64) << 8) | (events["x"].astype(np.int64) << 1) | (1 - events["p"].astype(np.int64))
    rec = np.empty(events.size, dtype=[("a", ">u4"), ("t", ">u4")])
    rec["a"] = a
    rec["t"] = events["t"].astype(np.int64) & 0xFFFFFFFF
    return struct.pack(">i", int(seq)) + rec.tobytes()


__all__ = [
    "FLAG_END", "HEADER_SIZE", "MAGIC", "MAX_DATAGRAM", "MAX_DATAGRAM_EVENTS", "MTU_EVENTS", "PACKET_KINDS",
    "RECORD_SIZE", "VERSION", "JaerDecoder", "PacketError", "decode_header", "decode_packet", "encode_jaer",
    "encode_packet", "encode_packets", "max_events",
]
