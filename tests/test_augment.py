"""Training augmentations: what each one does to a real recording and to hand-made events (values worked out
by hand), that a seed reproduces it, mixing with soft labels, and one tiny training epoch with all of them on."""

from __future__ import annotations

import numpy as np
import pytest

from evmamba.datasets.batching import collate
from evmamba.datasets.paths import data_root
from evmamba.datasets.wrappers import EventMixDataset
from evmamba.pipeline import (
    AugmentConfig,
    add_noise,
    affine_events,
    augment_events,
    drop_box,
    drop_events,
    drop_time_window,
    flip_horizontal,
    flip_polarity,
    flip_vertical,
    make_events,
    mix_events,
    random_affine,
    random_drop_area,
    random_drop_time,
    random_time_crop,
    random_time_stretch,
    random_translate,
    rotate_events,
    scale_events,
    soft_label,
    spatial_jitter,
    time_stretch,
    to_event_array,
    validate_events,
)

SENSOR = (128, 128, 2)


@pytest.fixture(scope="module")
def events():
    tonic = pytest.importorskip("tonic")
    path = data_root() / "dvsgesture_slayer_bs2" / "2.bs2"
    if not path.exists():
        pytest.skip(f"{path} is not available")
    return to_event_array(tonic.io.read_mnist_file(str(path), dtype=tonic.datasets.NMNIST.dtype), source=str(path))


def test_random_time_crop_keeps_a_window_of_the_requested_length(events):
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(5):
        out = random_time_crop(events, 200_000, rng)
        assert out["t"][-1] - out["t"][0] < 200_000
        assert out.size > 0
        starts.add(int(out["t"][0]))
    assert len(starts) > 1
    assert random_time_crop(events, 10**9, rng).size == events.size


def test_drop_events_keeps_about_the_expected_fraction_in_order(events):
    out = drop_events(events, 0.25, np.random.default_rng(1))
    assert abs(out.size / events.size - 0.75) < 0.01
    validate_events(out, SENSOR)


def test_translation_and_jitter_stay_on_the_sensor_and_keep_time_order(events):
    rng = np.random.default_rng(2)
    moved = random_translate(events, SENSOR, 10, rng)
    validate_events(moved, SENSOR)
    assert moved.size <= events.size
    jittered = spatial_jitter(events, SENSOR, 1.5, rng)
    validate_events(jittered, SENSOR)
    kept = np.isin(events["t"], jittered["t"])
    assert jittered.size > 0.95 * events.size
    assert np.abs(jittered["x"].mean() - events["x"][kept].mean()) < 0.5


def test_flip_mirrors_x_and_twice_is_the_identity(events):
    flipped = flip_horizontal(events, SENSOR)
    np.testing.assert_array_equal(flipped["x"], 127 - events["x"].astype(int))
    np.testing.assert_array_equal(flip_horizontal(flipped, SENSOR), events)


def test_vertical_flip_mirrors_y_on_a_non_square_sensor():
    # Worked out by hand on a 5-wide, 3-high sensor: y' = 2 - y; x, t, p untouched.
    ev = make_events(np.array([0, 4, 2, 3]), np.array([0, 2, 1, 2]), np.array([1, 5, 9, 12]), np.array([1, 0, 1, 0]))
    flipped = flip_vertical(ev, (5, 3, 2))
    assert flipped["y"].tolist() == [2, 0, 1, 0]
    for field in ("x", "t", "p"):
        np.testing.assert_array_equal(flipped[field], ev[field])
    np.testing.assert_array_equal(flip_vertical(flipped, (5, 3, 2)), ev)
    assert ev["y"].tolist() == [0, 2, 1, 2]  # a new array; the input is unchanged


def test_augment_events_vertical_flip_respects_allow_vflip(events):
    flip_only = AugmentConfig(vflip_p=1.0)
    assert flip_only.per_sample
    np.testing.assert_array_equal(
        augment_events(events, SENSOR, flip_only, np.random.default_rng(0)), flip_vertical(events, SENSOR)
    )
    np.testing.assert_array_equal(
        augment_events(events, SENSOR, flip_only, np.random.default_rng(0), allow_vflip=False), events
    )
    # Both flips: the recording turned by 180 degrees; allow_hflip=False leaves only the vertical one.
    both = AugmentConfig(hflip_p=1.0, vflip_p=1.0)
    np.testing.assert_array_equal(augment_events(events, SENSOR, both, np.random.default_rng(0)),
                                  flip_vertical(flip_horizontal(events, SENSOR), SENSOR))
    np.testing.assert_array_equal(augment_events(events, SENSOR, both, np.random.default_rng(0), allow_hflip=False),
                                  flip_vertical(events, SENSOR))
    with pytest.raises(ValueError, match=r"key 'vflip_p' must be a number in \[0, 1\]; got 1.5"):
        AugmentConfig(vflip_p=1.5)
    spikes = make_events(np.arange(4), np.zeros(4), np.arange(4), np.zeros(4))
    with pytest.raises(ValueError, match="key 'vflip_p' is 0.5.*1-D"):
        augment_events(spikes, (16, 1, 1), AugmentConfig(vflip_p=0.5), np.random.default_rng(1))


