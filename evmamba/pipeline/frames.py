"""Event-count frames and spatial/temporal rescaling, output-identical to tonic's ``ToFrame`` and ``Downsample``.

:func:`to_frames` slices a recording like ``tonic.transforms.ToFrame`` -- by ``time_window``, ``event_count``,
``n_time_bins`` or ``n_event_bins``, with ``overlap``, ``include_incomplete``, ``start_time`` and ``end_time``
-- and returns the same int16 ``(T, P, H, W)`` array, bit for bit, from one compiled pass. The slice
boundaries are computed with the same floating-point arithmetic as tonic's slicers, so both agree on which
event falls in which frame, also with fractional windows.

Deliberate differences, all on inputs tonic handles oddly:

* an empty recording gives int16 zeros of shape ``(T, P, H, W)`` (tonic returns float64 ``(T, P, W, H)``),
  with T = 1 for ``time_window``/``event_count`` and the bin count otherwise;
* events must be valid for ``sensor_size`` (tonic, for a one-polarity sensor, silently rewrites the
  polarity field of its input to 0; here polarity 1 on such a sensor is a ``ValueError``);
* the input array is never modified.

:func:`downsample` is ``tonic.transforms.Downsample`` (spatial factor or target size, time factor).
"""

from __future__ import annotations

import math

import numpy as np

from ..core.events import EVENT_DTYPE, check_sensor_size
from .events import validate_events


def _number(name: str, value, source: str, *, positive: bool = True, integer: bool = False):
    ok_types = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, ok_types) or not math.isfinite(value):
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{source}: argument '{name}' must be {kind}; got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{source}: argument '{name}' must be > 0; got {value!r}")
    return value


