"""Capture a recurrent step in a CUDA graph and replay it: batch-1 latency without per-kernel launch cost.

:func:`capture_graph` is the one capture procedure of the project (warm-up on a side stream, then capture);
:class:`CudaGraphStep` wraps it for a callable with inputs, and the stream loop's
:class:`~evmamba.streaming.gpu_step.GraphStepper` uses it for the classifier's whole step.

A model step at batch 1 is a few dozen tiny kernels; launching them one by one from Python costs more than
running them. :class:`CudaGraphStep` records any step callable once, with static input and output buffers,
and afterwards each call copies the new inputs into those buffers and replays the whole step as one graph.

The callable may update tensors in place (a layer's inference cache, a stack's caches): the graph keeps
updating the very same tensors on every replay. Give them as ``state``: their contents are saved before the
warm-up and capture runs (which execute the step for real) and restored afterwards, so building the graph
leaves no trace in them. Python-side bookkeeping does not run on replay -- for example ``Mamba``'s
``inference_cache["seqlen_offset"]`` stays where it was at capture time.

Example (a stack of layers, one token per call)::

    caches = [layer.allocate_inference_cache(1, 0) for layer in layers]

    def step(x, dt):
        for layer, cache in zip(layers, caches):
            x, _ = layer.step(x, cache, dt)
        return x

    graph = CudaGraphStep(step, (x0, dt0), state=[t for c in caches for t in (c["conv_state"], c["lrnn_state"])])
    y = graph(x, dt)  # replays; y is the static output buffer, overwritten by the next call
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch


def _flatten_outputs(out: Any) -> tuple[list[torch.Tensor], bool]:
    if isinstance(out, torch.Tensor):
        return [out], True
    if isinstance(out, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in out):
        return list(out), False
    raise TypeError(
        "CudaGraphStep: the step callable must return a tensor or a tuple/list of tensors; "
        f"got {type(out).__name__}"
    )


def capture_graph(fn: Callable[[], Any], warmup: int = 3, device=None) -> tuple[torch.cuda.CUDAGraph, Any]:
    """Record ``fn()`` (no arguments: it reads and writes tensors it holds) in a CUDA graph after ``warmup``
    eager runs on a side stream (they compile kernels and settle the allocator's pools, which a capture may
    not do). Returns ``(graph, what the captured run returned)``: its tensors are the static outputs that every
    ``graph.replay()`` overwrites. The warm-up and capture runs execute ``fn`` for real, under
    ``torch.no_grad()``: the caller restores or resets whatever state they changed. ``device``: the CUDA
    device (default: the current one)."""
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
        raise ValueError(f"capture_graph: warmup must be a positive int; got {warmup!r}")
    side = torch.cuda.Stream(device=device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.no_grad(), torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        out = fn()
    return graph, out


class CudaGraphStep:
    """Record ``fn(*example_inputs)`` in a CUDA graph; calling the object replays it on new inputs.

    ``fn``: a callable taking tensors and returning a tensor or a tuple/list of tensors.
    ``example_inputs``: tensors with the shapes, dtypes and devices of every later call (their values are only
    used by the warm-up and capture runs).
    ``state``: tensors that ``fn`` updates in place; restored after the warm-up and capture runs.
    ``warmup``: eager runs before capture (they compile kernels and settle allocator pools).
    ``clone_outputs``: return copies instead of the static output buffers (which the next call overwrites).

    On a machine without CUDA, or for CPU inputs, the object simply calls ``fn`` (same interface, no graph),
    so code written against it runs everywhere. The step runs under ``torch.no_grad()``.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        example_inputs: Sequence[torch.Tensor],
        state: Sequence[torch.Tensor] = (),
        warmup: int = 3,
        clone_outputs: bool = False,
    ):
        if not callable(fn):
            raise TypeError(f"CudaGraphStep: fn must be callable; got {type(fn).__name__}")
        example_inputs = tuple(example_inputs)
        for i, t in enumerate(example_inputs):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"CudaGraphStep: example_inputs[{i}] must be a torch.Tensor; got {type(t).__name__}")
        state = tuple(state)
        for i, t in enumerate(state):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"CudaGraphStep: state[{i}] must be a torch.Tensor; got {type(t).__name__}")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
            raise ValueError(f"CudaGraphStep: warmup must be a positive int; got {warmup!r}")
        self.fn = fn
        self.clone_outputs = bool(clone_outputs)
        self._specs = [(tuple(t.shape), t.dtype, t.device) for t in example_inputs]
        devices = {t.device for t in example_inputs} | {t.device for t in state}
        self.graphed = bool(devices) and all(d.type == "cuda" for d in devices) and torch.cuda.is_available()
        self._graph = None
        if not self.graphed:
            return

        self._static_inputs = [t.detach().clone() for t in example_inputs]
        saved = [t.detach().clone() for t in state]
        graph, out = capture_graph(lambda: fn(*self._static_inputs), warmup)
        self._static_outputs, self._single = _flatten_outputs(out)
        self._graph = graph
        with torch.no_grad():
            for t, v in zip(state, saved):
                t.copy_(v)

    def _check_inputs(self, inputs: tuple) -> None:
        if len(inputs) != len(self._specs):
            raise ValueError(f"CudaGraphStep: expected {len(self._specs)} inputs (as captured); got {len(inputs)}")
        for i, (t, (shape, dtype, device)) in enumerate(zip(inputs, self._specs)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"CudaGraphStep: input {i} must be a torch.Tensor; got {type(t).__name__}")
            if tuple(t.shape) != shape or t.dtype != dtype or t.device != device:
                raise ValueError(
                    f"CudaGraphStep: input {i} must be {shape} {dtype} on {device} (as captured); "
                    f"got {tuple(t.shape)} {t.dtype} on {t.device}"
                )

    def __call__(self, *inputs: torch.Tensor):
        self._check_inputs(inputs)
        if self._graph is None:
            with torch.no_grad():
                return self.fn(*inputs)
        for dst, src in zip(self._static_inputs, inputs):
            dst.copy_(src)
        self._graph.replay()
        outs = [t.clone() for t in self._static_outputs] if self.clone_outputs else self._static_outputs
        return outs[0] if self._single else tuple(outs)


__all__ = ["CudaGraphStep", "capture_graph"]
