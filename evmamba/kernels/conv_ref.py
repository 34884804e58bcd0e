"""Reference depthwise causal convolution followed by SiLU: the math the Triton kernel
(:mod:`evmamba.kernels.triton_conv`) must equal, in plain PyTorch (any device and dtype, float64 included).

``out[b, c, t] = silu(bias[c] + sum_{k=0..K-1} weight[c, k] * x[b, c, t - (K-1) + k])`` with ``x = 0`` before
the first element (``t - (K-1) + k < 0``): each output sees its own input and the ``K - 1`` before it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_conv1d_silu_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``silu(causal depthwise conv(x) + bias)``.

    ``x``: ``(B, Di, L)``; ``weight``: ``(Di, K)`` or ``(Di, 1, K)`` (``nn.Conv1d``'s layout); ``bias``:
    ``(Di,)`` or ``None``, all of one dtype (float64 for a float64 reference). Returns ``(B, Di, L)`` in that
    dtype. Inputs are not validated here (see
    :func:`~evmamba.kernels.triton_conv.causal_conv1d_silu`).
    """
    di, k = weight.shape[0], weight.shape[-1]
    w = weight.reshape(di, 1, k)
    L = x.shape[-1]
    # Padding K-1 on both sides and keeping the first L outputs is the causal convolution.
    return F.silu(F.conv1d(x, w, bias, padding=k - 1, groups=di)[..., :L])


__all__ = ["causal_conv1d_silu_ref"]
