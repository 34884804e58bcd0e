"""An exponential moving average of a model's weights (``train.ema_decay``).

With a few hundred or thousand recordings, the weights after the last optimizer steps of an epoch depend on
which batches those steps happened to see, and so does the held-out accuracy from epoch to epoch and seed to
seed. The average of the weights over the last few hundred steps is a smoother point of the same run:
validation, the test split, ``best.pt`` and the exported ``model.pt`` all use it, so what is measured is what
is shipped.

``average = d * average + (1 - d) * weights`` after every optimizer step, with ``d = min(decay,
(1 + n) / (10 + n))`` after ``n`` steps, so the average is not held back by the initial weights early on.
Every floating-point entry of the state dict (parameters and buffers such as batch-norm statistics) is
averaged; integer buffers are copied.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["WeightAverage"]


class WeightAverage:
    """The running average of ``model``'s state dict (kept in float32 on the model's device)."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema_decay must be in (0, 1); got {decay!r}")
        self.decay = float(decay)
        self.updates = 0
        self.average = {k: v.detach().clone().float() if v.is_floating_point() else v.detach().clone()
                        for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Fold the model's current weights into the average (call after every optimizer step)."""
        d = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        for k, v in model.state_dict().items():
            avg = self.average[k]
            if avg.is_floating_point():
                avg.mul_(d).add_(v.detach().float(), alpha=1.0 - d)
            else:
                avg.copy_(v)
        self.updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights (float32 where floating point; what ``model.load_state_dict`` takes)."""
        return {k: v.clone() for k, v in self.average.items()}

    def load(self, averaged: dict[str, torch.Tensor], updates: int) -> None:
        """Continue from a saved average (resuming a run)."""
        for k, v in averaged.items():
            self.average[k].copy_(v)
        self.updates = int(updates)

    @contextlib.contextmanager
    @torch.no_grad()
    def swapped_into(self, model: torch.nn.Module) -> Iterator[None]:
        """Run the body with the averaged weights in ``model``; the trained weights come back afterwards."""
        trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.average)
        try:
            yield
        finally:
            model.load_state_dict(trained)
