"""Fused selective scan for the CPU (numba): forward and backward in one pass each over the sequence.

The PyTorch reference (:mod:`.scan_ref`) materialises ``(T, B, D, N)`` tensors per chunk and several passes
over them; this path keeps one channel's ``N`` states in registers and reads each input once, and its backward
recomputes states from per-chunk checkpoints instead of storing every state. Its discretization is
:mod:`.numba_discretization` (shared with the compiled classifier step; tested against :mod:`.discretization`
through the reference), and it keeps the reference's contract:
same arguments, same ``lengths`` semantics, zero gradients for inputs a mode does not use.

Work is spread over the CPU cores with numba's ``prange``: the forward over ``(batch, channel)`` pairs, the
backward over ``(batch, channel group)`` pairs, each group writing its own partial sums of the gradients that
are reduced over channels (``B``, ``C``, the time steps), which are summed afterwards.
"""

from __future__ import annotations

import numba as nb
import numpy as np
import torch

from .discretization import METHOD_CODES
from .numba_discretization import (
    BILINEAR,
    MAMBA,
    ZOH,
    input_factor,
    libm_exp,
    libm_expm1,
    libm_log1p,
    sigmoid,
    softplus,
    transition,
)

CHECKPOINT_EVERY = 64  # time steps between saved states for the backward's recomputation


