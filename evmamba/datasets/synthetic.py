"""SyntheticShapes: a built-in event-camera dataset that needs no download.

Each sample is a short recording of one bright or dark shape on a uniform background, seen by a
simulated DVS (see :mod:`evmamba.datasets.dvs_simulator`). Five classes:

* ``square``, ``triangle``, ``ring`` -- the shape makes three small saccades around its start point (as the
  camera does in N-MNIST), so its outline appears in the events; it is nearly upright and turns slowly;
* ``bar_cw``, ``bar_ccw`` -- a bar spins about its centre, clockwise or counter-clockwise *as seen on
  screen* (image rows grow downwards). The two spin classes make the same event-count image: telling
  them apart needs the order of the events.

Size, position, speed, saccade path, background level and the sign and strength of the contrast are drawn
per sample, so the number of events alone says little about the class.

Determinism: the events of sample ``i`` of a split depend only on ``(seed, split, i)`` and the dataset
options. Each sample draws from its own ``numpy.random.SeedSequence([seed, split_code, i])`` (train 0,
test 1), so any item can be made on its own, in any order or process, and train and test never share a
seed. The per-pixel threshold mismatch belongs to the simulated sensor and is drawn once from
``SeedSequence([seed, 2, 0])``: train and test are recorded by the same camera.

Labels are ``i % 5``: every split of a multiple of five samples is exactly balanced.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numba
import numpy as np

from ..core.events import check_sensor_size
from .base import EventDataset
from .dvs_simulator import emit_interval, finish_events, merge_events, new_event_buffer, shot_noise_events

__all__ = ["SyntheticShapes", "CLASSES", "count_image"]

CLASSES = ("square", "triangle", "ring", "bar_cw", "bar_ccw")
SPLIT_CODES = {"train": 0, "test": 1}
DEFAULT_SIZES = {"train": 2000, "test": 500}
_SENSOR_STREAM = 2  # SeedSequence slot of the sensor's own randomness; never a split code

# Shape ids understood by the renderer.
_BOX, _TRIANGLE, _RING = 0, 1, 2


@numba.njit(cache=True, nogil=True)
def _render_frame(frame, shape, size_a, size_b, cx, cy, angle, log_bg, gain):
    """Draw one shape into ``frame`` (H, W), a log-intensity image that is background outside the box drawn.

    ``shape``: 0 box with half-sides (size_a, size_b); 1 equilateral triangle with circumradius size_a and a
    vertex pointing up; 2 ring of centre-line radius size_a and half-thickness size_b. Lengths in pixels,
    centre (cx, cy) in pixel coordinates, ``angle`` in radians. Intensity is
    ``exp(log_bg) * (1 + gain * coverage)`` with an anti-aliased coverage in [0, 1] (a one-pixel ramp across
    the edge), so sub-pixel motion changes intensities smoothly. Writes every pixel of the returned box
    ``(y0, y1, x0, x1)`` (half-open) and nothing outside it.
    """
    height, width = frame.shape
    s3 = math.sqrt(3.0) / 2.0
    log_fg = log_bg + math.log1p(gain)
    ca = math.cos(angle)
    sa = math.sin(angle)
    # Half-extents of the shape's bounding box, plus the anti-aliasing ramp.
    if shape == _BOX:
        ex = abs(size_a * ca) + abs(size_b * sa) + 1.0
        ey = abs(size_a * sa) + abs(size_b * ca) + 1.0
    else:
        ex = ey = size_a + size_b + 1.0
    y0 = min(max(int(math.floor(cy - ey)), 0), height)
    y1 = max(min(int(math.ceil(cy + ey)) + 1, height), y0)
    x0 = min(max(int(math.floor(cx - ex)), 0), width)
    x1 = max(min(int(math.ceil(cx + ex)) + 1, width), x0)
    for y in range(y0, y1):
        dy = y + 0.5 - cy
        for x in range(x0, x1):
            dx = x + 0.5 - cx
            # Shape coordinates: rotate the pixel by -angle about the shape's centre.
            u = ca * dx + sa * dy
            v = -sa * dx + ca * dy
            if shape == _BOX:
                qx = abs(u) - size_a
                qy = abs(v) - size_b
                ox = max(qx, 0.0)
                oy = max(qy, 0.0)
                sdf = math.sqrt(ox * ox + oy * oy) + min(max(qx, qy), 0.0)
            elif shape == _TRIANGLE:
                # Largest signed distance to the three edge lines: exact inside, a slight under-estimate
                # outside the corners, which only softens the corners.
                sdf = max(v, max(s3 * u - 0.5 * v, -s3 * u - 0.5 * v)) - 0.5 * size_a
            else:
                sdf = abs(math.sqrt(u * u + v * v) - size_a) - size_b
            if sdf >= 0.5:
                frame[y, x] = log_bg
            elif sdf <= -0.5:
                frame[y, x] = log_fg
            else:
                frame[y, x] = log_bg + math.log1p(gain * (0.5 - sdf))
    return y0, y1, x0, x1


@numba.njit(cache=True, nogil=True)
def _simulate_shape(
    shape, size_a, size_b, cx, cy, angle, frame_t, log_bg, gain, ref_jitter, thr_on, thr_off, refractory_us
):
    """Render the shape frame by frame (poses cx, cy, angle at frame_t, µs) and run the DVS pixels on it.

    Only two frames are kept, and only the union of the shape's boxes in consecutive frames is visited:
    everything else is static background and cannot fire. Each pixel's initial memory is the first frame
    plus ``ref_jitter`` (H, W, log units).
    Returns raw x, y, t (float64 µs), p arrays (see :func:`~evmamba.datasets.dvs_simulator.emit_interval`).
    """
    height, width = ref_jitter.shape
    prev = np.full((height, width), log_bg)
    cur = np.full((height, width), log_bg)
    last = np.full((height, width), -1e18)
    py0, py1, px0, px1 = _render_frame(prev, shape, size_a, size_b, cx[0], cy[0], angle[0], log_bg, gain)
    ref = prev + ref_jitter
    # ``cur`` holds no shape yet; later it holds the frame before ``prev``, whose box must be cleared.
    sy0, sy1, sx0, sx1 = 0, 0, 0, 0
    buf = new_event_buffer(4096)
    n = 0
    for k in range(1, frame_t.shape[0]):
        cur[sy0:sy1, sx0:sx1] = log_bg
        cy0, cy1, cx0, cx1 = _render_frame(cur, shape, size_a, size_b, cx[k], cy[k], angle[k], log_bg, gain)
        buf, n = emit_interval(
            prev, cur, frame_t[k - 1], frame_t[k],
            min(py0, cy0), max(py1, cy1), min(px0, cx0), max(px1, cx1),
            ref, last, thr_on, thr_off, refractory_us, buf, n,
        )
        prev, cur = cur, prev
        sy0, sy1, sx0, sx1 = py0, py1, px0, px1
        py0, py1, px0, px1 = cy0, cy1, cx0, cx1
    return buf[0][:n], buf[1][:n], buf[2][:n], buf[3][:n]


def _saccade_path(rng: np.random.Generator, t: np.ndarray, amplitude: float) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (dx, dy) in pixels along a closed three-segment path start -> a -> b -> start over t in [0, 1]."""
    phi = rng.uniform(0, 2 * np.pi)
    turn = rng.choice([-1.0, 1.0]) * rng.uniform(np.pi / 3, 2 * np.pi / 3)
    a = amplitude * np.array([np.cos(phi), np.sin(phi)])
    b = amplitude * rng.uniform(0.7, 1.0) * np.array([np.cos(phi + turn), np.sin(phi + turn)])
    way = np.stack([np.zeros(2), a, b, np.zeros(2)])
    seg = np.minimum((t * 3).astype(np.int64), 2)
    frac = (t * 3 - seg)[:, None]
    pos = way[seg] * (1 - frac) + way[seg + 1] * frac
    return pos[:, 0], pos[:, 1]


