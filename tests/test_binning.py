"""Offline binning: token ids, time-bin merging, Δt, crops, filters and input validation."""

from __future__ import annotations

import numpy as np
import pytest

from evmamba.datasets.paths import data_root
from evmamba.pipeline import (
    EVENT_DTYPE,
    BinningConfig,
    TokenSequence,
    bin_events,
    crop_count,
    crop_time,
    denoise,
    make_events,
    refractory,
    repair_events,
    to_event_array,
    token_id,
    validate_events,
    vocab_size,
)

tonic = pytest.importorskip("tonic")

NMNIST_SAMPLE = ("format_samples", "tonic_test_data", "sample_nmnist.bin")
GESTURE_TRIAL = ("dvsgesture_slayer_bs2", "4.bs2")


def read_bs2(*parts):
    """A real recording in the 5-byte N-MNIST format, as tonic's array and as an EVENT_DTYPE array."""
    path = data_root().joinpath(*parts)
    if not path.exists():
        pytest.skip(f"recording {path} is not available")
    raw = tonic.io.read_mnist_file(str(path), dtype=tonic.datasets.NMNIST.dtype)
    return raw, to_event_array(raw, source=str(path))


def reference_bins(events, sensor_size, cfg: BinningConfig) -> TokenSequence:
    """The binning rules written out event by event in plain Python, as the documentation states them."""
    if events.size == 0:
        return TokenSequence.empty()
    w, h, npol = sensor_size
    k = cfg.downsample
    wk = -(-w // k)
    pk = npol if cfg.polarity else 1
    t0 = int(events["t"][0])
    last_any = np.zeros((w, h), np.int64)  # denoise: every pixel "fired" at t = 0
    last_kept = {}
    kept = []
    for e in events.tolist():
        x, y, t, p = e
        if cfg.t_start_us is not None and t < t0 + cfg.t_start_us:
            continue
        if cfg.t_stop_us is not None and t >= t0 + cfg.t_stop_us:
            continue
        if cfg.denoise_us:
            last_any[x, y] = t
            nbrs = [(x - 1, y), (x + 1, y), (x, y - 1), (x, y + 1)]
            if not any(0 <= a < w and 0 <= b < h and t - last_any[a, b] < cfg.denoise_us for a, b in nbrs):
                continue
        if cfg.refractory_us:
            if (x, y) in last_kept and t - last_kept[(x, y)] < cfg.refractory_us:
                continue
            last_kept[(x, y)] = t
        kept.append((x, y, t, p))
    if cfg.max_events is not None:
        kept = kept[: cfg.max_events]
    toks, cnts, times = [], [], []
    open_bin, where = None, {}
    for x, y, t, p in kept:
        tok = ((y // k) * wk + x // k) * pk + (p if cfg.polarity else 0)
        if cfg.bin_us:
            b = (t - t0) // cfg.bin_us
            if b != open_bin:
                open_bin, where = b, {}
            if tok in where:
                cnts[where[tok]] += 1
                continue
            where[tok] = len(toks)
        toks.append(tok)
        cnts.append(1)
        times.append(t)
    unit = {"us": 1.0, "ms": 1000.0, "s": 1e6}[cfg.time_unit]
    dt = [cfg.first_dt] + [(b - a) / unit for a, b in zip(times, times[1:])]
    return TokenSequence(
        np.array(toks, np.int32),
        np.array(cnts, np.int32),
        np.array(dt[: len(toks)], np.float32),
        np.array(times, np.int64),
    )


def assert_same(a: TokenSequence, b: TokenSequence) -> None:
    for name, x, y in zip(TokenSequence._fields, a, b):
        assert x.dtype == y.dtype, name
        np.testing.assert_array_equal(x, y, err_msg=name)


# -- token ids ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sensor_size", [(128, 128, 2), (34, 34, 2), (35, 35, 1), (700, 1, 1), (7, 5, 2)])
@pytest.mark.parametrize("k", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("polarity", [True, False])
def test_token_ids_are_collision_free_and_fill_the_vocabulary(sensor_size, k, polarity):
    cfg = BinningConfig(downsample=k, polarity=polarity)
    w, h, npol = sensor_size
    x, y, p = (a.ravel() for a in np.meshgrid(np.arange(w), np.arange(h), np.arange(npol), indexing="ij"))
    ids = token_id(x, y, p, sensor_size, cfg)
    cells = np.stack([x // k, y // k, p if polarity else 0 * p], axis=1)
    # Two inputs share an id exactly when they share the downsampled cell (and kept polarity):
    # cells, ids and (cell, id) pairs have the same number of distinct values.
    n_cells = np.unique(cells, axis=0).shape[0]
    assert np.unique(ids).size == n_cells
    assert np.unique(np.column_stack([cells, ids]), axis=0).shape[0] == n_cells
    assert ids.min() == 0 and ids.max() == vocab_size(sensor_size, cfg) - 1
    assert np.unique(ids).size == vocab_size(sensor_size, cfg)


def test_token_id_formula_of_the_design():
    cfg = BinningConfig(downsample=4)
    # ((y // k) * W' + x // k) * P + p with W' = 32, P = 2
    assert token_id(9, 13, 1, (128, 128, 2), cfg) == ((13 // 4) * 32 + 9 // 4) * 2 + 1
    assert vocab_size((128, 128, 2), cfg) == 32 * 32 * 2
    assert vocab_size((130, 128, 2), cfg) == 33 * 32 * 2  # W' = ceil(W / k)
    with pytest.raises(ValueError, match="'x' has value 128"):
        token_id(128, 0, 0, (128, 128, 2), cfg)


def test_bin_events_tokens_match_token_id_on_a_real_recording():
    _, ev = read_bs2(*GESTURE_TRIAL)
    cfg = BinningConfig(downsample=4, polarity=True)
    seq = bin_events(ev, (128, 128, 2), cfg)
    np.testing.assert_array_equal(seq.tokens, token_id(ev["x"], ev["y"], ev["p"], (128, 128, 2), cfg))
    np.testing.assert_array_equal(seq.counts, 1)
    np.testing.assert_array_equal(seq.t, ev["t"])


# -- time bins and Δt --------------------------------------------------------------------------------------


def test_time_bin_merging_counts_order_and_token_times():
    sensor = (4, 1, 2)
    #                 x  p   t
    ev = make_events([0, 1, 0, 0, 2, 1, 0], [0] * 7, [100, 120, 130, 199, 200, 260, 310], [0, 0, 0, 0, 0, 0, 1])
    seq = bin_events(ev, sensor, BinningConfig(bin_us=100, time_unit="us", first_dt=-1.0))
    # Bins are aligned to the first event: [100, 200), [200, 300), [300, 400).
    np.testing.assert_array_equal(seq.tokens, [0, 2, 4, 2, 1])
    np.testing.assert_array_equal(seq.counts, [3, 1, 1, 1, 1])
    np.testing.assert_array_equal(seq.t, [100, 120, 200, 260, 310])  # each token's first event
    np.testing.assert_array_equal(seq.dt, [-1.0, 20, 80, 60, 50])
    assert seq.counts.sum() == ev.size


def test_dt_is_the_gap_to_the_previous_token_in_the_configured_unit():
    ev = make_events([0, 1, 2, 3], [0] * 4, [5_000, 5_250, 6_250, 2_006_250], [0] * 4)
    for unit, scale in (("us", 1.0), ("ms", 1e3), ("s", 1e6)):
        seq = bin_events(ev, (4, 1, 1), BinningConfig(time_unit=unit, first_dt=0.5))
        assert seq.dt.dtype == np.float32
        np.testing.assert_array_equal(seq.dt, np.float32([0.5, 250 / scale, 1000 / scale, 2_000_000 / scale]))


@pytest.mark.parametrize(
    "cfg",
    [
        BinningConfig(),
        BinningConfig(downsample=2, polarity=False, bin_us=1000, time_unit="us"),
        BinningConfig(downsample=3, bin_us=5000, first_dt=1.0),
        BinningConfig(bin_us=777, denoise_us=2000, refractory_us=500, time_unit="s"),
        BinningConfig(downsample=4, bin_us=20_000, t_start_us=50_000, t_stop_us=250_000, max_events=1500),
    ],
)
def test_bin_events_matches_the_written_out_rules_on_a_real_recording(cfg):
    _, ev = read_bs2(*NMNIST_SAMPLE)
    assert_same(bin_events(ev, (34, 34, 2), cfg), reference_bins(ev, (34, 34, 2), cfg))


def test_merging_never_loses_events():
    _, ev = read_bs2(*GESTURE_TRIAL)
    for bin_us in (1, 1000, 50_000, 10**7):
        seq = bin_events(ev, (128, 128, 2), BinningConfig(downsample=8, bin_us=bin_us))
        assert seq.counts.sum() == ev.size
        assert np.all(np.diff(seq.t) >= 0)
        bins = (seq.t - ev["t"][0]) // bin_us
        # Within one bin, every token id appears once.
        assert np.unique(np.stack([bins, seq.tokens]), axis=1).shape[1] == seq.num_tokens


# -- crops and filters ------------------------------------------------------------------------------------


def test_time_crop_is_relative_to_the_first_event_and_count_crop_keeps_the_first_events():
    ev = make_events([0] * 6, [0] * 6, [1000, 1100, 1200, 1300, 1400, 1500], [0] * 6)
    seq = bin_events(ev, (1, 1, 1), BinningConfig(t_start_us=100, t_stop_us=400))
    np.testing.assert_array_equal(seq.t, [1100, 1200, 1300])  # stop is exclusive
    seq = bin_events(ev, (1, 1, 1), BinningConfig(t_start_us=100, max_events=2))
    np.testing.assert_array_equal(seq.t, [1100, 1200])
    np.testing.assert_array_equal(crop_time(ev, 100, 400)["t"], [1100, 1200, 1300])
    np.testing.assert_array_equal(crop_time(ev, 1100, 1300, relative=False)["t"], [1100, 1200])
    np.testing.assert_array_equal(crop_count(ev, 4)["t"], [1000, 1100, 1200, 1300])


@pytest.mark.parametrize("recording", [NMNIST_SAMPLE, GESTURE_TRIAL])
@pytest.mark.parametrize("filter_us", [1000, 10_000])
def test_denoise_equals_tonic_denoise_on_real_recordings(recording, filter_us):
    raw, ev = read_bs2(*recording)
    sensor = (34, 34, 2) if recording is NMNIST_SAMPLE else (128, 128, 2)
    raw, ev = raw[:30_000], ev[:30_000]  # tonic's filter is a Python loop
    expected = tonic.transforms.Denoise(filter_time=filter_us)(raw)
    ours = denoise(ev, sensor, filter_us)
    assert 0 < ours.size < ev.size
    for field in "xytp":
        np.testing.assert_array_equal(ours[field], expected[field], err_msg=field)
    # bin_events with denoise_us gives the tokens of the denoised recording.
    cfg = BinningConfig(downsample=2, bin_us=3000)
    with_filter = bin_events(ev, sensor, BinningConfig(downsample=2, bin_us=3000, denoise_us=filter_us))
    prefiltered = bin_events(ours, sensor, cfg)
    # Events before filter_us are all kept (tonic counts every pixel as having fired at t = 0), so both
    # recordings start with the same event and their bins have the same origin.
    assert ours[0] == ev[0]
    assert_same(with_filter, prefiltered)
    assert with_filter.counts.sum() == ours.size


def test_refractory_drops_events_within_the_dead_time_of_the_last_kept_event():
    #                 pixel 0 ...........................  pixel 1
    ev = make_events([0, 0, 0, 0, 0, 1], [0] * 6, [0, 50, 99, 100, 180, 181], [0, 1, 0, 1, 0, 0])
    out = refractory(ev, (2, 1, 2), 100)
    np.testing.assert_array_equal(out["t"], [0, 100, 181])  # 50, 99 within 100 µs of 0; 180 within 100 of 100


# -- validation -------------------------------------------------------------------------------------------


def good_events(n=5):
    return make_events(np.arange(n), np.zeros(n), np.arange(n) * 10, np.zeros(n))


@pytest.mark.parametrize(
    "mutate, field, exc",
    [
        (lambda e: e["t"].__setitem__(3, 5), "'t' is not sorted", ValueError),
        (lambda e: e["t"].__setitem__(0, -7), "'t' has a negative timestamp -7", ValueError),
        (lambda e: e["x"].__setitem__(2, 9), "'x' has value 9", ValueError),
        (lambda e: e["y"].__setitem__(4, 1), "'y' has value 1", ValueError),
        (lambda e: e["p"].__setitem__(1, 2), "'p' has value 2", ValueError),
    ],
)
@pytest.mark.parametrize("cfg", [BinningConfig(), BinningConfig(bin_us=20), BinningConfig(bin_us=20, refractory_us=5)])
def test_invalid_events_raise_naming_source_and_field(mutate, field, exc, cfg):
    ev = good_events()
    mutate(ev)
    with pytest.raises(exc, match=f"^trial_7.bs2: field {field}"):
        bin_events(ev, (8, 1, 2), cfg, source="trial_7.bs2")


def test_wrong_types_raise_type_error_naming_source():
    ev = good_events()
    with pytest.raises(TypeError, match="rec.bin: events must have dtype"):
        bin_events(
            ev.astype([("x", "<i8"), ("y", "<i8"), ("t", "<i8"), ("p", "<i8")]),
            (8, 1, 2),
            BinningConfig(),
            source="rec.bin",
        )
    with pytest.raises(TypeError, match="rec.bin: events must be a numpy structured array"):
        bin_events([(0, 0, 0, 0)], (8, 1, 2), BinningConfig(), source="rec.bin")
    with pytest.raises(ValueError, match="rec.bin: sensor_size"):
        bin_events(ev, (8, 1, 3), BinningConfig(), source="rec.bin")


def test_empty_stream_gives_an_empty_sequence():
    seq = bin_events(np.empty(0, EVENT_DTYPE), (8, 8, 2), BinningConfig(bin_us=100))
    assert seq.num_tokens == 0
    assert [a.dtype for a in seq] == [np.int32, np.int32, np.float32, np.int64]
    # Everything filtered away is also an empty sequence, not an error.
    assert bin_events(good_events(), (8, 1, 2), BinningConfig(t_start_us=10_000)).num_tokens == 0


def test_repair_events_is_the_explicit_fix_for_rejected_streams():
    ev = make_events([3, 1, 9, 2], [0, 0, 0, 0], [30, -5, 20, 10], [0, 1, 0, 0])
    fixed = repair_events(ev, (8, 1, 2), source="cam0")
    np.testing.assert_array_equal(fixed["t"], [10, 30])  # negative time and x = 9 dropped, then sorted
    validate_events(fixed, (8, 1, 2))
    with pytest.raises(ValueError, match="cam0: field 't' is not sorted"):
        repair_events(ev, (10, 1, 2), sort=False, source="cam0")


def test_to_event_array_converts_tonic_arrays_and_rejects_what_does_not_fit():
    raw, ev = read_bs2(*NMNIST_SAMPLE)
    for field in "xytp":
        np.testing.assert_array_equal(ev[field], raw[field])
    bad = raw[:3].copy()
    bad["x"][1] = -1
    with pytest.raises(ValueError, match="sample.bin: field 'x' has value -1"):
        to_event_array(bad, source="sample.bin")


def test_config_rejects_unknown_keys_and_bad_values_by_name():
    assert BinningConfig.from_dict({"bin_us": 1000, "time_unit": "us"}) == BinningConfig(bin_us=1000, time_unit="us")
    with pytest.raises(ValueError, match=r"cfg.yaml: unknown key\(s\) \['bin_width'\]"):
        BinningConfig.from_dict({"bin_width": 5}, source="cfg.yaml")
    with pytest.raises(ValueError, match="cfg.yaml: key 'bin_us' must be >= 0; got -5"):
        BinningConfig.from_dict({"bin_us": -5}, source="cfg.yaml")
    with pytest.raises(ValueError, match="key 'time_unit' must be one of"):
        BinningConfig(time_unit="min")
    with pytest.raises(ValueError, match="key 'downsample' must be an integer"):
        BinningConfig(downsample=True)
    with pytest.raises(ValueError, match="'t_stop_us' \\(10\\) must be greater than 't_start_us' \\(10\\)"):
        BinningConfig(t_start_us=10, t_stop_us=10)
