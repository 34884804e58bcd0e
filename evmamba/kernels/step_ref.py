"""Reference single-token update of a Mamba layer's recurrent core (between ``in_proj`` and ``out_proj``).

One call advances the causal convolution and the selective state by one element, in place, and returns the
gated output. The fused Triton step has the same signature and is tested against this function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .discretization import discretize, event_decay_step, input_step


def mamba_step_ref(
    xz: torch.Tensor,
    conv_state: torch.Tensor,
    ssm_state: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    x_proj_weight: torch.Tensor,
    dt_proj_weight: torch.Tensor,
    dt_bias: torch.Tensor,
    A: torch.Tensor | None,
    D: torch.Tensor,
    dt: torch.Tensor | None = None,
    rate: torch.Tensor | None = None,
    discretization: str = "mamba",
    A_log: torch.Tensor | None = None,
) -> torch.Tensor:
    """Advance one element; returns ``y`` ``(B, Di)`` in ``xz``'s dtype.

    ``xz``: ``(B, 2*Di)``, the ``in_proj`` output (``x`` then the gate ``z``).
    ``conv_state``: ``(B, Di, K)``, the last ``K`` conv inputs, newest last; shifted in place.
    ``ssm_state``: ``(B, Di, N)``; updated in place (computed in float32 whatever its storage dtype).
    ``conv_weight``: ``(Di, K)``; ``conv_bias``: ``(Di,)`` or ``None``.
    ``x_proj_weight``: ``(R + 2N, Di)``; ``dt_proj_weight``: ``(Di, R)``; ``dt_bias``: ``(Di,)``.
    ``A``: ``(Di, N)`` (negative), or ``None`` with ``A_log`` ``(Di, N)`` given instead (``A = -exp(A_log)``,
    the layer's parameter; the fused kernel then computes ``A`` itself); ``D``: ``(Di,)``.
    ``dt``: ``(B,)`` event-mode time step of this element (``None``: standard mode); ``rate``: ``(Di,)``.
    """
    if A_log is not None:
        A = -torch.exp(A_log.float())
    dtype = xz.dtype
    di = conv_state.shape[1]
    n = A.shape[1]
    rank = dt_proj_weight.shape[1]
    x, z = xz[:, :di], xz[:, di:]

    # Causal depthwise convolution over the K most recent inputs.
    conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
    conv_state[:, :, -1] = x
    xc = torch.einsum("bdk,dk->bd", conv_state.to(conv_weight.dtype), conv_weight)
    if conv_bias is not None:
        xc = xc + conv_bias
    xc = F.silu(xc).float()

    x_dbl = xc @ x_proj_weight.float().t()  # (B, R + 2N)
    dt_low, Bm, Cm = torch.split(x_dbl, [rank, n, n], dim=-1)
    dtB = input_step(dt_low @ dt_proj_weight.float().t(), dt_bias.float())  # (B, Di)
    dtA = dtB if dt is None else event_decay_step(dt.float()[:, None], rate.float())
    a, fac = discretize(dtA[:, :, None], dtB[:, :, None], A.float(), discretization)  # (B, Di, N)

    h = a * ssm_state.float() + (fac * xc[:, :, None]) * Bm[:, None, :]
    ssm_state.copy_(h)
    y = torch.einsum("bdn,bn->bd", h, Cm) + D.float() * xc
    y = y * F.silu(z.float())
    return y.to(dtype)
