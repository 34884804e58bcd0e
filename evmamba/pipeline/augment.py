"""Training augmentations on event arrays, driven by an explicit ``numpy.random.Generator``.

Each function takes and returns an :data:`~evmamba.pipeline.events.EVENT_DTYPE` array (validated on the
way in, never modified in place) and keeps time order, so its output can go straight to the binner.
:class:`AugmentConfig` and :func:`augment_events` chain them for a dataset; a dataset whose classes depend
on left and right (DVS Gesture's left-arm and right-arm gestures) passes ``allow_hflip=False`` and a
configured flip is then skipped.

Order in :func:`augment_events`: random time crop, event drop, translation, per-event jitter, horizontal
flip. Events that a translation or jitter moves off the sensor are dropped.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import numpy as np

from .events import check_sensor_size, validate_events


def _check_rng(rng, source: str) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"{source}: rng must be a numpy.random.Generator; got {type(rng).__name__}")
    return rng


def _on_sensor(x: np.ndarray, y: np.ndarray, sensor_size) -> np.ndarray:
    w, h, _ = sensor_size
    return (x >= 0) & (x < w) & (y >= 0) & (y < h)


def random_time_crop(events: np.ndarray, duration_us: int, rng, source: str = "events") -> np.ndarray:
    """A window of ``duration_us`` µs at a uniformly random offset inside the recording (a view).

    The window start is drawn from ``[t_first, t_last - duration_us]``; a recording no longer than
    ``duration_us`` is returned whole.
    """
    validate_events(events, None, source)
    rng = _check_rng(rng, source)
    if isinstance(duration_us, (bool, np.bool_)) or not isinstance(duration_us, (int, np.integer)) or duration_us <= 0:
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


def drop_events(events: np.ndarray, rate: float, rng, source: str = "events") -> np.ndarray:
    """Drop each event independently with probability ``rate`` (0 <= rate < 1)."""
    validate_events(events, None, source)
    rng = _check_rng(rng, source)
    if not isinstance(rate, (int, float, np.floating, np.integer)) or not 0.0 <= rate < 1.0:
        raise ValueError(f"{source}: argument 'rate' must be in [0, 1); got {rate!r}")
    if rate == 0 or events.size == 0:
        return events.copy()
    return events[rng.random(events.size) >= rate]


def random_translate(events: np.ndarray, sensor_size, max_shift: int, rng, source: str = "events") -> np.ndarray:
    """Shift the whole recording by one random integer offset (dx, dy), each uniform in
    ``[-max_shift, max_shift]``; events that leave the sensor are dropped."""
    sensor_size = check_sensor_size(sensor_size, f"{source}: sensor_size")
    validate_events(events, sensor_size, source)
    rng = _check_rng(rng, source)
    if isinstance(max_shift, (bool, np.bool_)) or not isinstance(max_shift, (int, np.integer)) or max_shift < 0:
        raise ValueError(f"{source}: argument 'max_shift' must be an integer >= 0; got {max_shift!r}")
    dx, dy = (int(v) for v in rng.integers(-max_shift, max_shift, size=2, endpoint=True))
    x = events["x"].astype(np.int64) + dx
    y = events["y"].astype(np.int64) + dy
    return _moved(events, x, y, sensor_size)


def spatial_jitter(events: np.ndarray, sensor_size, sigma: float, rng, source: str = "events") -> np.ndarray:
    """Move every event by its own rounded Gaussian offset (standard deviation ``sigma`` pixels in x and in y);
    events that leave the sensor are dropped. Timestamps and order are unchanged."""
    sensor_size = check_sensor_size(sensor_size, f"{source}: sensor_size")
    validate_events(events, sensor_size, source)
    rng = _check_rng(rng, source)
    if not isinstance(sigma, (int, float, np.floating, np.integer)) or not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"{source}: argument 'sigma' must be a finite number >= 0; got {sigma!r}")
    offsets = np.rint(rng.normal(0.0, float(sigma), size=(2, events.size))).astype(np.int64)
    x = events["x"].astype(np.int64) + offsets[0]
    y = events["y"].astype(np.int64) + offsets[1]
    return _moved(events, x, y, sensor_size)


def _moved(events: np.ndarray, x: np.ndarray, y: np.ndarray, sensor_size) -> np.ndarray:
    keep = _on_sensor(x, y, sensor_size)
    out = events[keep]  # boolean indexing copies
    out["x"] = x[keep]
    out["y"] = y[keep]
    return out


def flip_horizontal(events: np.ndarray, sensor_size, source: str = "events") -> np.ndarray:
    """Mirror left and right: ``x' = W - 1 - x`` (a new array)."""
    sensor_size = check_sensor_size(sensor_size, f"{source}: sensor_size")
    validate_events(events, sensor_size, source)
    out = events.copy()
    out["x"] = sensor_size[0] - 1 - events["x"].astype(np.int64)
    return out


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations :func:`augment_events` applies (the defaults apply none).

    * ``time_crop_us`` -- random window of this many µs (None = off);
    * ``drop_rate`` -- probability of dropping each event;
    * ``max_shift`` -- largest random translation in pixels (0 = off);
    * ``jitter_sigma`` -- per-event Gaussian jitter in pixels (0 = off);
    * ``hflip_p`` -- probability of a horizontal flip (only where the dataset allows it).
    """

    time_crop_us: int | None = None
    drop_rate: float = 0.0
    max_shift: int = 0
    jitter_sigma: float = 0.0
    hflip_p: float = 0.0

    def __post_init__(self) -> None:
        self._validate("AugmentConfig")

    def _validate(self, source: str) -> None:
        def bad(key, want):
            raise ValueError(f"{source}: key '{key}' must be {want}; got {getattr(self, key)!r}")

        def is_int(v):
            return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))

        def is_num(v):
            return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)) and math.isfinite(v)

        if self.time_crop_us is not None and not (is_int(self.time_crop_us) and self.time_crop_us > 0):
            bad("time_crop_us", "a positive integer or None")
        if not (is_num(self.drop_rate) and 0 <= self.drop_rate < 1):
            bad("drop_rate", "a number in [0, 1)")
        if not (is_int(self.max_shift) and self.max_shift >= 0):
            bad("max_shift", "an integer >= 0")
        if not (is_num(self.jitter_sigma) and self.jitter_sigma >= 0):
            bad("jitter_sigma", "a number >= 0")
        if not (is_num(self.hflip_p) and 0 <= self.hflip_p <= 1):
            bad("hflip_p", "a number in [0, 1]")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "augment config") -> "AugmentConfig":
        """Build from a mapping; unknown keys are rejected (``ValueError`` naming them)."""
        if hasattr(d, "_metadata") and hasattr(d, "_get_node"):  # an OmegaConf container
            from omegaconf import OmegaConf

            d = OmegaConf.to_container(d, resolve=True)
        if not isinstance(d, Mapping):
            raise TypeError(f"{source}: expected a mapping of augmentation options; got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in d if k not in known)
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {unknown}; known keys are {sorted(known)}")
        obj = object.__new__(cls)
        for f in fields(cls):
            object.__setattr__(obj, f.name, d.get(f.name, f.default))
        obj._validate(source)
        return cls(**{f.name: getattr(obj, f.name) for f in fields(cls)})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def active(self) -> bool:
        """Whether any augmentation is switched on."""
        return bool(self.time_crop_us or self.drop_rate or self.max_shift or self.jitter_sigma or self.hflip_p)


def augment_events(
    events: np.ndarray,
    sensor_size,
    cfg: AugmentConfig,
    rng,
    *,
    allow_hflip: bool = True,
    source: str = "events",
) -> np.ndarray:
    """Apply the augmentations of ``cfg`` in the order of the module docstring; ``allow_hflip=False`` (a
    dataset where left/right carries meaning) skips the flip. The result may be empty."""
    if not isinstance(cfg, AugmentConfig):
        raise TypeError(f"{source}: cfg must be an AugmentConfig; got {type(cfg).__name__}")
    sensor_size = check_sensor_size(sensor_size, f"{source}: sensor_size")
    validate_events(events, sensor_size, source)
    rng = _check_rng(rng, source)
    out = events
    if cfg.time_crop_us:
        out = random_time_crop(out, cfg.time_crop_us, rng, source)
    if cfg.drop_rate:
        out = drop_events(out, cfg.drop_rate, rng, source)
    if cfg.max_shift:
        out = random_translate(out, sensor_size, cfg.max_shift, rng, source)
    if cfg.jitter_sigma:
        out = spatial_jitter(out, sensor_size, cfg.jitter_sigma, rng, source)
    if allow_hflip and cfg.hflip_p and rng.random() < cfg.hflip_p:
        out = flip_horizontal(out, sensor_size, source)
    return out if out is not events else events.copy()
