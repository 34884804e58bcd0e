"""What a run of the loop reports: counts, real-time factor, latency percentiles, drops and the queue.

Latencies are kept in a log-spaced histogram (:class:`LatencyHistogram`: 0.5 % wide bins from 100 ns to
1 000 s), so memory stays fixed however long the stream runs; percentiles are exact to the bin width and
the maximum is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class LatencyHistogram:
    """Latencies in seconds, weighted (a chunk's tokens share one latency), in log-spaced bins."""

    LO, HI, PER_DECADE = 1e-7, 1e3, 460  # bins 0.5 % wide

    def __init__(self) -> None:
        self._n_bins = int(math.log10(self.HI / self.LO) * self.PER_DECADE) + 1
        self.counts = np.zeros(self._n_bins + 2, np.int64)  # + under/overflow
        self.max = 0.0
        self.n = 0

    def add(self, seconds: float, weight: int = 1) -> None:
        if weight <= 0:
            return
        s = max(float(seconds), 0.0)
        if s < self.LO:
            b = 0
        elif s >= self.HI:
            b = self._n_bins + 1
        else:
            b = 1 + min(int(math.log10(s / self.LO) * self.PER_DECADE), self._n_bins - 1)
        self.counts[b] += weight
        self.n += weight
        self.max = max(self.max, s)

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0-100) in seconds: the geometric centre of its bin (NaN when empty)."""
        if self.n == 0:
            return math.nan
        rank = q / 100.0 * self.n
        b = int(np.searchsorted(np.cumsum(self.counts), max(rank, 1), side="left"))
        if b == 0:
            return self.LO
        if b > self._n_bins:
            return self.max
        centre = self.LO * 10 ** ((b - 0.5) / self.PER_DECADE)
        return min(centre, self.max)


@dataclass
class RecordingResult:
    """One recording's outcome."""

    name: str
    events: int = 0
    tokens: int = 0
    duration_us: int = 0
    label: int | None = None
    final: dict | None = None  # the final decision
    early: dict | None = None  # the early decision, if any

    def to_dict(self) -> dict[str, Any]:
        out = {"recording": self.name, "events": self.events, "tokens": self.tokens, "duration_us": self.duration_us,
               "final": self.final, "early": self.early}
        if self.label is not None:
            out["label"] = self.label
            out["correct"] = None if self.final is None else self.final["class"] == self.label
        return out


@dataclass
class StreamSummary:
    """Totals of a run (see :meth:`to_dict` for the reported keys)."""

    events: int = 0
    tokens: int = 0
    duration_us: int = 0  # summed recording durations (first to last event of each)
    compute_s: float = 0.0  # time spent binning, stepping and deciding (wall clock)
    compute_cpu_s: float = 0.0  # the same work in CPU time of the loop's thread (steadier on a busy machine)
    step_s: float = 0.0  # ... of which the classifier step alone
    wall_s: float = 0.0
    dropped_events: int = 0
    dropped_chunks: int = 0
    queue_high_water: int = 0
    queue_capacity: int = 0
    coarsened_events: int = 0
    tokens_merged: int = 0
    interrupted: bool = False
    stop_signal: str | None = None  # "SIGINT" or "SIGTERM" when a signal stopped the loop
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    recordings: list[RecordingResult] = field(default_factory=list)
    source: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        to_us = lambda s: None if math.isnan(s) else s * 1e6  # noqa: E731 - seconds -> µs
        rtf = (self.duration_us / 1e6) / self.compute_s if self.compute_s > 0 else None
        rtf_cpu = (self.duration_us / 1e6) / self.compute_cpu_s if self.compute_cpu_s > 0 else None
        labelled = [r for r in self.recordings if r.label is not None and r.final is not None]
        return {
            "events": self.events,
            "tokens": self.tokens,
            "recordings": len(self.recordings),
            "duration_s": self.duration_us / 1e6,
            "compute_s": self.compute_s,
            "wall_s": self.wall_s,
            "compute_cpu_s": self.compute_cpu_s,
            "real_time_factor": rtf,
            "real_time_factor_cpu": rtf_cpu,
            "latency_us_p50": to_us(self.latency.percentile(50)),
            "latency_us_p99": to_us(self.latency.percentile(99)),
            "latency_us_max": self.latency.max * 1e6 if self.latency.n else None,
            "events_per_s": self.events / self.compute_s if self.compute_s > 0 else None,
            "tokens_per_s": self.tokens / self.compute_s if self.compute_s > 0 else None,
            "us_per_token_step": self.step_s / self.tokens * 1e6 if self.tokens else None,
            "dropped_events": self.dropped_events,
            "dropped_chunks": self.dropped_chunks,
            "queue_high_water": self.queue_high_water,
            "queue_capacity": self.queue_capacity,
            "coarsened_events": self.coarsened_events,
            "tokens_merged": self.tokens_merged,
            "accuracy": (sum(r.final["class"] == r.label for r in labelled) / len(labelled)) if labelled else None,
            "interrupted": self.interrupted,
            "stop_signal": self.stop_signal,
            "source": self.source,
            "settings": self.settings,
            "per_recording": [r.to_dict() for r in self.recordings],
        }


def format_summary(d: dict[str, Any]) -> str:
    """A few human-readable lines of a summary dict (from :meth:`StreamSummary.to_dict`)."""

    def num(v, fmt="{:.3g}"):
        return "-" if v is None else fmt.format(v)

    lines = [
        f"events {d['events']:,}  tokens {d['tokens']:,}  recordings {d['recordings']}  "
        f"stream {d['duration_s']:.3f} s  compute {d['compute_s']:.3f} s  wall {d['wall_s']:.3f} s",
        f"real-time factor {num(d['real_time_factor'])} (CPU time: {num(d['real_time_factor_cpu'])})  "
        f"events/s {num(d['events_per_s'], '{:,.0f}')}  "
        f"step {num(d['us_per_token_step'])} µs/token",
        f"latency p50 {num(d['latency_us_p50'], '{:.0f}')} µs  p99 {num(d['latency_us_p99'], '{:.0f}')} µs  "
        f"max {num(d['latency_us_max'], '{:.0f}')} µs",
        f"dropped events {d['dropped_events']:,}  "
        f"queue high-water {d['queue_high_water']:,} / {d['queue_capacity']:,} events"
        + (
            f"  coarsened events {d['coarsened_events']:,} (tokens merged {d['tokens_merged']:,})"
            if d["coarsened_events"]
            else ""
        ),
    ]
    src = {k: v for k, v in (d.get("source") or {}).items() if v and k not in ("packets", "events")}
    if src:
        lines.append("source: " + ", ".join(f"{k} {v}" for k, v in src.items()))
    if d.get("accuracy") is not None:
        lines.append(
            f"accuracy {d['accuracy']:.3f} over {sum(1 for r in d['per_recording'] if 'label' in r)} "
            "labelled recordings"
        )
    if d.get("interrupted"):
        lines.append("interrupted (Ctrl-C or SIGTERM): totals cover the events processed until then")
    return "\n".join(lines)


__all__ = ["LatencyHistogram", "RecordingResult", "StreamSummary", "format_summary"]
