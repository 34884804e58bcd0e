"""Event frames and raster plots as RGB arrays, and the frame windows over a recording.

**Camera frames** (:func:`event_frame`): every event of a time window is accumulated at its pixel; a
pixel with more ON (p = 1) than OFF (p = 0) events gets the ON colour, more OFF than ON the OFF colour,
as many of each (and at least one) the mean of the two, no event the background. Single-polarity data
(sensor P = 1) are drawn in the ON colour. Row 0 of the image is y = 0 (the convention of Prophesee and
AEDAT 4 cameras; ``flip_y`` puts y = 0 at the bottom, as jAER shows a DVS128).

**Raster plots** (:func:`raster_frame`) for spike data (sensor ``(C, 1, P)``, x = channel): time runs
left to right across ``width`` columns that split the window evenly, channel 0 is the bottom row; a cell
is coloured like a pixel above.

**Scale** (:class:`Scale`): an integer zoom ``z`` draws each sensor pixel (channel) as ``z x z`` image
pixels; a reduction ``1/k`` draws each ``k x k`` block of sensor pixels (``k`` channels) as one image
pixel, so a ``W x H`` sensor gives a ``ceil(W/k) x ceil(H/k)`` image. A raster plot scales its channel
axis only; its width is given in pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..core.events import check_sensor_size
from ..pipeline.events import validate_events

RGB = tuple[int, int, int]


def parse_color(text: str, what: str = "colour") -> RGB:
    """``"#RRGGBB"`` or ``"RRGGBB"`` (hex) as an RGB tuple; ``ValueError`` naming ``what`` otherwise."""
    s = str(text).strip().lstrip("#")
    if len(s) != 6 or any(c not in "0123456789abcdefABCDEF" for c in s):
        raise ValueError(f"{what}: expected a hex colour such as #ffc400; got {text!r}")
    return (int(s[0:2], 16), int(s[2:4], 16), int(s[4:6], 16))


@dataclass(frozen=True)
class Colors:
    """The colours of event pictures (RGB tuples)."""

    on: RGB = (255, 196, 0)  # amber: brightness went up
    off: RGB = (40, 140, 255)  # blue: brightness went down
    background: RGB = (18, 18, 18)

    @property
    def both(self) -> RGB:
        """Colour of a pixel with as many ON as OFF events."""
        return tuple((a + b) // 2 for a, b in zip(self.on, self.off))  # type: ignore[return-value]


@dataclass(frozen=True)
class Scale:
    """Image pixels per sensor pixel: ``zoom`` > 1 enlarges, ``reduce`` > 1 shrinks (at most one > 1)."""

    zoom: int = 1
    reduce: int = 1

    def __post_init__(self) -> None:
        for name in ("zoom", "reduce"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"Scale: '{name}' must be a positive int; got {v!r}")
        if self.zoom > 1 and self.reduce > 1:
            raise ValueError(f"Scale: zoom ({self.zoom}) and reduce ({self.reduce}) cannot both be above 1")

    @classmethod
    def parse(cls, value, what: str = "--scale") -> Scale:
        """A number: an integer >= 1 zooms, ``1/k`` (0.5, 0.25, ...) reduces by ``k``."""
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{what}: expected a number such as 2 or 0.5; got {value!r}") from None
        if not math.isfinite(f) or f <= 0:
            raise ValueError(f"{what}: must be positive; got {value!r}")
        if f >= 1:
            if f != int(f):
                raise ValueError(f"{what}: a scale above 1 must be a whole number (a zoom); got {value!r}")
            return cls(zoom=int(f))
        k = round(1 / f)
        if abs(k * f - 1) > 1e-6:
            raise ValueError(f"{what}: a scale below 1 must be 1/k for a whole k (0.5, 0.25, ...); got {value!r}")
        return cls(reduce=k)

    @classmethod
    def auto(cls, extent: int, small: int = 256, large: int = 800, target: int = 640) -> Scale:
        """A scale for a sensor side (or channel count) ``extent``: zoom small sensors to about ``small``
        pixels, reduce those above ``large`` to at most ``target``."""
        if extent < small:
            return cls(zoom=max(1, small // extent))
        if extent > large:
            return cls(reduce=math.ceil(extent / target))
        return cls()

    def size(self, n: int) -> int:
        """Image pixels for ``n`` sensor pixels."""
        return n * self.zoom if self.zoom > 1 else -(-n // self.reduce)

    def __str__(self) -> str:
        return str(self.zoom) if self.reduce == 1 else f"1/{self.reduce}"


def is_spike_data(sensor_size) -> bool:
    """True for 1-D spike data: sensor height 1 (x = channel)."""
    return int(sensor_size[1]) == 1


def _paint(on: np.ndarray, off: np.ndarray, colors: Colors) -> np.ndarray:
    """``(R, Cc)`` ON and OFF counts -> ``(R, Cc, 3)`` RGB by the majority rule of the module docstring."""
    img = np.empty(on.shape + (3,), np.uint8)
    img[:] = colors.background
    img[on > off] = colors.on
    img[off > on] = colors.off
    img[(on == off) & (on > 0)] = colors.both
    return img


def _counts(rows: np.ndarray, cols: np.ndarray, p: np.ndarray, shape: tuple[int, int], one_polarity: bool):
    n = shape[0] * shape[1]
    flat = rows.astype(np.int64) * shape[1] + cols
    if one_polarity:
        return np.bincount(flat, minlength=n).reshape(shape), np.zeros(shape, np.int64)
    is_on = p == 1
    on = np.bincount(flat[is_on], minlength=n).reshape(shape)
    off = np.bincount(flat[~is_on], minlength=n).reshape(shape)
    return on, off


def _zoom(img: np.ndarray, z: int) -> np.ndarray:
    return img if z == 1 else np.repeat(np.repeat(img, z, axis=0), z, axis=1)


def frame_shape(sensor_size, scale: Scale) -> tuple[int, int]:
    """``(height, width)`` in pixels of a camera frame."""
    w, h, _ = check_sensor_size(sensor_size)
    return scale.size(h), scale.size(w)


def event_frame(events: np.ndarray, sensor_size, scale: Scale = Scale(), colors: Colors = Colors(),
                flip_y: bool = False, source: str = "events") -> np.ndarray:
    """The events of one window as a camera frame: ``(H', W', 3)`` uint8 (see the module docstring).

    ``events`` must be valid for ``sensor_size`` (``ValueError`` naming ``source`` otherwise).
    """
    sensor_size = check_sensor_size(sensor_size, f"{source}: sensor_size")
    validate_events(events, sensor_size, source)
    w, h, npol = sensor_size
    k = scale.reduce
    shape = (-(-h // k), -(-w // k))
    on, off = _counts(events["y"] // k, events["x"].astype(np.int64) // k, events["p"], shape, npol == 1)
    img = _paint(on, off, colors)
    if flip_y:
        img = img[::-1]
    return np.ascontiguousarray(_zoom(img, scale.zoom))


def raster_shape(sensor_size, scale: Scale, width: int) -> tuple[int, int]:
    """``(height, width)`` in pixels of a raster plot of ``sensor_size[0]`` channels."""
    c, _, _ = check_sensor_size(sensor_size)
    return scale.size(c), int(width)


def raster_frame(events: np.ndarray, sensor_size, t_start: int, t_stop: int, width: int = 480,
                 scale: Scale = Scale(), colors: Colors = Colors(), source: str = "events") -> np.ndarray:
    """The spikes of ``[t_start, t_stop)`` µs as a raster plot: ``(rows, width, 3)`` uint8 (the scale
    applies to the channel axis only).

    Column ``j`` holds the spikes with ``t_start + j * d <= t < t_start + (j + 1) * d``, ``d = (t_stop -
    t_start) / width``; row 0 (top) is the highest channel. Events outside the window are ignored.
    """
    sensor_size = check_sensor_size(sensor_size, f"{source}: sensor_size")
    validate_events(events, sensor_size, source)
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1:
        raise ValueError(f"{source}: raster width must be a positive int; got {width!r}")
    if not t_stop > t_start:
        raise ValueError(f"{source}: the raster window [{t_start}, {t_stop}) µs is empty")
    c, _, npol = sensor_size
    k = scale.reduce
    rows_n = -(-c // k)
    t = events["t"]
    inside = (t >= t_start) & (t < t_stop)
    ev = events[inside]
    # Integer arithmetic: column = floor((t - t_start) * width / span), exact for any span.
    cols = ((ev["t"] - t_start) * int(width)) // (int(t_stop) - int(t_start))
    rows = rows_n - 1 - ev["x"].astype(np.int64) // k
    on, off = _counts(rows, cols, ev["p"], (rows_n, int(width)), npol == 1)
    img = _paint(on, off, colors)
    return np.ascontiguousarray(np.repeat(img, scale.zoom, axis=0) if scale.zoom > 1 else img)


@dataclass
class FramePlan:
    """The windows of an animation: frame ``i`` shows the events with ``starts[i] <= t < stops[i]`` (µs,
    the recording's own clock). ``total`` counts the frames before a frame limit cut the plan short."""

    starts: np.ndarray
    stops: np.ndarray
    total: int

    def __len__(self) -> int:
        return int(self.starts.shape[0])


def plan_frames(t_first: int, t_last: int, window_us: int, step_us: int | None = None, *, start_us: int = 0,
                duration_us: int | None = None, max_frames: int | None = None) -> FramePlan:
    """Windows of ``window_us`` every ``step_us`` (default: ``window_us``, back to back) from
    ``t_first + start_us`` until the window that holds ``min(t_last, t_first + start_us + duration_us)``;
    at most ``max_frames`` of them (the first ones). Raises ``ValueError`` naming the option for a
    non-positive window or step, a start past the last event or a frame limit below 1.
    """
    def positive(name: str, v) -> int:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"--{name}: must be a positive number of µs (at least 1 µs); got {v!r}")
        return int(v)

    window_us = positive("window-ms", window_us)
    step_us = window_us if step_us is None else positive("step-ms", step_us)
    if isinstance(start_us, bool) or not isinstance(start_us, (int, np.integer)) or start_us < 0:
        raise ValueError(f"--start-ms: must be >= 0; got {start_us!r}")
    a = int(t_first) + int(start_us)
    end = int(t_last)
    if duration_us is not None:
        end = min(end, a + positive("duration-ms", duration_us) - 1)
    if a > end:
        raise ValueError(f"--start-ms: the recording ends {(t_last - t_first) / 1000:g} ms after its first event; "
                         f"got a start at {start_us / 1000:g} ms")
    total = (end - a) // step_us + 1
    n = total
    if max_frames is not None:
        if isinstance(max_frames, bool) or not isinstance(max_frames, (int, np.integer)) or max_frames < 1:
            raise ValueError(f"--max-frames: must be a positive int; got {max_frames!r}")
        n = min(total, int(max_frames))
    starts = a + step_us * np.arange(n, dtype=np.int64)
    return FramePlan(starts, starts + window_us, int(total))


__all__ = [
    "Colors",
    "FramePlan",
    "Scale",
    "event_frame",
    "frame_shape",
    "is_spike_data",
    "parse_color",
    "plan_frames",
    "raster_frame",
    "raster_shape",
]
