"""Stop a running loop on Ctrl-C (SIGINT) or SIGTERM by setting a flag, not by raising inside it.

Python delivers a signal as an exception raised at whatever the main thread is doing. Raised while the loop
waits on its queue's condition variable, a ``KeyboardInterrupt`` can leave the lock half released (CPython
then reports ``cannot release un-acquired lock`` and the summary is lost). While :class:`StopSignals` is
active, both signals only set :attr:`StopSignals.event` and record their name; the loop checks the flag
between batches (it waits on its queue at most 0.1 s at a time) and stops cleanly.
"""

from __future__ import annotations

import signal
import threading


class StopSignals:
    """``with StopSignals() as stop: ... if stop.event.is_set(): ...``; ``stop.received`` is ``"SIGINT"``,
    ``"SIGTERM"`` or None. Off the main thread (where Python cannot install handlers) it does nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.event = threading.Event()
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        self.received = signal.Signals(signum).name
        self.event.set()

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()


__all__ = ["StopSignals"]
