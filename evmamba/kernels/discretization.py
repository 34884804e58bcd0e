"""Discretization of the continuous selective SSM: the single source of truth.

Every path that advances the state -- the reference scan, the Triton scan and its backward, the fused step
and the CPU step -- computes the transition ``Abar`` and the input factor ``Bbar / B`` with the formulas
below (Triton kernels re-state them in Triton and are tested against these functions).

Per channel ``d`` and state ``n``, with ``A = -exp(A_log) < 0``, the input step ``dtB`` (always
input-dependent: ``softplus(dt_proj(x) + dt_bias)``) and the decay step ``dtA``:

* standard mode: ``dtA = dtB``;
* event mode: ``dtA = dt * softplus(rate[d])`` -- independent of the input; ``dt`` is the element's time step (the
  gap to the previous event, called ``integration_timesteps`` at the :class:`~evmamba.model.Mamba` boundary).

======== ============================================ ================================
name     Abar (multiplies h)                          Bbar (multiplies u)
======== ============================================ ================================
mamba    exp(dtA*A)                                   dtB * B
zoh      exp(dtA*A)                                   expm1(dtB*A) / A * B
bilinear (1 + dtA*A/2) / (1 - dtA*A/2)                dtB / (1 - dtB*A/2) * B
dirac    exp(dtA*A)                                   B
======== ============================================ ================================

All functions are elementwise and broadcast, so they serve any layout: ``(B, D, L, N)`` in the scan,
``(B, D, N)`` in a step. They are written with plain ``torch`` operations so that autograd differentiates
them (the reference's gradients are checked against finite differences).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DISCRETIZATIONS = ("mamba", "zoh", "bilinear", "dirac")

#: The integer each compiled path (Triton, numba) switches on, by discretization name.
METHOD_CODES = {name: code for code, name in enumerate(DISCRETIZATIONS)}


def check_discretization(name: object, argument: str = "discretization") -> str:
    """Return ``name`` if it is a known discretization, else raise ``ValueError``/``TypeError`` naming it."""
    if not isinstance(name, str):
        raise TypeError(f"{argument} must be a str, one of {DISCRETIZATIONS}; got {type(name).__name__}")
    if name not in DISCRETIZATIONS:
        raise ValueError(f"{argument} must be one of {DISCRETIZATIONS}; got {name!r}")
    return name


def input_step(dt_raw: torch.Tensor, dt_bias: torch.Tensor | None = None, softplus: bool = True) -> torch.Tensor:
    """The input step ``dtB = softplus(dt_raw + dt_bias)`` (or without softplus when ``softplus=False``)."""
    if dt_bias is not None:
        dt_raw = dt_raw + dt_bias
    return F.softplus(dt_raw) if softplus else dt_raw


def event_decay_step(dt: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
    """Event-mode decay step ``dtA = dt * softplus(rate)``.

    ``dt`` and ``rate`` broadcast against each other: for example ``(B, 1, L) * (D, 1)`` gives the
    ``(B, D, L)`` decay step of a whole sequence and ``(B, 1) * (D,)`` the ``(B, D)`` step of one token.
    ``rate`` is the raw (pre-softplus) per-channel parameter; ``softplus(rate)`` is a rate in 1 / time unit.
    """
    return dt * F.softplus(rate)


def transition(dtA: torch.Tensor, A: torch.Tensor, method: str) -> torch.Tensor:
    """``Abar``, the factor that multiplies the previous state. ``dtA * A`` must be finite and <= 0."""
    x = dtA * A
    if method == "bilinear":
        half = 0.5 * x
        return (1.0 + half) / (1.0 - half)
    return torch.exp(x)


def input_factor(dtB: torch.Tensor, A: torch.Tensor, method: str) -> torch.Tensor:
    """``Bbar / B``: the factor by which ``B * u`` enters the state.

    ``mamba`` and ``dirac`` do not depend on ``A``, so their factor keeps the shape of ``dtB`` (it
    broadcasts against ``A`` where it is used); ``zoh`` and ``bilinear`` return the broadcast shape.
    """
    if method == "mamba":
        return dtB
    if method == "zoh":
        return torch.expm1(dtB * A) / A
    if method == "bilinear":
        return dtB / (1.0 - 0.5 * (dtB * A))
    if method == "dirac":
        return torch.ones_like(dtB)
    raise ValueError(f"discretization must be one of {DISCRETIZATIONS}; got {method!r}")


def discretize(dtA: torch.Tensor, dtB: torch.Tensor, A: torch.Tensor, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(Abar, Bbar / B)`` for decay step ``dtA``, input step ``dtB`` and ``A`` (all broadcast)."""
    return transition(dtA, A, method), input_factor(dtB, A, method)