def test_augment_events_is_reproducible_and_respects_allow_hflip(events):
    cfg = AugmentConfig(time_crop_us=500_000, drop_rate=0.1, max_shift=3, jitter_sigma=0.5, hflip_p=1.0)
    a = augment_events(events, SENSOR, cfg, np.random.default_rng(5))
    b = augment_events(events, SENSOR, cfg, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    flip_only = AugmentConfig(hflip_p=1.0)
    np.testing.assert_array_equal(
        augment_events(events, SENSOR, flip_only, np.random.default_rng(0)), flip_horizontal(events, SENSOR)
    )
    np.testing.assert_array_equal(
        augment_events(events, SENSOR, flip_only, np.random.default_rng(0), allow_hflip=False), events
    )


def test_augment_config_validation_names_the_key():
    with pytest.raises(ValueError, match="aug.yaml: key 'drop_rate' must be a number in \\[0, 1\\); got 1.5"):
        AugmentConfig.from_dict({"drop_rate": 1.5}, source="aug.yaml")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['flip'\]"):
        AugmentConfig.from_dict({"flip": True})
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator"):
        drop_events(make_events([], [], [], []), 0.1, None)


# ------------------------------------------------------------------------------------------------------
# Hand-made events: each augmentation against what its definition gives, worked out by hand.
# ------------------------------------------------------------------------------------------------------

SPIKES = (16, 1, 2)  # a 1-D sensor: 16 channels, two "polarities"


def grid_events(sensor=(32, 32, 2), n=400, seed=0, t_max=100_000):
    """``n`` events at random pixels and sorted random times (fixed seed)."""
    rng = np.random.default_rng(seed)
    w, h, npol = sensor
    t = np.sort(rng.integers(0, t_max, n))
    return make_events(rng.integers(0, w, n), rng.integers(0, h, n), t, rng.integers(0, npol, n))


def test_rotation_by_90_degrees_about_the_centre_maps_known_pixels():
    # Sensor 4x4: centre (1.5, 1.5). (x, y) -> (W - 1 - y, x): (3, 0) -> (3, 3), (0, 3) -> (0, 0), (1, 1) -> (2, 1).
    ev = make_events([3, 0, 1], [0, 3, 1], [10, 20, 30], [1, 0, 1])
    out = rotate_events(ev, (4, 4, 2), 90)
    assert out["x"].tolist() == [3, 0, 2] and out["y"].tolist() == [3, 0, 1]
    np.testing.assert_array_equal(out["t"], ev["t"])
    np.testing.assert_array_equal(out["p"], ev["p"])
    # Four quarter turns are the identity on a square sensor; -90 undoes +90.
    full = ev
    for _ in range(4):
        full = rotate_events(full, (4, 4, 2), 90)
    np.testing.assert_array_equal(full, ev)
    np.testing.assert_array_equal(rotate_events(out, (4, 4, 2), -90), ev)
    # About another centre: (2, 0) turned by 90 about (1, 0) is (1, 1).
    one = rotate_events(make_events([2], [0], [0], [0]), (4, 4, 2), 90, center=(1, 0))
    assert (int(one["x"][0]), int(one["y"][0])) == (1, 1)


def test_rotation_drops_events_that_leave_the_sensor():
    # On a 8x2 sensor (centre (3.5, 0.5)), a quarter turn sends (0, 0) to (4, -3): off the sensor.
    ev = make_events([0, 3], [0, 0], [0, 1], [0, 0])
    out = rotate_events(ev, (8, 2, 2), 90)
    assert out.size == 1 and (int(out["x"][0]), int(out["y"][0])) == (4, 0)


def test_scale_two_doubles_distances_from_the_centre():
    sensor = (33, 33, 2)  # centre (16, 16)
    ev = make_events([20, 16, 10, 16], [16, 18, 16, 16], [1, 2, 3, 4], [0, 1, 0, 1])
    out = scale_events(ev, sensor, 2.0)
    assert out["x"].tolist() == [24, 16, 4, 16] and out["y"].tolist() == [16, 20, 16, 16]
    half = scale_events(out, sensor, 0.5)
    np.testing.assert_array_equal(half, ev)
    # Zooming in pushes the border events off the sensor.
    assert scale_events(make_events([0, 16], [0, 16], [0, 1], [0, 0]), sensor, 2.0).size == 1


def test_rounding_is_half_up_and_consistent_under_whole_pixel_moves():
    # Scale 2 about the centre 1.5 of a 4-wide row: x -> 2x - 1.5, a tie that rounds up: 0 -> -1 (off), 1 -> 1, 2 -> 3.
    ev = make_events([0, 1, 2], [0, 0, 0], [0, 1, 2], [0, 0, 0])
    out = scale_events(ev, (4, 1, 1), 2.0)
    assert out["x"].tolist() == [1, 3]
    # The same map with a one-pixel offset moves each output by exactly one pixel.
    m = np.array([[0.7, 0.3], [-0.2, 1.1]])
    base = grid_events((64, 64, 2), n=300, seed=4)
    base = base[(base["x"] > 8) & (base["x"] < 50) & (base["y"] > 8) & (base["y"] < 50)]
    a = affine_events(base, (64, 64, 2), m, center=(30.0, 30.0))
    b = affine_events(base, (64, 64, 2), m, center=(30.0, 30.0), offset=(1, 1))
    np.testing.assert_array_equal(b["x"].astype(int), a["x"].astype(int) + 1)
    np.testing.assert_array_equal(b["y"].astype(int), a["y"].astype(int) + 1)


def test_random_affine_keeps_time_order_and_stays_on_the_sensor():
    ev = grid_events()
    for center in ("sensor", "random"):
        out = random_affine(ev, (32, 32, 2), np.random.default_rng(3), max_rotation_deg=30, scale_range=(0.8, 1.25),
                            max_shift=2, center=center)
        validate_events(out, (32, 32, 2))
        assert 0.5 * ev.size < out.size <= ev.size
        assert not np.array_equal(out["x"], ev["x"][: out.size])


def test_time_stretch_two_doubles_durations_and_gaps():
    ev = make_events([1, 2, 3, 4], [0, 0, 0, 0], [100, 200, 200, 450], [0, 1, 0, 1])
    out = time_stretch(ev, 2.0)
    assert out["t"].tolist() == [100, 300, 300, 800]  # about the first event, 100 µs
    np.testing.assert_array_equal(out[["x", "y", "p"]], ev[["x", "y", "p"]])
    assert time_stretch(ev, 0.5)["t"].tolist() == [100, 150, 150, 275]
    # Random factors stay in the range, and the result stays integer and sorted.
    long = grid_events(n=500, t_max=1_000_000)
    for seed in range(5):
        out = random_time_stretch(long, (0.8, 1.25), np.random.default_rng(seed))
        validate_events(out)
        ratio = (out["t"][-1] - out["t"][0]) / (long["t"][-1] - long["t"][0])
        assert 0.8 - 1e-5 <= ratio <= 1.25 + 1e-5


def test_drop_time_window_removes_exactly_the_window():
    ev = make_events([0] * 6, [0] * 6, [0, 10, 20, 30, 40, 50], [0] * 6)
    assert drop_time_window(ev, 10, 30)["t"].tolist() == [0, 30, 40, 50]  # half-open: 30 stays
    t = np.arange(0, 100_000, 10)
    dense = make_events(np.zeros(t.size), np.zeros(t.size), t, np.zeros(t.size))
    out = random_drop_time(dense, 0.2, np.random.default_rng(0))
    gone = np.setdiff1d(dense["t"], out["t"])
    # One window of 20 % of the 99 991 µs duration: 20 000 µs, 2 000 events 10 µs apart, all consecutive.
    assert gone.size == 2000 and gone[-1] - gone[0] == 19_990
    two = random_drop_time(dense, 0.2, np.random.default_rng(1), n_windows=2)
    assert 1000 <= dense.size - two.size <= 2000


def test_drop_area_removes_exactly_the_events_in_the_rectangle():
    ev = make_events([0, 1, 2, 3, 1, 2], [0, 1, 1, 1, 2, 3], np.arange(6), [0] * 6)
    out = drop_box(ev, (4, 4, 2), (1, 1, 3, 3))  # x in {1, 2}, y in {1, 2}
    assert list(zip(out["x"].tolist(), out["y"].tolist())) == [(0, 0), (3, 1), (2, 3)]
    # A random rectangle of 25 % of a 32x32 sensor is 16x16; everything inside it goes, nothing else.
    full = grid_events(n=3000, seed=2)
    for seed in range(3):
        kept = random_drop_area(full, (32, 32, 2), 0.25, np.random.default_rng(seed))
        removed = np.setdiff1d(full, kept)
        x0, x1, y0, y1 = removed["x"].min(), removed["x"].max(), removed["y"].min(), removed["y"].max()
        assert x1 - x0 <= 15 and y1 - y0 <= 15 and removed.size > 0.15 * full.size
        inside = (kept["x"] >= x0) & (kept["x"] <= x1) & (kept["y"] >= y0) & (kept["y"] <= y1)
        assert not inside.any()
    # On a 1-D sensor the area is a band of channels: 25 % of 16 channels is 4.
    spikes = make_events(np.arange(16), np.zeros(16), np.arange(16), np.zeros(16))
    band = np.setdiff1d(spikes["x"], random_drop_area(spikes, SPIKES, 0.25, np.random.default_rng(0))["x"])
    assert band.size == 4 and band[-1] - band[0] == 3


def test_noise_adds_the_expected_count_in_time_order_with_both_polarities():
    ev = make_events([0, 5], [0, 5], [0, 1_000_000], [1, 1])  # one second on a 32x32 sensor
    out = add_noise(ev, (32, 32, 2), np.random.default_rng(0), rate_hz=10.0)
    expected = 10.0 * 32 * 32  # rate x pixels x seconds = 10 240, Poisson: sigma about 101
    assert abs((out.size - 2) - expected) < 5 * np.sqrt(expected)
    validate_events(out, (32, 32, 2))
    assert abs(out["p"].mean() - 0.5) < 0.02
    assert 0 in out["x"] and 31 in out["x"] and 31 in out["y"]
    dense = grid_events(n=1000)
    by_fraction = add_noise(dense, (32, 32, 2), np.random.default_rng(1), fraction=0.3)
    assert by_fraction.size == 1300
    assert np.isin(dense, by_fraction).all()  # the recorded events are all still there
    validate_events(by_fraction, (32, 32, 2))
    one_pol = add_noise(make_events([0, 1], [0, 0], [0, 500_000], [0, 0]), (16, 1, 1), np.random.default_rng(0),
                        rate_hz=100.0)
    assert one_pol.size > 500 and (one_pol["p"] == 0).all() and (one_pol["y"] == 0).all()


def test_polarity_flip():
    ev = grid_events(n=2000)
    inverted = flip_polarity(ev, (32, 32, 2), 1.0, np.random.default_rng(0))
    np.testing.assert_array_equal(inverted["p"], 1 - ev["p"])
    half = flip_polarity(ev, (32, 32, 2), 0.5, np.random.default_rng(0))
    assert abs((half["p"] != ev["p"]).mean() - 0.5) < 0.05
    with pytest.raises(ValueError, match="polarity flips need 2 polarities"):
        flip_polarity(make_events([0], [0], [0], [0]), (16, 1, 1), 0.5, np.random.default_rng(0))


def _ab():
    """A: 300 events on x < 16, polarity 0; B: 200 events on x >= 16, polarity 1, starting 5 s later."""
    a = grid_events((16, 32, 2), n=300, seed=1)
    a["p"] = 0
    b = grid_events((16, 32, 2), n=200, seed=2)
    b["x"] += 16
    b["p"] = 1
    b["t"] += 5_000_000
    return a, b


@pytest.mark.parametrize("mode", ["subset", "region", "time"])
@pytest.mark.parametrize("replace", [True, False])
def test_mixing_lambda_is_the_share_of_events_from_b(mode, replace):
    a, b = _ab()
    out, lam = mix_events(a, b, (32, 32, 2), np.random.default_rng(7), mode=mode, ratio=(0.3, 0.6), replace=replace)
    validate_events(out, (32, 32, 2))
    from_b = out["p"] == 1
    assert 0 < from_b.sum() < b.size
    assert lam == pytest.approx(from_b.mean())
    # B was moved in time to start with A: its events fall inside A's first 100 ms, not 5 s later.
    assert out["t"][from_b].min() >= a["t"][0] and out["t"][from_b].max() < a["t"][0] + 100_000
    kept_a = out[~from_b]
    assert np.isin(kept_a, a).all()
    if replace:
        assert kept_a.size < a.size
    else:
        assert kept_a.size == a.size


def test_mixing_modes_take_the_part_they_name():
    a, b = _ab()
    # "region": B's events that come through all lie in one rectangle of 30-60 % of the area, and A's events
    # in that rectangle are gone.
    out, _ = mix_events(a, b, (32, 32, 2), np.random.default_rng(3), mode="region", ratio=(0.3, 0.6))
    got_b = out[out["p"] == 1]
    box = (got_b["x"].min(), got_b["y"].min(), got_b["x"].max() + 1, got_b["y"].max() + 1)
    assert (box[2] - box[0]) * (box[3] - box[1]) <= 0.6 * 32 * 32 + 64
    a_left = out[out["p"] == 0]
    assert not (
        (a_left["x"] >= box[0]) & (a_left["x"] < box[2]) & (a_left["y"] >= box[1]) & (a_left["y"] < box[3])
    ).any()
    # "time": B's events come from one window, and A has none left inside it.
    out, _ = mix_events(a, b, (32, 32, 2), np.random.default_rng(4), mode="time", ratio=(0.3, 0.6))
    tb = out["t"][out["p"] == 1]
    ta = out["t"][out["p"] == 0]
    assert not ((ta >= tb.min()) & (ta <= tb.max())).any()
    assert tb.max() - tb.min() <= 0.6 * 100_000
    # An empty partner adds nothing; an empty first sample takes B's part alone.
    alone, lam = mix_events(a, make_events([], [], [], []), (32, 32, 2), np.random.default_rng(0), replace=False)
    assert lam == 0.0 and np.array_equal(alone, a)
    only_b, lam = mix_events(make_events([], [], [], []), b, (32, 32, 2), np.random.default_rng(0))
    assert lam == 1.0 and 0 < only_b.size < b.size


def test_soft_label():
    np.testing.assert_allclose(soft_label(0, 2, 0.25, 4), [0.75, 0, 0.25, 0])
    np.testing.assert_allclose(soft_label(1, 1, 0.4, 3), [0, 1, 0])
    with pytest.raises(ValueError, match="label_b"):
        soft_label(0, 4, 0.5, 4)


# ---------------------------------------------------------------- randomness, empty input, bad arguments
RANDOM_FUNCTIONS = {
    "time_stretch": lambda ev, rng: random_time_stretch(ev, (0.5, 2.0), rng),
    "drop_time": lambda ev, rng: random_drop_time(ev, 0.3, rng, n_windows=2),
    "affine": lambda ev, rng: random_affine(ev, (32, 32, 2), rng, max_rotation_deg=45, scale_range=(0.7, 1.4),
                                            max_shift=3, center="random"),
    "drop_area": lambda ev, rng: random_drop_area(ev, (32, 32, 2), 0.3, rng),
    "polarity": lambda ev, rng: flip_polarity(ev, (32, 32, 2), 0.3, rng),
    "noise": lambda ev, rng: add_noise(ev, (32, 32, 2), rng, rate_hz=20.0),
    "mix": lambda ev, rng: mix_events(ev, grid_events(n=300, seed=9), (32, 32, 2), rng, mode="subset")[0],
}


@pytest.mark.parametrize("name", sorted(RANDOM_FUNCTIONS))
def test_same_seed_same_output_other_seed_other_output(name):
    fn = RANDOM_FUNCTIONS[name]
    ev = grid_events()
    a, b = fn(ev, np.random.default_rng(11)), fn(ev, np.random.default_rng(11))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, fn(ev, np.random.default_rng(12)))
    np.testing.assert_array_equal(ev, grid_events())  # the input is never changed in place


