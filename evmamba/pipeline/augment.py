"""Training augmentations on event arrays, driven by an explicit ``numpy.random.Generator``.

Each function takes and returns an :data:`~evmamba.pipeline.events.EVENT_DTYPE` array (validated on the
way in, never modified in place) and keeps time order, so its output can go straight to the binner. Most
come in two forms: a deterministic one whose parameters are given (``rotate_events``, ``time_stretch``,
``drop_time_window`` ...), used by tests and by the random form, and a ``random_*`` one that draws them
from the generator.

Geometry works on pixel centres: pixel ``(x, y)`` sits at the point ``(x, y)``, the sensor centre is
``((W - 1) / 2, (H - 1) / 2)``, and a moved coordinate is rounded half up (``floor(v + 0.5)``, after
discarding floating-point error below 1e-6 pixel), so moving every input by a whole pixel moves every
output by the same pixel. Events that leave the sensor are dropped.

1-D sensors (spike data such as SHD: height 1, ``x`` = channel): translation, scale and jitter act on
``x`` only ("channel shift"), rotation raises ``ValueError``, and a dropped area is a band of channels.
Polarity flips need two polarities.

:class:`AugmentConfig` and :func:`augment_events` chain the per-sample augmentations for a dataset, in this
order (each step only when switched on):

1. random time crop (``time_crop_us``);
2. time stretch (``time_stretch``);
3. drop by time window (``drop_time_fraction``, ``drop_time_windows``);
4. drop single events (``drop_rate``);
5. one move of the sensor plane: rotation (``max_rotation_deg``), scale (``scale``) and translation
   (``max_shift``) about ``affine_center``, rounded once; with neither rotation nor scale on, a plain
   integer translation;
6. per-event jitter (``jitter_sigma``);
7. horizontal flip (``hflip_p``; skipped where the dataset passes ``allow_hflip=False``, as DVS Gesture
   does because its classes depend on left and right), then vertical flip (``vflip_p``; skipped where the
   dataset passes ``allow_vflip=False``; 2-D sensors only);
8. drop by area (``drop_area_fraction``);
9. polarity flips (``polarity_flip_p``);
10. background noise (``noise_rate_hz`` or ``noise_fraction``), last, so that noise is spread uniformly
    over the final sensor plane and time span.

Mixing two samples (``mix_*`` keys) needs a second recording and a mixed label; it lives in
:mod:`evmamba.pipeline.mixing` and runs after :func:`augment_events` has augmented each sample.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..core.checks import is_int, validated_from_mapping
from ..core.events import check_sensor_size
from .events import validate_events

MIX_MODES = ("subset", "region", "time")
AFFINE_CENTERS = ("sensor", "random")


# ---------------------------------------------------------------------------------------- argument checks
def _check_rng(rng, source: str) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"{source}: rng must be a numpy.random.Generator; got {type(rng).__name__}")
    return rng


def _is_num(v) -> bool:
    return (isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
            and math.isfinite(v))


def _number(value, name: str, source: str, *, lo=None, hi=None, lo_open=False, hi_open=False) -> float:
    """``value`` as a float inside the given bounds, else ``ValueError`` naming the argument."""
    ok = _is_num(value)
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value < hi if hi_open else value <= hi
    if not ok:
        left = "" if lo is None else ("(" if lo_open else "[") + f"{lo}, "
        right = "" if hi is None else f"{hi}" + (")" if hi_open else "]")
        want = f"a number in {left}{right}" if lo is not None and hi is not None else (
            f"a finite number {'>' if lo_open else '>='} {lo}" if lo is not None else "a finite number")
        raise ValueError(f"{source}: argument '{name}' must be {want}; got {value!r}")
    return float(value)


def _range(value, name: str, source: str, *, lo: float, hi: float | None = None) -> tuple[float, float]:
    """A ``(low, high)`` pair with ``lo < low <= high`` (``< hi`` too when given), else ``ValueError``."""
    try:
        a, b = value
    except (TypeError, ValueError):
        a = b = None
    bound = f"in ({lo}, {hi})" if hi is not None else f"> {lo}"
    if not (_is_num(a) and _is_num(b) and lo < a <= b and (hi is None or b < hi)):
        raise ValueError(f"{source}: argument '{name}' must be a pair (low, high) with low <= high, both {bound}; "
                         f"got {value!r}")
    return float(a), float(b)


def _is_1d(sensor_size) -> bool:
    """Spike data: one row of channels (``x`` = channel, ``y`` always 0)."""
    return sensor_size[1] == 1


def _prepare(events, sensor_size, rng, source):
    """Validate the common arguments of a spatial augmentation; returns ``(sensor_size, rng)``."""
    sensor_size = check_sensor_size(sensor_size, f"{source}: sensor_size")
    validate_events(events, sensor_size, source)
    if rng is not None:
        rng = _check_rng(rng, source)
    return sensor_size, rng


def _on_sensor(x: np.ndarray, y: np.ndarray, sensor_size) -> np.ndarray:
    w, h, _ = sensor_size
    return (x >= 0) & (x < w) & (y >= 0) & (y < h)


def _round_coord(v: np.ndarray) -> np.ndarray:
    """Round half up, after discarding float error below 1e-6 pixel (so 2.9999999999 + 0.5 is a tie)."""
    return np.floor(np.round(v, 6) + 0.5).astype(np.int64)


def _moved(events: np.ndarray, x: np.ndarray, y: np.ndarray, sensor_size) -> np.ndarray:
    keep = _on_sensor(x, y, sensor_size)
    out = events[keep]  # boolean indexing copies
    out["x"] = x[keep]
    out["y"] = y[keep]
    return out


# ------------------------------------------------------------------------------------------------ time
def random_time_crop(events: np.ndarray, duration_us: int, rng, source: str = "events") -> np.ndarray:
    """A window of ``duration_us`` µs at a uniformly random offset inside the recording (a view).

    The window start is drawn from ``[t_first, t_last - duration_us]``; a recording no longer than
    ``duration_us`` is returned whole.
    """
    validate_events(events, None, source)
    rng = _check_rng(rng, source)
    if not is_int(duration_us) or duration_us <= 0:
        raise ValueError(f"{source}: argument 'duration_us' must be a positive integer; got {duration_us!r}")
    if events.size == 0:
        return events
    t = events["t"]
    first, last = int(t[0]), int(t[-1])
    if last - first <= duration_us:
        return events
    start = int(rng.integers(first, last - duration_us, endpoint=True))
    lo, hi = np.searchsorted(t, [start, start + duration_us])
    return events[lo:hi]


def time_stretch(events: np.ndarray, factor: float, source: str = "events") -> np.ndarray:
    """Scale time about the first event: ``t' = t0 + floor((t - t0) * factor + 0.5)`` (integer µs).

    ``factor`` > 0; 2 doubles every duration and gap, 0.5 halves them. Rounding a non-decreasing function
    keeps the order; with ``factor < 1`` close events may come to share a timestamp. Returns a new array.
    """
    validate_events(events, None, source)
    factor = _number(factor, "factor", source, lo=0, lo_open=True)
    out = events.copy()
    if events.size == 0 or factor == 1.0:
        return out
    t0 = int(events["t"][0])
    rel = (events["t"] - t0).astype(np.float64) * factor
    out["t"] = t0 + np.floor(rel + 0.5).astype(np.int64)
    return out


def random_time_stretch(events: np.ndarray, factor_range, rng, source: str = "events") -> np.ndarray:
    """:func:`time_stretch` by a factor drawn log-uniformly from ``factor_range = (low, high)`` (so
    ``(0.8, 1.25)`` stretches and compresses equally often)."""
    validate_events(events, None, source)
    rng = _check_rng(rng, source)
    lo, hi = _range(factor_range, "factor_range", source, lo=0.0)
    factor = math.exp(rng.uniform(math.log(lo), math.log(hi))) if hi > lo else lo
    return time_stretch(events, factor, source)


def drop_time_window(events: np.ndarray, start_us: int, stop_us: int, source: str = "events") -> np.ndarray:
    """Remove every event with ``start_us <= t < stop_us`` (a new array)."""
    validate_events(events, None, source)
    if not (is_int(start_us) and is_int(stop_us)) or stop_us < start_us:
        raise ValueError(f"{source}: arguments 'start_us' and 'stop_us' must be integers with start_us <= stop_us; "
                         f"got {start_us!r}, {stop_us!r}")
    lo, hi = np.searchsorted(events["t"], [start_us, stop_us])
    return np.concatenate([events[:lo], events[hi:]])


def random_drop_time(events: np.ndarray, fraction: float, rng, n_windows: int = 1,
                     source: str = "events") -> np.ndarray:
    """Remove the events of ``n_windows`` random time windows, each ``fraction / n_windows`` of the
    recording's duration (``t_last - t_first + 1`` µs) long, at independent uniform positions inside it
    (windows may overlap, so at most ``fraction`` of the duration is removed)."""
    validate_events(events, None, source)
    rng = _check_rng(rng, source)
    fraction = _number(fraction, "fraction", source, lo=0, hi=1, hi_open=True)
    if not is_int(n_windows) or n_windows < 1:
        raise ValueError(f"{source}: argument 'n_windows' must be an integer >= 1; got {n_windows!r}")
    if events.size == 0 or fraction == 0:
        return events.copy()
    t0 = int(events["t"][0])
    duration = int(events["t"][-1]) - t0 + 1
    length = math.floor(fraction * duration / n_windows + 0.5)
    starts = rng.integers(t0, t0 + duration - length, size=n_windows, endpoint=True)
    if length == 0:
        return events.copy()
    t = events["t"]
    keep = np.ones(events.size, dtype=bool)
    for s in starts.tolist():
        lo, hi = np.searchsorted(t, [s, s + length])
        keep[lo:hi] = False
    return events[keep]


# ------------------------------------------------------------------------------------------- dropping
def drop_events(events: np.ndarray, rate: float, rng, source: str = "events") -> np.ndarray:
    """Drop each event independently with probability ``rate`` (0 <= rate < 1)."""
    validate_events(events, None, source)
    rng = _check_rng(rng, source)
    if not isinstance(rate, (int, float, np.floating, np.integer)) or not 0.0 <= rate < 1.0:
        raise ValueError(f"{source}: argument 'rate' must be in [0, 1); got {rate!r}")
    if rate == 0 or events.size == 0:
        return events.copy()
    return events[rng.random(events.size) >= rate]


def in_box(events: np.ndarray, box) -> np.ndarray:
    """Boolean mask of the events inside ``box = (x0, y0, x1, y1)`` (``x0 <= x < x1``, ``y0 <= y < y1``)."""
    x0, y0, x1, y1 = box
    x, y = events["x"], events["y"]
    return (x >= x0) & (x < x1) & (y >= y0) & (y < y1)


def drop_box(events: np.ndarray, sensor_size, box, source: str = "events") -> np.ndarray:
    """Remove the events inside the pixel rectangle ``box = (x0, y0, x1, y1)``, half-open like a slice:
    ``x0 <= x < x1`` and ``y0 <= y < y1`` (a new array)."""
    sensor_size, _ = _prepare(events, sensor_size, None, source)
    try:
        x0, y0, x1, y1 = box
    except (TypeError, ValueError):
        x0 = None
    if x0 is None or not all(is_int(v) for v in (x0, y0, x1, y1)) or x1 < x0 or y1 < y0:
        raise ValueError(f"{source}: argument 'box' must be integers (x0, y0, x1, y1) with x0 <= x1, y0 <= y1; "
                         f"got {box!r}")
    return events[~in_box(events, (x0, y0, x1, y1))]


def random_box(sensor_size, fraction: float, rng) -> tuple[int, int, int, int]:
    """A rectangle of about ``fraction`` of the sensor area with the sensor's aspect ratio (sides
    ``round(sqrt(fraction) * W)`` by ``round(sqrt(fraction) * H)``; on a 1-D sensor a band of
    ``round(fraction * W)`` channels), at a uniform random position on the sensor."""
    w, h, _ = sensor_size
    if _is_1d(sensor_size):
        bw, bh = math.floor(fraction * w + 0.5), 1
    else:
        side = math.sqrt(fraction)
        bw, bh = math.floor(side * w + 0.5), math.floor(side * h + 0.5)
    x0 = int(rng.integers(0, w - bw, endpoint=True))
    y0 = int(rng.integers(0, h - bh, endpoint=True))
    return x0, y0, x0 + bw, y0 + bh


def random_drop_area(events: np.ndarray, sensor_size, fraction: float, rng, source: str = "events") -> np.ndarray:
    """Remove the events inside one random rectangle of ``fraction`` of the sensor area
    (see :func:`random_box`; 0 <= fraction < 1)."""
    sensor_size, rng = _prepare(events, sensor_size, rng, source)
    fraction = _number(fraction, "fraction", source, lo=0, hi=1, hi_open=True)
    if fraction == 0:
        return events.copy()
    return events[~in_box(events, random_box(sensor_size, fraction, rng))]


# ------------------------------------------------------------------------------------------- geometry
def sensor_center(sensor_size) -> tuple[float, float]:
    """The centre of the pixel grid, ``((W - 1) / 2, (H - 1) / 2)`` (pixel centres at integers)."""
    w, h, _ = sensor_size
    return (w - 1) / 2.0, (h - 1) / 2.0


def _point(value, name: str, source: str) -> tuple[float, float]:
    try:
        a, b = value
    except (TypeError, ValueError):
        a = b = None
    if not (_is_num(a) and _is_num(b)):
        raise ValueError(f"{source}: argument '{name}' must be a pair of finite numbers (x, y); got {value!r}")
    return float(a), float(b)


def affine_events(events: np.ndarray, sensor_size, matrix, *, center=None, offset=(0.0, 0.0),
                  source: str = "events") -> np.ndarray:
    """Move every event by one affine map of the sensor plane: ``(x', y') = M (x - cx, y - cy) + (cx, cy) +
    offset``, rounded half up (module docstring); events that leave the sensor are dropped.

    ``matrix`` is 2 x 2 (rows give x' and y'), ``center`` defaults to :func:`sensor_center`, ``offset``
    is in pixels. Timestamps, polarities and order are unchanged.
    """
    sensor_size, _ = _prepare(events, sensor_size, None, source)
    m = np.asarray(matrix, dtype=np.float64) if not isinstance(matrix, (str, bytes)) else None
    if m is None or m.shape != (2, 2) or not np.isfinite(m).all():
        raise ValueError(f"{source}: argument 'matrix' must be a 2x2 array of finite numbers; got {matrix!r}")
    cx, cy = sensor_center(sensor_size) if center is None else _point(center, "center", source)
    ox, oy = _point(offset, "offset", source)
    dx = events["x"].astype(np.float64) - cx
    dy = events["y"].astype(np.float64) - cy
    x = _round_coord(m[0, 0] * dx + m[0, 1] * dy + cx + ox)
    y = _round_coord(m[1, 0] * dx + m[1, 1] * dy + cy + oy)
    return _moved(events, x, y, sensor_size)


def _rotation(angle_deg: float) -> np.ndarray:
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s], [s, c]])


def rotate_events(events: np.ndarray, sensor_size, angle_deg: float, center=None,
                  source: str = "events") -> np.ndarray:
    """Rotate the sensor plane by ``angle_deg`` degrees about ``center`` (default: the sensor centre).

    Positive angles turn +x towards +y: clockwise on a display whose y axis points down. By 90° about the
    centre of a W x W sensor, pixel ``(x, y)`` goes to ``(W - 1 - y, x)``. A 1-D sensor raises
    ``ValueError``: rotating a row of channels has no meaning.
    """
    sensor_size, _ = _prepare(events, sensor_size, None, source)
    angle_deg = _number(angle_deg, "angle_deg", source)
    if _is_1d(sensor_size):
        raise ValueError(f"{source}: rotation needs a 2-D sensor; sensor_size {sensor_size} is 1-D (spike channels)")
    return affine_events(events, sensor_size, _rotation(angle_deg), center=center, source=source)


def scale_events(events: np.ndarray, sensor_size, factor: float, center=None, source: str = "events") -> np.ndarray:
    """Zoom the sensor plane by ``factor`` > 0 about ``center`` (default: the sensor centre): every distance
    from the centre is multiplied by ``factor``. On a 1-D sensor only ``x`` (the channel) is scaled.
    Zooming in spreads the events of neighbouring pixels apart; zooming out merges pixels."""
    sensor_size, _ = _prepare(events, sensor_size, None, source)
    factor = _number(factor, "factor", source, lo=0, lo_open=True)
    m = np.diag([factor, 1.0 if _is_1d(sensor_size) else factor])
    return affine_events(events, sensor_size, m, center=center, source=source)


def random_affine(events: np.ndarray, sensor_size, rng, *, max_rotation_deg: float = 0.0, scale_range=None,
                  max_shift: int = 0, center: str = "sensor", source: str = "events") -> np.ndarray:
    """One random move of the sensor plane, rounded once: a rotation by an angle uniform in
    ``[-max_rotation_deg, max_rotation_deg]``, a zoom by a factor drawn log-uniformly from
    ``scale_range = (low, high)``, both about ``center`` (``"sensor"``: the sensor centre; ``"random"``: a
    point uniform on the sensor), then an integer shift uniform in ``[-max_shift, max_shift]`` per axis.

    Draws, in this order and only for what is switched on: angle, factor, centre, shift. On a 1-D sensor
    the move is along ``x`` only and ``max_rotation_deg`` must be 0 (``ValueError`` otherwise).
    """
    sensor_size, rng = _prepare(events, sensor_size, rng, source)
    max_rotation_deg = _number(max_rotation_deg, "max_rotation_deg", source, lo=0, hi=180)
    if scale_range is not None:
        scale_range = _range(scale_range, "scale_range", source, lo=0.0)
    if not is_int(max_shift) or max_shift < 0:
        raise ValueError(f"{source}: argument 'max_shift' must be an integer >= 0; got {max_shift!r}")
    if center not in AFFINE_CENTERS:
        raise ValueError(f"{source}: argument 'center' must be one of {AFFINE_CENTERS}; got {center!r}")
    one_d = _is_1d(sensor_size)
    if one_d and max_rotation_deg > 0:
        raise ValueError(f"{source}: rotation needs a 2-D sensor; sensor_size {sensor_size} is 1-D (spike channels): "
                         "set the rotation to 0")
    angle = float(rng.uniform(-max_rotation_deg, max_rotation_deg)) if max_rotation_deg > 0 else 0.0
    factor = 1.0
    if scale_range is not None and scale_range[1] > scale_range[0]:
        factor = math.exp(rng.uniform(math.log(scale_range[0]), math.log(scale_range[1])))
    elif scale_range is not None:
        factor = scale_range[0]
    w, h, _ = sensor_size
    if center == "random":
        c = (float(rng.uniform(0, w - 1)), 0.0 if one_d else float(rng.uniform(0, h - 1)))
    else:
        c = sensor_center(sensor_size)
    dx = dy = 0
    if max_shift:
        dx, dy = (int(v) for v in rng.integers(-max_shift, max_shift, size=2, endpoint=True))
    if one_d:
        m, dy = np.diag([factor, 1.0]), 0
    else:
        m = factor * _rotation(angle)
    return affine_events(events, sensor_size, m, center=c, offset=(dx, dy), source=source)


def random_translate(events: np.ndarray, sensor_size, max_shift: int, rng, source: str = "events") -> np.ndarray:
    """Shift the whole recording by one random integer offset (dx, dy), each uniform in
    ``[-max_shift, max_shift]``; events that leave the sensor are dropped. On a 1-D sensor only ``dx``
    applies (a channel shift)."""
    sensor_size, rng = _prepare(events, sensor_size, rng, source)
    if not is_int(max_shift) or max_shift < 0:
        raise ValueError(f"{source}: argument 'max_shift' must be an integer >= 0; got {max_shift!r}")
    dx, dy = (int(v) for v in rng.integers(-max_shift, max_shift, size=2, endpoint=True))
    if _is_1d(sensor_size):
        dy = 0  # drawn all the same, so that 2-D and 1-D runs consume the generator alike
    x = events["x"].astype(np.int64) + dx
    y = events["y"].astype(np.int64) + dy
    return _moved(events, x, y, sensor_size)


def spatial_jitter(events: np.ndarray, sensor_size, sigma: float, rng, source: str = "events") -> np.ndarray:
    """Move every event by its own rounded Gaussian offset (standard deviation ``sigma`` pixels in x and in y;
    x only on a 1-D sensor); events that leave the sensor are dropped. Timestamps and order are unchanged."""
    sensor_size, rng = _prepare(events, sensor_size, rng, source)
    if not _is_num(sigma) or sigma < 0:
        raise ValueError(f"{source}: argument 'sigma' must be a finite number >= 0; got {sigma!r}")
    offsets = _round_coord(rng.normal(0.0, float(sigma), size=(2, events.size)))
    if _is_1d(sensor_size):
        offsets[1] = 0
    x = events["x"].astype(np.int64) + offsets[0]
    y = events["y"].astype(np.int64) + offsets[1]
    return _moved(events, x, y, sensor_size)


def flip_horizontal(events: np.ndarray, sensor_size, source: str = "events") -> np.ndarray:
    """Mirror left and right: ``x' = W - 1 - x`` (a new array)."""
    sensor_size, _ = _prepare(events, sensor_size, None, source)
    out = events.copy()
    out["x"] = sensor_size[0] - 1 - events["x"].astype(np.int64)
    return out


