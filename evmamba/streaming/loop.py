"""The real-time loop: source -> bounded queue -> streaming binner -> classifier step -> decisions -> output.

Two threads. The *producer* iterates the source, paces replayed recordings by their timestamps
(:class:`~evmamba.streaming.pacing.Pacer`) and puts chunks into the bounded
:class:`~evmamba.streaming.backlog.EventQueue`. The *consumer* (the calling thread, so that Ctrl-C lands
there) takes chunks, bins them with a :class:`~evmamba.pipeline.binning.StreamingBinner`, advances the
classifier by the new tokens (a :class:`~evmamba.streaming.fast_step.FastStepper` on the CPU, or
:class:`~evmamba.streaming.gpu_step.GraphStepper` on CUDA), updates the decisions and writes JSON lines.
The compiled step releases the GIL, so the producer keeps receiving while the consumer computes.

**Latency** of a token: from the arrival of the chunk that released it -- the arrival of the datagram or
packet (live sources), the time the slice was due (paced replay), or the moment the loop took the chunk
(``--speed max``, which has no schedule) -- to the moment the logits after that token are available on the
host. A time-bin token is released by the chunk that carries the stream past its bin's end (the event or
slice end that completes it), an unmerged token by the chunk holding its event.

**Batches**: the consumer takes every chunk waiting in the queue (up to ``batch_events`` events, within one
recording) and bins and steps them as one piece of work, so that after a burst the per-call overheads are
paid once; while the loop keeps up, a batch is a single chunk. Latency is still attributed per chunk.

**Recordings**: a chunk's ``new_recording``/``end`` markers, and (with ``reset_gap_us``) a silence of at
least that long between two events, end a recording: the open bin is flushed, the final decision is
written, and the binner, the classifier state and the decision tracker are reset.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np

from ..pipeline.binning import TIME_UNITS_US, BinningConfig, StreamingBinner, TokenSequence, token_grid, vocab_size
from ..pipeline.surfaces import SurfaceTracker
from .backlog import EventQueue
from .coarsen import Coarsener
from .decisions import DecisionTracker, softmax
from .liveview import LiveView
from .pacing import Pacer
from .sources import Chunk, Source
from .stop_signals import StopSignals
from .summary import RecordingResult, StreamSummary


@dataclass
class LoopConfig:
    """Settings of :class:`StreamLoop` (the ``evmamba stream`` options of the same names)."""

    speed: float = 1.0  # replay speed factor; math.inf = as fast as possible
    policy: str = "block"  # what to do when compute falls behind: block, drop_oldest, coarsen
    queue_events: int = 1 << 20  # capacity of the input queue, in events
    coarse_us: int | None = None  # coarse bin width for the coarsen policy (None: 4 x bin_us, at least 1 ms)
    report_every_us: int = 100_000  # stream time between prediction lines; 0 = after every evaluated token
    early_threshold: float = 0.9  # early decision: probability threshold (> 1 disables) ...
    early_tokens: int = 50  # ... held by one class for this many consecutive evaluated tokens
    reset_gap_us: int | None = None  # a silence this long ends the recording (None: only markers)
    logits_every: int = 1  # evaluate the logits after every N-th token (and the last of each chunk)
    predictions: bool = True  # write prediction lines (decisions and the summary are always written)
    batch_events: int = 1 << 16  # most events the loop takes from the queue at once

    def check(self) -> LoopConfig:
        """Validate every field; ``ValueError`` naming the field and its value."""

        def need_int(name: str, minimum: int, optional: bool = False) -> None:
            v = getattr(self, name)
            if optional and v is None:
                return
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise ValueError(f"LoopConfig: field '{name}' must be an int >= {minimum}; got {v!r}")

        if isinstance(self.speed, bool) or not isinstance(self.speed, (int, float)) or not self.speed > 0:
            raise ValueError(f"LoopConfig: field 'speed' must be a positive factor or math.inf; got {self.speed!r}")
        need_int("queue_events", 1)
        need_int("coarse_us", 1, optional=True)
        need_int("report_every_us", 0)
        need_int("early_tokens", 1)
        need_int("reset_gap_us", 1, optional=True)
        need_int("logits_every", 1)
        need_int("batch_events", 1)
        return self


class JsonLines:
    """Writes one JSON object per line to ``stream`` (flushed, so a reader sees each line at once)."""

    def __init__(self, stream: TextIO | None):
        self.stream = stream

    def __call__(self, record: dict[str, Any]) -> None:
        if self.stream is None:
            return
        self.stream.write(json.dumps(record, separators=(",", ":"), default=_jsonable) + "\n")
        self.stream.flush()


def _jsonable(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


@dataclass
class _Recording:
    """The consumer's view of the recording in progress."""

    result: RecordingResult
    t_first: int | None = None
    t_last: int | None = None
    events_in: int = 0
    tokens: int = 0
    events_tokenised: int = 0  # events carried by the tokens so far (sum of their counts)
    next_report: int = 0  # bucket index of the next prediction line
    last_logits: np.ndarray | None = None
    last_t_rel: int = 0