@pytest.mark.parametrize("name", sorted(RANDOM_FUNCTIONS))
def test_empty_input_gives_valid_output(name):
    out = RANDOM_FUNCTIONS[name](make_events([], [], [], []), np.random.default_rng(0))
    validate_events(out, (32, 32, 2))
    assert out.size == 0 or name == "mix"


@pytest.mark.parametrize("call, match", [
    (lambda ev, g: time_stretch(ev, 0.0), "'factor' must be a finite number > 0"),
    (lambda ev, g: random_time_stretch(ev, (2.0, 1.0), g), "'factor_range' must be a pair"),
    (lambda ev, g: random_drop_time(ev, 1.0, g), r"'fraction' must be a number in \[0, 1\)"),
    (lambda ev, g: random_drop_time(ev, 0.1, g, n_windows=0), "'n_windows' must be an integer >= 1"),
    (lambda ev, g: drop_time_window(ev, 10, 5), "start_us <= stop_us"),
    (lambda ev, g: drop_box(ev, (32, 32, 2), (3, 0, 1, 5)), "'box' must be integers"),
    (lambda ev, g: random_drop_area(ev, (32, 32, 2), -0.1, g), "'fraction'"),
    (lambda ev, g: random_affine(ev, (32, 32, 2), g, max_rotation_deg=200), "'max_rotation_deg'"),
    (lambda ev, g: random_affine(ev, (32, 32, 2), g, scale_range=(0, 2)), "'scale_range'"),
    (lambda ev, g: random_affine(ev, (32, 32, 2), g, center="corner"), "'center' must be one of"),
    (lambda ev, g: scale_events(ev, (32, 32, 2), -1), "'factor'"),
    (lambda ev, g: affine_events(ev, (32, 32, 2), np.eye(3)), "2x2"),
    (lambda ev, g: flip_polarity(ev, (32, 32, 2), 1.5, g), r"'prob' must be a number in \[0, 1\]"),
    (lambda ev, g: add_noise(ev, (32, 32, 2), g, rate_hz=-1), "'rate_hz'"),
    (lambda ev, g: add_noise(ev, (32, 32, 2), g, rate_hz=1, fraction=0.1), "not both"),
    (lambda ev, g: mix_events(ev, ev, (32, 32, 2), g, mode="cut"), "'mode' must be one of"),
    (lambda ev, g: mix_events(ev, ev, (32, 32, 2), g, ratio=(0.5, 1.0)), "'ratio'"),
    (lambda ev, g: rotate_events(ev, (32, 32, 2), float("nan")), "'angle_deg'"),
])
def test_out_of_range_arguments_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call(grid_events(n=10), np.random.default_rng(0))


