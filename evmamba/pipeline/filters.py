"""Event filters on whole recordings: isolated-event denoise, refractory period, crop by time or count.

These are the same compiled loops :func:`evmamba.pipeline.bin_events` runs (its ``denoise_us``,
``refractory_us``, ``t_start_us``/``t_stop_us`` and ``max_events`` options), exposed for use on their own.
Inputs are :data:`~evmamba.pipeline.events.EVENT_DTYPE` arrays (validated); outputs are new arrays, or
views for the crops.
"""

from __future__ import annotations

import numpy as np

from ..core.checks import is_int
from ..core.events import EVENT_DTYPE, check_sensor_size
from .events import validate_events


def _positive_int(name: str, value, source: str, minimum: int = 1) -> int:
    if not is_int(value) or value < minimum:
        raise ValueError(f"{source}: argument '{name}' must be an integer >= {minimum}; got {value!r}")
    return int(value)


def _run_filter(events, sensor_size, denoise_us: int, refractory_us: int, source: str) -> np.ndarray:
    from . import _binning_kernels as K

    sensor_size = check_sensor_size(sensor_size, f"{source}: sensor_size")
    validate_events(events, sensor_size, source)
    w, h, _ = sensor_size
    dn_mem = np.zeros(w * h if denoise_us else 1, np.int64)
    rf_mem = np.full(w * h if refractory_us else 1, K.NEVER_FIRED, np.int64)
    out = np.empty(events.size, EVENT_DTYPE)
    n = K.filter_events(events, w, h, denoise_us, refractory_us, dn_mem, rf_mem, out)
    return out[:n].copy() if n * 2 < events.size else out[:n]


def denoise(events: np.ndarray, sensor_size, filter_us: int, source: str = "events") -> np.ndarray:
    """Drop isolated events; the output equals ``tonic.transforms.Denoise(filter_time=filter_us)``.

    An event is kept when one of its four direct neighbours (x +- 1 or y +- 1, inside the sensor) had an
    event -- kept or not -- at most ``filter_us - 1`` µs before it (earlier in the array). As in tonic, every
    pixel counts as having fired at t = 0 (absolute time), so all events with ``t < filter_us`` are kept
    (on any sensor larger than one pixel). The filter is causal: it never needs a later event.

    One difference from tonic remains, for a degenerate input only: tonic takes the neighbourhood from the
    bounding box of the recording's own events, so when *every* event sits at pixel (0, 0) it keeps none,
    where this keeps those with ``t < filter_us`` (their neighbours exist on the sensor).
    """
    filter_us = _positive_int("filter_us", filter_us, source)
    return _run_filter(events, sensor_size, filter_us, 0, source)


def refractory(events: np.ndarray, sensor_size, refractory_us: int, source: str = "events") -> np.ndarray:
    """Drop an event when its pixel (either polarity) emitted a kept event less than ``refractory_us`` µs
    before; a pixel's first event is always kept. (tonic's ``RefractoryPeriod`` differs: it restarts the
    dead time on dropped events too and drops events at exactly ``refractory_us``.)
    """
    refractory_us = _positive_int("refractory_us", refractory_us, source)
    return _run_filter(events, sensor_size, 0, refractory_us, source)


def crop_time(
    events: np.ndarray,
    t_start_us: int | None = None,
    t_stop_us: int | None = None,
    *,
    relative: bool = True,
    source: str = "events",
) -> np.ndarray:
    """Events with ``start <= t < stop`` (a view). With ``relative`` (the default, as in
    :class:`~evmamba.pipeline.binning.BinningConfig`) both bounds count from the first event's time;
    otherwise they are absolute µs. ``None`` means unbounded.
    """
    from . import _binning_kernels as K

    validate_events(events, None, source)
    for name, v in (("t_start_us", t_start_us), ("t_stop_us", t_stop_us)):
        if v is not None:
            _positive_int(name, v, source, minimum=0)
    if events.size == 0:
        return events
    origin = int(events["t"][0]) if relative else 0
    lo = 0 if t_start_us is None else K.first_at_or_after(events, origin + int(t_start_us))
    hi = events.size if t_stop_us is None else K.first_at_or_after(events, origin + int(t_stop_us))
    return events[lo:max(lo, hi)]


def crop_count(events: np.ndarray, max_events: int, source: str = "events") -> np.ndarray:
    """The first ``max_events`` events (a view)."""
    validate_events(events, None, source)
    return events[: _positive_int("max_events", max_events, source, minimum=0)]
