"""The batch-1 GPU step without a launch per token: :class:`ServeStepper`.

A CUDA graph replay still costs a launch per token (about 5 µs on the host and as much again before the kernel
starts) on top of the step itself. :class:`ServeStepper` launches the fused step's *serving loop*
(:func:`~evmamba.kernels.triton_model_step.model_serve_triton`) once: one program stays resident on the GPU
and waits for tokens. The host talks to it through pinned host memory only:

* a ring of ``ring`` input records and a ring of logits (token ``t`` in slot ``t % ring``). Every value of a
  record is written with the token's *tag* beside it in the same 64-bit word, value first: the loop steps
  token ``t`` as soon as its slot's words all carry ``t``'s tag, so one read over the bus both finds the token
  and fetches it. The logits slot is filled with a marker (a signalling NaN no arithmetic returns) before the
  record is written; the token is served when no logit holds the marker any more, whatever order the logits
  arrive in. The kernel still ends every token with a system-scope fence (a count of tokens served, released
  to host memory): not for correctness, but because it pushes the logits out at once -- without it a token
  took about 1 µs longer at the median in both runs that compared them (:data:`SERVE_RELEASE`);
* ``ctrl``: the count of tokens written (``-count - 1`` asks the loop to end after serving them).

A token therefore costs the host a few stores and a spin on its logits, and the GPU one read of the record
over the bus (copied into a small device buffer first, one volatile load per thread: the ring's cache lines
may be stale), the step, and a write of the logits: no launch, no copy, no synchronisation call.

Chunks longer than half the ring are published half a ring at a time, so the kernel works on one half while
the host fills the other and collects the logits of the half before. :meth:`ServeStepper.reset` ends the
loop (after the tokens already published), zeroes the state and launches a fresh loop at the next token: the
kernel's L1 cache may hold the state, so the state is never changed under a running loop.

**Rules of use.** While the loop runs it occupies one multiprocessor and never returns, so nothing may wait
for the whole device (``torch.cuda.synchronize()``, a graph capture of the legacy default stream) until
:meth:`ServeStepper.close` (also run by ``with``, on garbage collection and at interpreter exit) has ended it.
The host's stores to the ring must reach the GPU in program order, which x86-64 guarantees (total store
order); other hosts are refused. On the CPU (tests, ``device="cpu"`` under ``TRITON_INTERPRET=1``) the same
protocol runs with one synchronous launch per piece of a chunk.

For one stream (the :class:`~evmamba.streaming.steppers.Stepper` interface of the stream loop); many
streams are :class:`~evmamba.streaming.gpu_step.GraphStepper`'s work.
"""

from __future__ import annotations

import platform
import time
import warnings
import weakref

import numpy as np
import torch

from .steppers import StepOutput

#: Warps of the serving program by default. Fewer warps than the launched step's 4: the program's cost per token
#: is mostly waiting (the bus, barriers, reductions across warps), not arithmetic. On an H200 with the DVS Gesture
#: model, one run of ``evmamba bench stream`` gave p50 17.9 µs with 2 warps against 21.6 (1) and 23.0 (4); the
#: figures in docs/benchmarks.md come from a later run.
SERVE_NUM_WARPS = 2
#: Whether the serving program ends every token with a system-scope release of its served count. The host waits
#: on the logits themselves either way; the fence only makes them arrive sooner. Two runs of ``evmamba bench
#: stream`` on H200s, each variant in turn: p50 15.9 against 17.1 µs, and 16.9 against 18.0 µs (6 000 tokens
#: each) with the fence.
SERVE_RELEASE = True
#: Hosts whose stores reach the GPU in program order (total store order).
ORDERED_HOSTS = ("x86_64", "amd64", "i686", "i386")


def _unordered_host() -> str | None:
    """Why this host cannot feed the serving loop (its stores may reach the GPU out of order), or None."""
    if platform.machine().lower() in ORDERED_HOSTS:
        return None
    return f"the serving loop needs an x86-64 host (stores in program order); this one is {platform.machine()!r}"


def serve_support(model) -> str | None:
    """Why :class:`ServeStepper` cannot run ``model`` on this machine (a message), or None if it can: the
    fused step must serve the model (:func:`~evmamba.streaming.gpu_step.fused_support`), the host must keep
    its stores in order, and CUDA must be available."""
    from .gpu_step import fused_support

    if not torch.cuda.is_available():
        return "CUDA is not available"
    return _unordered_host() or fused_support(model)


