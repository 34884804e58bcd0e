"""Host memory of this process and of its child processes (DataLoader workers), read from ``/proc`` (Linux).

Per process: ``VmRSS`` (resident set, kB, pages shared with other processes counted in full), ``VmHWM`` (the
highest RSS so far) and ``Pss`` from ``smaps_rollup`` (proportional set: each shared page divided among the
processes that share it, so PSS sums over processes without counting forked copy-on-write pages twice).
Elsewhere every figure is NaN.
"""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path

_PROC = Path("/proc")


def _status_kb(pid: int, keys=("VmRSS", "VmHWM")) -> dict[str, float]:
    out = {k: math.nan for k in keys}
    try:
        for line in (_PROC / str(pid) / "status").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in out:
                out[name] = float(rest.split()[0])
    except (OSError, ValueError, IndexError):  # the process ended, or no /proc
        pass
    return out


def _pss_kb(pid: int) -> float:
    try:
        for line in (_PROC / str(pid) / "smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return math.nan


def children(pid: int | None = None) -> list[int]:
    """Ids of the direct child processes of ``pid`` (default: this process); empty without ``/proc``."""
    pid = os.getpid() if pid is None else pid
    kids = []
    try:
        entries = [p for p in _PROC.iterdir() if p.name.isdigit()]
    except OSError:
        return kids
    for entry in entries:
        try:
            stat = (entry / "stat").read_text()
            # The command name (field 2) is in parentheses and may hold spaces: the parent id follows it.
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            kids.append(int(entry.name))
    return kids


def sample(pss: bool = True) -> dict[str, float]:
    """Memory now, in MB (10^6 bytes): ``rss_main``, ``hwm_main`` (this process's peak RSS so far),
    ``rss_children`` (sum over the child processes), ``hwm_children`` (the largest child's peak),
    ``pss_total`` (this process and its children; NaN when ``pss`` is false) and ``n_children``."""
    me = os.getpid()
    main = _status_kb(me)
    kids = children(me)
    stats = [_status_kb(k) for k in kids]
    out = {
        "rss_main": main["VmRSS"] / 1e3,
        "hwm_main": main["VmHWM"] / 1e3,
        "rss_children": sum(s["VmRSS"] for s in stats if not math.isnan(s["VmRSS"])) / 1e3,
        "hwm_children": max((s["VmHWM"] for s in stats if not math.isnan(s["VmHWM"])), default=0.0) / 1e3,
        "pss_total": math.nan,
        "n_children": float(len(kids)),
    }
    if pss:
        out["pss_total"] = sum(v for v in (_pss_kb(p) for p in (me, *kids)) if not math.isnan(v)) / 1e3
    return out


class PeakSampler:
    """Samples :func:`sample` every ``interval`` seconds in a background thread and keeps each figure's
    maximum (``peaks``), so that short peaks between the caller's own samples are seen too. A context manager."""

    def __init__(self, interval: float = 0.2, pss: bool = True):
        self.interval, self.pss = float(interval), bool(pss)
        self.peaks: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="memory-sampler", daemon=True)

    def _take(self) -> None:
        for k, v in sample(self.pss).items():
            if not math.isnan(v):
                self.peaks[k] = max(v, self.peaks.get(k, -math.inf))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._take()

    def __enter__(self) -> PeakSampler:
        self._take()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._take()
