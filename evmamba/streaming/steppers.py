"""What the stream loop needs from a stepper, and the steps shared by both steppers.

A *stepper* advances one or more streams of a token classifier by chunks of tokens and returns the logits
after the tokens asked for: :class:`~evmamba.streaming.fast_step.FastStepper` (the compiled CPU step) and
:class:`~evmamba.streaming.gpu_step.GraphStepper` (the fused GPU step in a CUDA graph).
"""

from __future__ import annotations

import numpy as np


def warm_up(stepper, binning, sensor_size) -> None:
    """Compile (or load from numba's cache) the binner and step kernels before the clock starts."""
    from ..core.events import make_events
    from ..pipeline.binning import StreamingBinner

    binner = StreamingBinner(sensor_size, binning)
    step = max(binning.bin_us, 1)
    ev = make_events([0, 0, 0], [0, 0, 0], [0, step, 2 * step], [0, 0, 0])
    seqs = [binner.push(ev), binner.advance(3 * step), binner.flush()]
    n_surface = getattr(stepper, "n_surface", 0)
    surf = lambda n: np.zeros((n, n_surface), np.float32) if n_surface else None  # noqa: E731
    for seq in seqs:
        if seq.num_tokens:
            stepper.run(
                seq.tokens, seq.dt, seq.counts, np.ones(seq.num_tokens, np.uint8), surfaces=surf(seq.num_tokens)
            )
    stepper.run(np.zeros(2, np.int32), np.zeros(2, np.float32), np.ones(2, np.int32), np.ones(2, np.uint8),
                surfaces=surf(2))
    stepper.reset()
    surface = getattr(stepper, "surface_config", None)
    if surface is not None:  # compile (or load) the surface kernel too
        from ..pipeline.binning import token_grid
        from ..pipeline.surfaces import SurfaceTracker

        SurfaceTracker(token_grid(tuple(sensor_size), binning), surface).push(
            np.zeros(2, np.int32), np.zeros(2, np.int64)
        )


__all__ = ["warm_up"]
