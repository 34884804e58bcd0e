"""Prophesee EVT 2.0 / EVT 3.0 / DAT decoding, checked two independent ways.

1. Hand-made events are encoded here into byte streams by small encoders written from Prophesee's format
   specifications (docs.prophesee.ai, "EVT 2.0 Format", "EVT 3.0 Format", "DAT File Format"), then decoded
   and compared field by field with the events that went in.
2. The staged real recordings must show the content documented in the data folder's PROVENANCE.md.

Nothing here is compared with what another decoder outputs.
"""

from __future__ import annotations

import numpy as np
import pytest

from evmamba.core.events import EVENT_DTYPE, make_events
from evmamba.datasets.paths import require_data
from evmamba.pipeline.readers import read_events, read_prophesee_dat, read_prophesee_evt2, read_prophesee_evt3
from evmamba.pipeline.readers.evt import decode_evt2, decode_evt3
from evmamba.pipeline.readers.prophesee import read_prophesee_header

# -- encoders written from the specifications --------------------------------------------------------------

EVT2_WRAP = 1 << 34  # µs: 28 TIME_HIGH bits above 6 LSB
EVT3_WRAP = 1 << 24  # µs: 12 TIME_HIGH bits above 12 TIME_LOW bits


def evt2_word(kind: int, payload: int) -> int:
    return (kind << 28) | payload


def encode_evt2(events: np.ndarray, extras: dict[int, list[int]] | None = None) -> list[int]:
    """EVT 2.0 words for time-sorted ``events``; ``extras[i]`` holds raw words to put before event ``i``.

    One TIME_HIGH (type 0x8, bits 0-27 = t >> 6, modulo 2**28) whenever the upper time bits change, then one
    CD_OFF / CD_ON word (type 0x0 / 0x1) per event: bits 22-27 = t & 63, bits 11-21 = x, bits 0-10 = y.
    """
    extras = extras or {}
    words: list[int] = []
    high = None
    for i, e in enumerate(events):
        words.extend(extras.get(i, []))
        t = int(e["t"])
        h = (t >> 6) & 0xFFFFFFF
        if h != high:
            words.append(evt2_word(0x8, h))
            high = h
        words.append(evt2_word(int(e["p"]), ((t & 0x3F) << 22) | (int(e["x"]) << 11) | int(e["y"])))
    words.extend(extras.get(len(events), []))
    return words


def evt3_word(kind: int, payload: int) -> int:
    return (kind << 12) | payload


def encode_evt3(events: np.ndarray, extras: dict[int, list[int]] | None = None) -> list[int]:
    """EVT 3.0 words for ``events`` sorted by t, then y, then p, then x.

    Only what changes is sent: TIME_HIGH (0x8, t bits 12-23) and TIME_LOW (0x6, t bits 0-11) when they
    change, EVT_ADDR_Y (0x0) when the row changes. The events of one (t, y, p) group go out as a single
    EVT_ADDR_X (0x2, bit 11 = p) when alone, else as VECT_BASE_X (0x3, bit 11 = p) followed by vectors:
    VECT_8 (0x5) when the rest fits in 8 columns, else VECT_12 (0x4); an empty VECT_12 skips 12 columns of
    a gap shorter than 24, and a longer gap starts a new VECT_BASE_X. ``extras`` as in
    :func:`encode_evt2`; the words for any event of a group go before the whole group.
    """
    extras = extras or {}
    words: list[int] = []
    high = low = row = None
    i = 0
    n = len(events)
    while i < n:
        t, y, p = int(events["t"][i]), int(events["y"][i]), int(events["p"][i])
        j = i
        while j < n and (int(events["t"][j]), int(events["y"][j]), int(events["p"][j])) == (t, y, p):
            j += 1
        for k in range(i, j):
            words.extend(extras.get(k, []))
        xs = [int(x) for x in events["x"][i:j]]
        assert xs == sorted(set(xs)), "encoder input: x must increase within a (t, y, p) group"
        if ((t >> 12) & 0xFFF) != high:
            high = (t >> 12) & 0xFFF
            words.append(evt3_word(0x8, high))
        if (t & 0xFFF) != low:
            low = t & 0xFFF
            words.append(evt3_word(0x6, low))
        if y != row:
            row = y
            words.append(evt3_word(0x0, y))
        if len(xs) == 1:
            words.append(evt3_word(0x2, (p << 11) | xs[0]))
        else:
            base = None
            k = 0
            while k < len(xs):
                if base is None or xs[k] >= base + 24:
                    base = xs[k]
                    words.append(evt3_word(0x3, (p << 11) | base))
                if xs[k] >= base + 12:  # a gap of 12..23 columns: an empty vector moves the base on
                    words.append(evt3_word(0x4, 0))
                    base += 12
                    continue
                width = 8 if xs[-1] < base + 8 else 12
                mask = 0
                while k < len(xs) and xs[k] < base + width:
                    mask |= 1 << (xs[k] - base)
                    k += 1
                words.append(evt3_word(0x4 if width == 12 else 0x5, mask))
                base += width
        i = j
    words.extend(extras.get(n, []))
    return words


