"""An event-camera (DVS) pixel model: log-intensity frames in, ON/OFF events out.

Each pixel remembers the log intensity at its last event (its *reference*). Between two rendered frames
the log intensity is taken to change linearly in time; every time it moves one contrast threshold away
from the reference, the pixel fires an event (ON upwards, OFF downwards) at the interpolated crossing
time and the reference moves by that threshold. Thresholds differ from pixel to pixel (fabrication
mismatch). After an event a pixel is blind for a refractory period: crossings inside it still move the
reference (the pixel is held in reset and follows its input) but emit nothing. Background activity is
modelled as shot noise: independent events at a constant rate per pixel with random polarity.

Times are integer microseconds; log intensities are natural logarithms of linear intensity.
"""

from __future__ import annotations

import numba
import numpy as np

from ..core.events import EVENT_DTYPE, make_events

__all__ = [
    "simulate_events",
    "shot_noise_events",
    "merge_events",
    "emit_interval",
    "new_event_buffer",
    "finish_events",
]


@numba.njit(cache=True, nogil=True)
def new_event_buffer(capacity):
    """Empty x, y, t (float64 µs), p arrays for :func:`emit_interval` to fill."""
    return (
        np.empty(capacity, np.uint16),
        np.empty(capacity, np.uint16),
        np.empty(capacity, np.float64),
        np.empty(capacity, np.uint8),
    )


@numba.njit(cache=True, nogil=True)
def emit_interval(l0, l1, t0, t1, y0, y1, x0, x1, ref, last, thr_on, thr_off, refractory_us, buf, n):
    """Fire the pixels in rows [y0, y1) and columns [x0, x1) between two log-intensity frames.

    ``l0``, ``l1`` (H, W) are the log intensities at times ``t0`` < ``t1`` (µs); between them each pixel's
    log intensity is taken to change linearly. ``ref`` (H, W) and ``last`` (H, W, time of the last emitted
    event) are updated in place. Events are appended to ``buf`` (x, y, t, p arrays from
    :func:`new_event_buffer`) from position ``n``; the buffer grows when full. Returns ``(buf, n)``.
    Events of one interval come in pixel order, not time order.
    """
    xs, ys, ts, ps = buf
    span = t1 - t0
    for y in range(y0, y1):
        for x in range(x0, x1):
            a = l0[y, x]
            b = l1[y, x]
            if a == b:
                continue
            r = ref[y, x]
            up = b > a
            c = thr_on[y, x] if up else thr_off[y, x]
            while (b - r >= c) if up else (r - b >= c):
                level = r + c if up else r - c
                # The reference starts within one threshold of ``a``, so the crossing lies in (t0, t1];
                # the clamp only guards against rounding.
                frac = min(max((level - a) / (b - a), 0.0), 1.0)
                te = t0 + frac * span
                r = level
                if te - last[y, x] < refractory_us:
                    continue
                last[y, x] = te
                if n == xs.shape[0]:
                    bigger = new_event_buffer(2 * n)
                    bigger[0][:n] = xs
                    bigger[1][:n] = ys
                    bigger[2][:n] = ts
                    bigger[3][:n] = ps
                    xs, ys, ts, ps = bigger
                xs[n] = x
                ys[n] = y
                ts[n] = te
                ps[n] = 1 if up else 0
                n += 1
            ref[y, x] = r
    return (xs, ys, ts, ps), n


@numba.njit(cache=True, nogil=True)
def _simulate(log_frames, frame_t, thr_on, thr_off, ref, refractory_us):
    n_frames, height, width = log_frames.shape
    # Time of each pixel's last emitted event; far in the past so the first event is never blocked.
    last = np.full((height, width), -1e18)
    buf = new_event_buffer(4096)
    n = 0
    for k in range(1, n_frames):
        buf, n = emit_interval(
            log_frames[k - 1], log_frames[k], frame_t[k - 1], frame_t[k], 0, height, 0, width,
            ref, last, thr_on, thr_off, refractory_us, buf, n,
        )
    return buf[0][:n], buf[1][:n], buf[2][:n], buf[3][:n]


def finish_events(x, y, t_us, p) -> np.ndarray:
    """Sort raw simulator output by time and pack it as :data:`EVENT_DTYPE` (times rounded down to the µs)."""
    order = np.argsort(t_us, kind="stable")
    return make_events(x[order], y[order], np.floor(t_us[order]).astype(np.int64), p[order])


