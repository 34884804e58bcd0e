"""Event-count frames and Downsample: identical output to tonic's ToFrame and Downsample on real recordings."""

from __future__ import annotations

import numpy as np
import pytest

from evmamba.datasets.paths import data_root
from evmamba.pipeline import EVENT_DTYPE, downsample, make_events, to_event_array, to_frames

tonic = pytest.importorskip("tonic")

RECORDINGS = {
    "nmnist_sample": (("format_samples", "tonic_test_data", "sample_nmnist.bin"), (34, 34, 2)),
    "nmnist_train_1": (("nmnist_small", "1.bs2"), (34, 34, 2)),
    "gesture_trial_3": (("dvsgesture_slayer_bs2", "3.bs2"), (128, 128, 2)),
}


@pytest.fixture(scope="module", params=sorted(RECORDINGS))
def recording(request):
    parts, sensor = RECORDINGS[request.param]
    path = data_root().joinpath(*parts)
    if not path.exists():
        pytest.skip(f"recording {path} is not available")
    raw = tonic.io.read_mnist_file(str(path), dtype=tonic.datasets.NMNIST.dtype)
    return raw, to_event_array(raw, source=str(path)), sensor


SLICINGS = [
    dict(time_window=10_000),
    dict(time_window=25_000, include_incomplete=True),
    dict(time_window=10_000.5, overlap=2_000.25, include_incomplete=True),
    dict(time_window=3_333, start_time=100, end_time=2_000_000, include_incomplete=True),
    dict(time_window=5_000_000),  # longer than the recording: one frame
    dict(event_count=1_000),
    dict(event_count=1_000, overlap=300, include_incomplete=True),
    dict(n_time_bins=7),
    dict(n_time_bins=9, overlap=0.3),
    dict(n_event_bins=5),
    dict(n_event_bins=6, overlap=0.25),
]


@pytest.mark.parametrize("kwargs", SLICINGS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
def test_frames_equal_tonic_toframe(recording, kwargs):
    raw, ev, sensor = recording
    expected = tonic.transforms.ToFrame(sensor_size=sensor, **kwargs)(raw.copy())
    ours = to_frames(ev, sensor, **kwargs)
    assert ours.dtype == expected.dtype == np.int16
    assert ours.shape == expected.shape
    np.testing.assert_array_equal(ours, expected)


def test_frames_count_every_event_once_without_overlap(recording):
    _, ev, sensor = recording
    frames = to_frames(ev, sensor, n_event_bins=1)
    assert frames.sum() == ev.size
    x, y, p = int(ev["x"][0]), int(ev["y"][0]), int(ev["p"][0])
    assert frames[0, p, y, x] == np.count_nonzero((ev["x"] == x) & (ev["y"] == y) & (ev["p"] == p))


def test_frame_counts_wrap_like_tonic_int16():
    n = 40_000  # more events at one pixel than int16 holds
    ev = make_events(np.zeros(n), np.zeros(n), np.arange(n), np.zeros(n))
    raw = np.zeros(n, dtype=tonic.datasets.NMNIST.dtype)
    raw["t"] = np.arange(n)
    expected = tonic.transforms.ToFrame(sensor_size=(2, 2, 2), n_time_bins=1)(raw)
    np.testing.assert_array_equal(to_frames(ev, (2, 2, 2), n_time_bins=1), expected)


def test_frames_of_an_empty_recording_and_bad_arguments():
    empty = np.empty(0, EVENT_DTYPE)
    assert to_frames(empty, (5, 3, 2), time_window=1000).shape == (1, 2, 3, 5)
    assert to_frames(empty, (5, 3, 2), n_time_bins=4).shape == (4, 2, 3, 5)
    ev = make_events([0, 1], [0, 0], [0, 10], [0, 1])
    with pytest.raises(ValueError, match="rec: give exactly one of"):
        to_frames(ev, (2, 1, 2), time_window=10, event_count=5, source="rec")
    with pytest.raises(ValueError, match="rec: overlap \\(10\\) must be smaller than time_window"):
        to_frames(ev, (2, 1, 2), time_window=10, overlap=10, source="rec")
    with pytest.raises(ValueError, match="rec: field 'p' has value 1"):
        to_frames(ev, (2, 1, 1), time_window=10, source="rec")


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(spatial_factor=0.25),
        dict(spatial_factor=(0.5, 1 / 3)),
        dict(time_factor=0.001),
        dict(spatial_factor=0.3, time_factor=2.5),
    ],
)
def test_downsample_equals_tonic_downsample(recording, kwargs):
    raw, ev, _ = recording
    expected = tonic.transforms.Downsample(**kwargs)(raw.copy())
    ours = downsample(ev, **kwargs)
    for field in "xytp":
        np.testing.assert_array_equal(ours[field], expected[field], err_msg=field)


def test_downsample_to_a_target_size_equals_tonic(recording):
    raw, ev, sensor = recording
    expected = tonic.transforms.Downsample(sensor_size=sensor, target_size=(10, 13))(raw.copy())
    ours = downsample(ev, sensor_size=sensor, target_size=(10, 13))
    for field in "xytp":
        np.testing.assert_array_equal(ours[field], expected[field], err_msg=field)
    assert ours["x"].max() < 10 and ours["y"].max() < 13


@pytest.mark.parametrize("kwargs", [dict(time_window=10), dict(time_window=10, overlap=5), dict(n_event_bins=2),
                                    dict(event_count=3)])
@pytest.mark.parametrize(
    "field, value, message",
    [("x", 7, "field 'x' has value 7"), ("y", 3, "field 'y' has value 3"), ("t", 1, "field 't' is not sorted")],
)
@pytest.mark.parametrize("index", [4, 5])
def test_invalid_events_inside_or_outside_the_frames_raise(kwargs, field, value, message, index):
    ev = make_events(np.arange(6) % 4, np.zeros(6), [0, 10, 20, 30, 40, 55], np.zeros(6))
    ev[field][index] = value  # with 10 µs windows, event 4 is in the last frame and event 5 in none
    with pytest.raises(ValueError, match=f"cam1: {message}"):
        to_frames(ev, (4, 2, 2), source="cam1", **kwargs)


@pytest.mark.parametrize("kwargs", [dict(time_window=10), dict(n_event_bins=2)])
def test_bad_first_or_last_timestamps_raise_before_any_frame_is_made(kwargs):
    ev = make_events(np.arange(6) % 4, np.zeros(6), [0, 10, 20, 30, 40, 55], np.zeros(6))
    bad = ev.copy()
    bad["t"][0] = -5
    with pytest.raises(ValueError, match="cam1: field 't' has a negative timestamp -5"):
        to_frames(bad, (4, 2, 2), source="cam1", **kwargs)
    bad = ev.copy()
    bad["t"][0] = 2**60  # would ask for 2**57 frames of 10 µs if the slicing trusted it
    with pytest.raises(ValueError, match="cam1: field 't' is not sorted: event 1"):
        to_frames(bad, (4, 2, 2), source="cam1", **kwargs)