def as_bytes(words: list[int], dtype: str) -> bytes:
    return np.asarray(words, dtype=np.int64).astype(dtype).tobytes()


def write_raw(path, header_lines: list[str], payload: bytes):
    head = "".join(f"% {line}\n" for line in header_lines).encode("ascii")
    path.write_bytes(head + payload)
    return path


def same_events(got: np.ndarray, expected: np.ndarray) -> None:
    """Every field equal, after ordering both the same way (the order inside one timestamp is free)."""
    assert got.dtype == EVENT_DTYPE
    assert got.size == expected.size
    assert (np.diff(got["t"]) >= 0).all()
    order_g = np.lexsort((got["x"], got["p"], got["y"], got["t"]))
    order_e = np.lexsort((expected["x"], expected["p"], expected["y"], expected["t"]))
    for field in "xytp":
        assert np.array_equal(got[field][order_g], expected[field][order_e]), field


def sorted_for_evt3(ev: np.ndarray) -> np.ndarray:
    return ev[np.lexsort((ev["x"], ev["p"], ev["y"], ev["t"]))]


# -- EVT 2.0 -----------------------------------------------------------------------------------------------


def evt2_events() -> np.ndarray:
    """Both polarities, the full 11-bit coordinate range, and two wraps of the 34-bit clock."""
    rng = np.random.default_rng(20261130)
    t = [5, 5, 63, 64, 200, 4095, 70_000]
    # up to the first wrap and past it, then on to the second in steps of 2**32 µs (a quarter of the range,
    # less than half of it, so each step reads as time moving on rather than as a wrap)
    t += [EVT2_WRAP - 100, EVT2_WRAP - 1, EVT2_WRAP, EVT2_WRAP + 63, EVT2_WRAP + 64]
    t += [EVT2_WRAP + k * (1 << 32) for k in (1, 2, 3)] + [2 * EVT2_WRAP + 7, 2 * EVT2_WRAP + 1000]
    n = len(t)
    x = rng.integers(0, 2048, n)
    y = rng.integers(0, 2048, n)
    x[:2], y[:2] = (0, 2047), (2047, 0)
    p = np.arange(n) % 2
    return make_events(x, y, np.asarray(t, dtype=np.int64), p)


def test_evt2_round_trip_with_wraps_triggers_and_unknown_words():
    ev = evt2_events()
    extras = {
        0: [evt2_word(0xA, (3 << 22) | (5 << 8) | 1)],  # EXT_TRIGGER channel 5 rising, before any TIME_HIGH
        4: [evt2_word(0xE, 0x12345), evt2_word(0xF, 0xABCDEF), evt2_word(0xF, 0x1)],  # OTHERS + 2 CONTINUED
        9: [evt2_word(0x3, 0x42)],  # a reserved type
        len(ev): [evt2_word(0xA, 0)],
    }
    words = encode_evt2(ev, extras)
    got, stats = decode_evt2(as_bytes(words, "<u4"))
    same_events(got, ev)
    assert np.array_equal(got["t"], ev["t"])  # EVT 2.0 keeps the stream order exactly
    assert got["t"][-1] > 2 * EVT2_WRAP  # two wraps counted: time never runs backwards
    assert stats.events == ev.size and stats.words == len(words) and stats.trailing_bytes == 0
    assert (stats.time_wraps, stats.time_backwards) == (2, 0)
    assert (stats.ext_triggers, stats.others, stats.continued, stats.unknown) == (2, 1, 2, 1)
    assert stats.before_time == 0 and stats.unplaced == 0
    assert (stats.backward_steps, stats.max_x, stats.max_y) == (0, ev["x"].max(), ev["y"].max())


