"""Many concurrent streams for throughput: ``evmamba stream --streams N`` and the benchmark's GPU batch.

Stream ``b`` replays recording ``b mod R`` of the ``R`` given recordings, as fast as possible. Every
recording is binned once (:func:`~evmamba.pipeline.binning.bin_events`, which gives exactly the streaming
binner's tokens); the binning time is measured and reported with the rest.

* CPU (:class:`~evmamba.streaming.fast_step.FastStepper` with ``N`` states): the streams advance in turns,
  ``chunk`` tokens at a time, each in one compiled call. Two cores give no parallel speed-up over one
  stream; this mode shows that the state of many streams costs nothing extra.
* GPU (:class:`~evmamba.streaming.gpu_step.GraphStepper` with ``B = N``): every replay of the captured step
  advances all ``N`` streams by one token. Streams are padded to the longest (the padding's logits are
  ignored and its compute is reported as ``padding_tokens``). The fused step's input records are made
  before the clock starts, like the token arrays of the other steps. A stepper that overlaps (the default
  of the fused step of many streams on a GPU, ``GraphStepper.overlap``) gets them time-major, with the pinned
  host logits also made before the clock, and is fed double-buffered, its copies overlapping the replays;
  the result's ``"feed"`` says which feeding ran (:data:`~evmamba.streaming.gpu_step.FEEDS`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..pipeline.binning import BinningConfig, TokenSequence, bin_events, token_grid
from ..pipeline.surfaces import token_surfaces
from .decisions import softmax


@dataclass
class Binned:
    """One recording binned whole: its name, label, tokens and number of events."""

    name: str
    label: int | None
    seq: TokenSequence
    n_events: int
    duration_us: int
    surfaces: np.ndarray | None = None  # (L, F) local surfaces, for a model with the "surface" embedding


def bin_recordings(recordings, sensor_size, binning: BinningConfig, surface=None) -> tuple[list[Binned], float]:
    """Load and bin each :class:`~evmamba.streaming.sources.Recording` (and, with a
    :class:`~evmamba.pipeline.surfaces.SurfaceConfig` ``surface``, make its tokens' local surfaces, which the
    whole-recording function gives exactly as the streaming tracker would); returns
    ``(binned, binning seconds)``."""
    out, spent = [], 0.0
    for rec in recordings:
        events = rec.load()
        t0 = time.perf_counter()
        seq = bin_events(events, sensor_size, binning, source=rec.name)
        surf = None if surface is None else token_surfaces(seq, token_grid(tuple(sensor_size), binning), surface)
        spent += time.perf_counter() - t0
        dur = int(events["t"][-1] - events["t"][0]) if events.size else 0
        out.append(Binned(rec.name, rec.label, seq, int(events.size), dur, surf))
    return out, spent


def _final(logits_row: np.ndarray) -> dict:
    probs = softmax(logits_row[None])[0]
    c = int(probs.argmax())
    return {"class": c, "confidence": float(probs[c])}


def run_cpu(stepper, binned: list[Binned], n_streams: int, chunk: int = 256) -> dict:
    """``n_streams`` streams on a :class:`~evmamba.streaming.fast_step.FastStepper` built for that many."""
    if stepper.n_streams != n_streams:
        raise ValueError(f"run_cpu: the stepper holds {stepper.n_streams} streams, not {n_streams}")
    seqs = [binned[b % len(binned)] for b in range(n_streams)]
    pos = [0] * n_streams
    last = [None] * n_streams
    stepper.reset()
    t0 = time.perf_counter()
    active = list(range(n_streams))
    while active:
        still = []
        for b in active:
            s, p = seqs[b].seq, pos[b]
            q = min(p + chunk, s.num_tokens)
            need = np.zeros(q - p, np.uint8)
            if q > p:
                need[-1] = 1
                surf = None if seqs[b].surfaces is None else seqs[b].surfaces[p:q]
                out = stepper.run(s.tokens[p:q], s.dt[p:q], s.counts[p:q], need, stream=b, surfaces=surf)
                last[b] = out.logits[-1]
            pos[b] = q
            if q < s.num_tokens:
                still.append(b)
        active = still
    elapsed = time.perf_counter() - t0
    return _result(seqs, last, elapsed, "cpu", 0)


def run_gpu(stepper, binned: list[Binned], n_streams: int, max_steps: int | None = None,
            overlap: bool | None = None) -> dict:
    """``n_streams`` lockstep streams on a :class:`~evmamba.streaming.gpu_step.GraphStepper` with
    ``B = n_streams`` (see the module docstring); ``max_steps`` caps the tokens per stream; ``overlap``: feed
    time-major records double-buffered (True: the stepper must overlap; None, the default: whenever it does;
    False: the batch-major records or arrays)."""
    if overlap not in (None, True, False):
        raise ValueError(f"run_gpu: argument 'overlap' must be None, True or False; got {overlap!r}")
    overlaps = bool(getattr(stepper, "overlap", False))
    if overlap and not overlaps:
        raise ValueError("run_gpu: overlap=True needs a fused GraphStepper that overlaps (GraphStepper.overlap)")
    overlap = overlaps if overlap is None else overlap
    seqs = [binned[b % len(binned)] for b in range(n_streams)]
    lengths = np.array([s.seq.num_tokens for s in seqs])
    steps = int(lengths.max()) if max_steps is None else min(int(lengths.max()), int(max_steps))
    tok = np.zeros((n_streams, steps), np.int64)
    dt = np.zeros((n_streams, steps), np.float32)
    cnt = np.ones((n_streams, steps), np.float32)
    with_surfaces = seqs[0].surfaces is not None
    surf = np.zeros((n_streams, steps, seqs[0].surfaces.shape[1]), np.float32) if with_surfaces else None
    for b, s in enumerate(seqs):
        n = min(s.seq.num_tokens, steps)
        tok[b, :n], dt[b, :n], cnt[b, :n] = s.seq.tokens[:n], s.seq.dt[:n], s.seq.counts[:n]
        if with_surfaces:
            surf[b, :n] = s.surfaces[:n]
    records = out = None
    feed = "arrays"
    if overlap:
        # Time-major records, written straight into pinned memory, and the pinned logits they come back to.
        from ..kernels.triton_model_step import pack_inputs_time_major

        records = pack_inputs_time_major(tok, dt, cnt, surf, pin_memory=stepper.graphed)
        out = stepper.host_logits(steps)
        feed = "time-major-overlap"
    elif getattr(stepper, "fused", False):
        # The fused step's input records, made once like the arrays above, in pinned memory: a block of tokens
        # is then one asynchronous copy.
        import torch

        from ..kernels.triton_model_step import pack_inputs

        records = pack_inputs(torch.from_numpy(tok), torch.from_numpy(dt), torch.from_numpy(cnt),
                              None if surf is None else torch.from_numpy(surf))
        if stepper.graphed:
            records = records.pin_memory()
        feed = "batch-major"
    stepper.reset()
    t0 = time.perf_counter()
    if overlap:
        logits = stepper.run_records(records, time_major=True, out=out)
    elif records is not None:
        logits = stepper.run_records(records)
    else:
        logits = stepper.run_batch(tok, dt, cnt, surfaces=surf)
    elapsed = time.perf_counter() - t0
    used = np.minimum(lengths, steps)
    last = [logits[b, used[b] - 1] if used[b] else None for b in range(n_streams)]
    partial = [Binned(s.name, s.label, TokenSequence(*(a[:u] for a in s.seq)), int(s.seq.counts[:u].sum()),
                      s.duration_us) for s, u in zip(seqs, used)]
    result = _result(partial, last, elapsed, "cuda", int(n_streams * steps - used.sum()))
    result["feed"] = feed
    return result


def _result(seqs: list[Binned], last, elapsed: float, device: str, padding: int) -> dict:
    tokens = int(sum(s.seq.num_tokens for s in seqs))
    events = int(sum(int(s.seq.counts.sum()) for s in seqs))
    finals = []
    for s, row in zip(seqs, last):
        rec = {"recording": s.name, "tokens": s.seq.num_tokens}
        if row is not None:
            rec.update(_final(row))
        if s.label is not None:
            rec["label"] = s.label
        finals.append(rec)
    return {
        "device": device,
        "streams": len(seqs),
        "events": events,
        "tokens": tokens,
        "padding_tokens": padding,
        "step_s": elapsed,
        "events_per_s": events / elapsed if elapsed > 0 else None,
        "tokens_per_s": tokens / elapsed if elapsed > 0 else None,
        "per_stream": finals,
    }


__all__ = ["Binned", "bin_recordings", "run_cpu", "run_gpu"]
