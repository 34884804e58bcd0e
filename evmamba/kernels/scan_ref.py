"""Reference selective scan in plain PyTorch.

This is the ground truth for the Triton kernels and the path used on CPU. It is vectorised over batch,
channel and state and chunked over time: each chunk of ``chunk_size`` steps is discretised in one shot,
the recurrence runs as one fused multiply-add per time step over a ``(B, D, N)`` slab, and the output
contraction ``C . h`` is one batched product per chunk. The recurrence has a hand-written backward (the
adjoint recurrence run in reverse), so autograd stores one state tensor per step instead of a graph node.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .discretization import discretize, event_decay_step, input_step

DEFAULT_CHUNK_SIZE = 32


class _LinearRecurrence(torch.autograd.Function):
    """``H[t] = a[t] * H[t-1] + b[t]`` over the leading (time) dimension, ``H[-1] = h0``.

    ``a``, ``b``: ``(T, ...)``; ``h0``: ``(...)``. Returns ``H`` with the shape of ``b``.
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
        H = torch.empty_like(b)
        h = h0
        for t in range(b.shape[0]):
            h = torch.addcmul(b[t], a[t], h, out=H[t])
        ctx.save_for_backward(a, H, h0)
        return H

    @staticmethod
    def backward(ctx, gH: torch.Tensor):
        a, H, h0 = ctx.saved_tensors
        T = a.shape[0]
        # Adjoint: g[t] = dL/dH[t] including the paths through later states, g[t] = gH[t] + a[t+1] g[t+1].
        g = torch.empty_like(H)
        g[T - 1] = gH[T - 1]
        for t in range(T - 2, -1, -1):
            torch.addcmul(gH[t], a[t + 1], g[t + 1], out=g[t])
        prev = torch.cat([h0.unsqueeze(0), H[:-1]], dim=0)
        grad_a = g * prev if ctx.needs_input_grad[0] else None
        grad_h0 = a[0] * g[0] if ctx.needs_input_grad[2] else None
        return grad_a, g, grad_h0


def linear_recurrence(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """All states of ``h[t] = a[t] * h[t-1] + b[t]`` (time first), differentiable in ``a``, ``b`` and ``h0``."""
    return _LinearRecurrence.apply(a, b, h0)


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    dt: torch.Tensor | None = None,
    rate: torch.Tensor | None = None,
    discretization: str = "mamba",
    initial_state: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
    return_final_state: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
):
    """Selective scan ``h_t = Abar_t h_{t-1} + Bbar_t u_t``, ``y_t = (C_t . h_t + D u_t) * silu(z_t)``.

    Shapes (any strides): ``u``, ``delta``, ``z``: ``(B, D, L)``; ``A``: ``(D, N)`` (negative);
    ``B``, ``C``: ``(B, N, L)``; ``D``, ``delta_bias``, ``rate``: ``(D,)``; ``dt``: ``(B, L)``;
    ``initial_state``: ``(B, D, N)``; ``lengths``: ``(B,)`` integers.

    * ``dtB = softplus(delta + delta_bias)`` (no softplus when ``delta_softplus`` is false).
    * Event mode (``dt`` given): ``dtA = dt * softplus(rate)``; standard mode: ``dtA = dtB``.
      Inputs a mode does not use get a zero gradient rather than none (``rate`` in standard mode; ``delta``
      and ``delta_bias`` in event mode with ``dirac``), so that a layer's parameters always take part in the
      graph.
    * ``lengths``: positions ``t >= lengths[b]`` are padding: the state is held (no decay, no input), the
      output there is zero and the final state is the state after the last valid position.

    Returns ``y`` ``(B, D, L)`` in ``u``'s dtype, and with ``return_final_state`` also the final state
    ``(B, D, N)`` in float32 (float64 when the inputs are float64). All arithmetic is done in float32 or wider.
    """
    compute = torch.float64 if u.dtype == torch.float64 else torch.float32
    batch, dim, L = u.shape
    f = lambda t: None if t is None else t.to(compute)  # noqa: E731
    u_c, delta_c, z_c = f(u), f(delta), f(z)
    A_c, B_c, C_c = f(A), f(B), f(C)

    dtB = input_step(delta_c, None if delta_bias is None else f(delta_bias)[:, None], delta_softplus)
    # Inputs that a mode does not use still get a (zero) gradient, so that every parameter of a layer takes
    # part in the graph in every mode (data-parallel training needs no `find_unused_parameters`).
    unused = []
    if dt is not None:
        dtA = event_decay_step(f(dt)[:, None, :], f(rate)[None, :, None])
        if discretization == "dirac":  # Bbar = B: the input step is not used at all
            unused.append(dtB)
    else:
        dtA = dtB
        if rate is not None:
            unused.append(rate)

    if lengths is not None:
        valid = (torch.arange(L, device=u.device)[None, :] < lengths.to(u.device)[:, None]).to(compute)  # (B, L)
        dtA = dtA * valid[:, None, :]
        u_in = u_c * valid[:, None, :]
    else:
        valid = None
        u_in = u_c

    if initial_state is None:
        h = torch.zeros(batch, dim, A.shape[1], dtype=compute, device=u.device)
    else:
        h = initial_state.to(compute)

    # Work time-major, one chunk at a time: each step's (B, D, N) slab is contiguous, and the transposes
    # of the (B, D, L) inputs happen chunk by chunk while they are small enough to stay in cache.
    tm = lambda t, sl: t[..., sl].movedim(-1, 0).contiguous()  # noqa: E731
    ys = []
    for start in range(0, L, chunk_size):
        sl = slice(start, min(start + chunk_size, L))
        dtA_c, dtB_c, u_cc = tm(dtA, sl), tm(dtB, sl), tm(u_in, sl)  # (T, B, D)
        B_cc, C_cc = tm(B_c, sl), tm(C_c, sl)  # (T, B, N)
        a, fac = discretize(dtA_c[..., None], dtB_c[..., None], A_c, discretization)  # (T, B, D, N)
        # ``fac`` is (T, B, D, 1) for mamba and dirac: scale u first so that only one product is (T, B, D, N).
        b = (fac * u_cc[..., None]) * B_cc[:, :, None, :]
        H = linear_recurrence(a, b, h)
        ys.append(torch.einsum("tbdn,tbn->tbd", H, C_cc))
        h = H[-1]
    y = torch.cat(ys, dim=0).permute(1, 2, 0)  # (B, D, L)

    if D is not None:
        y = torch.addcmul(y, u_c, f(D)[:, None])
    if z is not None:
        y = y * F.silu(z_c)
    if valid is not None:
        y = y * valid[:, None, :]
    for t in unused:
        if t.requires_grad:
            y = y + 0.0 * t.sum().to(compute)
    y = y.to(u.dtype)
    return (y, h) if return_final_state else y