def test_evt2_events_before_the_first_time_high_are_dropped_and_a_cut_last_word_is_left():
    ev = evt2_events()[:5]
    early = evt2_word(1, (7 << 11) | 9)  # a CD_ON with no time base yet
    data = as_bytes([early] + encode_evt2(ev), "<u4")
    got, stats = decode_evt2(data + b"\x01\x02\x03")  # three bytes of a fourth word
    same_events(got, ev)
    assert stats.before_time == 1 and stats.trailing_bytes == 3


def test_evt2_file_with_geometry_reads_and_checks_coordinates(tmp_path):
    ev = evt2_events()[:6]
    ev["x"] = [0, 10, 639, 5, 6, 7]
    ev["y"] = [0, 479, 1, 2, 3, 4]
    path = write_raw(tmp_path / "vga.raw", ["evt 2.0", "geometry 640x480", "end"], as_bytes(encode_evt2(ev), "<u4"))
    got, size = read_events(path)
    assert size == (640, 480, 2)
    same_events(got, ev)
    # a column beyond the header's geometry names the file, the field and the value
    ev["x"][3] = 700
    bad = write_raw(tmp_path / "wide.raw", ["evt 2.0", "geometry 640x480"], as_bytes(encode_evt2(ev), "<u4"))
    with pytest.raises(ValueError, match=r"wide\.raw.*field 'x' has value 700.*outside the sensor size"):
        read_prophesee_evt2(bad)


# -- EVT 3.0 -----------------------------------------------------------------------------------------------


def evt3_events() -> np.ndarray:
    """Single events and vectors (VECT_12 / VECT_8, gaps in the masks, gaps between vectors), both
    polarities, coordinates up to 2047, and two wraps of the 24-bit time base."""
    rows = []

    def group(t, y, p, xs):
        rows.extend((x, y, t, p) for x in xs)

    group(0, 0, 1, [0])
    group(0, 0, 0, [2047])
    group(1, 5, 1, [100, 101, 103, 107])  # fits 8 columns: one VECT_8 with gaps
    group(1, 5, 0, [10 + i for i in range(12)] + [22, 25, 29])  # a full VECT_12, then a VECT_8 with gaps
    group(4095, 719, 1, [1279])
    # TIME_HIGH moves and TIME_LOW stays 0xFFF (only TIME_HIGH is sent); after the first VECT_12 the base is
    # 212, so 226 is 14 past it: an empty VECT_12 skips 12 columns
    group(4096 + 4095, 3, 0, [200, 226, 227])
    group(4096 + 4095, 3, 1, [300, 400, 401])  # 400 is 88 past the next base: a new VECT_BASE_X
    group(8192, 719, 1, [1000, 1011])
    group(9000, 2047, 1, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])  # 13 columns: VECT_12 then VECT_8
    # to the first wrap in steps under half the range (2**23 µs), across it, then on to the second
    for k in (1, 2):
        group(k * (1 << 22), 9, k % 2, [k])
    group(EVT3_WRAP - 4097, 10, 1, [50, 51])
    group(EVT3_WRAP - 1, 11, 0, [60])
    group(EVT3_WRAP, 11, 0, [61])  # high 0xFFF -> 0x000 with low 0xFFF -> 0x000
    group(EVT3_WRAP + 5, 12, 1, [70, 75])
    for k in (1, 2, 3):
        group(EVT3_WRAP + k * (1 << 22), 13, 0, [k, k + 2])
    group(2 * EVT3_WRAP + 3, 14, 1, [2040, 2047])
    group(2 * EVT3_WRAP + 3, 15, 0, [1])
    x, y, t, p = (np.asarray(c, dtype=np.int64) for c in zip(*rows))
    return sorted_for_evt3(make_events(x, y, t, p))