class SyntheticShapes(EventDataset):
    """Moving and spinning shapes seen by a simulated event camera; ``dataset[i] -> (events, label)``.

    Args:
        split: ``"train"`` or ``"test"``.
        n_samples: number of samples (an int, or a mapping from split name to int); default 2000 for
            train, 500 for test.
        sensor_size: ``(width, height, 2)``; shapes scale with ``min(width, height) / 64``.
        duration_us: length of each recording, µs.
        seed: non-negative int; see the module docstring for how samples are seeded.
        frame_us: time step of the rendered intensity frames, µs (the fastest edge moves < 0.3 px per step
            at the default 500 µs).
        contrast_threshold: nominal ON and OFF threshold, log units.
        threshold_mismatch: standard deviation of the per-pixel thresholds relative to the nominal value.
        refractory_us: per-pixel dead time after an event, µs.
        noise_hz: shot-noise rate per pixel, Hz.
        cache: keep generated samples in memory (about 13 bytes per event) so a second access is free.

    Events are :data:`EVENT_DTYPE` (x, y, t µs, p), sorted by time, within ``sensor_size``.
    """

    name = "synthetic"

    def __init__(
        self,
        split: str = "train",
        n_samples: int | Mapping[str, int] | None = None,
        sensor_size=(64, 64, 2),
        duration_us: int = 100_000,
        seed: int = 0,
        frame_us: int = 500,
        contrast_threshold: float = 0.25,
        threshold_mismatch: float = 0.05,
        refractory_us: int = 100,
        noise_hz: float = 1.0,
        cache: bool = False,
    ):
        src = type(self).__name__
        if split not in SPLIT_CODES:
            raise ValueError(f"{src}: split must be one of {sorted(SPLIT_CODES)}; got {split!r}")
        if isinstance(n_samples, Mapping):
            # One config for both splits: {train: 2000, test: 500}.
            if split not in n_samples:
                raise ValueError(f"{src}: n_samples has no entry for split {split!r}; got {dict(n_samples)!r}")
            n_samples = n_samples[split]
        if n_samples is None:
            n_samples = DEFAULT_SIZES[split]
        if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 0:
            raise ValueError(f"{src}: n_samples must be an int >= 0; got {n_samples!r}")
        w, h, npol = check_sensor_size(sensor_size, f"{src}: sensor_size")
        if npol != 2:
            raise ValueError(f"{src}: sensor_size must have 2 polarities (ON and OFF); got {sensor_size!r}")
        if min(w, h) < 16:
            raise ValueError(f"{src}: sensor_size must be at least 16x16 pixels; got {sensor_size!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"{src}: seed must be an int >= 0; got {seed!r}")
        if not (isinstance(frame_us, (int, np.integer)) and frame_us > 0):
            raise ValueError(f"{src}: frame_us must be a positive int; got {frame_us!r}")
        if not (isinstance(duration_us, (int, np.integer)) and duration_us >= 3 * frame_us):
            raise ValueError(f"{src}: duration_us must be an int >= 3 * frame_us ({3 * frame_us}); got {duration_us!r}")
        for arg, val, lo in (
            ("contrast_threshold", contrast_threshold, 1e-3),
            ("threshold_mismatch", threshold_mismatch, 0.0),
            ("refractory_us", refractory_us, 0.0),
            ("noise_hz", noise_hz, 0.0),
        ):
            if not (isinstance(val, (int, float, np.integer, np.floating)) and val >= lo):
                raise ValueError(f"{src}: {arg} must be a number >= {lo}; got {val!r}")
        self.split = split
        self.classes = list(CLASSES)
        # Classes take turns, so any prefix of a split is balanced too.
        self.labels = np.arange(int(n_samples), dtype=np.int64) % len(CLASSES)
        self.sensor_size = (w, h, 2)
        self.duration_us = int(duration_us)
        self.seed = int(seed)
        self.frame_us = int(frame_us)
        self.contrast_threshold = float(contrast_threshold)
        self.threshold_mismatch = float(threshold_mismatch)
        self.refractory_us = float(refractory_us)
        self.noise_hz = float(noise_hz)
        self.cache = bool(cache)
        self._memo: dict[int, np.ndarray] = {}
        self._thresholds: tuple[np.ndarray, np.ndarray] | None = None

    # -- dataset protocol (EventDataset supplies __len__, __getitem__ and index checks) ---------------------
    def label(self, i: int) -> int:
        """The class index of sample ``i`` (without generating it)."""
        return int(self.labels[self._index(i)])

    def source(self, index) -> str:
        """A name for sample ``index`` in messages and cache files."""
        return f"synthetic:{self.split}:seed={self.seed}:{self._index(index)}"

    def _load(self, i: int) -> np.ndarray:
        ev = self._memo.get(i)
        if ev is None:
            ev = self._generate(i)
            if self.cache:
                self._memo[i] = ev
        return ev

    def __getstate__(self):
        # Workers regenerate what they need; the memo can be large.
        state = self.__dict__.copy()
        state["_memo"] = {}
        return state

    def __repr__(self) -> str:
        return (
            f"SyntheticShapes(split={self.split!r}, n_samples={len(self)}, sensor_size={self.sensor_size}, "
            f"duration_us={self.duration_us}, seed={self.seed})"
        )

    # -- generation -----------------------------------------------------------------------------------------
    def _sensor_thresholds(self) -> tuple[np.ndarray, np.ndarray]:
        if self._thresholds is None:
            w, h, _ = self.sensor_size
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, _SENSOR_STREAM, 0]))
            c, s = self.contrast_threshold, self.threshold_mismatch
            # Clipped so no pixel becomes pathologically sensitive.
            on = np.clip(rng.normal(c, s * c, (h, w)), 0.3 * c, None)
            off = np.clip(rng.normal(c, s * c, (h, w)), 0.3 * c, None)
            self._thresholds = (on, off)
        return self._thresholds

    def _generate(self, i: int) -> np.ndarray:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, SPLIT_CODES[self.split], i]))
        w, h, _ = self.sensor_size
        scale = min(w, h) / 64.0
        n_frames = self.duration_us // self.frame_us + 1
        frame_t = np.arange(n_frames, dtype=np.float64) * self.frame_us
        tn = frame_t / frame_t[-1]  # normalised time in [0, 1]
        seconds = frame_t * 1e-6
        label = i % len(CLASSES)

        log_bg = rng.uniform(np.log(0.15), np.log(0.5))
        # Object brighter or darker than the background: flips which polarity leads.
        contrast = rng.uniform(0.45, 1.1) * rng.choice([-1.0, 1.0])
        gain = float(np.expm1(contrast))

        if label < 3:
            cx0 = w / 2 + rng.uniform(-4, 4) * scale
            cy0 = h / 2 + rng.uniform(-4, 4) * scale
            dx, dy = _saccade_path(rng, tn, rng.uniform(3.0, 6.0) * scale)
            cx, cy = cx0 + dx, cy0 + dy
            angle = rng.uniform(-0.25, 0.25) + rng.uniform(-1.0, 1.0) * seconds
            if label == 0:
                shape, a = _BOX, rng.uniform(7.0, 11.0) * scale
                b = a
            elif label == 1:
                shape, a, b = _TRIANGLE, rng.uniform(10.0, 15.0) * scale, 0.0
            else:
                shape, a, b = _RING, rng.uniform(7.0, 11.0) * scale, rng.uniform(1.0, 1.8) * scale
        else:
            cx = np.full(n_frames, w / 2 + rng.uniform(-3, 3) * scale)
            cy = np.full(n_frames, h / 2 + rng.uniform(-3, 3) * scale)
            # With rows growing downwards, an increasing angle turns clockwise on screen.
            spin = 1.0 if label == 3 else -1.0
            angle = rng.uniform(0, np.pi) + spin * rng.uniform(7.0, 14.0) * seconds
            shape, a, b = _BOX, rng.uniform(14.0, 22.0) * scale, rng.uniform(1.2, 2.2) * scale

        thr_on, thr_off = self._sensor_thresholds()
        # The pixels' memory at the start is not exactly the first frame: a random phase within the
        # thresholds keeps them from firing in lock-step.
        jitter = rng.uniform(-0.5, 0.5, (h, w)) * self.contrast_threshold
        x, y, t, p = _simulate_shape(
            shape, float(a), float(b), np.asarray(cx, np.float64), np.asarray(cy, np.float64),
            np.asarray(angle, np.float64), frame_t, float(log_bg), gain, jitter, thr_on, thr_off, self.refractory_us,
        )
        ev = finish_events(x, y, t, p)
        noise = shot_noise_events(rng, w, h, self.duration_us, self.noise_hz)
        return merge_events(ev, noise)


def count_image(events: np.ndarray, sensor_size) -> np.ndarray:
    """Per-pixel event counts, (P, H, W) int64, for inspection and simple baselines."""
    w, h, npol = sensor_size
    img = np.zeros((npol, h, w), np.int64)
    np.add.at(img, (events["p"].astype(np.int64), events["y"].astype(np.int64), events["x"].astype(np.int64)), 1)
    return img

