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


def host_ms(fn: Callable[[], Any], reps: int) -> float:
    """Median host time in ms of one call of ``fn`` issued with the GPU idle (synchronised before each call, not
    after): how long the host takes to launch the work. Near or above the device time, the host sets the pace."""
    import torch

    times = []
    for _ in range(reps):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return 1e3 * statistics.median(times)


#: Calls behind each host-time median (after the timed runs, so everything is compiled and cached).
HOST_REPS = 10
