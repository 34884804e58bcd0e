"""Training augmentations: what each one does to a real recording, and that a seed reproduces it."""

from __future__ import annotations

import numpy as np
import pytest

from evmamba.datasets.paths import data_root
from evmamba.pipeline import (
    AugmentConfig,
    augment_events,
    drop_events,
    flip_horizontal,
    make_events,
    random_time_crop,
    random_translate,
    spatial_jitter,
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