def _per_pixel(value, shape: tuple[int, int], name: str, source: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(shape, float(arr))
    if arr.shape != shape:
        raise ValueError(f"{source}: {name} must be a scalar or have shape {shape} (H, W); got {arr.shape}")
    if not np.all(arr > 0):
        raise ValueError(f"{source}: {name} must be positive everywhere; smallest value {arr.min()!r}")
    return arr


def simulate_events(
    log_frames: np.ndarray,
    frame_times_us: np.ndarray,
    threshold_on=0.25,
    threshold_off=0.25,
    refractory_us: float = 0.0,
    initial_reference: np.ndarray | None = None,
    source: str = "simulate_events",
) -> np.ndarray:
    """Turn a log-intensity video into DVS events.

    Args:
        log_frames: (F, H, W) natural-log intensities, F >= 1.
        frame_times_us: (F,) strictly increasing frame times in µs, the first >= 0.
        threshold_on, threshold_off: contrast thresholds in log units, scalars or (H, W) per-pixel maps (> 0).
        refractory_us: dead time after each event of a pixel, µs (>= 0).
        initial_reference: (H, W) log intensity each pixel remembers at ``frame_times_us[0]``;
            defaults to the first frame.
        source: names the caller in error messages.

    Returns:
        An :data:`EVENT_DTYPE` array sorted by time, ``x`` < W, ``y`` < H, ``p`` 1 = ON / 0 = OFF; each
        timestamp is the crossing time rounded down to the µs.
    """
    log_frames = np.asarray(log_frames)
    if log_frames.ndim != 3 or log_frames.shape[0] < 1:
        raise ValueError(f"{source}: log_frames must have shape (F, H, W) with F >= 1; got {log_frames.shape}")
    if not np.all(np.isfinite(log_frames)):
        raise ValueError(f"{source}: log_frames contains non-finite values (log of zero intensity?)")
    _, h, w = log_frames.shape
    if w > 65535 or h > 65535:
        raise ValueError(f"{source}: frames of {w}x{h} pixels do not fit 16-bit coordinates")
    frame_t = np.asarray(frame_times_us, dtype=np.float64)
    if frame_t.shape != (log_frames.shape[0],):
        raise ValueError(
            f"{source}: frame_times_us must have shape ({log_frames.shape[0]},) to match log_frames; "
            f"got {frame_t.shape}"
        )
    if frame_t[0] < 0 or (frame_t.size > 1 and np.any(np.diff(frame_t) <= 0)):
        raise ValueError(f"{source}: frame_times_us must be non-negative and strictly increasing")
    if refractory_us < 0:
        raise ValueError(f"{source}: refractory_us must be >= 0; got {refractory_us!r}")
    thr_on = _per_pixel(threshold_on, (h, w), "threshold_on", source)
    thr_off = _per_pixel(threshold_off, (h, w), "threshold_off", source)
    if initial_reference is None:
        ref = log_frames[0].astype(np.float64)
    else:
        ref = np.array(initial_reference, dtype=np.float64)
        if ref.shape != (h, w):
            raise ValueError(f"{source}: initial_reference must have shape {(h, w)}; got {ref.shape}")
    x, y, t, p = _simulate(np.ascontiguousarray(log_frames), frame_t, thr_on, thr_off, ref, float(refractory_us))
    return finish_events(x, y, t, p)


def shot_noise_events(
    rng: np.random.Generator, width: int, height: int, duration_us: int, rate_hz: float
) -> np.ndarray:
    """Background events: a Poisson process of ``rate_hz`` per pixel over [0, duration_us), random polarity.

    Returns a time-sorted :data:`EVENT_DTYPE` array.
    """
    if rate_hz < 0 or duration_us < 0:
        raise ValueError(f"shot_noise_events: rate_hz and duration_us must be >= 0; got {rate_hz!r}, {duration_us!r}")
    n = int(rng.poisson(rate_hz * width * height * duration_us * 1e-6))
    t = np.sort(rng.integers(0, max(int(duration_us), 1), size=n))
    return make_events(
        rng.integers(0, width, size=n), rng.integers(0, height, size=n), t, rng.integers(0, 2, size=n)
    )


def merge_events(*streams: np.ndarray) -> np.ndarray:
    """Merge time-sorted event arrays into one time-sorted array (ties keep argument order)."""
    ev = np.concatenate(streams) if streams else np.empty(0, EVENT_DTYPE)
    return ev[np.argsort(ev["t"], kind="stable")]