@nb.njit(parallel=True, cache=True)
def _forward(u, delta, A, Bm, Cm, Dv, z, bias, dt, sp_rate, h0, lengths, method, use_softplus, has_z, event,
             chunk, y, h_final, ckpt):
    """u, delta, z, y: (B, D, L); A: (D, N); Bm, Cm: (B, L, N); Dv, bias, sp_rate: (D,); dt: (B, L);
    h0, h_final: (B, D, N); lengths: (B,); ckpt: (B, D, n_chunks, N) -- state before each chunk."""
    nb_, nd, L = u.shape
    N = A.shape[1]
    for i in nb.prange(nb_ * nd):
        b = i // nd
        d = i % nd
        h = np.empty(N, dtype=np.float64)
        for n in range(N):
            h[n] = h0[b, d, n]
        valid_len = lengths[b]
        for t in range(L):
            if t % chunk == 0:
                for n in range(N):
                    ckpt[b, d, t // chunk, n] = h[n]
            if t >= valid_len:
                y[b, d, t] = 0.0
                continue
            uv = u[b, d, t]
            dr = delta[b, d, t] + bias[d]
            dtB = softplus(dr, libm_exp, libm_log1p) if use_softplus else dr
            dtA = dt[b, t] * sp_rate[d] if event else dtB
            s = 0.0
            for n in range(N):
                a_n = A[d, n]
                fac = input_factor(dtB, a_n, method, libm_expm1)
                h[n] = transition(dtA * a_n, method, libm_exp) * h[n] + fac * Bm[b, t, n] * uv
                s += h[n] * Cm[b, t, n]
            s += Dv[d] * uv
            if has_z:
                zv = z[b, d, t]
                s *= zv * sigmoid(zv, libm_exp)
            y[b, d, t] = s
        for n in range(N):
            h_final[b, d, n] = h[n]


@nb.njit(parallel=True, cache=True)
def _backward(u, delta, A, Bm, Cm, Dv, z, bias, dt, sp_rate, raw_rate, lengths, method, use_softplus, has_z, event,
              chunk, ckpt, dy, dh_final, n_groups,
              du, ddelta, dz, dh0, dA_p, dD_p, dbias_p, drate_p, dB_p, dC_p, dts_p):
    """Gradients. Per-(batch, channel) partial sums: dA_p (B, D, N), dD_p, dbias_p, drate_p (B, D);
    per-(batch, group) partial sums: dB_p, dC_p (B, G, L, N), dts_p (B, G, L)."""
    nb_, nd, L = u.shape
    N = A.shape[1]
    per_group = (nd + n_groups - 1) // n_groups
    n_chunks = (L + chunk - 1) // chunk
    for i in nb.prange(nb_ * n_groups):
        b = i // n_groups
        grp = i % n_groups
        hs = np.empty((chunk + 1, N), dtype=np.float64)
        # Abar and Bbar / B of each step of the chunk, kept from the recomputation so that the reverse sweep
        # needs no transcendental function.
        abar_buf = np.empty((chunk, N), dtype=np.float64)
        fac_buf = np.empty((chunk, N), dtype=np.float64)
        g = np.empty(N, dtype=np.float64)
        dA_acc = np.empty(N, dtype=np.float64)
        valid_len = lengths[b]
        for d in range(grp * per_group, min(nd, (grp + 1) * per_group)):
            for n in range(N):
                g[n] = dh_final[b, d, n]
                dA_acc[n] = 0.0
            dD_acc = 0.0
            dbias_acc = 0.0
            drate_acc = 0.0
            for c in range(n_chunks - 1, -1, -1):
                t0 = c * chunk
                t1 = min(L, t0 + chunk)
                # Recompute the chunk's states from its checkpoint: hs[k] is the state before step t0 + k.
                for n in range(N):
                    hs[0, n] = ckpt[b, d, c, n]
                for t in range(t0, t1):
                    k = t - t0
                    if t >= valid_len:
                        for n in range(N):
                            hs[k + 1, n] = hs[k, n]
                        continue
                    uv = u[b, d, t]
                    dr = delta[b, d, t] + bias[d]
                    dtB = softplus(dr, libm_exp, libm_log1p) if use_softplus else dr
                    dtA = dt[b, t] * sp_rate[d] if event else dtB
                    for n in range(N):
                        a_n = A[d, n]
                        abar = transition(dtA * a_n, method, libm_exp)
                        fac = input_factor(dtB, a_n, method, libm_expm1)
                        abar_buf[k, n] = abar
                        fac_buf[k, n] = fac
                        hs[k + 1, n] = abar * hs[k, n] + fac * Bm[b, t, n] * uv
                for t in range(t1 - 1, t0 - 1, -1):
                    if t >= valid_len:
                        # Padding: y = 0 and the state is held, so nothing flows but g itself.
                        du[b, d, t] = 0.0
                        ddelta[b, d, t] = 0.0
                        if has_z:
                            dz[b, d, t] = 0.0
                        continue
                    k = t - t0
                    uv = u[b, d, t]
                    dr = delta[b, d, t] + bias[d]
                    dtB = softplus(dr, libm_exp, libm_log1p) if use_softplus else dr
                    dtA = dt[b, t] * sp_rate[d] if event else dtB
                    dyv = dy[b, d, t]
                    if has_z:
                        s = Dv[d] * uv
                        for n in range(N):
                            s += hs[k + 1, n] * Cm[b, t, n]
                        zv = z[b, d, t]
                        sz = sigmoid(zv, libm_exp)
                        ds = dyv * zv * sz
                        dz[b, d, t] = dyv * s * sz * (1.0 + zv * (1.0 - sz))
                    else:
                        ds = dyv
                    dD_acc += ds * uv
                    duv = ds * Dv[d]
                    ddtA = 0.0
                    ddtB = 0.0
                    for n in range(N):
                        a_n = A[d, n]
                        x = dtA * a_n
                        abar = abar_buf[k, n]
                        fac = fac_buf[k, n]
                        bv = Bm[b, t, n]
                        gn = g[n] + ds * Cm[b, t, n]  # dL/dh_t, all paths
                        dC_p[b, grp, t, n] += ds * hs[k + 1, n]
                        dB_p[b, grp, t, n] += gn * fac * uv
                        duv += gn * fac * bv
                        # Through Abar = transition(dtA * A).
                        da = gn * hs[k, n]
                        if method == BILINEAR:
                            w = 1.0 - 0.5 * x
                            dx = da / (w * w)
                        else:
                            dx = da * abar
                        ddtA += dx * a_n
                        dA_acc[n] += dx * dtA
                        # Through Bbar / B = factor(dtB, A).
                        df = gn * bv * uv
                        if method == MAMBA:
                            ddtB += df
                        elif method == ZOH:
                            xb = dtB * a_n
                            e1 = fac * a_n  # expm1(dtB A), since fac = expm1(dtB A) / A
                            ddtB += df * (1.0 + e1)
                            # d/dA [expm1(dtB A) / A] = dtB^2 * phi(dtB A), phi(x) = (x e^x - expm1(x)) / x^2
                            if abs(xb) < 1e-2:
                                phi = 0.5 + xb * (1.0 / 3.0 + xb * (0.125 + xb / 30.0))
                            else:
                                phi = (xb * (1.0 + e1) - e1) / (xb * xb)
                            dA_acc[n] += df * dtB * dtB * phi
                        elif method == BILINEAR:
                            w = 1.0 - 0.5 * dtB * a_n
                            ddtB += df / (w * w)
                            dA_acc[n] += df * 0.5 * dtB * dtB / (w * w)
                        g[n] = abar * gn  # dL/dh_{t-1} through h_t
                    if event:
                        dts_p[b, grp, t] += ddtA * sp_rate[d]
                        drate_acc += ddtA * dt[b, t] * sigmoid(raw_rate[d], libm_exp)
                    else:
                        ddtB += ddtA
                    ddr = ddtB * sigmoid(dr, libm_exp) if use_softplus else ddtB
                    ddelta[b, d, t] = ddr
                    dbias_acc += ddr
                    du[b, d, t] = duv
            for n in range(N):
                dh0[b, d, n] = g[n]
                dA_p[b, d, n] = dA_acc[n]
            dD_p[b, d] = dD_acc
            dbias_p[b, d] = dbias_acc
            drate_p[b, d] = drate_acc


def _alloc(*shape: int) -> np.ndarray:
    """Output buffer; every element is written by the kernels (tests replace this with a NaN-filled one)."""
    return np.empty(shape, dtype=np.float32)


def _np(t: torch.Tensor | None, shape=None) -> np.ndarray:
    """A contiguous float32 numpy view (copy if needed) of ``t``; a 1-element dummy for ``None``."""
    if t is None:
        return np.zeros((1,) * (len(shape) if shape else 1), dtype=np.float32)
    return t.detach().to(torch.float32).contiguous().numpy()


class _CpuScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, dt, rate, initial_state, lengths, method,
                use_softplus):
        batch, dim, L = u.shape
        N = A.shape[1]
        code = METHOD_CODES[method]
        lengths_np = (
            np.full(batch, L, dtype=np.int64) if lengths is None else lengths.detach().to(torch.int64).cpu().numpy()
        )
        raw_rate = torch.zeros(dim) if rate is None else rate.detach().float()
        arrays = dict(
            u=_np(u), delta=_np(delta), A=_np(A), Bm=_np(B.transpose(1, 2)), Cm=_np(C.transpose(1, 2)),
            Dv=_np(D) if D is not None else np.zeros(dim, np.float32),
            z=_np(z, (1, 1, 1)), bias=_np(delta_bias) if delta_bias is not None else np.zeros(dim, np.float32),
            dt=_np(dt, (1, 1)), sp_rate=torch.nn.functional.softplus(raw_rate).numpy(),
        )
        h0 = np.zeros((batch, dim, N), np.float32) if initial_state is None else _np(initial_state)
        chunk = CHECKPOINT_EVERY
        y = _alloc(batch, dim, L)
        h_final = _alloc(batch, dim, N)
        ckpt = _alloc(batch, dim, max(1, -(-L // chunk)), N)
        flags = (code, use_softplus, z is not None, dt is not None, chunk)
        _forward(arrays["u"], arrays["delta"], arrays["A"], arrays["Bm"], arrays["Cm"], arrays["Dv"], arrays["z"],
                 arrays["bias"], arrays["dt"], arrays["sp_rate"], h0, lengths_np, *flags, y, h_final, ckpt)
        ctx.saved = (arrays, raw_rate.numpy(), lengths_np, flags, ckpt)
        ctx.present = tuple(t is not None for t in (D, z, delta_bias, dt, rate, initial_state))
        ctx.dtypes = (u.dtype, delta.dtype, A.dtype, B.dtype, C.dtype)
        return torch.from_numpy(y).to(u.dtype), torch.from_numpy(h_final)

    @staticmethod
    def backward(ctx, dy, dh_final):
        arrays, raw_rate, lengths_np, flags, ckpt = ctx.saved
        code, use_softplus, has_z, event, chunk = flags
        batch, dim, L = arrays["u"].shape
        N = arrays["A"].shape[1]
        groups = max(1, min(dim, -(-nb.get_num_threads() // batch)))
        f32 = lambda *s: np.zeros(s, np.float32)  # noqa: E731
        du, ddelta = _alloc(batch, dim, L), _alloc(batch, dim, L)
        dz = _alloc(batch, dim, L) if has_z else f32(1, 1, 1)
        dh0 = _alloc(batch, dim, N)
        dA_p, dD_p, dbias_p, drate_p = _alloc(batch, dim, N), _alloc(batch, dim), _alloc(batch, dim), _alloc(batch, dim)
        dB_p, dC_p, dts_p = f32(batch, groups, L, N), f32(batch, groups, L, N), f32(batch, groups, L)
        dy_np = _np(dy)
        dhf = f32(batch, dim, N) if dh_final is None else _np(dh_final)
        _backward(arrays["u"], arrays["delta"], arrays["A"], arrays["Bm"], arrays["Cm"], arrays["Dv"], arrays["z"],
                  arrays["bias"], arrays["dt"], arrays["sp_rate"], raw_rate, lengths_np, code, use_softplus, has_z,
                  event, chunk, ckpt, dy_np, dhf, groups,
                  du, ddelta, dz, dh0, dA_p, dD_p, dbias_p, drate_p, dB_p, dC_p, dts_p)
        t = torch.from_numpy
        has_D, has_zz, has_bias, has_ts, has_rate, has_h0 = ctx.present
        u_dt, delta_dt, A_dt, B_dt, C_dt = ctx.dtypes
        return (
            t(du).to(u_dt),
            t(ddelta).to(delta_dt),
            t(dA_p.sum(0)).to(A_dt),
            t(dB_p.sum(1)).transpose(1, 2).to(B_dt),
            t(dC_p.sum(1)).transpose(1, 2).to(C_dt),
            t(dD_p.sum(0)) if has_D else None,
            t(dz) if has_zz else None,
            t(dbias_p.sum(0)) if has_bias else None,
            t(dts_p.sum(1)) if has_ts else None,
            t(drate_p.sum(0)) if has_rate else None,
            t(dh0) if has_h0 else None,
            None,
            None,
            None,
        )


def selective_scan_cpu(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True, dt=None, rate=None,
    discretization="mamba", initial_state=None, lengths=None, return_final_state=False,
):
    """:func:`~evmamba.kernels.scan_ref.selective_scan_ref`'s contract, fused on the CPU (float32 arithmetic
    with float64 state and sums; float32 and bfloat16 inputs)."""
    y, h = _CpuScan.apply(u, delta, A, B, C, D, z, delta_bias, dt, rate, initial_state, lengths,
                          discretization, bool(delta_softplus))
    return (y, h) if return_final_state else y
