"""Peak memory of one training step (or one evaluation forward) of an :class:`EventClassifier`, from its shapes.

The estimate counts what PyTorch and the CPU scan keep alive, per token, for a right-padded batch of ``B``
sequences of ``L`` tokens (every padded position costs as much as a real one):

* **parameters** (fp32), their **gradients**, and AdamW's two moment buffers (**optimizer**; allocated at
  the first step) -- 4 + 4 + 8 bytes per parameter;
* **batch**: the collated inputs, ``tokens`` int64, ``counts`` and ``dt`` float32 (16 bytes per token), and
  for the ``surface`` embedding the local surfaces, ``F`` float32 per token;
* **activations**: everything the forward pass saves for the backward pass, at the length each layer sees
  (pooling divides it), plus the largest temporary of the backward pass (one layer's gradients).

Per Mamba layer of width ``d``, inner width ``Di = expand * d``, state ``N`` and Δ rank ``R``, the saved
floats per token are (see :class:`~evmamba.model.mamba.Mamba`.forward and :mod:`evmamba.kernels.cpu_scan`):
the residual input and its normalisation (``3 d``), the ``in_proj`` output that the convolution's input view
keeps alive (``2 Di``), the convolution output and its SiLU (``2 Di``), the ``x_proj`` input copy (``Di``),
the scan's contiguous copies of Δ and z (``2 Di``), the ``out_proj`` input copy (``Di``), the ``x_proj``
output (``R + 2 N``), the scan's copies of B and C (``2 N``) and its state checkpoints (``Di N / 64``):
``9 Di + 3 d + R + 4 N + Di N / 64``. The backward pass of one layer needs about ``6 Di`` more (the
gradients of u, Δ and z, the incoming gradient and its copy, the gradient of the ``in_proj`` output).
The embedding and input pooling keep about ``5 d`` per input token (the ``surface`` embedding's MLP another
``2 h + d`` for its hidden width ``h``, and its input ``F``); each pooling between stages ``2 d`` per
token of the stage before it, and the final norm and readout ``4 d`` per token of the last stage. A context
stage (:mod:`evmamba.model.context`) keeps its gathered neighbour values (``N C`` for ``N`` neighbours of
``C`` channels) and a few small tensors per input token, and its backward pass needs about ``2 N C`` more.

These coefficients were checked against the peak resident memory of real training steps on the CPU
(``tests/test_memory.py``: within a factor of 2; in practice within about 25 %). On a GPU with bf16
autocast the activations are smaller; the estimate stays on the safe side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

FLOAT = 4  # bytes: parameters, activations and optimizer state are fp32 on the CPU
TOKEN_INPUT_BYTES = 16  # tokens int64 + counts float32 + dt float32 per padded position


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of one step, by kind. ``total`` is their sum."""

    parameters: int
    gradients: int
    optimizer: int
    activations: int
    batch: int

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer + self.activations + self.batch

    @property
    def fixed(self) -> int:
        """The part that does not grow with the batch: parameters, gradients and optimizer state."""
        return self.parameters + self.gradients + self.optimizer

    def describe(self) -> str:
        """``"2.31 GB (parameters 0.00, gradients 0.00, optimizer 0.00, activations 2.30, batch 0.01)"``."""
        parts = ", ".join(f"{k} {gb(getattr(self, k))}" for k in ("parameters", "gradients", "optimizer",
                                                                  "activations", "batch"))
        return f"{gb(self.total)} GB ({parts})"


def gb(n_bytes: float) -> str:
    """Bytes as GB (10^9) with two decimals."""
    return f"{n_bytes / 1e9:.2f}"


def _check_batch(batch, length) -> tuple[int, int]:
    for name, v in (("batch", batch), ("length", length)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"memory estimate: argument '{name}' must be an int >= 1; got {v!r}")
    return batch, length


def _shapes(model) -> dict:
    """The sizes the estimate needs, read from the model (an :class:`EventClassifier`)."""
    from .classifier import EventClassifier

    if not isinstance(model, EventClassifier):
        raise TypeError(f"memory estimate: expected an EventClassifier; got {type(model).__name__}")
    layer = model.layers[0]
    emb = model.embedding
    surface = emb.n_surface if emb.needs_surfaces else 0
    hidden = int(model.config.get("surface_hidden", 0)) if surface else 0
    context = model.context
    if context is not None:
        from .context import saved_floats_per_token

        ctx_saved, ctx_values = saved_floats_per_token(context), context.n_neighbours * context.channels
    else:
        ctx_saved = ctx_values = 0
    return dict(d=model.d_model, di=layer.d_inner, n=layer.d_state, r=layer.dt_rank,
                params=sum(p.numel() for p in model.parameters()),
                dropout=model.config.get("dropout", 0.0) > 0, surface=surface, hidden=hidden,
                ctx_saved=ctx_saved, ctx_values=ctx_values)