def test_evt3_round_trip_with_vectors_wraps_triggers_and_unknown_words():
    ev = evt3_events()
    extras = {
        0: [evt3_word(0xA, (3 << 8) | 1)],  # EXT_TRIGGER id 3, value 1
        5: [evt3_word(0xE, 0x123), evt3_word(0xF, 0xFFF), evt3_word(0x7, 0xF)],  # OTHERS + CONTINUED_12/_4
        12: [evt3_word(0x9, 0x555), evt3_word(0xA, 0)],  # a reserved type and a falling trigger
        len(ev): [evt3_word(0xE, 0x001)],
    }
    words = encode_evt3(ev, extras)
    kinds = {w >> 12 for w in words}
    assert {0x0, 0x2, 0x3, 0x4, 0x5, 0x6, 0x8}.issubset(kinds)  # the encoder used every CD word type
    assert evt3_word(0x4, 0) in words  # and an empty vector
    got, stats = decode_evt3(as_bytes(words, "<u2"))
    same_events(got, ev)
    assert got["t"][-1] == 2 * EVT3_WRAP + 3  # two wraps counted
    assert stats.events == ev.size and stats.words == len(words)
    assert (stats.time_wraps, stats.time_backwards) == (2, 0)
    assert (stats.ext_triggers, stats.others, stats.continued, stats.unknown) == (2, 2, 2, 1)
    assert stats.before_time == 0 and stats.unplaced == 0
    assert (stats.backward_steps, stats.max_x, stats.max_y) == (0, 2047, 2047)


def test_evt3_time_low_decrease_is_not_a_carry():
    # The expelliarmus 1.1 mistake: TIME_LOW going from 0xFFF to 0x001 under an unchanged TIME_HIGH must not
    # add 4096 µs. (A camera would not send this order, but it isolates the rule: only TIME_HIGH carries.)
    words = [evt3_word(0x8, 7), evt3_word(0x6, 0xFFF), evt3_word(0x0, 3), evt3_word(0x2, 1),
             evt3_word(0x8, 8), evt3_word(0x6, 0x001), evt3_word(0x2, 2)]
    got, _ = decode_evt3(as_bytes(words, "<u2"))
    assert got["t"].tolist() == [7 * 4096 + 0xFFF, 8 * 4096 + 1]


def test_evt3_events_without_time_row_or_base_are_dropped_and_counted():
    words = [
        evt3_word(0x0, 4), evt3_word(0x2, 9),  # no time base yet
        evt3_word(0x8, 1), evt3_word(0x6, 2),
        evt3_word(0x5, 0b11),  # a vector before any VECT_BASE_X: 2 events without a column
        evt3_word(0x3, (1 << 11) | 20), evt3_word(0x5, 0b101),  # now placed: x = 20 and 22
    ]
    got, stats = decode_evt3(as_bytes(words, "<u2"))
    assert got["x"].tolist() == [20, 22] and got["y"].tolist() == [4, 4] and got["p"].tolist() == [1, 1]
    assert got["t"].tolist() == [4096 + 2] * 2
    assert stats.before_time == 1 and stats.unplaced == 2
    # a row is needed too
    got, stats = decode_evt3(as_bytes([evt3_word(0x8, 0), evt3_word(0x2, 5)], "<u2"))
    assert got.size == 0 and stats.unplaced == 1


