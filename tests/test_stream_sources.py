"""Event sources of the stream loop: wire formats, UDP on loopback (with malformed datagrams), stdin-like
byte streams (garbage, a packet cut off at the end) and replay slices of real recordings."""

from __future__ import annotations

import io
import socket
import struct
import threading
import time

import numpy as np
import pytest

from evmamba.core.events import EVENT_DTYPE, make_events
from evmamba.datasets.paths import data_root
from evmamba.streaming import protocol
from evmamba.streaming.sources import (
    ByteStreamSource,
    RecordingSource,
    UdpSource,
    file_recordings,
    parse_udp,
    slice_recording,
)

SENSOR = (32, 24, 2)


def events(n, t0=0, seed=0, sensor=SENSOR):
    rng = np.random.default_rng(seed)
    t = t0 + np.cumsum(rng.integers(0, 50, n))
    return make_events(rng.integers(0, sensor[0], n), rng.integers(0, sensor[1], n), t, rng.integers(0, 2, n))


def real_recording(name="1.bs2"):
    path = data_root() / "dvsgesture_slayer_bs2" / name
    if not path.exists():
        pytest.skip(f"recording {path} is not available")
    return path


# ---------------------------------------------------------------------------------------------- formats
def test_packet_round_trip_and_damage_kinds():
    ev = events(40)
    pkt = protocol.encode_packet(ev, seq=7, end=True)
    assert len(pkt) == protocol.HEADER_SIZE + 13 * 40
    got, end, seq = protocol.decode_packet(pkt)
    np.testing.assert_array_equal(got, ev)
    assert end and seq == 7
    with pytest.raises(protocol.PacketError) as e:
        protocol.decode_packet(pkt[:-5])
    assert e.value.kind == "short"
    with pytest.raises(protocol.PacketError) as e:
        protocol.decode_packet(pkt + b"\0")
    assert e.value.kind == "oversized"
    with pytest.raises(protocol.PacketError) as e:
        protocol.decode_packet(b"XXXX" + pkt[4:])
    assert e.value.kind == "garbage"
    with pytest.raises(protocol.PacketError) as e:
        protocol.decode_packet(pkt[:10])
    assert e.value.kind == "short"


def test_packets_split_a_recording_and_mark_its_end():
    ev = events(250)
    pkts = protocol.encode_packets(ev, max_events=100)
    decoded = [protocol.decode_packet(p) for p in pkts]
    assert [d[0].size for d in decoded] == [100, 100, 50]
    assert [d[1] for d in decoded] == [False, False, True]
    np.testing.assert_array_equal(np.concatenate([d[0] for d in decoded]), ev)


def test_jaer_datagrams_decode_dvs128_addresses_and_unwrap_time():
    ev = events(30, t0=(1 << 32) - 600, sensor=(128, 128, 2))  # the 32-bit clock wraps inside
    dec = protocol.JaerDecoder()
    a, seq_a = dec.decode(protocol.encode_jaer(ev[:12], seq=1))
    b, seq_b = dec.decode(protocol.encode_jaer(ev[12:], seq=2))
    np.testing.assert_array_equal(np.concatenate([a, b]), ev)
    assert (seq_a, seq_b) == (1, 2)
    with pytest.raises(protocol.PacketError):
        dec.decode(b"\0\0\0\1" + b"\0" * 7)


def test_parse_udp():
    assert parse_udp("udp://127.0.0.1:9000") == ("127.0.0.1", 9000)
    assert parse_udp("udp:9001") == ("127.0.0.1", 9001)
    with pytest.raises(ValueError, match="udp://HOST:PORT"):
        parse_udp("udp://localhost:port")


# ---------------------------------------------------------------------------------------------- UDP
def collect(source, until_recordings=1, timeout=10.0):
    """Iterate a live source until ``until_recordings`` recordings ended; returns the chunks."""
    chunks = []
    deadline = time.monotonic() + timeout
    ended = 0
    for chunk in source:
        chunks.append(chunk)
        ended += chunk.end
        if ended >= until_recordings or time.monotonic() > deadline:
            break
    source.close()
    return chunks


def send_later(address, datagrams, delay=0.05):
    def run():
        time.sleep(delay)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for d in datagrams:
                s.sendto(d, address)
                time.sleep(0.002)  # keep loopback from overrunning the receiver

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th


