"""The terminal view of ``evmamba stream --live``: the top classes as bars and the confidence trend.

A block of plain-text lines on standard error, redrawn in place at most ``hz`` times a second::

    5.bs2                  t =   0.731 s   events 91,234   queue 0
      right_arm_clockwise          ████████████████░░░░  0.82
      right_arm_counter_clockwise  ██░░░░░░░░░░░░░░░░░░  0.09
      air_drums                    █░░░░░░░░░░░░░░░░░░░  0.03
      confidence  ▂▃▃▅▆▇▇███  last 2.0 s; right_arm_clockwise on top for 0.40 s

The trend is a sparkline of the top class's probability, one sample per ``sample_us`` of stream time
(the last value seen in each interval), over the last ``history`` intervals; "on top for" is the stream
time since the current top class took the lead. On a terminal the block is redrawn with two ANSI
sequences (cursor up, erase line) that every common terminal understands, so no curses library is
needed; when standard error is not a terminal (a file, a pipe), one line per second is appended
instead. Terminals whose encoding cannot show the block characters get ASCII ones.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import TextIO

import numpy as np

SPARK_UNICODE = "▁▂▃▄▅▆▇█"
SPARK_ASCII = "_.-:=+*#"


def sparkline(values, chars: str = SPARK_UNICODE) -> str:
    """One character per value in [0, 1]: ``chars[0]`` for 0 up to ``chars[-1]`` for 1 (clipped)."""
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    idx = np.minimum((v * len(chars)).astype(np.int64), len(chars) - 1)
    return "".join(chars[i] for i in idx)


def bar(fraction: float, width: int, full: str = "#", empty: str = "-") -> str:
    """A bar of ``width`` characters, ``round(fraction * width)`` of them ``full``."""
    n = int(round(min(max(float(fraction), 0.0), 1.0) * width))
    return full * n + empty * (width - n)


class LiveView:
    """The live block described in the module docstring.

    ``update(name, t_us, probs, events, queue)`` is called by the loop after each step with the latest
    probabilities ``(C,)``, the recording's stream time (µs since its first event), events consumed and
    the queue backlog; ``close()`` ends the block. ``render(...)`` returns the lines without drawing.
    """

    def __init__(self, classes, stream: TextIO = sys.stderr, hz: float = 10.0, top_k: int = 3,
                 history: int = 40, sample_us: int = 50_000, ansi: bool | None = None):
        if not hz > 0:
            raise ValueError(f"LiveView: hz must be positive; got {hz!r}")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"LiveView: top_k must be a positive int; got {top_k!r}")
        if isinstance(sample_us, bool) or not isinstance(sample_us, int) or sample_us < 1:
            raise ValueError(f"LiveView: sample_us must be a positive int; got {sample_us!r}")
        self.classes, self.stream = [str(c) for c in classes], stream
        self.top_k, self.history, self.sample_us = top_k, int(history), sample_us
        tty = bool(getattr(stream, "isatty", lambda: False)())
        self.ansi = tty if ansi is None else bool(ansi)
        self.period = 1.0 / hz if self.ansi else 1.0
        encoding = getattr(stream, "encoding", None) or "ascii"
        try:
            (SPARK_UNICODE + "█").encode(encoding)
            self.spark = SPARK_UNICODE
        except (UnicodeEncodeError, LookupError):
            self.spark = SPARK_ASCII
        self._last_draw = -1e9
        self._drawn = 0  # lines of the block on screen
        self._latest: tuple | None = None  # the arguments of the last update, drawn once more by close()
        self._reset(None)

    def _reset(self, name) -> None:
        self._name = name
        self._samples: dict[int, float] = {}  # stream-time interval -> top-class probability
        self._leader: int | None = None
        self._lead_since = 0
        self._t = -1

    def _record(self, name: str, t_us: int, probs: np.ndarray) -> None:
        if name != self._name or t_us < self._t:
            self._reset(name)
        self._t = int(t_us)
        top = int(np.argmax(probs))
        if top != self._leader:
            self._leader, self._lead_since = top, int(t_us)
        bucket = int(t_us) // self.sample_us
        self._samples[bucket] = float(probs[top])
        if len(self._samples) > 4 * self.history:  # forget intervals that can no longer be shown
            for k in sorted(self._samples)[: -self.history]:
                del self._samples[k]

    def _name_of(self, c: int) -> str:
        return self.classes[c] if 0 <= c < len(self.classes) else str(c)

    def render(self, name: str, t_us: int, probs: np.ndarray, events: int, queue: int) -> list[str]:
        """The block's lines for the state recorded so far (see the module docstring)."""
        probs = np.asarray(probs, dtype=np.float64)
        order = np.lexsort((np.arange(probs.size), -probs))[: self.top_k]
        label_w = max(len(self._name_of(int(c))) for c in order)
        label_w = min(max(label_w, 10), 32)
        lines = [f"{name[-32:]}   t = {t_us / 1e6:8.3f} s   events {events:,}   queue {queue:,}"]
        full, empty = ("█", "░") if self.spark is SPARK_UNICODE else ("#", "-")
        for c in order:
            label = self._name_of(int(c))[:label_w]
            lines.append(f"  {label.ljust(label_w)}  {bar(probs[c], 20, full, empty)}  {probs[c]:.2f}")
        now = int(t_us) // self.sample_us
        first = now - self.history + 1
        shown = [b for b in sorted(self._samples) if b >= first]
        values = []
        last = None
        for b in range(shown[0] if shown else now, now + 1):
            last = self._samples.get(b, last)  # an interval without an update repeats the last value
            values.append(0.0 if last is None else last)
        span = len(values) * self.sample_us / 1e6
        lead = ""
        if self._leader is not None:
            lead = f"; {self._name_of(self._leader)} on top for {(int(t_us) - self._lead_since) / 1e6:.2f} s"
        lines.append(f"  confidence  {sparkline(values, self.spark)}  last {span:.1f} s{lead}")
        return lines

    def update(self, name: str, t_us: int, probs: np.ndarray, events: int, queue: int, force: bool = False) -> None:
        """Record the latest probabilities; redraw if the last draw is at least one period old (or ``force``)."""
        self._record(name, t_us, probs)
        self._latest = (name, t_us, probs, events, queue)
        now = time.perf_counter()
        if not force and now - self._last_draw < self.period:
            return
        self._last_draw = now
        self._draw(self.render(name, t_us, probs, events, queue))

    def _draw(self, lines: list[str]) -> None:
        if self.ansi:
            width = max(20, shutil.get_terminal_size((120, 24)).columns - 1)
            out = [f"\x1b[{self._drawn}F"] if self._drawn else []
            out += [f"\x1b[2K{ln[:width]}\n" for ln in lines]
            if self._drawn > len(lines):  # the block shrank (fewer classes): clear what is left below
                out += ["\x1b[2K\n"] * (self._drawn - len(lines))
            self._drawn = max(self._drawn, len(lines))
            self.stream.write("".join(out))
        else:
            self.stream.write(" | ".join(ln.strip() for ln in lines) + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Draw the last state once more (it may not have been drawn yet) and leave the cursor below it."""
        if self._latest is not None:
            latest, self._latest = self._latest, None
            self._draw(self.render(*latest))
        self.stream.flush()


__all__ = ["LiveView", "bar", "sparkline"]