# --------------------------------------------------------------------------------- 1-D spike sensors
def test_spike_sensors_shift_channels_and_refuse_rotation():
    spikes = make_events(np.arange(4, 12), np.zeros(8), np.arange(8) * 1000, np.zeros(8))
    sensor = (16, 1, 1)
    moved = random_translate(spikes, sensor, 3, np.random.default_rng(0))
    assert moved.size == 8 and (moved["y"] == 0).all()  # no vertical move: every event stays
    shift = int(moved["x"][0]) - 4
    assert shift != 0 and (moved["x"].astype(int) - spikes["x"] == shift).all()
    assert (spatial_jitter(spikes, sensor, 2.0, np.random.default_rng(0))["y"] == 0).all()
    zoomed = scale_events(spikes, sensor, 2.0)  # about channel 7.5: 4 -> 0.5 -> 1 (half up), 11 -> 14.5 -> 15
    assert zoomed["x"].tolist() == [1, 3, 5, 7, 9, 11, 13, 15]
    with pytest.raises(ValueError, match="rotation needs a 2-D sensor"):
        rotate_events(spikes, sensor, 10)
    with pytest.raises(ValueError, match="1-D"):
        random_affine(spikes, sensor, np.random.default_rng(0), max_rotation_deg=5)
    cfg = AugmentConfig(max_shift=2, time_stretch=(0.8, 1.25), drop_time_fraction=0.1, drop_area_fraction=0.1,
                        noise_rate_hz=5.0, scale=(0.9, 1.1), jitter_sigma=0.5)
    out = augment_events(spikes, sensor, cfg, np.random.default_rng(1))
    validate_events(out, sensor)
    with pytest.raises(ValueError, match="key 'max_rotation_deg' is 10.*1-D"):
        augment_events(spikes, sensor, AugmentConfig(max_rotation_deg=10), np.random.default_rng(1))
    with pytest.raises(ValueError, match="key 'polarity_flip_p'.*one polarity"):
        augment_events(spikes, sensor, AugmentConfig(polarity_flip_p=0.1), np.random.default_rng(1))