def test_udp_source_counts_malformed_datagrams_and_delivers_the_rest():
    max_packet = protocol.HEADER_SIZE + 13 * 50
    src = UdpSource("127.0.0.1", 0, SENSOR, max_packet=max_packet)
    good = [events(20, t0=0, seed=1), events(30, t0=10_000, seed=2), events(50, t0=20_000, seed=3)]
    outside = events(5, t0=40_000, sensor=(64, 64, 2))  # coordinates beyond the 32x24 sensor
    outside["x"][0] = 60
    full = protocol.encode_packet(good[1], seq=1)
    datagrams = [
        protocol.encode_packet(good[0], seq=0),
        b"\x13\x37 definitely not an event packet",  # garbage
        full[:-13 * 4],  # short: its header announces 30 events, 26 follow
        protocol.encode_packet(events(60, t0=30_000), seq=2),  # oversized: 796 bytes > max_packet 666
        full + b"junk",  # oversized: more bytes than its header announces
        b"EVM",  # short: not even a header
        full,
        protocol.encode_packet(outside, seq=5),  # invalid events
        protocol.encode_packet(good[2], seq=9, end=True),  # seq 3, 4, 6, 7, 8 are never sent
    ]
    th = send_later(src.address, datagrams)
    chunks = collect(src)
    th.join()
    st = src.stats
    assert (st.garbage, st.short, st.oversized, st.invalid, st.invalid_events) == (1, 2, 2, 1, 5)
    assert st.packets == 3 and st.events == 100
    assert st.lost == 6  # seq 2 (skipped as oversized), 3 and 4, 6 to 8 never decoded
    np.testing.assert_array_equal(np.concatenate([c.events for c in chunks]), np.concatenate(good))
    assert chunks[0].new_recording and chunks[-1].end
    assert all(c.arrival is not None for c in chunks)


def test_udp_time_jump_back_starts_a_new_recording():
    src = UdpSource("127.0.0.1", 0, SENSOR)
    a, b = events(10, t0=50_000), events(10, t0=0, seed=4)
    th = send_later(src.address, [protocol.encode_packet(a, 0), protocol.encode_packet(b, 1, end=True)])
    chunks = collect(src)
    th.join()
    assert [c.new_recording for c in chunks] == [True, True]
    assert src.stats.time_resets == 1


def test_udp_jaer_format():
    ev = events(40, sensor=(128, 128, 2))
    src = UdpSource("127.0.0.1", 0, (128, 128, 2), fmt="jaer", idle_end_s=0.3)
    th = send_later(src.address, [protocol.encode_jaer(ev[:25], 1), protocol.encode_jaer(ev[25:], 2), b"\1\2\3"])
    chunks = collect(src)  # the recording ends after 0.3 s of silence
    th.join()
    np.testing.assert_array_equal(np.concatenate([c.events for c in chunks]), ev)
    assert src.stats.short == 1 and chunks[-1].end


# ---------------------------------------------------------------------------------------------- byte stream
def test_byte_stream_resyncs_after_garbage_and_counts_a_truncated_tail():
    a, b, c = events(10, 0, 1), events(12, 1000, 2), events(8, 5000, 3)
    data = (protocol.encode_packet(a, 0) + b"garbage bytes here" + protocol.encode_packet(b, 1, end=True)
            + protocol.encode_packet(c, 2))
    tail = protocol.encode_packet(events(5, 9000), 3)[:30]  # the stream ends inside this packet
    src = ByteStreamSource(io.BufferedReader(io.BytesIO(data + tail), buffer_size=7), SENSOR, read_size=7)
    chunks = list(src)
    np.testing.assert_array_equal(np.concatenate([ch.events for ch in chunks]), np.concatenate([a, b, c]))
    assert [(ch.new_recording, ch.end) for ch in chunks] == [(True, False), (False, True), (True, False), (False, True)]
    assert (src.stats.garbage, src.stats.short, src.stats.truncated_bytes) == (1, 1, 30)
    assert src.stats.packets == 3