class _Timing:
    """Arrival times of the chunks in a batch and how far each one reaches in stream time, to find the
    chunk that released a token (the first one whose reach is at or past the token's release time)."""

    LAST = np.iinfo(np.int64).max  # a release time that only the last chunk reaches

    def __init__(self, arrivals: np.ndarray, reach: np.ndarray):
        self.arrivals, self.reach = arrivals, reach

    @classmethod
    def single(cls, arrival: float) -> _Timing:
        return cls(np.array([arrival]), np.array([cls.LAST], np.int64))

    @classmethod
    def of(cls, batch: list[Chunk], taken: float) -> _Timing:
        arrivals = np.array([c.arrival if c.arrival is not None else taken for c in batch])
        reach = np.array([c.t_end if c.t_end is not None else (int(c.events["t"][-1]) if c.n_events else -1)
                          for c in batch], np.int64)
        reach = np.maximum.accumulate(reach)
        reach[-1] = cls.LAST  # whatever the batch releases, the last chunk released at the latest
        return cls(arrivals, reach)

    def index(self, release: np.ndarray) -> np.ndarray:
        return np.minimum(np.searchsorted(self.reach, release, side="left"), self.reach.size - 1)


class StreamLoop:
    """Runs a source through binner and stepper; see the module docstring.

    ``stepper``: a :class:`~evmamba.streaming.steppers.Stepper` (the loop calls ``run(tokens, dt, counts,
    need, check=False[, surfaces=])`` and ``reset()``, and reads ``vocab_size`` and, when present,
    ``surface_config``).
    ``emit``: called with each output record (dict); ``live``: an optional :class:`LiveView`;
    ``on_logits``: called as ``on_logits(recording, tokens_after (M,), logits (M, C))`` after each step
    with the evaluated tokens' logits (for consumers that want more than the JSON lines carry).
    """

    def __init__(self, stepper, binning: BinningConfig, sensor_size, classes, config: LoopConfig | None = None,
                 emit: Callable[[dict], None] | None = None, live: LiveView | None = None,
                 on_logits: Callable[[str, np.ndarray, np.ndarray], None] | None = None):
        self.stepper = stepper
        self.binning = binning
        self.sensor_size = tuple(sensor_size)
        self.classes = list(classes)
        self.cfg = (config or LoopConfig()).check()
        self.emit = emit or (lambda record: None)
        self.live = live
        self.on_logits = on_logits
        self.binner = StreamingBinner(self.sensor_size, binning, source="stream")
        # The tokens' local surfaces, for a model with the "surface" embedding (the same kernel as in training).
        surface = getattr(stepper, "surface_config", None)
        self.surfaces = None if surface is None else SurfaceTracker(token_grid(self.sensor_size, binning), surface)
        vocab = vocab_size(self.sensor_size, binning)
        if vocab != stepper.vocab_size:
            raise ValueError(
                f"StreamLoop: the binning gives {vocab} token ids but the classifier has {stepper.vocab_size}"
            )
        self.decisions = DecisionTracker(self.cfg.early_threshold, self.cfg.early_tokens)
        coarse = self.cfg.coarse_us or max(4 * binning.bin_us, 1000)
        self.coarsener = Coarsener(stepper.vocab_size, int(coarse), TIME_UNITS_US[binning.time_unit])
        self.summary = StreamSummary()
        self._rec: _Recording | None = None
        self._cpu0 = 0.0  # thread CPU time at the start of the current piece of work
        self.queue: EventQueue | None = None

    # ------------------------------------------------------------------------------------------ running
    def run(self, source: Source) -> StreamSummary:
        """Run until the source ends or Ctrl-C (``KeyboardInterrupt``); returns the summary either way."""
        cfg = self.cfg
        queue = self.queue = EventQueue(cfg.queue_events, cfg.policy)
        pacer = Pacer(cfg.speed)
        paced = pacer.paced and not source.live
        stop = threading.Event()
        errors: list[BaseException] = []
        producer = threading.Thread(target=self._produce, args=(source, queue, pacer, paced, stop, errors),
                                    name="evmamba-stream-source", daemon=True)
        s = self.summary
        s.queue_capacity = cfg.queue_events
        wall0 = time.perf_counter()
        producer.start()
        # Under the coarsen policy a batch may hold the whole backlog; otherwise at most batch_events.
        most = cfg.queue_events if cfg.policy == "coarsen" else cfg.batch_events
        signals = StopSignals()
        try:
            signals.__enter__()
            while True:
                if signals.event.is_set():
                    s.interrupted, s.stop_signal = True, signals.received
                    break
                batch = queue.get_batch(most, timeout=0.1)
                if not batch:
                    if queue.finished or errors:
                        break
                    continue
                taken = time.perf_counter()
                n = sum(c.n_events for c in batch)
                coarse = cfg.policy == "coarsen" and (queue.backlog + n) * 2 > cfg.queue_events
                self._process_batch(batch, taken, coarse)
        except KeyboardInterrupt:  # raised by other means than the signals (e.g. off the main thread)
            s.interrupted = True
        finally:
            signals.__exit__()
            stop.set()
            source.close()
            producer.join(timeout=1.0)
            if self._rec is not None:
                try:
                    self._finish(_Timing.single(time.perf_counter()))
                except KeyboardInterrupt:  # a second Ctrl-C: give up on the last decision
                    s.interrupted = True
            s.wall_s = time.perf_counter() - wall0
            s.dropped_events = queue.dropped_events
            s.dropped_chunks = queue.dropped_chunks
            s.queue_high_water = queue.high_water
            s.source = source.stats.to_dict()
            if self.live is not None:
                self.live.close()
        if errors:
            raise errors[0]
        return s

    def _produce(self, source: Source, queue: EventQueue, pacer: Pacer, paced: bool, stop: threading.Event,
                 errors: list) -> None:
        try:
            for chunk in source:
                if stop.is_set():
                    break
                if paced:
                    if chunk.new_recording or not pacer.started:
                        if chunk.n_events:
                            pacer.start(int(chunk.events["t"][0]))
                    if chunk.n_events:
                        due_t = chunk.t_end if chunk.t_end is not None else int(chunk.events["t"][-1])
                        chunk.arrival = pacer.wait_until(due_t, stop)
                    else:
                        chunk.arrival = time.perf_counter()
                queue.put(chunk, stop)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            errors.append(exc)
        finally:
            queue.close()

    # ------------------------------------------------------------------------------------------ chunks
    def _process_batch(self, batch: list[Chunk], taken: float, coarse: bool) -> None:
        """Bin and step a batch of consecutive chunks of one recording as one piece of work."""
        first, last = batch[0], batch[-1]
        timing = _Timing.of(batch, taken)
        if len(batch) == 1:
            merged = first
        else:
            parts = [c.events for c in batch if c.n_events]
            events = np.concatenate(parts) if len(parts) > 1 else (parts[0] if parts else first.events)
            merged = Chunk(events, last.t_end, first.new_recording, last.end, first.recording, first.label)
        if coarse:
            self.summary.coarsened_events += merged.n_events
        self._process(merged, timing, coarse)

    def _process(self, chunk: Chunk, timing: _Timing, coarse: bool) -> None:
        if chunk.new_recording and self._rec is not None:
            self._finish(timing, int(chunk.events["t"][0]) if chunk.n_events else None)
        if self._rec is None:
            if not (chunk.n_events or chunk.end or chunk.new_recording):
                return  # nothing to start a recording with (e.g. a slice end after a finished recording)
            self._begin(chunk)
        events = chunk.events
        gap = self.cfg.reset_gap_us
        if gap is not None and events.size:
            t = events["t"]
            prev = self._rec.t_last if self._rec.t_last is not None else int(t[0])
            cuts = np.flatnonzero(np.diff(t, prepend=np.int64(prev)) >= gap)
            start = 0
            for c in cuts:
                if c > start:
                    self._consume(events[start:c], None, timing, coarse)
                if self._rec.events_in:  # the silence ends the recording; the next event starts one
                    self._finish(timing, int(t[c]))
                    self._begin(chunk)
                start = int(c)
            events = events[start:]
        if events.size or chunk.t_end is not None:
            self._consume(events, chunk.t_end, timing, coarse)
        if chunk.end:
            self._finish(timing)

    def _begin(self, chunk: Chunk) -> None:
        self._rec = _Recording(RecordingResult(chunk.recording or f"recording {len(self.summary.recordings)}",
                                               label=chunk.label))
        self.binner.reset()
        self.stepper.reset()
        self.decisions.reset()
        if self.surfaces is not None:
            self.surfaces.reset()

    def _consume(self, events: np.ndarray, t_end: int | None, timing: _Timing, coarse: bool) -> None:
        rec = self._rec
        t0 = time.perf_counter()
        self._cpu0 = time.thread_time()
        if events.size:
            if rec.t_first is None:
                rec.t_first = int(events["t"][0])
            rec.t_last = int(events["t"][-1])
            rec.events_in += events.size
            self.summary.events += events.size
        seq = self.binner.push(events)
        if t_end is not None:  # a replay slice's end: bins that close by then are final
            extra = self.binner.advance(int(t_end))
            if extra.num_tokens:
                seq = TokenSequence.concatenate([seq, extra]) if seq.num_tokens else extra
        if coarse and seq.num_tokens > 1:
            merged = self.coarsener.merge(seq, rec.t_first)
            self.summary.tokens_merged += seq.num_tokens - merged.num_tokens
            seq = merged
        self._step(seq, timing, t0)

    def _step(self, seq: TokenSequence, timing: _Timing, t0: float, release: int | None = None) -> None:
        rec = self._rec
        n = seq.num_tokens
        s = self.summary
        if n:
            every = self.cfg.logits_every
            need = None
            if every > 1:
                pos = rec.tokens + np.arange(1, n + 1)
                need = (pos % every == 0)
                need[-1] = True
            t_step = time.perf_counter()
            if self.surfaces is None:
                out = self.stepper.run(seq.tokens, seq.dt, seq.counts, need, check=False)
            else:
                surf = self.surfaces.push(seq.tokens, seq.t, seq.counts)
                out = self.stepper.run(seq.tokens, seq.dt, seq.counts, need, check=False, surfaces=surf)
            s.step_s += time.perf_counter() - t_step
            logits, index = out.logits, out.index
            tokens_after = rec.tokens + index + 1
            events_after = rec.events_tokenised + np.cumsum(seq.counts, dtype=np.int64)[index]
            t_rel = seq.t[index] - (rec.t_first or 0)
            rec.tokens += n
            rec.events_tokenised += int(seq.counts.sum(dtype=np.int64))
            s.tokens += n
            if logits.shape[0]:
                if self.on_logits is not None:
                    self.on_logits(rec.result.name, tokens_after, logits)
                probs = softmax(logits)
                top = probs.argmax(axis=1)
                conf = probs[np.arange(top.size), top]
                early = self.decisions.update(top, conf, tokens_after, events_after, t_rel)
                if early is not None:
                    rec.result.early = early.to_dict()
                    self.emit({"type": "early", "recording": rec.result.name, **self._labelled(early.to_dict())})
                if self.cfg.predictions:
                    self._report(top, conf, tokens_after, events_after, t_rel)
                rec.last_logits = logits[-1].copy()
                rec.last_t_rel = int(t_rel[-1])
                if self.live is not None:
                    q = self.queue.backlog if self.queue is not None else 0
                    self.live.update(rec.result.name, rec.last_t_rel, probs[-1], rec.events_in, q)
        done = time.perf_counter()
        if n:
            self._record_latency(seq, timing, done, release)
        s.compute_s += done - t0
        s.compute_cpu_s += time.thread_time() - self._cpu0

    def _record_latency(self, seq: TokenSequence, timing: _Timing, done: float, release: int | None) -> None:
        """Each token's latency: from the arrival of the chunk that released it to ``done``. A time-bin
        token is released when the stream passes its bin's end; an unmerged token by its own event."""
        if release is not None:
            r = np.full(seq.num_tokens, release, np.int64)
        elif self.binning.bin_us > 0:
            b, origin = self.binning.bin_us, self._rec.t_first or 0
            r = origin + ((seq.t - origin) // b + 1) * b
        else:
            r = seq.t
        idx = timing.index(r)
        counts = np.bincount(idx, minlength=timing.arrivals.size)
        for j in np.flatnonzero(counts):
            self.summary.latency.add(done - float(timing.arrivals[j]), int(counts[j]))

    def _report(self, top, conf, tokens_after, events_after, t_rel) -> None:
        rec = self._rec
        every = self.cfg.report_every_us
        if every == 0:
            rows = np.arange(top.size)
        else:
            bucket = t_rel // every
            rows = np.flatnonzero(bucket >= rec.next_report)
            if rows.size:
                # One line per reporting interval: the first evaluated token in each new interval.
                b = bucket[rows]
                keep = np.concatenate([[True], b[1:] != b[:-1]])
                rows = rows[keep]
                rec.next_report = int(bucket[rows[-1]]) + 1
        for i in rows:
            self.emit({"type": "prediction", "recording": rec.result.name, "t_us": int(t_rel[i]),
                       "class": int(top[i]), "label": self._class_name(int(top[i])), "confidence": float(conf[i]),
                       "events": int(events_after[i]), "tokens": int(tokens_after[i])})

    def _finish(self, timing: _Timing, release: int | None = None) -> None:
        """End the recording in progress: flush the open bin, write the final decision, reset. The flushed
        tokens were released by the event at ``release`` µs (the end of the batch when None)."""
        rec = self._rec
        if rec is None:
            return
        t0 = time.perf_counter()
        self._cpu0 = time.thread_time()
        rest = self.binner.flush()
        if rest.num_tokens:
            self._step(rest, timing, t0, release=release if release is not None else _Timing.LAST)
        r = rec.result
        r.events, r.tokens = rec.events_in, rec.tokens
        r.duration_us = (rec.t_last - rec.t_first) if rec.t_first is not None else 0
        self.summary.duration_us += r.duration_us
        if rec.last_logits is not None:
            probs = softmax(rec.last_logits[None])[0]
            c = int(probs.argmax())
            r.final = {"class": c, "confidence": float(probs[c]), "tokens": rec.tokens, "events": rec.events_in,
                       "t_us": rec.last_t_rel}
        self.summary.recordings.append(r)
        record = {"type": "final", "recording": r.name,
                  **(self._labelled(r.final) if r.final else {"class": None}),
                  "early": self._labelled(r.early) if r.early else None,
                  "events": r.events, "tokens": r.tokens, "duration_us": r.duration_us}
        if r.label is not None:
            record["true_class"] = r.label
            record["true_label"] = self._class_name(r.label)
            record["correct"] = None if r.final is None else r.final["class"] == r.label
        self.emit(record)
        self._rec = None
        self.binner.reset()
        self.stepper.reset()
        self.decisions.reset()
        if self.surfaces is not None:
            self.surfaces.reset()

    def _labelled(self, d: dict) -> dict:
        return {**d, "label": self._class_name(d["class"])}

    def _class_name(self, c: int) -> str:
        return str(self.classes[c]) if 0 <= c < len(self.classes) else str(c)


__all__ = ["JsonLines", "LiveView", "LoopConfig", "StreamLoop"]