# ------------------------------------------------------------------------------ config and the chain
ALL_ON = {"time_crop_us": 80_000, "time_stretch": [0.8, 1.25], "drop_time_fraction": 0.1, "drop_time_windows": 2,
          "drop_rate": 0.05, "max_shift": 2, "max_rotation_deg": 15, "scale": [0.9, 1.1], "affine_center": "random",
          "jitter_sigma": 0.3, "hflip_p": 0.5, "drop_area_fraction": 0.05, "polarity_flip_p": 0.02,
          "noise_rate_hz": 2.0, "mix_p": 0.5, "mix_mode": "region", "mix_ratio": [0.2, 0.4], "mix_replace": True}


def test_augment_config_new_keys_validate_and_default_to_off():
    assert not AugmentConfig().active and not AugmentConfig().mixing
    cfg = AugmentConfig.from_dict(ALL_ON, source="aug.yaml")
    assert cfg.per_sample and cfg.mixing and cfg.scale == (0.9, 1.1)
    assert cfg.to_dict()["scale"] == [0.9, 1.1] and AugmentConfig.from_dict(cfg.to_dict()) == cfg
    assert AugmentConfig(mix_p=1.0).active and not AugmentConfig(mix_p=1.0).per_sample
    for key, value, match in [
        ("time_stretch", [1.2, 0.9], "key 'time_stretch' must be a pair"),
        ("scale", 2.0, "key 'scale' must be a pair"),
        ("max_rotation_deg", -5, "key 'max_rotation_deg' must be a number of degrees"),
        ("affine_center", "corner", "key 'affine_center' must be one of"),
        ("drop_area_fraction", 1.0, "key 'drop_area_fraction'"),
        ("drop_time_windows", 0, "key 'drop_time_windows'"),
        ("noise_rate_hz", -1, "key 'noise_rate_hz'"),
        ("mix_mode", "cutmix", "key 'mix_mode' must be one of"),
        ("mix_ratio", [0.2, 1.0], "key 'mix_ratio'"),
        ("mix_p", 2, "key 'mix_p'"),
        ("mix_replace", "yes", "key 'mix_replace'"),
    ]:
        with pytest.raises(ValueError, match=f"aug.yaml: {match}"):
            AugmentConfig.from_dict({key: value}, source="aug.yaml")
    with pytest.raises(ValueError, match="not both"):
        AugmentConfig(noise_rate_hz=1.0, noise_fraction=0.1)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['rotation'\]; known keys are \[.*'max_rotation_deg'"):
        AugmentConfig.from_dict({"rotation": 10})


def test_augment_events_with_everything_on_is_reproducible():
    cfg = AugmentConfig.from_dict(ALL_ON)
    ev = grid_events(n=2000)
    a = augment_events(ev, (32, 32, 2), cfg, np.random.default_rng(5))
    validate_events(a, (32, 32, 2))
    np.testing.assert_array_equal(a, augment_events(ev, (32, 32, 2), cfg, np.random.default_rng(5)))
    assert not np.array_equal(a, augment_events(ev, (32, 32, 2), cfg, np.random.default_rng(6)))
    assert augment_events(make_events([], [], [], []), (32, 32, 2), cfg, np.random.default_rng(5)).size == 0
    # Only a translation configured: the same draws as random_translate alone (today's behaviour).
    np.testing.assert_array_equal(augment_events(ev, (32, 32, 2), AugmentConfig(max_shift=3), np.random.default_rng(2)),
                                  random_translate(ev, (32, 32, 2), 3, np.random.default_rng(2)))


# ----------------------------------------------------------------------------- mixing in training
class _Recordings:
    """Six hand-made recordings of three classes; class c lights column 10 c."""

    sensor_size = (32, 32, 2)
    classes = ["a", "b", "c"]

    def __len__(self):
        return 6

    def __getitem__(self, i):
        label = i % 3
        n = 50 + 10 * i
        ev = make_events(
            np.full(n, 10 * label), np.arange(n) % 32, np.arange(n) * 100 + 1000 * i, np.full(n, label % 2)
        )
        return ev, label


def test_event_mix_dataset_gives_soft_labels_reproducibly_and_collates_them():
    cfg = AugmentConfig(mix_p=1.0, mix_mode="subset", mix_ratio=(0.3, 0.5), drop_rate=0.1)
    ds = EventMixDataset(_Recordings(), (32, 32, 2), cfg, partners=[1, 2, 4], seed=3)
    ev, soft = ds[0]
    assert soft.dtype == np.float32 and soft.shape == (3,) and soft.sum() == pytest.approx(1.0)
    # Class 0 lights column 0; the partner (1, 2 or 4: class 1 or 2) its own column; lambda is B's share.
    lam = 1.0 - soft[0]
    assert lam == pytest.approx(np.mean(ev["x"] != 0), abs=1e-6) and 0 < lam < 1
    np.testing.assert_array_equal(ds[0][0], ev)  # same (seed, epoch, index): same item
    epochs = []
    for epoch in range(4):
        ds.set_epoch(epoch)
        epochs.append(ds[0][1])
    assert any(not np.array_equal(epochs[0], e) for e in epochs[1:])
    assert all(e[0] > 0 for e in epochs)
    # Partners come only from the given indices, which hold no class 0: only class-0 items weigh class 0.
    ds.set_epoch(0)
    assert all(ds[i][1][0] == 0 for i in (1, 2, 4, 5)) and all(0 < ds[i][1][0] < 1 for i in (0, 3))
    seqs = [(make_events([0], [0], [0], [0]), lab) for lab in (soft, soft_label(2, 1, 0.25, 3))]
    batch = collate([({"tokens": np.array([1, 2]), "counts": np.ones(2), "dt": np.zeros(2)}, lab) for _, lab in seqs])
    assert batch["soft_labels"].shape == (2, 3) and batch["labels"].tolist() == [int(np.argmax(soft)), 2]
    with pytest.raises(ValueError, match="not both"):
        collate([({"tokens": np.array([1]), "counts": np.ones(1), "dt": np.zeros(1)}, lab) for lab in (soft, 1)])


def test_soft_targets_give_the_mixed_cross_entropy():
    torch = pytest.importorskip("torch")
    from evmamba.training.models import forward_loss

    class Fixed(torch.nn.Module):
        def forward(self, tokens, dt, counts, lengths, surfaces=None):
            return torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 1.0]])

    soft = torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.4, 0.6]])
    batch = {"tokens": torch.zeros(2, 1, dtype=torch.long), "dt": torch.zeros(2, 1), "counts": torch.ones(2, 1),
             "lengths": torch.ones(2, dtype=torch.long), "labels": torch.tensor([0, 2]), "soft_labels": soft}
    loss, correct, n = forward_loss(Fixed(), batch, torch.device("cpu"))
    logp = torch.log_softmax(Fixed()(None, None, None, None), -1)
    expected = -(0.7 * logp[0, 0] + 0.3 * logp[0, 1] + 0.4 * logp[1, 1] + 0.6 * logp[1, 2]) / 2
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    assert int(correct) == 2 and n == 2


