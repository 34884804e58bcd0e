"""The event representation every layer shares: the event dtype and the sensor size.

An event stream is a 1-D numpy structured array of :data:`EVENT_DTYPE` (13 bytes per event, packed):

* ``x``, ``y`` -- pixel coordinates (``uint16``); 1-D spike data (SHD, SSC) use ``x`` = channel, ``y`` = 0;
* ``t`` -- timestamp in integer microseconds (``int64``), non-decreasing;
* ``p`` -- polarity, 0 (OFF) or 1 (ON) (``uint8``); single-polarity sources use 0.

A sensor size is ``(width, height, polarities)`` as in tonic, e.g. ``(128, 128, 2)`` for a DVS128 and
``(700, 1, 1)`` for SHD. Checks of whole event arrays (order, range) are in :mod:`evmamba.pipeline.events`.
"""

from __future__ import annotations

import numpy as np

EVENT_DTYPE = np.dtype([("x", "<u2"), ("y", "<u2"), ("t", "<i8"), ("p", "u1")])

#: ``(width, height, polarities)``.
SensorSize = tuple[int, int, int]


def make_events(x, y, t, p) -> np.ndarray:
    """Pack four equal-length sequences into an :data:`EVENT_DTYPE` array (no validation)."""
    n = len(t)
    ev = np.empty(n, dtype=EVENT_DTYPE)
    ev["x"], ev["y"], ev["t"], ev["p"] = x, y, t, p
    return ev


def empty_events() -> np.ndarray:
    """A zero-length :data:`EVENT_DTYPE` array."""
    return np.empty(0, dtype=EVENT_DTYPE)


def check_sensor_size(sensor_size, source: str = "sensor_size") -> SensorSize:
    """Return ``sensor_size`` as a tuple of three positive ints or raise ``ValueError`` naming ``source``."""
    try:
        w, h, p = (int(v) for v in sensor_size)
    except (TypeError, ValueError):
        raise ValueError(f"{source}: sensor_size must be (width, height, polarities); got {sensor_size!r}") from None
    if w <= 0 or h <= 0 or p not in (1, 2):
        raise ValueError(f"{source}: sensor_size must be positive with 1 or 2 polarities; got {(w, h, p)}")
    if w > 65536 or h > 65536:
        raise ValueError(f"{source}: sensor_size {(w, h, p)} exceeds the uint16 coordinate range of EVENT_DTYPE")
    return (w, h, p)


__all__ = ["EVENT_DTYPE", "SensorSize", "check_sensor_size", "empty_events", "make_events"]
