"""The bounded queue between the source and the classifier, and what happens when compute falls behind.

The queue holds at most ``capacity`` events (chunks without events -- recording markers -- are always
accepted and never dropped), so a burst cannot grow memory without bound. When a chunk does not fit:

* ``block`` -- the source waits until the loop has taken enough (a replay slips behind its schedule; a UDP
  socket's own buffer then fills, and the kernel drops datagrams we never see);
* ``drop_oldest`` -- the oldest queued events are dropped to make room (whole chunks first; a chunk larger
  than the capacity keeps only its newest ``capacity`` events). Every dropped event is counted;
* ``coarsen`` -- like ``block`` for the source, but the loop, when it finds more than half the capacity
  waiting, takes the whole backlog at once and merges its tokens into coarser time bins
  (:class:`evmamba.streaming.coarsen.Coarsener`): less compute per event, no event lost.

A dropped chunk that carried a recording boundary leaves the boundary in the queue as an empty marker.
"""

from __future__ import annotations

import threading
from collections import deque

from ..core.events import empty_events
from .sources import Chunk

POLICIES = ("block", "drop_oldest", "coarsen")


class EventQueue:
    """Thread-safe FIFO of :class:`~evmamba.streaming.sources.Chunk` bounded by an event count.

    Counters: ``dropped_events``, ``dropped_chunks``, ``high_water`` (most events ever queued at once),
    ``backlog`` (events queued now).
    """

    def __init__(self, capacity: int = 1 << 20, policy: str = "block"):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"--queue-events: the capacity must be a positive int; got {capacity!r}")
        if policy not in POLICIES:
            raise ValueError(f"--policy: must be one of {POLICIES}; got {policy!r}")
        self.capacity, self.policy = capacity, policy
        self._items: deque[Chunk] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.backlog = 0
        self.high_water = 0
        self.dropped_events = 0
        self.dropped_chunks = 0

    # -- producer side ---------------------------------------------------------------------------------
    def put(self, chunk: Chunk, stop: threading.Event | None = None) -> None:
        """Queue ``chunk`` under the policy; with ``block``/``coarsen`` wait for room (or until ``stop``)."""
        n = chunk.n_events
        with self._cond:
            if n and self.policy == "drop_oldest":
                if n > self.capacity:
                    cut = n - self.capacity
                    self.dropped_events += cut
                    chunk = Chunk(chunk.events[cut:], chunk.t_end, chunk.new_recording, chunk.end,
                                  chunk.recording, chunk.label, chunk.arrival)
                    n = self.capacity
                self._drop_oldest(self.backlog + n - self.capacity)
            elif n:
                # A chunk larger than the whole capacity is let in once the queue is empty (or it never would).
                while self.backlog and self.backlog + n > self.capacity and not self._closed:
                    if stop is not None and stop.is_set():
                        return
                    self._cond.wait(0.05)
            self._items.append(chunk)
            self.backlog += n
            self.high_water = max(self.high_water, self.backlog)
            self._cond.notify_all()

    def _drop_oldest(self, excess: int) -> None:
        """Drop at least ``excess`` queued events, oldest first (caller holds the lock)."""
        i = 0
        while excess > 0 and i < len(self._items):
            old = self._items[i]
            if old.n_events == 0:
                i += 1
                continue
            take = old.n_events if excess >= old.n_events else excess
            self.dropped_events += take
            self.backlog -= take
            excess -= take
            if take == old.n_events:
                self.dropped_chunks += 1
                if old.new_recording or old.end:
                    self._items[i] = Chunk(empty_events(), old.t_end, old.new_recording, old.end, old.recording,
                                           old.label, old.arrival)
                    i += 1
                else:
                    del self._items[i]
            else:
                self._items[i] = Chunk(old.events[take:], old.t_end, old.new_recording, old.end, old.recording,
                                       old.label, old.arrival)

    def close(self) -> None:
        """The producer is done: :meth:`get` returns None once the queue is empty."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # -- consumer side ---------------------------------------------------------------------------------
    def get(self, timeout: float | None = None) -> Chunk | None:
        """The oldest chunk; waits up to ``timeout`` s (forever when None). Returns None on timeout or
        when the queue is closed and empty (check :attr:`finished`)."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            if not self._items:
                return None
            chunk = self._items.popleft()
            self.backlog -= chunk.n_events
            self._cond.notify_all()
            return chunk

    def get_batch(self, max_events: int, timeout: float | None = None) -> list[Chunk]:
        """The oldest chunk (waiting up to ``timeout`` s) plus the chunks queued right behind it, up to
        ``max_events`` events in all, without crossing a recording boundary (a batch ends with a chunk
        that ends a recording, and only its first chunk may start one). Empty on timeout or when closed
        and drained. Taking what has piled up in one go is what lets the loop catch up after a burst."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            if not self._items:
                return []
            batch = [self._items.popleft()]
            total = batch[0].n_events
            while self._items and not batch[-1].end:
                nxt = self._items[0]
                if nxt.new_recording or total + nxt.n_events > max_events:
                    break
                batch.append(self._items.popleft())
                total += nxt.n_events
            self.backlog -= total
            self._cond.notify_all()
            return batch

    def get_all(self) -> list[Chunk]:
        """Every queued chunk, oldest first (without waiting)."""
        with self._cond:
            items = list(self._items)
            self._items.clear()
            self.backlog = 0
            self._cond.notify_all()
            return items

    @property
    def finished(self) -> bool:
        """Closed by the producer and drained."""
        with self._cond:
            return self._closed and not self._items


__all__ = ["EventQueue", "POLICIES"]
