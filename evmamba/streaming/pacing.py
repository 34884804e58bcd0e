"""Replay pacing: deliver a recording's events when their timestamps say, in real time or N times faster.

A recording's first event is due when its replay starts; an event at ``t`` µs is due
``(t - t_first) / speed`` µs later. A replay slice is released when its end is due (only then is it
complete), so an event waits at most one slice (``chunk_us / speed``) -- plus the sleep's granularity,
about 0.1 ms on Linux -- before the loop sees it. ``speed = inf`` (``--speed max``) never sleeps.
"""

from __future__ import annotations

import math
import time


def parse_speed(value) -> float:
    """``"max"`` -> ``inf``; ``"1"``, ``"2.5"``, ``"x4"``, ``"4x"`` -> that factor. ``ValueError`` otherwise."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        speed = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        if text in ("max", "inf", "fast"):
            return math.inf
        text = text.removeprefix("x").removesuffix("x")
        try:
            speed = float(text)
        except ValueError:
            raise ValueError(
                f"--speed: expected 'max' or a positive factor such as 1, 2 or 0.5; got {value!r}"
            ) from None
    else:
        raise ValueError(f"--speed: expected 'max' or a positive factor; got {value!r}")
    if not speed > 0 or math.isnan(speed):
        raise ValueError(f"--speed: the factor must be positive; got {value!r}")
    return speed


class Pacer:
    """Sleeps until stream times are due. Call :meth:`start` at each recording's first event time."""

    def __init__(self, speed: float = 1.0, clock=time.perf_counter, sleep=time.sleep):
        if not speed > 0:
            raise ValueError(f"Pacer: speed must be positive; got {speed!r}")
        self.speed = float(speed)
        self.clock, self.sleep = clock, sleep
        self._wall0: float | None = None
        self._t0 = 0

    @property
    def paced(self) -> bool:
        return math.isfinite(self.speed)

    @property
    def started(self) -> bool:
        """Whether :meth:`start` (or :meth:`due`) has anchored the schedule."""
        return self._wall0 is not None

    def start(self, t_first_us: int) -> None:
        """A new recording starts now, its first event at ``t_first_us``."""
        self._wall0 = self.clock()
        self._t0 = int(t_first_us)

    def due(self, t_us: int) -> float:
        """The wall-clock time (``clock()`` units, s) at which stream time ``t_us`` is due."""
        if self._wall0 is None:
            self.start(t_us)
        return self._wall0 + (int(t_us) - self._t0) / (1e6 * self.speed)

    def wait_until(self, t_us: int, stop=None) -> float | None:
        """Sleep until ``t_us`` is due; return that due time (None when unpaced). ``stop``: an object with
        ``is_set()`` (a ``threading.Event``) that cuts the wait short."""
        if not self.paced:
            return None
        due = self.due(t_us)
        while True:
            left = due - self.clock()
            if left <= 0 or (stop is not None and stop.is_set()):
                return due
            self.sleep(min(left, 0.05))


__all__ = ["Pacer", "parse_speed"]
