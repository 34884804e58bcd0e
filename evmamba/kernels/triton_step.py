"""Fused single-token update of a Mamba layer's recurrent core on Triton: :func:`mamba_step_triton`.

One kernel launch per layer does what :func:`~evmamba.kernels.step_ref.mamba_step_ref` does between
``in_proj`` and ``out_proj``: shift the convolution state and convolve, SiLU, the ``x_proj`` and ``dt_proj``
products, the discretization (standard or event mode, all four names), the state update (in place), ``C . h``,
the ``D`` skip and the SiLU gate. One program serves one batch row: the ``x_proj`` product needs the whole
convolved input of the row before any channel can be updated. Up to 512 channels (``d_model`` 256) the whole
row is one block: every load is issued up front and the convolved input stays in registers. Wider layers walk
the channels twice -- first convolving and accumulating ``x_proj``, then (after a barrier) re-reading the
convolution window just written and updating the state -- instead of splitting the work over several launches.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .discretization import METHOD_CODES, check_discretization
from .triton_primitives import INTERPRETING, input_factor, next_pow2, sigmoid, softplus, transition

_FLOATS = (torch.float32, torch.bfloat16, torch.float16)


@triton.jit
def _load_bias(ptr, offsets, md, HAS: tl.constexpr):
    if HAS:
        return tl.load(ptr + offsets, mask=md, other=0.0).to(tl.float32)
    else:
        return tl.zeros(offsets.shape, tl.float32)


@triton.jit
def _conv_silu(window, w, cbias, HAS_CBIAS: tl.constexpr, FAST: tl.constexpr):
    """SiLU of the depthwise convolution of ``window`` ``(BLOCK, K)`` with weights ``w`` ``(BLOCK, K)``."""
    xc = tl.sum(window * w, axis=1)
    if HAS_CBIAS:
        xc = xc + cbias
    return xc * sigmoid(xc, FAST)


@triton.jit
def mamba_step_kernel(
    xz_ptr, conv_ptr, ssm_ptr, cw_ptr, cb_ptr, xw_ptr, dtw_ptr, dtb_ptr, A_ptr, D_ptr, ts_ptr, rate_ptr, y_ptr,
    DI, N, R, K,
    s_xz_b, s_xz_d,
    s_cs_b, s_cs_d, s_cs_k,
    s_ss_b, s_ss_d, s_ss_n,
    s_cw_d, s_cw_k,
    s_xw_j, s_xw_d,
    s_dtw_d, s_dtw_r,
    s_A_d, s_A_n,
    s_y_b, s_y_d,
    s_ts_b, s_cb_d, s_dtb_d, s_D_d, s_rate_d,
    BLOCK: tl.constexpr, KP: tl.constexpr, NP: tl.constexpr, RP: tl.constexpr,
    METHOD: tl.constexpr, EVENT: tl.constexpr, HAS_CBIAS: tl.constexpr, FAST: tl.constexpr,
    A_IS_LOG: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    k = tl.arange(0, KP)
    n = tl.arange(0, NP)
    r = tl.arange(0, RP)
    mk = k < K
    mn = n < N
    mr = r < R

    # ---- pass 1: shift the conv window, convolve, accumulate x_proj = (dt_low, B, C) over the channels
    acc_dt = tl.zeros([RP], tl.float32)
    acc_B = tl.zeros([NP], tl.float32)
    acc_C = tl.zeros([NP], tl.float32)
    for d0 in range(0, DI, BLOCK):
        d = d0 + tl.arange(0, BLOCK)
        md = d < DI
        m_dk = md[:, None] & mk[None, :]
        # New window: old state shifted left by one, the new input last.
        old = tl.load(conv_ptr + b * s_cs_b + d[:, None] * s_cs_d + (k[None, :] + 1) * s_cs_k,
                      mask=m_dk & (k[None, :] + 1 < K), other=0.0).to(tl.float32)
        x = tl.load(xz_ptr + b * s_xz_b + d * s_xz_d, mask=md, other=0.0).to(tl.float32)
        window = tl.where(k[None, :] == K - 1, x[:, None], old)
        tl.store(conv_ptr + b * s_cs_b + d[:, None] * s_cs_d + k[None, :] * s_cs_k, window, mask=m_dk)
        w = tl.load(cw_ptr + d[:, None] * s_cw_d + k[None, :] * s_cw_k, mask=m_dk, other=0.0).to(tl.float32)
        cb = _load_bias(cb_ptr, d * s_cb_d, md, HAS_CBIAS)
        xc = _conv_silu(window.to(conv_ptr.dtype.element_ty).to(tl.float32), w, cb, HAS_CBIAS, FAST)
        xc = tl.where(md, xc, 0.0)
        w_dt = tl.load(xw_ptr + r[:, None] * s_xw_j + d[None, :] * s_xw_d, mask=mr[:, None] & md[None, :], other=0.0)
        w_B = tl.load(xw_ptr + (R + n[:, None]) * s_xw_j + d[None, :] * s_xw_d, mask=mn[:, None] & md[None, :],
                      other=0.0)
        w_C = tl.load(xw_ptr + (R + N + n[:, None]) * s_xw_j + d[None, :] * s_xw_d,
                      mask=mn[:, None] & md[None, :], other=0.0)
        acc_dt += tl.sum(w_dt.to(tl.float32) * xc[None, :], axis=1)
        acc_B += tl.sum(w_B.to(tl.float32) * xc[None, :], axis=1)
        acc_C += tl.sum(w_C.to(tl.float32) * xc[None, :], axis=1)

    # The second pass re-reads conv windows written above, possibly by other threads of this program.
    tl.debug_barrier()

    if EVENT:
        ts = tl.load(ts_ptr + b * s_ts_b).to(tl.float32)
    # ---- pass 2: dt, discretization, state update, output
    for d0 in range(0, DI, BLOCK):
        d = d0 + tl.arange(0, BLOCK)
        md = d < DI
        m_dk = md[:, None] & mk[None, :]
        m_dn = md[:, None] & mn[None, :]
        window = tl.load(conv_ptr + b * s_cs_b + d[:, None] * s_cs_d + k[None, :] * s_cs_k, mask=m_dk,
                         other=0.0).to(tl.float32)
        w = tl.load(cw_ptr + d[:, None] * s_cw_d + k[None, :] * s_cw_k, mask=m_dk, other=0.0).to(tl.float32)
        cb = _load_bias(cb_ptr, d * s_cb_d, md, HAS_CBIAS)
        xc = _conv_silu(window, w, cb, HAS_CBIAS, FAST)
        z = tl.load(xz_ptr + b * s_xz_b + (DI + d) * s_xz_d, mask=md, other=0.0).to(tl.float32)

        w2 = tl.load(dtw_ptr + d[:, None] * s_dtw_d + r[None, :] * s_dtw_r, mask=md[:, None] & mr[None, :],
                     other=0.0).to(tl.float32)
        dt = tl.sum(w2 * acc_dt[None, :], axis=1) + tl.load(dtb_ptr + d * s_dtb_d, mask=md, other=0.0).to(tl.float32)
        dtB = softplus(dt, FAST)
        if EVENT:
            dtA = ts * softplus(tl.load(rate_ptr + d * s_rate_d, mask=md, other=0.0).to(tl.float32), FAST)
        else:
            dtA = dtB
        A = tl.load(A_ptr + d[:, None] * s_A_d + n[None, :] * s_A_n, mask=m_dn, other=-1.0).to(tl.float32)
        if A_IS_LOG:  # A_log given: -exp here saves the layer two launches per step
            A = -tl.exp(A)
        abar = transition(dtA[:, None], A, A * 1.4426950408889634, METHOD, FAST)
        if METHOD == 3:
            bx = xc[:, None] * acc_B[None, :]
        else:
            f = input_factor(dtB[:, None], A, 1.0 / A, METHOD, FAST)
            bx = f * (xc[:, None] * acc_B[None, :])
        hp = ssm_ptr + b * s_ss_b + d[:, None] * s_ss_d + n[None, :] * s_ss_n
        h = abar * tl.load(hp, mask=m_dn, other=0.0).to(tl.float32) + bx
        tl.store(hp, h, mask=m_dn)
        y = tl.sum(h * acc_C[None, :], axis=1) + tl.load(D_ptr + d * s_D_d, mask=md, other=0.0).to(tl.float32) * xc
        y = y * (z * sigmoid(z, FAST))
        tl.store(y_ptr + b * s_y_b + d * s_y_d, y, mask=md)


@triton.jit
def mamba_step_one_block_kernel(
    xz_ptr, conv_ptr, ssm_ptr, cw_ptr, cb_ptr, xw_ptr, dtw_ptr, dtb_ptr, A_ptr, D_ptr, ts_ptr, rate_ptr, y_ptr,
    DI, N, R, K,
    s_xz_b, s_xz_d,
    s_cs_b, s_cs_d, s_cs_k,
    s_ss_b, s_ss_d, s_ss_n,
    s_cw_d, s_cw_k,
    s_xw_j, s_xw_d,
    s_dtw_d, s_dtw_r,
    s_A_d, s_A_n,
    s_y_b, s_y_d,
    s_ts_b, s_cb_d, s_dtb_d, s_D_d, s_rate_d,
    BLOCK: tl.constexpr, KP: tl.constexpr, NP: tl.constexpr, RP: tl.constexpr,
    METHOD: tl.constexpr, EVENT: tl.constexpr, HAS_CBIAS: tl.constexpr, FAST: tl.constexpr,
    A_IS_LOG: tl.constexpr,
):
    """The same step when all channels fit one block (``Di <= BLOCK``): every load is issued before the first
    arithmetic, the convolved input stays in registers, and there is no second pass or barrier. At batch 1
    the step is a chain of dependent memory round trips, so this shortens it to about one."""
    b = tl.program_id(0).to(tl.int64)
    d = tl.arange(0, BLOCK)
    k = tl.arange(0, KP)
    n = tl.arange(0, NP)
    r = tl.arange(0, RP)
    md = d < DI
    mk = k < K
    mn = n < N
    mr = r < R
    m_dk = md[:, None] & mk[None, :]
    m_dn = md[:, None] & mn[None, :]

    old = tl.load(conv_ptr + b * s_cs_b + d[:, None] * s_cs_d + (k[None, :] + 1) * s_cs_k,
                  mask=m_dk & (k[None, :] + 1 < K), other=0.0)
    x = tl.load(xz_ptr + b * s_xz_b + d * s_xz_d, mask=md, other=0.0)
    z = tl.load(xz_ptr + b * s_xz_b + (DI + d) * s_xz_d, mask=md, other=0.0).to(tl.float32)
    w = tl.load(cw_ptr + d[:, None] * s_cw_d + k[None, :] * s_cw_k, mask=m_dk, other=0.0).to(tl.float32)
    cb = _load_bias(cb_ptr, d * s_cb_d, md, HAS_CBIAS)
    w_dt = tl.load(xw_ptr + r[:, None] * s_xw_j + d[None, :] * s_xw_d, mask=mr[:, None] & md[None, :], other=0.0)
    w_B = tl.load(xw_ptr + (R + n[:, None]) * s_xw_j + d[None, :] * s_xw_d, mask=mn[:, None] & md[None, :],
                  other=0.0)
    w_C = tl.load(xw_ptr + (R + N + n[:, None]) * s_xw_j + d[None, :] * s_xw_d, mask=mn[:, None] & md[None, :],
                  other=0.0)
    w2 = tl.load(dtw_ptr + d[:, None] * s_dtw_d + r[None, :] * s_dtw_r, mask=md[:, None] & mr[None, :],
                 other=0.0).to(tl.float32)
    dt_bias = tl.load(dtb_ptr + d * s_dtb_d, mask=md, other=0.0).to(tl.float32)
    A = tl.load(A_ptr + d[:, None] * s_A_d + n[None, :] * s_A_n, mask=m_dn, other=-1.0).to(tl.float32)
    if A_IS_LOG:  # A_log given: -exp here saves the layer two launches per step
        A = -tl.exp(A)
    Dv = tl.load(D_ptr + d * s_D_d, mask=md, other=0.0).to(tl.float32)
    hp = ssm_ptr + b * s_ss_b + d[:, None] * s_ss_d + n[None, :] * s_ss_n
    h_old = tl.load(hp, mask=m_dn, other=0.0).to(tl.float32)
    if EVENT:
        ts = tl.load(ts_ptr + b * s_ts_b).to(tl.float32)
        rate = tl.load(rate_ptr + d * s_rate_d, mask=md, other=0.0).to(tl.float32)

    # Shift the window, store it, and convolve the stored (state-dtype) values, as the reference does.
    window = tl.where(k[None, :] == K - 1, x[:, None].to(old.dtype), old)
    tl.store(conv_ptr + b * s_cs_b + d[:, None] * s_cs_d + k[None, :] * s_cs_k, window, mask=m_dk)
    xc = _conv_silu(window.to(tl.float32), w, cb, HAS_CBIAS, FAST)
    xc = tl.where(md, xc, 0.0)
    acc_dt = tl.sum(w_dt.to(tl.float32) * xc[None, :], axis=1)
    acc_B = tl.sum(w_B.to(tl.float32) * xc[None, :], axis=1)
    acc_C = tl.sum(w_C.to(tl.float32) * xc[None, :], axis=1)

    dtB = softplus(tl.sum(w2 * acc_dt[None, :], axis=1) + dt_bias, FAST)
    if EVENT:
        dtA = ts * softplus(rate, FAST)
    else:
        dtA = dtB
    abar = transition(dtA[:, None], A, A * 1.4426950408889634, METHOD, FAST)
    if METHOD == 3:
        bx = xc[:, None] * acc_B[None, :]
    else:
        f = input_factor(dtB[:, None], A, 1.0 / A, METHOD, FAST)
        bx = f * (xc[:, None] * acc_B[None, :])
    h = abar * h_old + bx
    tl.store(hp, h, mask=m_dn)
    y = tl.sum(h * acc_C[None, :], axis=1) + Dv * xc
    y = y * (z * sigmoid(z, FAST))
    tl.store(y_ptr + b * s_y_b + d * s_y_d, y, mask=md)


#: Up to this many channels (d_model 256 at expand 2) the step runs as one block per batch row.
MAX_ONE_BLOCK = 512


def _alloc(*shape: int, dtype: torch.dtype, device) -> torch.Tensor:
    """The output buffer (tests fill it with NaN to catch unwritten elements)."""
    return torch.empty(*shape, dtype=dtype, device=device)


def _check(name, t, shape, device, where="mamba_step_triton"):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{where}: {name} must be a torch.Tensor of shape {shape}; got {type(t).__name__}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{where}: {name} must have shape {tuple(shape)}; got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{where}: {name} is on {t.device} but xz is on {device}")
    if not t.is_floating_point():
        raise TypeError(f"{where}: {name} must be a floating-point tensor; got {t.dtype}")


def mamba_step_triton(
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
    """One fused step; the contract of :func:`~evmamba.kernels.step_ref.mamba_step_ref`.

    ``xz`` ``(B, 2*Di)``; ``conv_state`` ``(B, Di, K)`` and ``ssm_state`` ``(B, Di, N)`` are updated in place
    (the state is computed in float32 whatever its storage dtype); ``conv_weight`` ``(Di, K)``; ``conv_bias``
    ``(Di,)`` or ``None``; ``x_proj_weight`` ``(R + 2N, Di)``; ``dt_proj_weight`` ``(Di, R)``; ``dt_bias``,
    ``D``, ``rate`` ``(Di,)``; ``A`` ``(Di, N)``, or ``None`` and ``A_log`` ``(Di, N)`` (the kernel then takes
    ``A = -exp(A_log)`` itself); ``dt`` ``(B,)`` (event mode) or ``None``.
    Returns ``y`` ``(B, Di)`` in ``xz``'s dtype. ``float64`` inputs are refused (the reference serves them).

    Inputs are checked for shapes and devices only (no values), so the call is safe inside CUDA-graph capture.
    """
    where = "mamba_step_triton"
    check_discretization(discretization)
    if not isinstance(xz, torch.Tensor) or xz.dim() != 2:
        got = tuple(xz.shape) if isinstance(xz, torch.Tensor) else type(xz).__name__
        raise ValueError(f"{where}: xz must be a tensor of shape (B, 2*Di); got {got}")
    if not INTERPRETING and not xz.is_cuda:
        raise ValueError(f"{where}: xz must be a CUDA tensor (the Triton kernel runs on the GPU); got {xz.device}")
    if not isinstance(conv_state, torch.Tensor) or conv_state.dim() != 3:
        got = tuple(conv_state.shape) if isinstance(conv_state, torch.Tensor) else type(conv_state).__name__
        raise ValueError(f"{where}: conv_state must be a tensor of shape (B, Di, K); got {got}")
    batch, di, kk = conv_state.shape
    if (A is None) == (A_log is None):
        raise ValueError(f"{where}: give exactly one of A and A_log")
    a_is_log = A is None
    if a_is_log:
        A = A_log
    if not isinstance(A, torch.Tensor) or A.dim() != 2 or A.shape[0] != di:
        got = tuple(A.shape) if isinstance(A, torch.Tensor) else type(A).__name__
        raise ValueError(f"{where}: {'A_log' if a_is_log else 'A'} must have shape (Di, N) = ({di}, N); got {got}")
    n = A.shape[1]
    if not isinstance(dt_proj_weight, torch.Tensor) or dt_proj_weight.dim() != 2 or dt_proj_weight.shape[0] != di:
        got = tuple(dt_proj_weight.shape) if isinstance(dt_proj_weight, torch.Tensor) else type(dt_proj_weight).__name__
        raise ValueError(f"{where}: dt_proj_weight must have shape (Di, R) = ({di}, R); got {got}")
    rank = dt_proj_weight.shape[1]
    dev = xz.device
    _check("xz", xz, (batch, 2 * di), dev)
    _check("conv_state", conv_state, (batch, di, kk), dev)
    _check("ssm_state", ssm_state, (batch, di, n), dev)
    _check("conv_weight", conv_weight, (di, kk), dev)
    if conv_bias is not None:
        _check("conv_bias", conv_bias, (di,), dev)
    _check("x_proj_weight", x_proj_weight, (rank + 2 * n, di), dev)
    _check("dt_bias", dt_bias, (di,), dev)
    _check("D", D, (di,), dev)
    if dt is not None:
        _check("dt", dt, (batch,), dev)
        if rate is None:
            raise ValueError(f"{where}: rate (Di,) is required with dt (event mode); got None")
        _check("rate", rate, (di,), dev)
    if xz.dtype == torch.float64:
        raise TypeError(f"{where}: the kernel computes in float32; float64 runs on the reference backend "
                        "(mamba_step_ref)")

    y = _alloc(batch, di, device=dev, dtype=xz.dtype)
    dummy = torch.empty(1, device=dev, dtype=torch.float32)
    args = (
        xz, conv_state, ssm_state, conv_weight, dummy if conv_bias is None else conv_bias, x_proj_weight,
        dt_proj_weight, dt_bias, A, D, dummy if dt is None else dt, dummy if rate is None else rate, y,
        di, n, rank, kk,
        *xz.stride(), *conv_state.stride(), *ssm_state.stride(), *conv_weight.stride(), *x_proj_weight.stride(),
        *dt_proj_weight.stride(), *A.stride(), *y.stride(),
        # Vectors are read with their strides too: a time step taken as a column of a (B, L) tensor has
        # stride L, and reading it as contiguous gives each stream another stream's value.
        *(0 if v is None else v.stride(0) for v in (dt, conv_bias, dt_bias, D, rate)),
    )
    flags = dict(
        KP=next_pow2(kk), NP=next_pow2(n), RP=next_pow2(rank),
        METHOD=METHOD_CODES[discretization], EVENT=dt is not None, HAS_CBIAS=conv_bias is not None,
        FAST=not INTERPRETING, A_IS_LOG=a_is_log,
    )
    if next_pow2(di) <= MAX_ONE_BLOCK:
        block = next_pow2(di)
        # One thread per 32 channels' worth of tile rows: 512 channels on 8 warps spill registers.
        mamba_step_one_block_kernel[(batch,)](*args, BLOCK=block, num_warps=min(16, max(4, block // 32)), **flags)
    else:
        # Two passes over channel blocks of 256 (see the module docstring).
        mamba_step_kernel[(batch,)](*args, BLOCK=64 if INTERPRETING else 256, num_warps=8, **flags)
    return y