def test_evt3_small_time_high_decrease_is_reported_not_taken_for_a_wrap(tmp_path):
    # TIME_HIGH 10 -> 9 is a reordering, not a 16.8 s jump ahead: the reader's unsorted-time check sees it.
    words = [evt3_word(0x8, 10), evt3_word(0x0, 1), evt3_word(0x2, 1),
             evt3_word(0x8, 9), evt3_word(0x2, 2), evt3_word(0x8, 10), evt3_word(0x2, 3)]
    got, stats = decode_evt3(as_bytes(words, "<u2"))
    assert got["t"].tolist() == [10 * 4096, 9 * 4096, 10 * 4096]
    assert stats.time_backwards == 1 and stats.time_wraps == 0 and stats.backward_steps == 1
    path = write_raw(tmp_path / "reordered.raw", ["evt 3.0", "geometry 16x16"], as_bytes(words, "<u2"))
    with pytest.raises(ValueError, match=r"reordered\.raw.*field 't' is not sorted"):
        read_prophesee_evt3(path)
    fixed, _ = read_prophesee_evt3(path, on_unsorted="sort")
    assert fixed["x"].tolist() == [2, 1, 3]


def test_evt3_file_round_trip_geometry_truncation_and_unknown_words(tmp_path):
    ev = evt3_events()
    payload = as_bytes(encode_evt3(ev), "<u2")
    header = ["evt 3.0", "format EVT3;height=2048;width=2048", "end"]
    path = write_raw(tmp_path / "hd.raw", header, payload)
    got, size = read_events(path)
    assert size == (2048, 2048, 2)
    same_events(got, ev)
    with pytest.raises(ValueError, match=r"hd\.raw.*field 'p' has value 1"):  # a one-polarity sensor was asked for
        read_events(path, sensor_size=(2048, 2048, 1))
    # cut mid-word: the reader refuses the file, naming it; the decoder still gives every whole word's events
    cut = write_raw(tmp_path / "cut.raw", header, payload + b"\x42")
    with pytest.raises(ValueError, match=r"cut\.raw.*truncated evt3 file.*decode_evt3"):
        read_events(cut)
    got, stats = decode_evt3(payload + b"\x42")
    same_events(got, ev)
    assert stats.trailing_bytes == 1
    # outside the header's geometry
    small = write_raw(tmp_path / "small.raw", ["evt 3.0", "format EVT3;height=720;width=1280"], payload)
    with pytest.raises(ValueError, match=r"small\.raw.*field '[xy]' has value 2047.*outside the sensor size"):
        read_events(small)
    # reserved words are skipped with a warning naming the file; the events are kept
    noisy = write_raw(tmp_path / "noisy.raw", header, as_bytes(encode_evt3(ev, {3: [evt3_word(0xC, 1)]}), "<u2"))
    with pytest.warns(UserWarning, match=r"noisy\.raw.*skipped 1 of .* evt3 words of a reserved type"):
        got, _ = read_events(noisy)
    same_events(got, ev)


def test_headers_longer_than_the_first_read_are_parsed_whole(tmp_path):
    ev = evt3_events()
    # ~100 KiB of header lines: longer than the reader's first read, with a line cut by it
    header = ["evt 3.0", "geometry 2048x2048"] + [f"comment {i:05d} " + "x" * 90 for i in range(1000)] + ["end"]
    path = write_raw(tmp_path / "long.raw", header, as_bytes(encode_evt3(ev), "<u2"))
    got, size = read_events(path)
    assert size == (2048, 2048, 2)
    same_events(got, ev)


def test_decoders_reject_wrong_input_types():
    with pytest.raises(TypeError, match="bytes or a 1-D uint8 array"):
        decode_evt3(np.zeros(4, dtype=np.uint16))
    with pytest.raises(TypeError, match="got list"):
        decode_evt2([1, 2, 3])


# -- DAT ---------------------------------------------------------------------------------------------------


