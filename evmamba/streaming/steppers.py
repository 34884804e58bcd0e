"""What the stream loop needs from a stepper, and the steps shared by both steppers.

A *stepper* advances one or more streams of a token classifier by chunks of tokens and returns the logits
after the tokens asked for: :class:`~evmamba.streaming.fast_step.FastStepper` (the compiled CPU step) and
:class:`~evmamba.streaming.gpu_step.GraphStepper` (the fused GPU step in a CUDA graph).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np


class StepOutput(NamedTuple):
    """Logits after the tokens of a chunk that were asked for: ``logits`` (M, C) float32, ``index`` (M,) their
    positions within the chunk."""

    logits: np.ndarray
    index: np.ndarray


@runtime_checkable
class Stepper(Protocol):
    """The interface of both steppers, which is all the stream loop, the concurrent runner and the warm-up use.

    Attributes: ``n_classes``, ``vocab_size``, ``n_streams``; ``n_surface`` (F of the local surfaces the
    model's embedding reads, 0 for none) and ``surface_config`` (their
    :class:`~evmamba.pipeline.surfaces.SurfaceConfig`, or None). Both steppers compute the classifier's own
    :meth:`~evmamba.model.classifier.EventClassifier.step` (tested against it token by token).
    """

    n_classes: int
    vocab_size: int
    n_streams: int
    n_surface: int
    surface_config: Any

    def run(self, tokens, dt, counts=None, need=None, stream: int = 0, copy: bool = True, check: bool = True,
            surfaces=None) -> StepOutput:
        """Advance ``stream`` by a chunk: ``tokens`` (T,) ids, ``dt`` (T,) float32 gaps in the binning's time
        unit, ``counts`` (T,) events per token (None: 1), ``need`` (T,) bool or None (every token), ``surfaces``
        (T, F) float32 (exactly when ``n_surface``). Returns the logits after each needed token. ``copy=False``
        may return views that the next call overwrites; ``check=False`` skips value checks of tokens that
        come from the binner."""
        ...

    def reset(self, stream: int | None = None) -> None:
        """Zero the state of ``stream`` (every stream when None): the next token starts a new recording."""
        ...


def warm_up(stepper: Stepper, binning, sensor_size) -> None:
    """Compile (or load from numba's cache) the binner and step kernels before the clock starts."""
    from ..core.events import make_events
    from ..pipeline.binning import StreamingBinner

    binner = StreamingBinner(sensor_size, binning)
    step = max(binning.bin_us, 1)
    ev = make_events([0, 0, 0], [0, 0, 0], [0, step, 2 * step], [0, 0, 0])
    seqs = [binner.push(ev), binner.advance(3 * step), binner.flush()]
    n_surface = stepper.n_surface
    surf = lambda n: np.zeros((n, n_surface), np.float32) if n_surface else None  # noqa: E731
    for seq in seqs:
        if seq.num_tokens:
            stepper.run(
                seq.tokens, seq.dt, seq.counts, np.ones(seq.num_tokens, np.uint8), surfaces=surf(seq.num_tokens)
            )
    stepper.run(np.zeros(2, np.int32), np.zeros(2, np.float32), np.ones(2, np.int32), np.ones(2, np.uint8),
                surfaces=surf(2))
    stepper.reset()
    surface = stepper.surface_config
    if surface is not None:  # compile (or load) the surface kernel too
        from ..pipeline.binning import token_grid
        from ..pipeline.surfaces import SurfaceTracker

        SurfaceTracker(token_grid(tuple(sensor_size), binning), surface).push(
            np.zeros(2, np.int32), np.zeros(2, np.int64)
        )


__all__ = ["StepOutput", "Stepper", "warm_up"]