class LivePipe:
    """A byte stream that hands out ``data`` in ``size``-byte pieces and then, like a pipe whose writer is
    still there, has nothing more: reading past the end fails the test instead of blocking."""

    def __init__(self, data: bytes, size: int = 4096):
        self.data, self.size, self.pos = data, size, 0

    def read1(self, n):
        if self.pos >= len(self.data):
            raise AssertionError("the reader waited for bytes that were never sent")
        piece = self.data[self.pos:self.pos + min(n, self.size)]
        self.pos += len(piece)
        return piece


def corrupt_header(count=0xFFFFFFFF, seq=7):
    """A valid-looking header whose event count is absurd (a flipped bit, a foreign writer)."""
    return protocol.HEADER.pack(protocol.MAGIC, protocol.VERSION, 0, 0, seq, count)


@pytest.mark.parametrize("junk", [b"", bytes(range(40))])
def test_byte_stream_resyncs_after_a_header_with_a_corrupt_count(junk):
    packets = [events(200, 1000 * k, seed=k) for k in range(20)]
    data = corrupt_header() + junk + b"".join(
        protocol.encode_packet(ev, k, end=k == len(packets) - 1) for k, ev in enumerate(packets))
    src = ByteStreamSource(LivePipe(data), SENSOR)
    chunks = []
    for chunk in src:  # on a live pipe: every packet arrives without waiting for the announced 55 GB
        chunks.append(chunk)
        if chunk.end:
            break
    np.testing.assert_array_equal(np.concatenate([c.events for c in chunks]), np.concatenate(packets))
    assert src.stats.oversized == 1 and src.stats.garbage == 0 and src.stats.packets == 20


def test_every_source_bounds_the_announced_count_by_max_packet():
    max_packet = protocol.HEADER_SIZE + 13 * 50
    # A byte stream: a header announcing 51 events (one too many) is malformed; the next packet is read.
    ok = events(50, 0, 1)
    bad = protocol.encode_packet(events(51, 0, 2), 0)
    src = ByteStreamSource(io.BytesIO(bad + protocol.encode_packet(ok, 1)), SENSOR, max_packet=max_packet)
    got = [c for c in src if c.n_events]
    np.testing.assert_array_equal(np.concatenate([c.events for c in got]), ok)
    assert src.stats.oversized == 1
    # UDP: the same header in a datagram is oversized too (not merely short).
    udp = UdpSource("127.0.0.1", 0, SENSOR, max_packet=max_packet)
    th = send_later(udp.address, [corrupt_header(), protocol.encode_packet(ok, 2, end=True)])
    chunks = collect(udp)
    th.join()
    np.testing.assert_array_equal(np.concatenate([c.events for c in chunks]), ok)
    assert (udp.stats.oversized, udp.stats.short) == (1, 0)
    with pytest.raises(ValueError, match="max_packet"):
        ByteStreamSource(io.BytesIO(b""), SENSOR, max_packet=8)


# ---------------------------------------------------------------------------------------------- replay
def test_replay_slices_of_a_real_recording_cover_it_exactly():
    path = real_recording()
    (rec,) = file_recordings([path], (128, 128, 2))
    ev = rec.load()
    pieces = list(slice_recording(ev, 1000))
    np.testing.assert_array_equal(np.concatenate([p for p, _ in pieces]), ev)
    t0 = int(ev["t"][0])
    for p, end in pieces:
        assert int(p["t"][-1]) < end and (end - t0) % 1000 == 0 or end == int(ev["t"][-1]) + 1
    chunks = list(RecordingSource([rec, rec], (128, 128, 2), chunk_us=5000))
    starts = [i for i, c in enumerate(chunks) if c.new_recording]
    ends = [i for i, c in enumerate(chunks) if c.end]
    assert len(starts) == 2 and len(ends) == 2 and starts[1] == ends[0] + 1
    assert sum(c.n_events for c in chunks) == 2 * ev.size


def test_replay_rejects_events_outside_the_model_sensor():
    path = real_recording()
    (rec,) = file_recordings([path], (128, 128, 2))
    with pytest.raises(ValueError, match="outside the sensor size"):
        list(RecordingSource([type(rec)(rec.name, rec.load)], (64, 64, 2)))


def test_record_layout_is_event_dtype():
    assert protocol.RECORD_SIZE == EVENT_DTYPE.itemsize == 13
    assert struct.calcsize("<4sBBHII") == protocol.HEADER_SIZE
