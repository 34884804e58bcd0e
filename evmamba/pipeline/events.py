"""Checks, repairs and conversions of event arrays, shared by readers, binning and the stream loop.

The event dtype and the sensor size are defined in :mod:`evmamba.core.events` (and importable from here):
an event stream is a 1-D numpy structured array of :data:`EVENT_DTYPE` with ``x``, ``y`` (``uint16``), ``t``
(integer microseconds, ``int64``, non-decreasing) and ``p`` (0 or 1, ``uint8``); a sensor size is
``(width, height, polarities)`` as in tonic.

Every public entry point of :mod:`evmamba.pipeline` checks its input with :func:`validate_events`; the
check is one compiled pass over the array, so it costs about a nanosecond per event. Data that breaks the
rules can be repaired explicitly with :func:`repair_events`, and structured arrays of another dtype (tonic's,
for instance) converted with :func:`to_event_array`.
"""

from __future__ import annotations

import numpy as np

from ..core.events import EVENT_DTYPE, SensorSize, check_sensor_size, empty_events, make_events

# Limits used when a check has no sensor size: nothing a uint16/uint8 field can hold exceeds them.
_NO_LIMIT = 1 << 17


def _check_array(events, source: str) -> None:
    if not isinstance(events, np.ndarray):
        raise TypeError(
            f"{source}: events must be a numpy structured array of EVENT_DTYPE; got {type(events).__name__}"
        )
    if events.dtype != EVENT_DTYPE:
        raise TypeError(
            f"{source}: events must have dtype {EVENT_DTYPE.descr}; got {events.dtype.descr} "
            "(convert with evmamba.pipeline.to_event_array)"
        )
    if events.ndim != 1:
        raise ValueError(f"{source}: events must be one-dimensional; got shape {events.shape}")


def validate_events(
    events: np.ndarray,
    sensor_size: SensorSize | None = None,
    source: str = "events",
    *,
    t_min: int | None = None,
) -> np.ndarray:
    """Check an event array at a public boundary and return it unchanged.

    Raises ``TypeError`` for a wrong type or dtype and ``ValueError`` for negative or unsorted timestamps,
    coordinates or polarities outside ``sensor_size``; each message names ``source`` and the field.
    ``t_min`` (µs) is the earliest allowed timestamp, e.g. the last timestamp of the previous chunk of a
    stream. An empty array is valid here (callers that cannot use one say so themselves).
    """
    _check_array(events, source)
    if events.size == 0:
        return events
    if sensor_size is None:
        w = h = npol = _NO_LIMIT
    else:
        w, h, npol = sensor_size
    lower = 0 if t_min is None else max(0, int(t_min))
    from ._validate_kernel import first_bad_event

    code, i = first_bad_event(events, lower, int(w), int(h), int(npol))
    if code == 0:
        return events
    _raise_bad_event(events, sensor_size, source, int(code), int(i), lower, t_min)
    return events  # pragma: no cover - _raise_bad_event always raises


def _raise_bad_event(events, sensor_size, source, code, i, lower, t_min) -> None:
    """Turn a failure code of the compiled check into the error message a user reads."""
    t = events["t"]
    if code == 1:
        if t[i] < 0:
            raise ValueError(f"{source}: field 't' has a negative timestamp {int(t[i])} (µs) at event {i}")
        raise ValueError(
            f"{source}: field 't' starts at {int(t[i])} µs, before the stream's current time {int(t_min)} µs "
            "(chunks of a stream must continue in time order)"
        )
    if code == 2:
        raise ValueError(
            f"{source}: field 't' is not sorted: event {i} has t={int(t[i])} µs after t={int(t[i - 1])} µs"
        )
    field, limit = {3: ("x", 0), 4: ("y", 1), 5: ("p", 2)}[code]
    bound = sensor_size[limit]
    raise ValueError(
        f"{source}: field '{field}' has value {int(events[field][i])} at event {i}, outside the sensor size "
        f"{tuple(sensor_size)} (must be < {bound})"
    )


def repair_events(
    events: np.ndarray,
    sensor_size: SensorSize,
    *,
    sort: bool = True,
    drop_outside: bool = True,
    drop_negative: bool = True,
    source: str = "events",
) -> np.ndarray:
    """The explicit fix for streams that :func:`validate_events` rejects; returns a new valid array.

    ``drop_negative`` removes events with ``t < 0``; ``drop_outside`` removes events whose ``x``, ``y`` or
    ``p`` fall outside ``sensor_size``; ``sort`` orders events by time with a stable sort (events with equal
    timestamps keep their order). A disabled fix leaves that problem in place, and the result is then
    validated, so a stream that still breaks a rule raises the same ``ValueError`` as before.
    """
    _check_array(events, source)
    sensor_size = check_sensor_size(sensor_size, f"{source}: sensor_size")
    keep = np.ones(events.size, dtype=bool)
    if drop_negative:
        keep &= events["t"] >= 0
    if drop_outside:
        w, h, npol = sensor_size
        keep &= (events["x"] < w) & (events["y"] < h) & (events["p"] < npol)
    out = events[keep]
    if sort and out.size > 1 and (np.diff(out["t"]) < 0).any():
        out = out[np.argsort(out["t"], kind="stable")]
    return validate_events(np.ascontiguousarray(out), sensor_size, source)


def to_event_array(array, source: str = "events") -> np.ndarray:
    """Convert a structured array with integer fields ``x``, ``y``, ``t`` and ``p`` to :data:`EVENT_DTYPE`.

    Accepts any field order and integer or boolean field types (tonic's readers give e.g. ``int16`` x/y and
    ``bool`` p); a missing ``y`` (1-D spike data) becomes 0. Values that do not fit the target field
    (negative coordinates, x above 65535, p above 255) raise ``ValueError`` naming ``source`` and the
    field; non-integer fields raise ``TypeError``. Timestamps are not checked here: call
    :func:`validate_events` on the result.
    """
    if isinstance(array, np.ndarray) and array.dtype == EVENT_DTYPE:
        return array
    names = getattr(getattr(array, "dtype", None), "names", None)
    if not isinstance(array, np.ndarray) or names is None:
        raise TypeError(
            f"{source}: expected a numpy structured array with fields x, y, t, p; got {type(array).__name__}"
        )
    out = np.empty(array.shape[0] if array.ndim else 1, dtype=EVENT_DTYPE)
    for field in ("x", "y", "t", "p"):
        if field not in names:
            if field == "y":
                out["y"] = 0
                continue
            raise ValueError(f"{source}: structured array has no field '{field}' (fields: {names})")
        col = np.asarray(array[field]).reshape(-1)
        if not (np.issubdtype(col.dtype, np.integer) or col.dtype == np.bool_):
            raise TypeError(f"{source}: field '{field}' must hold integers; got dtype {col.dtype}")
        if col.size and field != "t":
            info = np.iinfo(EVENT_DTYPE[field])
            lo, hi = int(col.min()), int(col.max())
            if lo < info.min or hi > info.max:
                bad = lo if lo < info.min else hi
                raise ValueError(f"{source}: field '{field}' has value {bad}, outside {info.min}..{info.max}")
        out[field] = col
    return out


__all__ = [
    "EVENT_DTYPE",
    "SensorSize",
    "check_sensor_size",
    "empty_events",
    "make_events",
    "repair_events",
    "to_event_array",
    "validate_events",
]