def _stop_loop(ctrl: np.ndarray, stream, timeout_s: float) -> bool:
    """Ask a serving loop to end after the tokens published and wait for its stream; False on a timeout. Used
    by :meth:`ServeStepper.close` and as its finalizer (so it holds no reference to the stepper)."""
    c = int(ctrl[0])
    if c >= 0:
        ctrl[0] = -c - 1
    deadline = time.perf_counter() + timeout_s
    while not stream.query():
        if time.perf_counter() > deadline:
            return False
        time.sleep(1e-4)
    return True


class ServeStepper:
    """One stream of an :class:`~evmamba.model.classifier.EventClassifier` served by a resident GPU loop (see
    the module docstring). Same interface and results as
    :class:`~evmamba.streaming.gpu_step.GraphStepper` at batch 1 with the fused step.

    ``ring``: records (and logits) in flight, at least 2; ``num_warps``: warps of the serving program (default
    :data:`SERVE_NUM_WARPS`); ``timeout_s``: how long the host waits for a token before it raises
    ``RuntimeError`` (the GPU is busy with other work, or the loop is gone); ``release``: whether the kernel
    ends every token with a system-scope release (default :data:`SERVE_RELEASE`; the results are the same,
    only the latency differs). ``ValueError`` if the fused step
    does not serve the model (the setting is named; :class:`~evmamba.streaming.gpu_step.GraphStepper` runs it
    unfused)."""

    step_kind = "serve"
    n_streams = 1
    fused = True
    fallback_reason = None

    def __init__(self, model, device="cuda", ring: int = 256, num_warps: int | None = None, timeout_s: float = 5.0,
                 release: bool | None = None):
        from ..kernels import triton_model_step as T
        from ..kernels.triton_primitives import INTERPRETING
        from .gpu_step import fused_support, pack

        where = "ServeStepper"
        if isinstance(ring, bool) or not isinstance(ring, int) or ring < 2:
            raise ValueError(f"{where}: argument 'ring' must be an int >= 2; got {ring!r}")
        if num_warps is not None and num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"{where}: argument 'num_warps' must be 1, 2, 4, 8 or 16; got {num_warps!r}")
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
            raise ValueError(f"{where}: argument 'timeout_s' must be a positive number of seconds; got {timeout_s!r}")
        self.device = torch.device(device)
        self.graphed = self.device.type == "cuda"
        if self.graphed:
            if not torch.cuda.is_available():
                raise RuntimeError(f"{where}: CUDA is not available; use the CPU stepper (FastStepper) instead")
            why = _unordered_host()
            if why is not None:
                raise ValueError(f"{where}: {why} -- use GraphStepper")
        elif not INTERPRETING:
            raise ValueError(f"{where}: device {self.device} runs the loop only under TRITON_INTERPRET=1 (tests); "
                             f"use a CUDA device")
        why = fused_support(model)
        if why is not None:
            raise ValueError(f"{where}: the fused step does not serve this model: {why} (use GraphStepper)")
        self.model = model.to(self.device).eval()
        self.vocab_size, self.n_classes = model.vocab_size, model.n_classes
        self.n_surface = model.embedding.n_surface if model.embedding.needs_surfaces else 0
        self.surface_config = model.surface_config
        self.ring, self.timeout_s = ring, float(timeout_s)
        self.release = SERVE_RELEASE if release is None else bool(release)
        self.num_warps = SERVE_NUM_WARPS if num_warps is None else num_warps
        self.weights = w = pack(self.model, self.device)
        self.cache = T.allocate_state(w, 1, self.device)
        pin = (lambda t: t.pin_memory()) if self.graphed else (lambda t: t)  # noqa: E731
        self._inp = pin(torch.zeros(1, ring, w.record, dtype=torch.int64))
        self._logits = pin(torch.zeros(1, ring, self.n_classes, dtype=torch.float32))
        self._ctrl = pin(torch.zeros(1, dtype=torch.int64))
        self._done = pin(torch.zeros(1, dtype=torch.int64))
        self._stage = torch.zeros(1, w.record, dtype=torch.float32, device=self.device)
        # numpy views of the pinned buffers: the host's per-token work is plain stores and loads. A record word
        # is (value, tag) as two 32-bit halves, low first (x86-64 is little-endian).
        words = self._inp.numpy()[0]
        self._rec = words.view(np.float32).reshape(ring, w.record, 2)[..., 0]
        self._tags = words.view(np.int32).reshape(ring, w.record, 2)[..., 1]
        self._out = self._logits.numpy()[0]
        self._marks = self._out.view(np.uint32)
        self._mark, self._tag = T.LOGITS_MARK, T.record_tag
        self._marks[:] = self._mark
        self._c = self._ctrl.numpy()
        # Tokens written to this ring, over every loop it has served: tags never repeat, so a slot written
        # before a reset can never pass for a new token.
        self._published = 0
        self._running = False
        self._stream = torch.cuda.Stream(self.device) if self.graphed else None
        self._finalizer = None

    # ------------------------------------------------------------------------------------------ loop
    def _launch(self, start: int) -> None:
        from ..kernels.triton_model_step import model_serve_triton

        model_serve_triton(self.weights, self.cache, self._inp, self._logits, self._ctrl, self._done, self._stage,
                           start=start, num_warps=self.num_warps, release=self.release)

    def _ensure_running(self) -> None:
        if self._running or not self.graphed:
            return
        self._c[0] = self._published
        # The state's last change (a reset, the packing) is queued on the current stream: the loop waits for it.
        self._stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self._stream):
            self._launch(self._published)
        self._running = True
        if self._finalizer is None or not self._finalizer.alive:
            self._finalizer = weakref.finalize(self, _stop_loop, self._c, self._stream, self.timeout_s)

    def close(self) -> None:
        """End the serving loop (after the tokens already published) and wait for it. Idempotent; the next
        :meth:`run` starts a new loop from the current state."""
        if not self._running:
            return
        self._running = False
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if not _stop_loop(self._c, self._stream, self.timeout_s):
            raise RuntimeError(f"ServeStepper.close: the serving loop did not end within {self.timeout_s} s")

    def __enter__(self) -> ServeStepper:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _wait(self, slots, last: int) -> None:
        """Spin until the logits slots ``slots`` (an index or an index array) hold no marker; ``last``: the latest
        token among them (for the error)."""
        deadline = None
        while self._pending(slots):
            if deadline is None:
                deadline = time.perf_counter() + self.timeout_s
            elif time.perf_counter() > deadline:
                raise RuntimeError(f"ServeStepper: token {last} was not served within {self.timeout_s} s; is the "
                                   f"GPU busy with other work?")

    def _pending(self, slots) -> bool:
        """Whether a logits slot of ``slots`` (an index or an index array) still holds the marker."""
        marks = self._marks[slots]
        # One slot: a list search is several times quicker than numpy's compare-and-any on a few values.
        return self._mark in marks.tolist() if marks.ndim == 1 else bool((marks == self._mark).any())

    # ------------------------------------------------------------------------------------------ steps
    def run(self, tokens, dt, counts=None, need=None, stream: int = 0, copy: bool = True, check: bool = True,
            surfaces=None) -> StepOutput:
        """:meth:`Stepper.run <evmamba.streaming.steppers.Stepper.run>` (stream 0; the result is always a
        fresh array, whatever ``copy``)."""
        where = "ServeStepper.run"
        if stream != 0:
            raise ValueError(f"{where}: serves one stream (0); got stream={stream!r}")
        tokens, dt = np.asarray(tokens), np.asarray(dt)
        counts = None if counts is None else np.asarray(counts)
        surfaces = None if surfaces is None else np.asarray(surfaces)
        n = tokens.shape[0]
        if dt.shape != (n,) or (counts is not None and counts.shape != (n,)):
            raise ValueError(f"{where}: arguments 'dt' and 'counts' must have the tokens' shape {(n,)}; got "
                             f"{dt.shape} and {None if counts is None else counts.shape}")
        if self.n_surface and (surfaces is None or surfaces.shape != (n, self.n_surface)):
            got = None if surfaces is None else surfaces.shape
            raise ValueError(f"{where}: the model needs surfaces of shape {(n, self.n_surface)}; got {got}")
        if n == 1:
            if check and not 0 <= int(tokens[0]) < self.vocab_size:
                raise ValueError(f"{where}: argument 'tokens' holds ids outside [0, {self.vocab_size})")
            return self._run_one(tokens, dt, counts, need, surfaces)
        if n and check and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size):
            raise ValueError(f"{where}: argument 'tokens' holds ids outside [0, {self.vocab_size})")
        index = np.arange(n) if need is None else np.flatnonzero(np.asarray(need))
        out = np.empty((index.shape[0], self.n_classes), np.float32)
        if n == 0:
            return StepOutput(out, index)
        self._ensure_running()
        k0, ring = self._published, self.ring
        piece = max(ring // 2, 1)
        starts = range(0, n, piece)
        for p, s in enumerate(starts):
            e = min(n, s + piece)
            if p >= 2:
                # The slots of this piece still hold the piece before the last one: collect it first.
                self._collect(k0, starts[p - 2], starts[p - 2] + piece, index, out)
            rec, slots = self._rec, (k0 + np.arange(s, e)) % ring
            self._marks[slots] = self._mark
            rec[slots, 0] = tokens[s:e]
            rec[slots, 1] = dt[s:e]
            rec[slots, 2] = 1.0 if counts is None else counts[s:e]
            if self.n_surface:
                rec[slots, 3:] = surfaces[s:e]
            self._publish(k0 + s, k0 + e, slots)
        for p in range(max(len(starts) - 2, 0), len(starts)):
            self._collect(k0, starts[p], min(n, starts[p] + piece), index, out)
        return StepOutput(out, index)

    def _run_one(self, tokens, dt, counts, need, surfaces) -> StepOutput:
        """:meth:`run` of one token, with as little host work as possible (the latency case: the stream loop
        calls it for every token while it keeps up)."""
        self._ensure_running()
        k = self._published
        slot = k % self.ring  # free: every call waits for its tokens before it returns
        marks, mark = self._marks[slot], self._mark
        marks.fill(mark)
        r = self._rec[slot]
        r[0], r[1], r[2] = tokens[0], dt[0], 1.0 if counts is None else counts[0]
        if self.n_surface:
            r[3:] = surfaces[0]
        self._publish(k, k + 1, slot)
        if self.graphed:
            # Spin on one logit first (a scalar read is quicker than a check of the whole slot), a bounded
            # number of times; then on all of them (they arrive in no particular order), with the timeout.
            spins = 0
            while marks[-1] == mark and spins < 1_000_000:
                spins += 1
        self._wait(slot, k)
        if need is None or need[0]:
            return StepOutput(self._out[slot:slot + 1].copy(), np.zeros(1, np.int64))
        return StepOutput(np.empty((0, self.n_classes), np.float32), np.zeros(0, np.int64))

    def _publish(self, first: int, end: int, slots) -> None:
        """Tokens ``first .. end - 1`` have their values in the ring at ``slots``: tag them (after the values:
        the host's stores reach the GPU in order), which hands them to the loop."""
        if isinstance(slots, int):
            self._tags[slots].fill(self._tag(first))  # a view: fill() is the quickest store
        else:
            self._tags[slots] = self._tag(np.arange(first, end))[:, None]
        self._published = end
        if self.graphed:
            self._c[0] = end
            return
        # Interpreter: one synchronous launch serves exactly these tokens.
        self._c[0] = -end - 1
        self._launch(first)

    def _collect(self, k0: int, s: int, e: int, index: np.ndarray, out: np.ndarray) -> None:
        """Wait for tokens ``k0 + s .. k0 + e - 1`` and copy the logits of those asked for into ``out``."""
        self._wait((k0 + np.arange(s, e)) % self.ring, k0 + e - 1)
        lo, hi = np.searchsorted(index, (s, e))
        if hi > lo:
            out[lo:hi] = self._out[(k0 + index[lo:hi]) % self.ring]

    @torch.no_grad()
    def reset(self, stream=None) -> None:
        """Zero the state (``stream``: None or 0): ends the serving loop after the tokens already published;
        the next :meth:`run` launches a fresh one."""
        if stream is not None and np.any(np.atleast_1d(np.asarray(stream)) != 0):
            raise ValueError(f"ServeStepper.reset: serves one stream (0); got {stream!r}")
        self.close()
        for v in self.cache.values():
            v.zero_()

    def __del__(self) -> None:
        if not getattr(self, "_running", False):  # also a stepper whose constructor raised
            return
        try:
            self.close()
        except Exception as exc:  # noqa: BLE001 - nothing to raise to during garbage collection
            warnings.warn(f"ServeStepper: {exc}", RuntimeWarning, stacklevel=1)


__all__ = ["ORDERED_HOSTS", "SERVE_NUM_WARPS", "SERVE_RELEASE", "ServeStepper", "serve_support"]
