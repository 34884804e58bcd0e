"""Shared helpers for the benchmarks: steady-state timing and the machine's load. (Tables and JSON records
come from :mod:`evmamba.core.output`, shared with the commands.)"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any


def time_calls(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """(median wall seconds, median thread-CPU seconds) of ``repeats`` calls of ``fn`` after one warm-up call.

    On a shared machine other processes take turns on the cores; the thread's CPU time is what the calls
    themselves consumed, so it is the steadier of the two.
    """
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        c0, w0 = time.thread_time(), time.perf_counter()
        fn()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.thread_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def load_average() -> float:
    """The 1-minute load average (NaN where the platform has none)."""
    try:
        return os.getloadavg()[0]
    except OSError:  # pragma: no cover - not on Linux
        return float("nan")
