"""Summary figures of one event stream: counts, duration, event rates, polarity balance, gaps.

:func:`event_stats` is what ``evmamba info`` prints for a recording. Every figure is computed from the
validated events alone (a 1-D :data:`~evmamba.pipeline.events.EVENT_DTYPE` array, timestamps in µs,
sorted), so the same numbers come out whichever reader produced the array.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..core.events import check_sensor_size
from .events import validate_events

#: Width of the windows over which the peak event rate is measured, µs (10 ms).
PEAK_WINDOW_US = 10_000


def event_stats(events: np.ndarray, sensor_size, *, peak_window_us: int = PEAK_WINDOW_US,
                source: str = "events") -> dict[str, Any]:
    """Figures of a sorted event stream; a plain ``dict`` ready for JSON.

    Keys (times in µs, rates in events per second):

    * ``events``; ``t_first_us``, ``t_last_us``; ``duration_us`` = last - first timestamp;
    * ``rate_mean_per_s`` = events / duration (``None`` when the duration is 0);
    * ``rate_peak_per_s``: the most events in one window of ``peak_window_us``, windows aligned to the
      first event (``[t_first + j * w, t_first + (j + 1) * w)``), divided by the window length. A stream
      shorter than one window has a single, partial window, so its peak can be below its mean;
      ``peak_window_us`` and ``peak_at_us`` (start of the busiest window, relative to ``t_first``);
    * ``on`` / ``off``: events with ``p = 1`` / ``p = 0``; ``on_fraction`` (``None`` for no events);
    * ``largest_gap_us`` and ``largest_gap_at_us`` (the time of the event after the gap, relative to
      ``t_first``): the longest silence between two consecutive events, which shows dropped data or a
      decoder that miscounts time;
    * ``same_time_fraction``: the fraction of events that share their timestamp with the previous event;
    * ``x_range`` / ``y_range``: ``[min, max]`` coordinates (``None`` for no events).

    Raises ``TypeError``/``ValueError`` naming ``source`` for an array that is not valid for
    ``sensor_size`` (see :func:`~evmamba.pipeline.events.validate_events`) and for a non-positive window.
    """
    sensor_size = check_sensor_size(sensor_size, f"{source}: sensor_size")
    validate_events(events, sensor_size, source)
    if isinstance(peak_window_us, bool) or not isinstance(peak_window_us, (int, np.integer)) or peak_window_us < 1:
        raise ValueError(f"{source}: peak_window_us must be a positive int (µs); got {peak_window_us!r}")
    n = int(events.size)
    out: dict[str, Any] = {"events": n, "peak_window_us": int(peak_window_us)}
    if n == 0:
        out.update(t_first_us=None, t_last_us=None, duration_us=0, rate_mean_per_s=None, rate_peak_per_s=None,
                   peak_at_us=None, on=0, off=0, on_fraction=None, largest_gap_us=None, largest_gap_at_us=None,
                   same_time_fraction=None, x_range=None, y_range=None)
        return out
    t = events["t"]
    t0, t1 = int(t[0]), int(t[-1])
    duration = t1 - t0
    windows = np.bincount((t - t0) // peak_window_us)
    busiest = int(windows.argmax())
    on = int(np.count_nonzero(events["p"] == 1))
    gaps = np.diff(t)
    if gaps.size:
        g = int(gaps.argmax())
        largest_gap, gap_at = int(gaps[g]), int(t[g + 1]) - t0
        same = float(np.count_nonzero(gaps == 0) / n)
    else:
        largest_gap, gap_at, same = 0, 0, 0.0
    out.update(
        t_first_us=t0,
        t_last_us=t1,
        duration_us=duration,
        rate_mean_per_s=n / (duration * 1e-6) if duration > 0 else None,
        rate_peak_per_s=int(windows[busiest]) / (peak_window_us * 1e-6),
        peak_at_us=busiest * int(peak_window_us),
        on=on,
        off=n - on,
        on_fraction=on / n,
        largest_gap_us=largest_gap,
        largest_gap_at_us=gap_at,
        same_time_fraction=same,
        x_range=[int(events["x"].min()), int(events["x"].max())],
        y_range=[int(events["y"].min()), int(events["y"].max())],
    )
    return out


__all__ = ["PEAK_WINDOW_US", "event_stats"]