def _tiny_config(folder, model, extra=None):
    import yaml

    cfg = {
        "dataset": {"name": "synthetic", "n_samples": {"train": 24, "test": 10}, "sensor_size": [32, 32, 2],
                    "duration_us": 40000, "seed": 3},
        "binning": {"downsample": 2, "bin_us": 5000},
        "cache_dir": str(folder / "cache"),
        "model": model,
        "augment": {**ALL_ON, "time_crop_us": 30_000, "mix_p": 1.0},
        "train": {"epochs": 1, "batch_size": 8, "lr": 0.003, "val_fraction": 0.25, "preprocess_workers": 1},
        **(extra or {}),
    }
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("kind", ["tokens", "frames"])
def test_a_tiny_epoch_trains_with_every_augmentation_and_mixing_on(tmp_path, kind):
    import csv

    from evmamba.cli import main

    if kind == "tokens":
        model = {"d_model": 16, "n_layers": 1, "d_state": 4, "input_pool": 2, "embedding": "factorised"}
        cfg = _tiny_config(tmp_path, model)
    else:
        cfg = _tiny_config(
            tmp_path, {"type": "frame_resnet", "widths": [8], "blocks": [1]}, {"frames": {"n_time_bins": 2}}
        )
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(out), "--no-progress"]) == 0
    with open(out / "metrics.csv") as fh:
        row = list(csv.DictReader(fh))[-1]
    assert float(row["train_loss"]) > 0 and 0 <= float(row["train_accuracy"]) <= 1 and row["val_accuracy"]
    # The training items are mixed and carry soft labels into the batch; validation items do not.
    from evmamba.core.config import load_config
    from evmamba.training.data import build_data

    data = build_data(load_config(str(cfg), []), progress=False)
    batch = data.collate([data.train[i] for i in range(4)])
    assert batch["soft_labels"].shape == (4, 5)
    assert (batch["soft_labels"].max(-1).values < 1).any()  # mix_p = 1: some items really are mixed
    assert "soft_labels" not in data.collate([data.val[0]])


def test_train_allow_vflip_reaches_the_training_items(tmp_path):
    # vflip_p = 1 flips every training item, unless the config declares that up and down carry meaning.
    from evmamba.core.config import load_config
    from evmamba.training.data import build_data

    model = {"d_model": 16, "n_layers": 1, "d_state": 4, "embedding": "factorised"}
    items = {}
    for name, extra in (("plain", {"augment": {}}), ("flipped", {"augment": {"vflip_p": 1.0}}),
                        ("refused", {"augment": {"vflip_p": 1.0}})):
        folder = tmp_path / name
        folder.mkdir()
        cfg = load_config(str(_tiny_config(folder, model, extra)), [])
        if name == "refused":
            cfg["train"]["allow_vflip"] = False
        data = build_data(cfg, progress=False)
        items[name] = [data.train[i][0].tokens for i in range(4)]
    assert all(np.array_equal(a, b) for a, b in zip(items["plain"], items["refused"]))
    assert not any(np.array_equal(a, b) for a, b in zip(items["plain"], items["flipped"]))
