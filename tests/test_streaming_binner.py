"""The streaming binner: any chunking of a recording gives exactly the offline tokens, counts, Δt and times."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evmamba.datasets.paths import data_root
from evmamba.pipeline import BinningConfig, StreamingBinner, TokenSequence, bin_events, make_events, to_event_array

tonic = pytest.importorskip("tonic")


def read_bs2(*parts):
    path = data_root().joinpath(*parts)
    if not path.exists():
        pytest.skip(f"recording {path} is not available")
    return to_event_array(tonic.io.read_mnist_file(str(path), dtype=tonic.datasets.NMNIST.dtype), source=str(path))


def assert_same(a: TokenSequence, b: TokenSequence) -> None:
    for name, x, y in zip(TokenSequence._fields, a, b):
        assert x.dtype == y.dtype, name
        np.testing.assert_array_equal(x, y, err_msg=name)


def stream(binner: StreamingBinner, events, cuts, advances=()) -> TokenSequence:
    """Push ``events`` split at ``cuts``; after chunk i, optionally advance the clock by ``advances[i]`` µs
    (clamped so that it never passes the next event)."""
    parts, pos = [], 0
    for i, chunk in enumerate(np.split(events, cuts)):
        parts.append(binner.push(chunk))
        pos += chunk.size
        if i < len(advances) and advances[i] is not None and chunk.size:
            t = int(chunk["t"][-1]) + advances[i]
            if pos < events.size:
                t = min(t, int(events["t"][pos]))
            parts.append(binner.advance(t))
    parts.append(binner.flush())
    return TokenSequence.concatenate(parts)


@st.composite
def recordings(draw):
    w, h, npol = draw(st.integers(1, 6)), draw(st.integers(1, 6)), draw(st.integers(1, 2))
    n = draw(st.integers(0, 120))
    gaps = draw(st.lists(st.integers(0, 400), min_size=n, max_size=n))
    t = draw(st.integers(0, 20_000)) + np.cumsum(np.array(gaps, dtype=np.int64))
    rnd = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    ev = make_events(rnd.integers(0, w, n), rnd.integers(0, h, n), t, rnd.integers(0, npol, n))
    return ev, (w, h, npol)


configs = st.builds(
    BinningConfig,
    downsample=st.integers(1, 3),
    polarity=st.booleans(),
    bin_us=st.sampled_from([0, 0, 1, 37, 250, 1000, 100_000]),
    time_unit=st.sampled_from(["us", "ms", "s"]),
    first_dt=st.sampled_from([0.0, 1.0]),
    denoise_us=st.sampled_from([0, 0, 100, 1500]),
    refractory_us=st.sampled_from([0, 0, 50, 600]),
    t_start_us=st.sampled_from([None, None, 500]),
    t_stop_us=st.sampled_from([None, None, 9000]),
    max_events=st.sampled_from([None, None, 40]),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rec=recordings(), cfg=configs, data=st.data())
def test_streaming_equals_offline_for_random_chunkings(rec, cfg, data):
    ev, sensor = rec
    cuts = sorted(data.draw(st.lists(st.integers(0, ev.size), max_size=8), label="cuts"))
    advances = data.draw(st.lists(st.one_of(st.none(), st.integers(0, 2000)), max_size=9), label="advances")
    assert_same(stream(StreamingBinner(sensor, cfg), ev, cuts, advances), bin_events(ev, sensor, cfg))


@pytest.mark.parametrize(
    "cfg",
    [
        BinningConfig(downsample=4),
        BinningConfig(downsample=2, bin_us=1000),
        BinningConfig(downsample=4, polarity=False, bin_us=10_000, denoise_us=5000, refractory_us=1000),
        BinningConfig(
            downsample=8, bin_us=3000, t_start_us=200_000, t_stop_us=900_000, max_events=20_000, denoise_us=2000
        ),
    ],
)
def test_streaming_equals_offline_on_a_real_gesture_trial(cfg):
    ev = read_bs2("dvsgesture_slayer_bs2", "7.bs2")
    offline = bin_events(ev, (128, 128, 2), cfg)
    assert offline.num_tokens > 0
    rng = np.random.default_rng(0)
    for _ in range(3):
        cuts = np.sort(rng.integers(0, ev.size, rng.integers(1, 200)))
        advances = [int(a) if a < 3000 else None for a in rng.integers(0, 6000, cuts.size + 1)]
        assert_same(stream(StreamingBinner((128, 128, 2), cfg), ev, cuts, advances), offline)
    # One event per chunk: the most extreme chunking.
    binner = StreamingBinner((128, 128, 2), cfg)
    few = ev[:3000]
    assert_same(stream(binner, few, np.arange(1, few.size)), bin_events(few, (128, 128, 2), cfg))


def test_a_bin_is_emitted_as_soon_as_it_closes():
    cfg = BinningConfig(bin_us=100, time_unit="us")
    binner = StreamingBinner((4, 1, 1), cfg)
    out = binner.push(make_events([0, 1, 0], [0] * 3, [0, 10, 50], [0] * 3))
    assert out.num_tokens == 0 and binner.pending == 2  # bin [0, 100) still open
    out = binner.push(make_events([2], [0], [120], [0]))
    np.testing.assert_array_equal(out.tokens, [0, 1])  # the first event of the next bin closes it
    np.testing.assert_array_equal(out.counts, [2, 1])
    assert binner.advance(199).num_tokens == 0  # bin [100, 200) ends at 200
    np.testing.assert_array_equal(binner.advance(200).tokens, [2])
    assert binner.pending == 0 and binner.flush().num_tokens == 0


def test_without_bins_every_event_is_emitted_immediately():
    binner = StreamingBinner((4, 1, 1), BinningConfig())
    assert binner.push(make_events([3, 1], [0, 0], [5, 6], [0, 0])).num_tokens == 2
    assert binner.pending == 0


def test_chunks_must_continue_in_time_order():
    binner = StreamingBinner((4, 1, 1), BinningConfig(bin_us=10), source="cam0")
    binner.push(make_events([0], [0], [100], [0]))
    with pytest.raises(ValueError, match="cam0: field 't' starts at 99 µs, before the stream's current time 100"):
        binner.push(make_events([0], [0], [99], [0]))
    binner.advance(150)
    with pytest.raises(ValueError, match="cam0: field 't' starts at 140"):
        binner.push(make_events([0], [0], [140], [0]))
    with pytest.raises(ValueError, match="cam0: advance"):
        binner.advance(120)


def test_reset_starts_a_new_recording():
    ev = read_bs2("format_samples", "tonic_test_data", "sample_nmnist.bin")
    cfg = BinningConfig(downsample=2, bin_us=2000, refractory_us=3000, t_start_us=1000)
    binner = StreamingBinner((34, 34, 2), cfg)
    first = stream(binner, ev, [1000, 2000])
    binner.reset()
    later = ev.copy()
    later["t"] += 10_000_000  # a second recording on the same clock
    second = stream(binner, later, [500])
    assert_same(first, bin_events(ev, (34, 34, 2), cfg))
    np.testing.assert_array_equal(second.tokens, first.tokens)
    np.testing.assert_array_equal(second.counts, first.counts)
    np.testing.assert_array_equal(second.dt, first.dt)
