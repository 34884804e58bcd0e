"""The GPU step of the stream loop: the classifier's ``step`` (fused Triton layer step) in one CUDA graph.

:class:`GraphStepper` captures a whole model step -- embedding, every layer's fused step kernel, pooling,
readout and head -- once, and replays it per token. The graph reads its token from a device buffer at a
device-side position that it advances itself, and writes the logits into a device buffer at that position,
so a chunk of ``T`` tokens costs one host-to-device copy, ``T`` graph replays and one device-to-host copy:
no per-token Python tensor work and no host synchronisation between tokens.

``n_streams = B`` runs ``B`` streams in lockstep (one token of every stream per replay): the throughput
mode for many concurrent streams (:meth:`run_batch`). Rows are reset one by one (:meth:`reset`) when a
stream starts a new recording. The same object serves the :class:`~evmamba.streaming.loop.StreamLoop`
at batch 1 through :meth:`run`, with :class:`~evmamba.streaming.fast_step.FastStepper`'s interface.

For CUDA devices only; ``device="cpu"`` runs the very same step eagerly, without a graph (slow: for
tests of the bookkeeping on machines without a GPU).
"""

from __future__ import annotations

import numpy as np
import torch

from .steppers import StepOutput


def _zero_rows(cache, rows: torch.Tensor) -> None:
    """Zero rows ``rows`` of every per-stream tensor of a classifier inference cache, in place."""
    if isinstance(cache, dict):
        for key, v in cache.items():
            if key == "present":
                continue
            if isinstance(v, torch.Tensor):
                v.index_fill_(0, rows, 0)
            else:
                _zero_rows(v, rows)
    elif isinstance(cache, (list, tuple)):
        for v in cache:
            if v is not None:
                _zero_rows(v, rows)