def flip_vertical(events: np.ndarray, sensor_size, source: str = "events") -> np.ndarray:
    """Mirror top and bottom: ``y' = H - 1 - y`` (a new array)."""
    sensor_size, _ = _prepare(events, sensor_size, None, source)
    out = events.copy()
    out["y"] = sensor_size[1] - 1 - events["y"].astype(np.int64)
    return out


# -------------------------------------------------------------------------------- polarity and noise
def flip_polarity(events: np.ndarray, sensor_size, prob: float, rng, source: str = "events") -> np.ndarray:
    """Flip each event's polarity (ON <-> OFF) independently with probability ``prob`` in [0, 1]
    (1 inverts the recording). Needs a sensor with two polarities."""
    sensor_size, rng = _prepare(events, sensor_size, rng, source)
    prob = _number(prob, "prob", source, lo=0, hi=1)
    if sensor_size[2] != 2:
        raise ValueError(f"{source}: polarity flips need 2 polarities; sensor_size {sensor_size} has 1")
    out = events.copy()
    if prob == 0 or events.size == 0:
        return out
    flip = rng.random(events.size) < prob
    out["p"][flip] = 1 - out["p"][flip]
    return out


def add_noise(events: np.ndarray, sensor_size, rng, *, rate_hz: float = 0.0, fraction: float = 0.0,
              source: str = "events") -> np.ndarray:
    """Add background events, uniform over the sensor and over the recording's time span
    ``[t_first, t_last]`` (integer µs), each with a uniformly random polarity, merged in time order (an added
    event follows the recorded ones of the same timestamp).

    Give one of ``rate_hz`` -- events per pixel per second: a Poisson count with mean
    ``rate_hz * W * H * (t_last - t_first) / 1e6`` -- or ``fraction`` -- exactly ``round(fraction * N)``
    events for N recorded ones. An empty recording has no time span and gets no noise.
    """
    sensor_size, rng = _prepare(events, sensor_size, rng, source)
    rate_hz = _number(rate_hz, "rate_hz", source, lo=0)
    fraction = _number(fraction, "fraction", source, lo=0)
    if rate_hz and fraction:
        raise ValueError(f"{source}: give 'rate_hz' or 'fraction', not both; got {rate_hz!r} and {fraction!r}")
    if events.size == 0 or (rate_hz == 0 and fraction == 0):
        return events.copy()
    w, h, npol = sensor_size
    t0, t1 = int(events["t"][0]), int(events["t"][-1])
    if rate_hz:
        n = int(rng.poisson(rate_hz * w * h * (t1 - t0) / 1e6))
    else:
        n = math.floor(fraction * events.size + 0.5)
    noise = np.empty(n, dtype=events.dtype)
    noise["t"] = np.sort(rng.integers(t0, t1, size=n, endpoint=True))
    noise["x"] = rng.integers(0, w, size=n)
    noise["y"] = rng.integers(0, h, size=n)
    noise["p"] = rng.integers(0, npol, size=n)
    where = np.searchsorted(events["t"], noise["t"], side="right")
    return np.insert(events, where, noise)


