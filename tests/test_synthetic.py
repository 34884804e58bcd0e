"""SyntheticShapes and the DVS pixel model behind it."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from evmamba.core.events import EVENT_DTYPE
from evmamba.datasets.dvs_simulator import simulate_events
from evmamba.datasets.synthetic import CLASSES, SyntheticShapes, count_image
from evmamba.pipeline.events import validate_events


@pytest.fixture(scope="module")
def train():
    return SyntheticShapes("train", n_samples=200, seed=3)


@pytest.fixture(scope="module")
def test_split():
    return SyntheticShapes("test", n_samples=60, seed=3)


@pytest.fixture(scope="module")
def train_samples(train):
    return [train[i] for i in range(len(train))]


@pytest.fixture(scope="module")
def test_samples(test_split):
    return [test_split[i] for i in range(len(test_split))]


# -- the pixel model ---------------------------------------------------------------------------------------


def test_simulator_counts_threshold_crossings_with_interpolated_times():
    # One pixel ramps up by 1.0 log unit over 1000 µs: with threshold 0.25 it fires exactly 4 ON events,
    # at the times the ramp crosses 0.25, 0.5, 0.75 and 1.0; then it ramps down by 0.6 -> 2 OFF events.
    frames = np.array([0.0, 1.0, 0.4]).reshape(3, 1, 1)
    ev = simulate_events(frames, [0, 1000, 2000], 0.25, 0.25, refractory_us=0)
    assert ev.dtype == EVENT_DTYPE
    assert list(ev["p"]) == [1, 1, 1, 1, 0, 0]
    assert list(ev["t"]) == [250, 500, 750, 1000, 1416, 1833]


def test_simulator_refractory_period_suppresses_close_events():
    frames = np.array([0.0, 1.0]).reshape(2, 1, 1)
    ev = simulate_events(frames, [0, 1000], 0.25, 0.25, refractory_us=400)
    # Crossings at 250, 500, 750, 1000 µs; 500 and 1000 fall within 400 µs of the last emitted event.
    assert list(ev["t"]) == [250, 750]


def test_simulator_per_pixel_thresholds_and_sorted_output():
    frames = np.zeros((2, 1, 2))
    frames[1] = [1.1, -1.1]
    ev = simulate_events(frames, [0, 1000], np.array([[0.5, 0.2]]), np.array([[0.5, 0.2]]))
    validate_events(ev, (2, 1, 2))
    assert (ev["x"] == 0).sum() == 2 and (ev["x"] == 1).sum() == 5
    assert set(ev["p"][ev["x"] == 1]) == {0}


def test_simulator_rejects_bad_input():
    with pytest.raises(ValueError, match="log_frames"):
        simulate_events(np.zeros((4, 4)), [0])
    with pytest.raises(ValueError, match="frame_times_us"):
        simulate_events(np.zeros((2, 1, 1)), [5, 5])
    with pytest.raises(ValueError, match="threshold_on"):
        simulate_events(np.zeros((2, 1, 1)), [0, 1], threshold_on=0.0)


def test_shape_renderer_visiting_only_the_moving_region_equals_the_full_simulation():
    from evmamba.datasets.dvs_simulator import finish_events
    from evmamba.datasets.synthetic import _render_frame, _simulate_shape

    h, w, n = 40, 48, 60
    frame_t = np.arange(n) * 500.0
    cx, cy = np.linspace(20, 26, n), np.linspace(18, 21, n)
    angle = np.linspace(0.2, 1.4, n)
    rng = np.random.default_rng(0)
    thr_on, thr_off = rng.uniform(0.2, 0.3, (h, w)), rng.uniform(0.2, 0.3, (h, w))
    jitter = rng.uniform(-0.1, 0.1, (h, w))
    for shape, a, b in ((0, 15.0, 2.0), (1, 9.0, 0.0), (2, 8.0, 1.5)):
        video = np.full((n, h, w), np.log(0.3))
        for k in range(n):
            _render_frame(video[k], shape, a, b, cx[k], cy[k], angle[k], np.log(0.3), 1.5)
        full = simulate_events(video, frame_t, thr_on, thr_off, 100.0, video[0] + jitter)
        fast = finish_events(
            *_simulate_shape(shape, a, b, cx, cy, angle, frame_t, np.log(0.3), 1.5, jitter, thr_on, thr_off, 100.0)
        )
        assert full.size > 100
        np.testing.assert_array_equal(fast, full)


# -- the dataset -------------------------------------------------------------------------------------------


def test_same_seed_same_events_and_any_order(train):
    again = SyntheticShapes("train", n_samples=200, seed=3)
    for i in (7, 0, 199, 42):  # out of order: each item stands alone
        a, la = train[i]
        b, lb = again[i]
        assert la == lb
        np.testing.assert_array_equal(a, b)
    # Pickled copies (what a worker process gets) agree too.
    clone = pickle.loads(pickle.dumps(train))
    np.testing.assert_array_equal(clone[5][0], train[5][0])


def test_seed_and_split_change_the_events(train):
    ev = train[5][0]
    other_seed = SyntheticShapes("train", n_samples=200, seed=4)[5][0]
    other_split = SyntheticShapes("test", n_samples=200, seed=3)[5][0]
    assert not np.array_equal(ev, other_seed)
    assert not np.array_equal(ev, other_split)


def test_sample_does_not_depend_on_dataset_length():
    a = SyntheticShapes("train", n_samples=10, seed=1)[3][0]
    b = SyntheticShapes("train", n_samples=1000, seed=1)[3][0]
    np.testing.assert_array_equal(a, b)


def test_classes_balanced(train):
    assert len(train.classes) >= 4
    counts = np.bincount(train.labels, minlength=len(train.classes))
    assert counts.tolist() == [len(train) // len(CLASSES)] * len(CLASSES)
    assert [train.label(i) for i in range(10)] == [train[i][1] for i in range(10)]


def test_events_valid_sorted_inside_sensor_with_both_polarities(train, train_samples):
    sizes = []
    for i, (ev, _label) in enumerate(train_samples):
        validate_events(ev, train.sensor_size, train.source(i))  # dtype, sorted, inside the sensor
        assert ev["t"].max() <= train.duration_us
        assert set(np.unique(ev["p"])) == {0, 1}
        sizes.append(ev.size)
    # A few thousand events per 100 ms sample.
    assert 500 < np.median(sizes) < 5000


def test_background_noise_is_present(train, train_samples):
    # Shot noise lands all over the sensor, far away from any shape: the 3-pixel border is never reached
    # by a shape at this sensor size, yet it receives events in most samples.
    w, h, _ = train.sensor_size
    with_border_events = 0
    for ev, _ in train_samples[:50]:
        border = (ev["x"] < 3) | (ev["x"] >= w - 3) | (ev["y"] < 3) | (ev["y"] >= h - 3)
        with_border_events += bool(border.any())
    assert with_border_events >= 40
    quiet = SyntheticShapes("train", n_samples=200, seed=3, noise_hz=0.0)[0][0]
    assert quiet.size < train_samples[0][0].size


def _centered_count_features(samples, sensor_size):
    """Event-count images (polarities summed) shifted to put the event centroid in the middle, pooled 2x2."""
    w, h, _ = sensor_size
    feats = []
    for ev, _ in samples:
        img = count_image(ev, sensor_size).sum(0).astype(float)
        yy, xx = np.nonzero(img >= 2)  # ignore isolated noise
        wts = img[yy, xx]
        cy, cx = int(round((yy * wts).sum() / wts.sum())), int(round((xx * wts).sum() / wts.sum()))
        img = np.roll(img, (h // 2 - cy, w // 2 - cx), (0, 1))
        img = img.reshape(h // 2, 2, w // 2, 2).sum((1, 3)).ravel()
        feats.append(img / np.linalg.norm(img))
    return np.array(feats)


def _spin(ev, sensor_size):
    """Net turning of the event cloud about the sensor centre, rad (> 0: clockwise on screen)."""
    w, h, _ = sensor_size
    z = (ev["x"] + 0.5 - w / 2) + 1j * (ev["y"] + 0.5 - h / 2)
    keep = np.abs(z) > 4
    # Doubled angle: a bar looks the same after half a turn.
    z2 = (z[keep] / np.abs(z[keep])) ** 2
    window = ev["t"][keep] // 5000
    means = np.array([z2[window == k].mean() for k in np.unique(window)])
    return float(np.angle(means[1:] * np.conj(means[:-1])).sum())


def test_classes_distinguishable_from_events_but_not_from_event_count(train, train_samples, test_samples):
    ytr = np.array([label for _, label in train_samples])
    yte = np.array([label for _, label in test_samples])
    bar_cw, bar_ccw = CLASSES.index("bar_cw"), CLASSES.index("bar_ccw")
    # Shape from count images: 1-nearest-neighbour, the two spinning bars counted as one class.
    merged = lambda y: np.minimum(y, bar_cw)  # noqa: E731
    ftr = _centered_count_features(train_samples, train.sensor_size)
    fte = _centered_count_features(test_samples, train.sensor_size)
    pred = merged(ytr)[np.argmax(fte @ ftr.T, axis=1)]
    shape_acc = (pred == merged(yte)).mean()
    assert shape_acc > 0.7, shape_acc  # chance: 0.25
    # Spin direction from the order of events.
    spins = np.array([_spin(ev, train.sensor_size) for ev, _ in test_samples])
    bars = merged(yte) == bar_cw
    pred5 = np.where(bars & (pred == bar_cw), np.where(spins > 0, bar_cw, bar_ccw), pred)
    acc = (pred5 == yte).mean()
    assert acc > 0.7, acc  # chance: 0.2
    assert (spins[yte == bar_cw] > 0).mean() >= 0.9
    assert (spins[yte == bar_ccw] < 0).mean() >= 0.9
    # The event count alone: nearest class-mean count does little better than chance.
    ntr = np.array([ev.size for ev, _ in train_samples])
    nte = np.array([ev.size for ev, _ in test_samples])
    means = np.array([ntr[ytr == c].mean() for c in range(len(CLASSES))])
    count_acc = (np.argmin(np.abs(nte[:, None] - means[None]), axis=1) == yte).mean()
    assert count_acc < 0.45, count_acc
    assert acc - count_acc > 0.3


def test_cache_keeps_samples():
    ds = SyntheticShapes("test", n_samples=5, cache=True)
    a = ds[2][0]
    assert ds[2][0] is a


def test_bad_arguments_raise_with_names():
    with pytest.raises(ValueError, match="split"):
        SyntheticShapes("val")
    with pytest.raises(ValueError, match="seed"):
        SyntheticShapes(seed=-1)
    with pytest.raises(ValueError, match="sensor_size"):
        SyntheticShapes(sensor_size=(64, 64, 1))
    with pytest.raises(ValueError, match="n_samples"):
        SyntheticShapes(n_samples=2.5)
    ds = SyntheticShapes(n_samples=3)
    with pytest.raises(IndexError):
        ds[3]
    with pytest.raises(TypeError):
        ds["0"]
    assert ds[-1][1] == ds[2][1]
