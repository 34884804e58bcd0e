"""The ``Mamba`` layer's inner part -- causal conv + SiLU, ``x_proj``, ``dt_proj`` and the selective scan -- as one
autograd node on the Triton kernels, for training.

Composed of separate autograd nodes (:meth:`Mamba.forward`'s general path), the backward of this part runs a
dozen small operations besides the kernels: the concatenation of ``x``'s and ``z``'s gradients for ``in_proj``
(a copy of ``(B, L, 2 Di)``), the sum of the two gradients that reach the convolution's output (one from the
scan, one through ``x_proj``), the transposes and splits, and the autograd engine's work for each node. Here the
scan writes ``dz`` and the convolution writes ``dx`` into the two halves of one ``(B, L, 2 Di)`` buffer, ``x_proj``'s
backward adds into the scan's ``du`` in place, and the whole part is one node.

The arithmetic is the general path's: the same kernels, the projections in the same dtype (under
``torch.autocast`` the matrix products run in the autocast dtype, as ``nn.Linear`` and ``@`` do there; the
parameters' gradients come back in their own dtype). Tests compare the two paths.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..kernels.triton_conv import conv_silu_backward, conv_silu_forward
from ..kernels.triton_scan import scan_backward, scan_forward
from .mamba import scan_inputs


class MambaInnerFunction(torch.autograd.Function):
    """``y`` ``(B, L, Di)`` from ``xz`` ``(B, L, 2 Di)`` (``in_proj``'s output): ``xc = silu(conv(x))``,
    ``x_dbl = xc W_x^T``, ``delta = dt_low W_dt^T``, ``y = scan(xc, delta, -exp(A_log), B, C, D, z, dt_bias,
    dt, rate)``. ``conv_weight`` ``(Di, K)`` contiguous; ``dt`` ``(B, L)`` or ``None``; ``lengths`` ``(B,)`` or
    ``None``; the rest are the layer's parameters."""

    @staticmethod
    def forward(ctx, xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_bias, A_log, D, rate, dt,
                lengths, dt_rank: int, d_state: int, method: str):
        d_inner = xz.shape[-1] // 2
        x = xz[..., :d_inner].transpose(1, 2)  # (B, Di, L), channels innermost
        z = xz[..., d_inner:].transpose(1, 2)
        xc = conv_silu_forward(x, conv_weight, conv_bias)  # (B, Di, L), laid out like x
        # The same products as the general path (F.linear is nn.Linear's), in the dtype autocast gives them; the
        # weights are cast here, once, and kept for the backward (which runs outside autocast).
        dev_type = xz.device.type
        cdt = torch.get_autocast_dtype(dev_type) if torch.is_autocast_enabled(dev_type) else x_proj_weight.dtype
        w_x, w_dt = x_proj_weight.to(cdt), dt_proj_weight.to(cdt)
        x_dbl = F.linear(xc.transpose(1, 2), w_x)  # (B, L, R + 2N)
        delta, Bt, Ct = scan_inputs(x_dbl, w_dt, dt_rank, d_state)  # (B, Di, L), (B, N, L) x 2
        A = -torch.exp(A_log.float())
        y, _, states = scan_forward(xc, delta, A, Bt, Ct, D, z, dt_bias, True, dt, rate, method, None, lengths,
                                    want_final=False, save_states=True)
        ctx.save_for_backward(xz, conv_weight, conv_bias, xc, x_dbl, delta, w_x, w_dt, dt_bias, A, D, rate, dt,
                              lengths, states)
        ctx.param_dtypes = (x_proj_weight.dtype, dt_proj_weight.dtype)
        ctx.dims = (dt_rank, d_state, method)
        return y.transpose(1, 2)  # (B, L, Di)

    @staticmethod
    def backward(ctx, dy_t):
        (xz, conv_weight, conv_bias, xc, x_dbl, delta, w_x, w_dt, dt_bias, A, D, rate, dt, lengths,
         states) = ctx.saved_tensors
        dt_rank, d_state, method = ctx.dims
        batch, L, two_di = xz.shape
        d_inner = two_di // 2
        x = xz[..., :d_inner].transpose(1, 2)
        z = xz[..., d_inner:].transpose(1, 2)
        dt_low, Bm, Cm = torch.split(x_dbl, [dt_rank, d_state, d_state], dim=-1)
        event = dt is not None
        g = ctx.needs_input_grad

        dxz = torch.empty_like(xz, memory_format=torch.contiguous_format)  # (B, L, 2 Di): [dx | dz]
        du, ddelta, dA, dB, dC, dD, _, dbias, ddt, drate, _ = scan_backward(
            dy_t.transpose(1, 2), None, xc, delta, A, Bm.transpose(1, 2), Cm.transpose(1, 2), D, z, dt_bias, True,
            dt, rate, method, lengths, states, dz_out=dxz[..., d_inner:].transpose(1, 2), bc_float32=True,
            want_ddt=g[9])

        # dt_proj: delta = dt_low W_dt^T. ddelta is laid out like xc (channels innermost): its transpose is a
        # contiguous (B, L, Di).
        cdt = x_dbl.dtype  # the projections' compute dtype (the autocast dtype under autocast)
        ddelta_t = ddelta.transpose(1, 2).reshape(-1, d_inner)
        d_dt_low = ddelta_t @ w_dt  # (B L, R)
        d_dt_proj_w = ddelta_t.t() @ dt_low.reshape(-1, dt_rank)  # (Di, R)
        # x_proj: x_dbl = xc W_x^T; its input gradient is added into the scan's du in place (du is this node's).
        # One copy gathers x_dbl's gradient: dt_low's, and B's and C's float32 sums (transposed, cast).
        dx_dbl = torch.empty(batch, L, dt_rank + 2 * d_state, device=xz.device, dtype=cdt)
        torch.cat([d_dt_low.view(batch, L, dt_rank), dB.transpose(1, 2), dC.transpose(1, 2)], dim=2, out=dx_dbl)
        dx_dbl = dx_dbl.view(-1, dt_rank + 2 * d_state)  # (B L, R + 2N)
        xc_t = xc.transpose(1, 2).reshape(-1, d_inner)
        d_x_proj_w = dx_dbl.t() @ xc_t.to(cdt)  # (R + 2N, Di)
        du_t = du.transpose(1, 2)  # (B, L, Di) contiguous: du is laid out like xc
        if du_t.is_contiguous() and du.dtype == cdt:
            dxc = du_t.view(-1, d_inner).addmm_(dx_dbl, w_x).view(batch, L, d_inner)
        else:
            dxc = du_t + (dx_dbl @ w_x).view(batch, L, d_inner).to(du.dtype)
        # The convolution's backward writes dx into the other half of dxz.
        _, dconv_w, dconv_b = conv_silu_backward(dxc.transpose(1, 2), x, conv_weight, conv_bias,
                                                 dx_out=dxz[..., :d_inner].transpose(1, 2))

        if rate is not None and drate is None:  # standard mode: the rate takes part with a zero gradient
            drate = torch.zeros_like(rate)
        return (
            dxz if g[0] else None,
            dconv_w.to(conv_weight.dtype) if g[1] else None,
            dconv_b.to(conv_bias.dtype) if conv_bias is not None and g[2] else None,
            d_x_proj_w.to(ctx.param_dtypes[0]) if g[3] else None,
            d_dt_proj_w.to(ctx.param_dtypes[1]) if g[4] else None,
            dbias.to(dt_bias.dtype) if g[5] else None,
            (dA * A).to(torch.float32) if g[6] else None,  # A = -exp(A_log): dA/dA_log = A
            dD if g[7] else None,
            drate if g[8] and rate is not None else None,
            ddt if event and g[9] else None,
            None, None, None, None,
        )


def mamba_inner(xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_bias, A_log, D, rate, dt, lengths,
                dt_rank: int, d_state: int, method: str) -> torch.Tensor:
    """:class:`MambaInnerFunction` applied; ``(B, L, Di)``. The caller (the layer) has checked the inputs."""
    return MambaInnerFunction.apply(xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_bias, A_log, D,
                                    rate, dt, lengths, dt_rank, d_state, method)