def test_dat_round_trip_from_the_record_layout(tmp_path):
    rng = np.random.default_rng(7)
    n = 50
    t = np.sort(rng.integers((1 << 32) - (1 << 30), (1 << 32) + (1 << 30), n))  # the 32-bit clock wraps midway
    ev = make_events(rng.integers(0, 1280, n), rng.integers(0, 720, n), t, rng.integers(0, 2, n))
    u64 = np.uint64
    low = (ev["t"] & 0xFFFFFFFF).astype(u64)
    data = ev["x"].astype(u64) | (ev["y"].astype(u64) << u64(14)) | (ev["p"].astype(u64) << u64(28))
    records = (low | (data << u64(32))).astype("<u8").tobytes()
    head = b"% Data file containing CD events\n% Version 2\n% Width 1280\n% Height 720\n"
    path = tmp_path / "cd.dat"
    path.write_bytes(head + bytes([0x0C, 8]) + records)
    got, size = read_prophesee_dat(path)
    assert size == (1280, 720, 2)
    same_events(got, ev)
    assert np.array_equal(got["t"], ev["t"])
    # a polarity field of 2 is corruption
    bad = tmp_path / "bad.dat"
    data[0] = (data[0] & u64(0x0FFFFFFF)) | u64(2 << 28)
    bad.write_bytes(head + bytes([0x0C, 8]) + (low | (data << u64(32))).astype("<u8").tobytes())
    with pytest.raises(ValueError, match=r"bad\.dat.*field 'p' of event 0 has value 2"):
        read_prophesee_dat(bad)


# -- the staged recordings (values from PROVENANCE.md) -----------------------------------------------------

REAL = [
    # file, reader, events, sensor, first-to-last µs, largest gap µs (None: not documented)
    ("evt3_sample.raw", read_prophesee_evt3, 219_596, (1280, 720, 2), 8_801, 1),
    ("evt3_test_pedestrians.raw", read_prophesee_evt3, 5_000, (1280, 720, 2), 45_210, 86),
    ("evt2_sample.raw", read_prophesee_evt2, 539_481, (640, 480, 2), 50_000, None),
]


@pytest.mark.parametrize("name, reader, count, size, duration, gap", REAL, ids=[r[0] for r in REAL])
def test_staged_recordings_have_their_documented_timing(name, reader, count, size, duration, gap):
    path = require_data("format_samples", "expelliarmus_sample_files", name)
    ev, got_size = reader(path)
    assert len(ev) == count and got_size == size
    span = int(ev["t"][-1] - ev["t"][0])
    if name.startswith("evt2"):
        assert span == pytest.approx(duration, abs=64)  # documented as "50 ms"
    else:
        assert span == duration
        assert int(np.diff(ev["t"]).max()) == gap
    assert set(np.unique(ev["p"]).tolist()) == {0, 1}
    assert ev["x"].max() < size[0] and ev["y"].max() < size[1]
    # the whole stream decodes: nothing skipped, dropped or reordered
    data = path.read_bytes()
    _, start = read_prophesee_header(data, name)
    _, stats = (decode_evt3 if name.startswith("evt3") else decode_evt2)(data[start:])
    assert stats.events == count and stats.trailing_bytes == 0
    assert stats.unknown == stats.before_time == stats.unplaced == stats.time_backwards == 0


# -- the reader benchmark's inputs -------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["evt2", "evt3"])
def test_bench_enlarged_recording_is_a_valid_longer_stream(tmp_path, encoding):
    from evmamba.bench.readers import SAMPLES, enlarge

    src = require_data("format_samples", "expelliarmus_sample_files", SAMPLES[encoding])
    ev, size = read_events(src)
    data, _ = enlarge(src.read_bytes(), encoding, 3)
    path = tmp_path / "big.raw"
    path.write_bytes(data)
    big, big_size = read_events(path)  # sorted and inside the sensor, or this raises
    assert big_size == size and big.size == 3 * ev.size
    for k in range(3):
        part = big[k * ev.size : (k + 1) * ev.size]
        for field in "xyp":
            assert np.array_equal(part[field], ev[field])
        shift = part["t"] - ev["t"]
        assert (shift == shift[0]).all() and shift[0] >= 0  # each copy is the recording moved on in time


def test_bench_readers_command_writes_json(tmp_path):
    import json

    from evmamba.cli import main

    out = tmp_path / "readers.json"
    assert main(["bench", "readers", "--events", "300000", "--repeats", "1", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["benchmark"] == "readers"
    assert record["evt2_read_events_per_s"] > 0 and record["evt3_read_events_per_s"] > 0
    inputs = {r["input"] for r in record["results"]}
    assert {"evt2_sample.raw (as staged)", "evt3_sample.raw (as staged)"} <= inputs