def frame_slices(
    events: np.ndarray,
    *,
    time_window=None,
    event_count=None,
    n_time_bins=None,
    n_event_bins=None,
    overlap=0.0,
    include_incomplete: bool = False,
    start_time=None,
    end_time=None,
    source: str = "events",
) -> tuple[np.ndarray, np.ndarray]:
    """``(starts, stops)``: the int64 event-index range of each frame, as tonic's slicers define it.

    ``events`` must be valid and non-empty. Exactly one of the four slicing arguments must be given.
    """
    from ._frame_kernels import search_times

    chosen = [n for n, v in (("time_window", time_window), ("event_count", event_count),
                             ("n_time_bins", n_time_bins), ("n_event_bins", n_event_bins)) if v is not None]
    if len(chosen) != 1:
        raise ValueError(
            f"{source}: give exactly one of time_window, event_count, n_time_bins, n_event_bins; got {chosen or 'none'}"
        )
    _number("overlap", overlap, source, positive=False)
    t = events["t"]
    n_events = events.size
    if time_window is not None:
        _number("time_window", time_window, source)
        stride = time_window - overlap
        if stride <= 0:
            raise ValueError(f"{source}: overlap ({overlap}) must be smaller than time_window ({time_window})")
        first = t[0] if start_time is None else _number("start_time", start_time, source, positive=False)
        last = t[-1] if end_time is None else _number("end_time", end_time, source, positive=False)
        span = (last - first - time_window) / stride
        count = int(np.ceil(span) + 1) if include_incomplete else int(np.floor(span) + 1)
        count = max(count, 1)  # a window longer than the recording still gives one frame
        window_starts = np.arange(count) * stride + first
        bounds = np.concatenate([window_starts, window_starts + time_window]).astype(np.float64)
        idx = search_times(events, bounds)
        return idx[:count], idx[count:]
    if n_time_bins is not None:
        _number("n_time_bins", n_time_bins, source, integer=True)
        if not 0 <= overlap < 1:
            raise ValueError(f"{source}: overlap must be in [0, 1) for n_time_bins; got {overlap}")
        window = (t[-1] - t[0]) // n_time_bins * (1 + overlap)
        stride = window * (1 - overlap)
        window_starts = np.arange(n_time_bins) * stride + t[0]
        bounds = np.concatenate([window_starts, window_starts + window]).astype(np.float64)
        idx = search_times(events, bounds)
        return idx[:n_time_bins], idx[n_time_bins:]
    if event_count is not None:
        _number("event_count", event_count, source, integer=True)
        per_frame = min(event_count, n_events)
        stride = event_count - overlap
        if stride <= 0:
            raise ValueError(f"{source}: overlap ({overlap}) must be smaller than event_count ({event_count})")
        span = (n_events - per_frame) / stride
        count = int(np.ceil(span) + 1) if include_incomplete else int(np.floor(span) + 1)
        starts = (np.arange(count) * stride).astype(np.int64)
        return starts, np.minimum(starts + per_frame, n_events)
    _number("n_event_bins", n_event_bins, source, integer=True)
    if not 0 <= overlap < 1:
        raise ValueError(f"{source}: overlap must be in [0, 1) for n_event_bins; got {overlap}")
    per_frame = int(n_events // n_event_bins * (1 + overlap))
    stride = int(per_frame * (1 - overlap))
    starts = np.arange(n_event_bins, dtype=np.int64) * stride
    return starts, np.minimum(starts + per_frame, n_events)


def to_frames(
    events: np.ndarray,
    sensor_size,
    *,
    time_window=None,
    event_count=None,
    n_time_bins=None,
    n_event_bins=None,
    overlap=0.0,
    include_incomplete: bool = False,
    start_time=None,
    end_time=None,
    source: str = "events",
) -> np.ndarray:
    """Event-count frames, int16 ``(T, P, H, W)``, identical to ``tonic.transforms.ToFrame`` with the same
    arguments (see the module docstring for the empty and invalid cases). ``time_window``, ``overlap`` (for
    ``time_window``), ``start_time`` and ``end_time`` are in µs; for the bin counts ``overlap`` is a fraction.
    """
    from ._frame_kernels import accumulate_frames

    sensor_size = check_sensor_size(sensor_size, f"{source}: sensor_size")
    validate_events(events, sensor_size, source)
    w, h, npol = sensor_size
    if events.size == 0:
        frame_slices(np.zeros(1, EVENT_DTYPE), time_window=time_window, event_count=event_count,
                     n_time_bins=n_time_bins, n_event_bins=n_event_bins, overlap=overlap, source=source)
        count = n_time_bins if n_time_bins is not None else n_event_bins if n_event_bins is not None else 1
        return np.zeros((count, npol, h, w), np.int16)
    starts, stops = frame_slices(
        events, time_window=time_window, event_count=event_count, n_time_bins=n_time_bins,
        n_event_bins=n_event_bins, overlap=overlap, include_incomplete=include_incomplete,
        start_time=start_time, end_time=end_time, source=source,
    )
    frames = np.empty((starts.size, npol, h, w), np.int16)  # the kernel zeroes each frame as it fills it
    accumulate_frames(events, starts, np.maximum(stops, starts), frames)
    return frames


def downsample(
    events: np.ndarray,
    spatial_factor=1.0,
    time_factor=1.0,
    *,
    sensor_size=None,
    target_size=None,
    source: str = "events",
) -> np.ndarray:
    """Rescale coordinates and timestamps; the output equals ``tonic.transforms.Downsample`` with the same
    arguments: ``x' = trunc(x * fx)``, ``y' = trunc(y * fy)``, ``t' = trunc(t * time_factor)``, computed in
    float64. ``spatial_factor`` is a number or ``(fx, fy)``; ``target_size=(W', H')`` with ``sensor_size``
    sets ``fx = W' / W`` and ``fy = H' / H`` instead. No event is dropped; a new array is returned.

    For the integer factor k of the token binner, ``spatial_factor = 1 / k`` gives the same ``x // k`` when k is
    a power of two (other k may round differently in floating point).
    """
    from ._frame_kernels import scale_events

    validate_events(
        events, None if sensor_size is None else check_sensor_size(sensor_size, f"{source}: sensor_size"), source
    )
    if target_size is not None:
        if sensor_size is None:
            raise ValueError(f"{source}: target_size needs sensor_size")
        fx, fy = (np.asarray(target_size, dtype=np.float64) / np.asarray(sensor_size[:2], dtype=np.float64)).tolist()
    elif isinstance(spatial_factor, (tuple, list)):
        if len(spatial_factor) != 2:
            raise ValueError(f"{source}: spatial_factor must be a number or (fx, fy); got {spatial_factor!r}")
        fx, fy = (float(_number("spatial_factor", f, source)) for f in spatial_factor)
    else:
        fx = fy = float(_number("spatial_factor", spatial_factor, source))
    ft = float(_number("time_factor", time_factor, source))
    out = np.empty(events.size, EVENT_DTYPE)
    scale_events(events, fx, fy, ft, out)
    return out