def stage_lengths(model, length: int) -> list[int]:
    """Length seen by each stage of ``model`` for an input of ``length`` tokens (pooling rounds up)."""
    out = [length]
    for s in model.stage_strides:
        out.append(-(-out[-1] // s))
    return out


def layer_floats(d: int, di: int, n: int, r: int, dropout: bool = False) -> float:
    """Floats per token that one Mamba block saves for its backward pass (see the module docstring)."""
    return 9 * di + 3 * d + r + 4 * n + di * n / 64 + (d / 4 if dropout else 0.0)


def backward_floats(di: int) -> float:
    """Extra floats per token while one block runs its backward pass."""
    return 6 * di


def _activation_floats(model, batch: int, length: int) -> tuple[float, float]:
    """``(saved, largest transient)`` activation floats of one training step."""
    s = _shapes(model)
    d, di = s["d"], s["di"]
    lengths = stage_lengths(model, length)
    saved = 5 * d * batch * length  # embedding, count feature, input pooling
    if s["surface"]:  # the surface MLP's input, hidden pre- and post-activation, and output
        saved += (s["surface"] + 2 * s["hidden"] + d) * batch * length
    saved += (s["ctx_saved"] + d) * batch * length  # the context stage (0 without one), and its residual sum
    # Its backward pass: the gradient of the gathered neighbour values, and of their decayed copy.
    transient = 2.0 * s["ctx_values"] * batch * length
    for k, stage in enumerate(model.stages):
        tokens = batch * lengths[k]
        saved += len(stage) * layer_floats(d, di, s["n"], s["r"], s["dropout"]) * tokens
        if stage:
            transient = max(transient, backward_floats(di) * tokens)
        if k < len(model.stage_strides):
            saved += 2 * d * tokens  # pooling to the next stage
    saved += 4 * d * batch * lengths[-1]  # final norm and readout
    return saved, transient


def training_step_bytes(model, batch: int, length: int) -> MemoryEstimate:
    """Peak bytes of one AdamW training step of ``model`` (an :class:`EventClassifier`) on a batch of
    ``batch`` right-padded sequences of ``length`` tokens. See the module docstring for what is counted."""
    batch, length = _check_batch(batch, length)
    params = _shapes(model)["params"]
    saved, transient = _activation_floats(model, batch, length)
    return MemoryEstimate(parameters=FLOAT * params, gradients=FLOAT * params, optimizer=2 * FLOAT * params,
                          activations=int(math.ceil(FLOAT * (saved + transient))),
                          batch=(TOKEN_INPUT_BYTES + FLOAT * _shapes(model)["surface"]) * batch * length)


def inference_bytes(model, batch: int, length: int) -> MemoryEstimate:
    """Peak bytes of one forward pass without gradients (evaluation) on ``batch`` x ``length`` tokens: the
    parameters, the inputs and the largest block's temporaries (nothing is kept for a backward pass)."""
    batch, length = _check_batch(batch, length)
    s = _shapes(model)
    d, di = s["d"], s["di"]
    lengths = stage_lengths(model, length)
    biggest = (5 * d + s["surface"] + 2 * s["hidden"] + s["ctx_saved"]) * batch * length
    for k, stage in enumerate(model.stages):
        if stage:
            biggest = max(biggest, (layer_floats(d, di, s["n"], s["r"]) + 2 * d) * batch * lengths[k])
    return MemoryEstimate(parameters=FLOAT * s["params"], gradients=0, optimizer=0,
                          activations=int(math.ceil(FLOAT * biggest)),
                          batch=(TOKEN_INPUT_BYTES + FLOAT * s["surface"]) * batch * length)


def activation_bytes_per_token(model, length: int) -> float:
    """Training-step bytes per padded input token (activations and inputs) at sequences of ``length``:
    what one more token of ``train.batch_tokens`` costs."""
    est = training_step_bytes(model, 1, length)
    return (est.activations + est.batch) / length


__all__ = ["MemoryEstimate", "activation_bytes_per_token", "gb", "inference_bytes", "layer_floats",
           "stage_lengths", "training_step_bytes"]
