"""What ``evmamba info`` reports: one event file, or the splits of a dataset.

* :func:`file_info` -- the format, sensor size and :func:`~evmamba.pipeline.stats.event_stats` figures of
  one file, plus whether its timestamps were in order;
* :func:`split_info` -- recordings per class and events (and durations) per recording of one dataset split.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..pipeline.readers import detect_format, read_events
from ..pipeline.stats import event_stats


def file_info(path, sensor_size=None) -> dict[str, Any]:
    """Format, sensor size, event figures and time order of one event file (a plain ``dict`` for JSON).

    The file is read with the readers' default policy, which refuses timestamps that go backwards; when
    that fails but a stable sort by time makes it readable, the figures are those of the sorted events and
    ``time_order`` carries the reader's message (first backward step, number of backward steps).
    ``time_order`` is ``{"sorted": bool, "problem": str | None}``.

    Raises ``FileNotFoundError``, ``TypeError`` or ``ValueError`` (naming the file) for a file that no
    reader accepts.
    """
    fmt = detect_format(path)
    problem = None
    try:
        events, size = read_events(path, sensor_size, fmt)
    except ValueError as exc:
        # Only a time-order problem goes away with sorting; any other error is raised by this second read.
        events, size = read_events(path, sensor_size, fmt, on_unsorted="sort")
        problem = str(exc)
    record: dict[str, Any] = {"path": str(path), "format": fmt, "sensor_size": [int(v) for v in size]}
    record.update(event_stats(events, size, source=str(path)))
    record["time_order"] = {"sorted": problem is None, "problem": problem}
    return record


def _spread(values: list[int]) -> dict[str, float] | None:
    if not values:
        return None
    a = np.asarray(values, dtype=np.int64)
    return {"min": int(a.min()), "median": float(np.median(a)), "max": int(a.max())}


def split_info(dataset, max_recordings: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Recordings per class and events per recording of one dataset split.

    ``dataset`` is an :class:`~evmamba.datasets.base.EventDataset`. Class counts come from its labels; the
    events and durations (µs) per recording (``{"min", "median", "max"}``) from reading the recordings:
    all of them, or ``max_recordings`` spread evenly over the split (``recordings_read`` says how many).
    """
    from tqdm.auto import tqdm

    if max_recordings is not None and (isinstance(max_recordings, bool) or not isinstance(max_recordings, int)
                                       or max_recordings < 1):
        raise ValueError(f"max_recordings must be a positive int or None; got {max_recordings!r}")
    n = len(dataset)
    counts = dataset.class_counts()
    chosen = np.arange(n)
    if max_recordings is not None and n > max_recordings:
        chosen = np.unique(np.linspace(0, n - 1, max_recordings).round().astype(np.int64))
    n_events, durations = [], []
    for i in tqdm(chosen, desc=f"{dataset.name}: reading", unit="rec", disable=not progress, leave=False):
        events, _ = dataset[int(i)]
        n_events.append(int(events.size))
        durations.append(int(events["t"][-1] - events["t"][0]) if events.size else 0)
    return {
        "recordings": n,
        "class_counts": {str(c): int(k) for c, k in zip(dataset.classes, counts)},
        "recordings_read": int(chosen.size),
        "events_per_recording": _spread(n_events),
        "duration_us": _spread(durations),
        "events_read": int(sum(n_events)),
    }


__all__ = ["file_info", "split_info"]