# ----------------------------------------------------------------------------------------- the config
_RANGE_KEYS = ("time_stretch", "scale", "mix_ratio")


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations :func:`augment_events` (and, for ``mix_*``, :mod:`evmamba.pipeline.mixing`)
    apply; the defaults apply none. Ranges are ``(low, high)`` pairs (YAML lists).

    * ``time_crop_us`` -- random window of this many µs (None = off);
    * ``drop_rate`` -- probability of dropping each event;
    * ``max_shift`` -- largest random translation in pixels (0 = off; channels on a 1-D sensor);
    * ``jitter_sigma`` -- per-event Gaussian jitter in pixels (0 = off);
    * ``hflip_p`` -- probability of a horizontal flip (only where the dataset allows it);
    * ``vflip_p`` -- probability of a vertical flip (only where the dataset allows it; 2-D sensors only);
    * ``time_stretch`` -- range of the time factor, drawn log-uniformly (None = off);
    * ``drop_time_fraction`` -- share of the duration removed in ``drop_time_windows`` random windows;
    * ``max_rotation_deg`` -- rotation angle uniform in ``[-max, max]`` degrees (0 = off; 2-D sensors only);
    * ``scale`` -- range of the zoom factor, drawn log-uniformly (None = off);
    * ``affine_center`` -- ``"sensor"`` or ``"random"``: the centre of rotation and zoom;
    * ``drop_area_fraction`` -- share of the sensor area whose events one random rectangle removes;
    * ``polarity_flip_p`` -- probability of flipping each event's polarity (2-polarity sensors only);
    * ``noise_rate_hz`` -- background events per pixel per second, or ``noise_fraction`` -- added events
      as a share of the recording's event count (one of the two);
    * ``mix_p`` -- probability that a training sample is mixed with a second one of the same split;
    * ``mix_mode`` -- what of the second sample is merged: ``"subset"`` (a random share of its events),
      ``"region"`` (its events in a random rectangle) or ``"time"`` (its events in a random time window);
    * ``mix_ratio`` -- range of that share (of events, of the sensor area, of the duration), drawn
      uniformly;
    * ``mix_replace`` -- whether the first sample's events in the same subset/region/window are removed
      (CutMix-like, the default) or kept.
    """

    time_crop_us: int | None = None
    drop_rate: float = 0.0
    max_shift: int = 0
    jitter_sigma: float = 0.0
    hflip_p: float = 0.0
    vflip_p: float = 0.0
    time_stretch: tuple[float, float] | None = None
    drop_time_fraction: float = 0.0
    drop_time_windows: int = 1
    max_rotation_deg: float = 0.0
    scale: tuple[float, float] | None = None
    affine_center: str = "sensor"
    drop_area_fraction: float = 0.0
    polarity_flip_p: float = 0.0
    noise_rate_hz: float = 0.0
    noise_fraction: float = 0.0
    mix_p: float = 0.0
    mix_mode: str = "subset"
    mix_ratio: tuple[float, float] = (0.2, 0.5)
    mix_replace: bool = True

    def __post_init__(self) -> None:
        self._validate("AugmentConfig")
        for key in _RANGE_KEYS:  # YAML gives lists; keep hashable tuples of floats
            value = getattr(self, key)
            if value is not None:
                object.__setattr__(self, key, tuple(float(v) for v in value))

    def _validate(self, source: str) -> None:
        def bad(key, want):
            raise ValueError(f"{source}: key '{key}' must be {want}; got {getattr(self, key)!r}")

        def in_unit(key, closed):
            v = getattr(self, key)
            if not (_is_num(v) and 0 <= v and (v <= 1 if closed else v < 1)):
                bad(key, "a number in [0, 1]" if closed else "a number in [0, 1)")

        def is_range(key, hi=None):
            v = getattr(self, key)
            try:
                _range(v, key, source, lo=0.0, hi=hi)
            except ValueError:
                bound = f"in (0, {hi})" if hi is not None else "> 0"
                bad(key, f"a pair [low, high] with low <= high, both {bound}")

        if self.time_crop_us is not None and not (is_int(self.time_crop_us) and self.time_crop_us > 0):
            bad("time_crop_us", "a positive integer or None")
        in_unit("drop_rate", closed=False)
        if not (is_int(self.max_shift) and self.max_shift >= 0):
            bad("max_shift", "an integer >= 0")
        if not (_is_num(self.jitter_sigma) and self.jitter_sigma >= 0):
            bad("jitter_sigma", "a number >= 0")
        in_unit("hflip_p", closed=True)
        in_unit("vflip_p", closed=True)
        if self.time_stretch is not None:
            is_range("time_stretch")
        in_unit("drop_time_fraction", closed=False)
        if not (is_int(self.drop_time_windows) and self.drop_time_windows >= 1):
            bad("drop_time_windows", "an integer >= 1")
        if not (_is_num(self.max_rotation_deg) and 0 <= self.max_rotation_deg <= 180):
            bad("max_rotation_deg", "a number of degrees in [0, 180]")
        if self.scale is not None:
            is_range("scale")
        if self.affine_center not in AFFINE_CENTERS:
            bad("affine_center", f"one of {list(AFFINE_CENTERS)}")
        in_unit("drop_area_fraction", closed=False)
        in_unit("polarity_flip_p", closed=True)
        if not (_is_num(self.noise_rate_hz) and self.noise_rate_hz >= 0):
            bad("noise_rate_hz", "a number >= 0 (events per pixel per second)")
        if not (_is_num(self.noise_fraction) and self.noise_fraction >= 0):
            bad("noise_fraction", "a number >= 0 (a share of the event count)")
        if self.noise_rate_hz and self.noise_fraction:
            raise ValueError(f"{source}: give 'noise_rate_hz' or 'noise_fraction', not both; got "
                             f"{self.noise_rate_hz!r} and {self.noise_fraction!r}")
        in_unit("mix_p", closed=True)
        if self.mix_mode not in MIX_MODES:
            bad("mix_mode", f"one of {list(MIX_MODES)}")
        is_range("mix_ratio", hi=1.0)
        if not isinstance(self.mix_replace, (bool, np.bool_)):
            bad("mix_replace", "true or false")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "augment config") -> AugmentConfig:
        """Build from a mapping; unknown keys are rejected (``ValueError`` naming them)."""
        return validated_from_mapping(cls, d, source, "augmentation options")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in _RANGE_KEYS:
            if out[key] is not None:
                out[key] = list(out[key])
        return out

    @property
    def per_sample(self) -> bool:
        """Whether :func:`augment_events` changes a sample (any augmentation but mixing is on)."""
        return bool(self.time_crop_us or self.drop_rate or self.max_shift or self.jitter_sigma or self.hflip_p
                    or self.vflip_p or self.time_stretch is not None or self.drop_time_fraction or self.max_rotation_deg
                    or self.scale is not None or self.drop_area_fraction or self.polarity_flip_p
                    or self.noise_rate_hz or self.noise_fraction)

    @property
    def mixing(self) -> bool:
        """Whether training samples are mixed in pairs (``mix_p > 0``)."""
        return bool(self.mix_p)

    @property
    def active(self) -> bool:
        """Whether any augmentation, mixing included, is switched on."""
        return self.per_sample or self.mixing

    def check_sensor(self, sensor_size, source: str = "augment config") -> None:
        """``ValueError`` for augmentations the sensor cannot take: rotation or a vertical flip of a 1-D (spike)
        sensor, polarity flips with one polarity."""
        sensor_size = check_sensor_size(sensor_size, f"{source}: sensor_size")
        if self.max_rotation_deg and _is_1d(sensor_size):
            raise ValueError(f"{source}: key 'max_rotation_deg' is {self.max_rotation_deg!r}, but sensor_size "
                             f"{sensor_size} is 1-D (spike channels), where rotation has no meaning; set it to 0")
        if self.vflip_p and _is_1d(sensor_size):
            raise ValueError(f"{source}: key 'vflip_p' is {self.vflip_p!r}, but sensor_size {sensor_size} is 1-D "
                             f"(spike channels), where a vertical flip has no meaning; set it to 0")
        if self.polarity_flip_p and sensor_size[2] != 2:
            raise ValueError(f"{source}: key 'polarity_flip_p' is {self.polarity_flip_p!r}, but sensor_size "
                             f"{sensor_size} has one polarity; set it to 0")


def augment_events(
    events: np.ndarray,
    sensor_size,
    cfg: AugmentConfig,
    rng,
    *,
    allow_hflip: bool = True,
    allow_vflip: bool = True,
    source: str = "events",
) -> np.ndarray:
    """Apply the per-sample augmentations of ``cfg`` in the order of the module docstring (mixing is not
    one of them); ``allow_hflip=False`` / ``allow_vflip=False`` (a dataset where left/right or up/down
    carries meaning) skips that flip. Every
    draw comes from ``rng``, so the same generator state gives the same output. The result may be empty."""
    if not isinstance(cfg, AugmentConfig):
        raise TypeError(f"{source}: cfg must be an AugmentConfig; got {type(cfg).__name__}")
    sensor_size = check_sensor_size(sensor_size, f"{source}: sensor_size")
    validate_events(events, sensor_size, source)
    rng = _check_rng(rng, source)
    cfg.check_sensor(sensor_size, source)
    out = events
    if cfg.time_crop_us:
        out = random_time_crop(out, cfg.time_crop_us, rng, source)
    if cfg.time_stretch is not None:
        out = random_time_stretch(out, cfg.time_stretch, rng, source)
    if cfg.drop_time_fraction:
        out = random_drop_time(out, cfg.drop_time_fraction, rng, cfg.drop_time_windows, source)
    if cfg.drop_rate:
        out = drop_events(out, cfg.drop_rate, rng, source)
    if cfg.max_rotation_deg or cfg.scale is not None:
        out = random_affine(out, sensor_size, rng, max_rotation_deg=cfg.max_rotation_deg, scale_range=cfg.scale,
                            max_shift=cfg.max_shift, center=cfg.affine_center, source=source)
    elif cfg.max_shift:
        out = random_translate(out, sensor_size, cfg.max_shift, rng, source)
    if cfg.jitter_sigma:
        out = spatial_jitter(out, sensor_size, cfg.jitter_sigma, rng, source)
    if allow_hflip and cfg.hflip_p and rng.random() < cfg.hflip_p:
        out = flip_horizontal(out, sensor_size, source)
    if allow_vflip and cfg.vflip_p and rng.random() < cfg.vflip_p:
        out = flip_vertical(out, sensor_size, source)
    if cfg.drop_area_fraction:
        out = random_drop_area(out, sensor_size, cfg.drop_area_fraction, rng, source)
    if cfg.polarity_flip_p:
        out = flip_polarity(out, sensor_size, cfg.polarity_flip_p, rng, source)
    if cfg.noise_rate_hz or cfg.noise_fraction:
        out = add_noise(out, sensor_size, rng, rate_hz=cfg.noise_rate_hz, fraction=cfg.noise_fraction, source=source)
    return out if out is not events else events.copy()
