"""The in-memory event representation shared by readers, binning and the stream loop.

An event stream is a 1-D numpy structured array of :data:`EVENT_DTYPE` (13 bytes per event, packed):

* ``x``, ``y`` -- pixel coordinates (``uint16``); 1-D spike data (SHD, SSC) use ``x`` = channel, ``y`` = 0;
* ``t`` -- timestamp in integer microseconds (``int64``), non-decreasing;
* ``p`` -- polarity, 0 (OFF) or 1 (ON) (``uint8``); single-polarity sources use 0.

A sensor size is ``(width, height, polarities)`` as in tonic, e.g. ``(128, 128, 2)`` for a DVS128 and
``(700, 1, 1)`` for SHD.
"""

from __future__ import annotations

import numpy as np

EVENT_DTYPE = np.dtype([("x", "<u2"), ("y", "<u2"), ("t", "<i8"), ("p", "u1")])

SensorSize = tuple[int, int, int]


def make_events(x, y, t, p) -> np.ndarray:
    """Pack four equal-length sequences into an :data:`EVENT_DTYPE` array (no validation)."""
    n = len(t)
    ev = np.empty(n, dtype=EVENT_DTYPE)
    ev["x"], ev["y"], ev["t"], ev["p"] = x, y, t, p
    return ev


def check_sensor_size(sensor_size, source: str = "sensor_size") -> SensorSize:
    """Return ``sensor_size`` as a tuple of three positive ints or raise ``ValueError`` naming ``source``."""
    try:
        w, h, p = (int(v) for v in sensor_size)
    except (TypeError, ValueError):
        raise ValueError(f"{source}: sensor_size must be (width, height, polarities); got {sensor_size!r}") from None
    if w <= 0 or h <= 0 or p not in (1, 2):
        raise ValueError(f"{source}: sensor_size must be positive with 1 or 2 polarities; got {(w, h, p)}")
    return (w, h, p)


def validate_events(events: np.ndarray, sensor_size: SensorSize | None = None, source: str = "events") -> np.ndarray:
    """Check an event array at a public boundary and return it unchanged.

    Raises ``TypeError`` for a wrong type or dtype and ``ValueError`` for negative or unsorted timestamps,
    coordinates or polarities outside ``sensor_size``; each message names ``source`` and the field.
    An empty array is valid here (callers that cannot use one say so themselves).
    """
    if not isinstance(events, np.ndarray):
        raise TypeError(f"{source}: events must be a numpy structured array of EVENT_DTYPE; got {type(events).__name__}")
    if events.dtype != EVENT_DTYPE:
        raise TypeError(f"{source}: events must have dtype {EVENT_DTYPE.descr}; got {events.dtype.descr}")
    if events.ndim != 1:
        raise ValueError(f"{source}: events must be one-dimensional; got shape {events.shape}")
    if events.size == 0:
        return events
    t = events["t"]
    if t[0] < 0:
        raise ValueError(f"{source}: field 't' has a negative timestamp {int(t.min())} (µs)")
    if events.size > 1:
        d = np.diff(t)
        if (d < 0).any():
            i = int(np.argmax(d < 0))
            raise ValueError(
                f"{source}: field 't' is not sorted: event {i + 1} has t={int(t[i + 1])} µs after t={int(t[i])} µs"
            )
    if sensor_size is not None:
        w, h, npol = sensor_size
        for field, limit in (("x", w), ("y", h), ("p", npol)):
            vmax = int(events[field].max())
            if vmax >= limit:
                i = int(np.argmax(events[field] >= limit))
                raise ValueError(
                    f"{source}: field '{field}' has value {vmax} at event {i}, outside the sensor size "
                    f"{tuple(sensor_size)} (must be < {limit})"
                )
    return events