class GraphStepper:
    """``B`` streams of an :class:`~evmamba.model.classifier.EventClassifier` stepped by a CUDA graph.

    ``block``: tokens per stream held on the device at once (a longer chunk is run in blocks).
    """

    def __init__(self, model, n_streams: int = 1, device="cuda", block: int = 1024, warmup: int = 3):
        if isinstance(n_streams, bool) or not isinstance(n_streams, int) or n_streams < 1:
            raise ValueError(f"GraphStepper: argument 'n_streams' must be a positive int; got {n_streams!r}")
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("GraphStepper: CUDA is not available; use the CPU stepper (FastStepper) instead")
        self.graphed = self.device.type == "cuda"
        self.model = model.to(self.device).eval()
        self.n_streams, self.block = n_streams, int(block)
        self.vocab_size, self.n_classes = model.vocab_size, model.n_classes
        b, dev = n_streams, self.device
        self.cache = self.model.allocate_inference_cache(b, device=dev)
        self.tok = torch.zeros(b, self.block, dtype=torch.long, device=dev)
        self.dt = torch.zeros(b, self.block, dtype=torch.float32, device=dev)
        self.cnt = torch.ones(b, self.block, dtype=torch.float32, device=dev)
        # The local surfaces of each token, for a "surface" embedding (None otherwise).
        self.n_surface = model.embedding.n_surface if model.embedding.needs_surfaces else 0
        self.surface_config = model.surface_config
        self.surf = (torch.zeros(b, self.block, self.n_surface, dtype=torch.float32, device=dev)
                     if self.n_surface else None)
        self.pos = torch.zeros(1, dtype=torch.long, device=dev)
        self.logits = torch.zeros(b, self.block, self.n_classes, dtype=torch.float32, device=dev)
        # Pinned host staging buffers: asynchronous copies in both directions.
        pin = (lambda t: t.pin_memory()) if self.graphed else (lambda t: t)  # noqa: E731
        self._h_tok = pin(torch.zeros(b, self.block, dtype=torch.long))
        self._h_dt = pin(torch.zeros(b, self.block, dtype=torch.float32))
        self._h_cnt = pin(torch.ones(b, self.block, dtype=torch.float32))
        self._h_surf = pin(torch.zeros(b, self.block, self.n_surface, dtype=torch.float32)) if self.n_surface else None
        self._h_logits = pin(torch.zeros(b, self.block, self.n_classes, dtype=torch.float32))
        self.graph = None
        if not self.graphed:
            return
        from ..model.cuda_graph import capture_graph

        self.graph, _ = capture_graph(self._one_step, warmup, dev)
        self.reset()  # the warm-up and capture runs stepped the streams for real

    def _one_step(self) -> None:
        """One token of every stream: read at ``pos``, step, write the logits at ``pos``, ``pos += 1``."""
        idx = self.pos.expand(self.n_streams)[:, None]
        tok = self.tok.gather(1, idx)[:, 0]
        dt = self.dt.gather(1, idx)[:, 0]
        cnt = self.cnt.gather(1, idx)[:, 0]
        surf = None if self.surf is None else self.surf.index_select(1, self.pos)[:, 0]
        out = self.model.step(tok, dt, self.cache, cnt, surf)
        self.logits.index_copy_(1, self.pos, out[:, None, :])
        self.pos.add_(1)

    @torch.no_grad()
    def reset(self, stream=None) -> None:
        """Zero the state of ``stream`` (an int, a sequence of ints, or None for all streams)."""
        if stream is None:
            self.model.reset_inference_cache(self.cache)
            return
        rows = torch.as_tensor(np.atleast_1d(np.asarray(stream, dtype=np.int64)), device=self.device)
        _zero_rows(self.cache, rows)

    @torch.no_grad()
    def run_batch(self, tokens: np.ndarray, dt: np.ndarray, counts: np.ndarray | None = None,
                  copy_out: bool = True, surfaces: np.ndarray | None = None) -> np.ndarray | None:
        """Advance all ``B`` streams by ``T`` tokens each: ``tokens``/``dt``/``counts`` ``(B, T)`` and, for a
        "surface" embedding, ``surfaces`` ``(B, T, F)`` -> logits ``(B, T, C)`` float32 (None when
        ``copy_out`` is false: the logits stay on the device)."""
        b, t_total = tokens.shape
        if b != self.n_streams:
            raise ValueError(f"GraphStepper.run_batch: expected {self.n_streams} rows; got {b}")
        if self.n_surface and (surfaces is None or surfaces.shape != (b, t_total, self.n_surface)):
            got = None if surfaces is None else surfaces.shape
            raise ValueError(
                f"GraphStepper.run_batch: the model needs surfaces of shape {(b, t_total, self.n_surface)}; got {got}"
            )
        out = np.empty((b, t_total, self.n_classes), np.float32) if copy_out else None
        for s in range(0, t_total, self.block):
            n = min(self.block, t_total - s)
            self._h_tok[:, :n] = torch.from_numpy(np.ascontiguousarray(tokens[:, s:s + n], dtype=np.int64))
            self._h_dt[:, :n] = torch.from_numpy(np.ascontiguousarray(dt[:, s:s + n], dtype=np.float32))
            if counts is not None:
                self._h_cnt[:, :n] = torch.from_numpy(np.ascontiguousarray(counts[:, s:s + n], dtype=np.float32))
            if self.n_surface:
                self._h_surf[:, :n] = torch.from_numpy(np.ascontiguousarray(surfaces[:, s:s + n], dtype=np.float32))
                self.surf.copy_(self._h_surf, non_blocking=True)
            self.tok.copy_(self._h_tok, non_blocking=True)
            self.dt.copy_(self._h_dt, non_blocking=True)
            self.cnt.copy_(self._h_cnt, non_blocking=True)
            self.pos.zero_()
            for _ in range(n):
                self._replay()
            if copy_out:
                self._h_logits.copy_(self.logits, non_blocking=True)
                self._sync()
                out[:, s:s + n] = self._h_logits[:, :n].numpy()
        if not copy_out:
            self._sync()
        return out

    def _replay(self) -> None:
        if self.graph is not None:
            self.graph.replay()
        else:
            self._one_step()

    def _sync(self) -> None:
        if self.graphed:
            torch.cuda.current_stream(self.device).synchronize()

    def run(self, tokens, dt, counts=None, need=None, stream: int = 0, copy: bool = True, check: bool = True,
            surfaces=None) -> StepOutput:
        """:meth:`Stepper.run <evmamba.streaming.steppers.Stepper.run>` at batch 1 (stream 0 only; the result
        is always a fresh array, whatever ``copy``)."""
        if self.n_streams != 1:
            raise ValueError("GraphStepper.run serves one stream; use run_batch for several")
        tokens = np.asarray(tokens)
        n = tokens.shape[0]
        if n and check and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size):
            raise ValueError(f"GraphStepper.run: argument 'tokens' holds ids outside [0, {self.vocab_size})")
        logits = self.run_batch(
            tokens[None],
            np.asarray(dt)[None],
            None if counts is None else np.asarray(counts)[None],
            surfaces=None if surfaces is None else np.asarray(surfaces)[None],
        )
        index = np.arange(n) if need is None else np.flatnonzero(np.asarray(need))
        return StepOutput(logits[0, index], index)


__all__ = ["GraphStepper"]
