"""Depthwise causal convolution + SiLU on Triton kernels, forward and backward: :func:`causal_conv1d_silu`.

``out[b, c, t] = silu(bias[c] + sum_{k<K} weight[c, k] * x[b, c, t - (K-1) + k])`` with ``x = 0`` before the
first element -- the math of :func:`~evmamba.kernels.conv_ref.causal_conv1d_silu_ref`, which the tests compare
it with in float64. It replaces the ``Mamba`` layer's ``conv1d`` (cuDNN) and its separate SiLU pass on CUDA
activations by default (see :func:`~evmamba.kernels.backends.conv_backend`).

* Forward: one program per tile of ``BLOCK_C`` channels x ``BLOCK_T`` steps of one sequence; it reads the
  ``K - 1`` steps before its tile (the halo) as ``K`` shifted loads of the tile (the overlap comes from the
  cache) and accumulates in float32.
* Backward: the pre-activation is recomputed, not stored. ``dx[t] = sum_j weight[K-1-j] * dpre[t + j]`` needs
  ``dpre`` on the tile and ``K - 1`` steps after it, so each program reads ``x`` at the ``2K - 1`` shifts
  those need (once each) and recomputes ``dpre`` at the ``K`` shifts. ``dweight`` and ``dbias`` are summed
  element-wise over the program's span of tiles, then over time once, into a float32 partial buffer
  ``(B * splits, Di, K)`` that a ``torch.sum`` reduces: no atomics, so the result is deterministic.

``x`` and the output gradient may have any strides (the layer passes a transposed view of ``in_proj``'s
output, contiguous along channels); the output and ``dx`` are laid out like ``x`` (channels innermost when
``x`` has them innermost). Activations float32, bfloat16 or float16; arithmetic in float32; the output and
``dx`` in ``x``'s dtype, ``dweight``/``dbias`` in the parameters' dtypes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .triton_launch import dummy, launch
from .triton_primitives import INTERPRETING, next_pow2

_FLOATS = (torch.float32, torch.bfloat16, torch.float16)
#: Kernel sizes the kernels are built for (``K`` is unrolled: ``K * (K + 1)`` tile loads in the backward).
MAX_KERNEL_SIZE = 8
_WHERE = "causal_conv1d_silu"


# ------------------------------------------------------------------------------------------- kernels
@triton.jit
def _preactivation(xb_ptr, w_ptr, b_ptr, c, t, c_ok, sx_c, sx_t, L,
                   K: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr):
    """``bias[c] + sum_k w[c, k] * x[c, t - (K-1) + k]`` on a ``(BLOCK_C, BLOCK_T)`` tile, float32; steps
    outside ``[0, L)`` read as zero."""
    acc = tl.zeros((BLOCK_C, BLOCK_T), dtype=tl.float32)
    for k in tl.static_range(K):
        ts = t - (K - 1) + k
        m = c_ok[:, None] & ((ts >= 0) & (ts < L))[None, :]
        xv = tl.load(xb_ptr + c[:, None] * sx_c + ts[None, :] * sx_t, mask=m, other=0.0).to(tl.float32)
        wk = tl.load(w_ptr + c * K + k, mask=c_ok, other=0.0).to(tl.float32)
        acc += wk[:, None] * xv
    if HAS_BIAS:
        acc += tl.load(b_ptr + c, mask=c_ok, other=0.0).to(tl.float32)[:, None]
    return acc


@triton.jit
def conv_silu_fwd_kernel(x_ptr, w_ptr, b_ptr, out_ptr, Di, L, n_t,
                         sx_b, sx_c, sx_t, so_b, so_c, so_t,
                         K: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr,
                         WIDE: tl.constexpr):
    """Grid ``(B * n_t, cdiv(Di, BLOCK_C))``: program ``(b * n_t + i, j)`` writes time tile ``i`` of channel
    block ``j`` of sequence ``b``."""
    pid = tl.program_id(0)
    b = (pid // n_t).to(tl.int64)  # 64-bit offsets: B * Di * L may pass 2**31
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    t = (pid % n_t) * BLOCK_T + tl.arange(0, BLOCK_T)
    if WIDE:  # offsets within one sequence pass 2**31
        c = c.to(tl.int64)
        t = t.to(tl.int64)
    c_ok = c < Di
    pre = _preactivation(x_ptr + b * sx_b, w_ptr, b_ptr, c, t, c_ok, sx_c, sx_t, L, K, HAS_BIAS, BLOCK_C, BLOCK_T)
    y = pre * tl.sigmoid(pre)
    m = c_ok[:, None] & (t < L)[None, :]
    tl.store(out_ptr + b * so_b + c[:, None] * so_c + t[None, :] * so_t, y.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def conv_silu_bwd_kernel(x_ptr, w_ptr, b_ptr, dy_ptr, dx_ptr, dw_part_ptr, db_part_ptr, Di, L, n_split,
                         tiles_per_prog, s_part, sx_b, sx_c, sx_t, sd_b, sd_c, sd_t, sdx_b, sdx_c, sdx_t,
                         K: tl.constexpr, K_PAD: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_C: tl.constexpr,
                         BLOCK_T: tl.constexpr, WIDE: tl.constexpr):
    """Grid ``(B * n_split, cdiv(Di, BLOCK_C))``: program ``(b * n_split + s, j)`` writes ``dx`` on time tiles
    ``s * tiles_per_prog ...`` (up to ``tiles_per_prog`` of them) of channel block ``j`` of sequence ``b``, and
    its sums of ``dweight`` ``(Di, K)`` / ``dbias`` ``(Di,)`` over those tiles into row ``b * n_split + s`` of
    the partial buffers (rows ``s_part`` elements apart).

    Per tile, ``x`` is read once at each of the ``2K - 1`` shifts that ``dpre`` on the tile and the ``K - 1``
    steps after it need (a tuple of tiles), and the ``dweight`` / ``dbias`` products are summed element-wise
    over the program's tiles and over time once at its end."""
    pid = tl.program_id(0)
    b = (pid // n_split).to(tl.int64)
    s = pid % n_split
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    if WIDE:
        c = c.to(tl.int64)
    c_ok = c < Di
    xb_ptr = x_ptr + b * sx_b
    dyb_ptr = dy_ptr + b * sd_b
    # Weights (K of (BLOCK_C,)), the bias, and the element-wise accumulators of dweight (K) and dbias.
    ws = ()
    dw_accs = ()
    for k in tl.static_range(K):
        ws = ws + (tl.load(w_ptr + c * K + k, mask=c_ok, other=0.0).to(tl.float32),)
        dw_accs = dw_accs + (tl.zeros((BLOCK_C, BLOCK_T), dtype=tl.float32),)
    if HAS_BIAS:
        bias = tl.load(b_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros((BLOCK_C,), dtype=tl.float32)
    db_acc = tl.zeros((BLOCK_C, BLOCK_T), dtype=tl.float32)
    for i in range(tiles_per_prog):
        t = (s * tiles_per_prog + i) * BLOCK_T + tl.arange(0, BLOCK_T)
        if WIDE:
            t = t.to(tl.int64)
        # xs[m] = x at steps t + m - (K - 1), m = 0 .. 2K - 2 (zero outside [0, L)).
        xs = ()
        for m in tl.static_range(2 * K - 1):
            ts = t + (m - (K - 1))
            mk = c_ok[:, None] & ((ts >= 0) & (ts < L))[None, :]
            xs = xs + (tl.load(xb_ptr + c[:, None] * sx_c + ts[None, :] * sx_t, mask=mk, other=0.0).to(tl.float32),)
        dx_acc = tl.zeros((BLOCK_C, BLOCK_T), dtype=tl.float32)
        for j in tl.static_range(K):
            # dpre at steps t + j reaches dx[t] through weight[K - 1 - j]; steps at or past L carry no gradient.
            pre = bias[:, None] + ws[0][:, None] * xs[j]
            for k in tl.static_range(1, K):
                pre += ws[k][:, None] * xs[j + k]
            tj = t + j
            m = c_ok[:, None] & (tj < L)[None, :]
            g = tl.load(dyb_ptr + c[:, None] * sd_c + tj[None, :] * sd_t, mask=m, other=0.0).to(tl.float32)
            sig = tl.sigmoid(pre)
            dpre = g * sig * (1.0 + pre * (1.0 - sig))  # d silu(p) / dp = s (1 + p (1 - s))
            dx_acc += ws[K - 1 - j][:, None] * dpre
            if j == 0:  # the tile's own dpre: its share of dweight and dbias
                db_acc += dpre
                new = ()
                for k in tl.static_range(K):
                    new = new + (dw_accs[k] + dpre * xs[k],)
                dw_accs = new
        m = c_ok[:, None] & (t < L)[None, :]
        tl.store(dx_ptr + b * sdx_b + c[:, None] * sdx_c + t[None, :] * sdx_t,
                 dx_acc.to(dx_ptr.dtype.element_ty), mask=m)
    row = (b * n_split + s) * s_part
    kk = tl.arange(0, K_PAD)
    dw = tl.zeros((BLOCK_C, K_PAD), dtype=tl.float32)
    for k in tl.static_range(K):
        dw += tl.where(kk[None, :] == k, tl.sum(dw_accs[k], axis=1)[:, None], 0.0)
    tl.store(dw_part_ptr + row + c[:, None] * K + kk[None, :], dw, mask=c_ok[:, None] & (kk < K)[None, :])
    if HAS_BIAS:
        tl.store(db_part_ptr + row + c, tl.sum(db_acc, axis=1), mask=c_ok)


# ----------------------------------------------------------------------------------------- launchers
@dataclass(frozen=True)
class ConvLaunchConfig:
    """Tile of one program (``block_c`` channels x ``block_t`` steps; powers of two), the backward's tiles per
    program (``None``: chosen from the problem size) and warps per program."""

    block_c: int
    block_t: int
    tiles_per_prog: int | None = None
    num_warps: int = 4


#: Tests (and a tile sweep) may set this to force a tile; ``None``: :func:`launch_config`'s choice.
CONFIG_OVERRIDE: ConvLaunchConfig | None = None
#: The backward aims for about this many programs (several waves on a 132-multiprocessor H200) before it
#: gives each program more than one tile; fewer programs mean a smaller partial buffer to reduce.
TARGET_BWD_PROGRAMS = 2048


#: Backward tile override (``None``: :func:`launch_config`'s choice), for tile sweeps.
BWD_CONFIG_OVERRIDE: ConvLaunchConfig | None = None


def launch_config(dim: int, L: int, kind: str = "fwd") -> ConvLaunchConfig:
    """Tile for ``dim`` channels and ``L`` steps, for the ``"fwd"`` or ``"bwd"`` kernel; narrower when the
    problem is smaller. The forward's is up to 64 x 64 (4 warps, 16 elements per thread). The backward holds
    ``2K - 1`` shifted copies of its tile and ``K + 2`` accumulators, so its tile is smaller: 32 x 16 (4 warps,
    4 elements per thread), the fastest of six tiles on an H200 at the layer's shapes (docs/benchmarks.md)."""
    if kind == "bwd" and BWD_CONFIG_OVERRIDE is not None:
        return BWD_CONFIG_OVERRIDE
    if CONFIG_OVERRIDE is not None:
        return CONFIG_OVERRIDE
    if kind == "bwd":
        return ConvLaunchConfig(block_c=min(32, next_pow2(dim)), block_t=min(16, next_pow2(L)))
    return ConvLaunchConfig(block_c=min(64, next_pow2(dim)), block_t=min(64, next_pow2(L)))


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _alloc(*shape: int, dtype: torch.dtype, device) -> torch.Tensor:
    """Every buffer a kernel writes comes from here (tests fill them with NaN to catch unwritten elements)."""
    return torch.empty(*shape, dtype=dtype, device=device)


def _alloc_like_x(x: torch.Tensor) -> torch.Tensor:
    """A ``(B, Di, L)`` buffer in ``x``'s dtype, channels innermost when ``x`` has them innermost (the layer's
    transposed view), else time innermost: the next operation reads it the way it read ``x``."""
    batch, dim, L = x.shape
    if x.stride(1) < x.stride(2):
        return _alloc(batch, L, dim, dtype=x.dtype, device=x.device).transpose(1, 2)
    return _alloc(batch, dim, L, dtype=x.dtype, device=x.device)


#: Tests may set this to force 64-bit offsets within a sequence (chosen automatically when they pass 2**31).
FORCE_WIDE_OFFSETS = False


def _wide(*tensors: torch.Tensor) -> bool:
    """Whether an offset within one sequence (channel and time strides) can reach 2**31."""
    span = max(abs(t.stride(1)) * (t.shape[1] - 1) + abs(t.stride(2)) * (t.shape[2] - 1) for t in tensors)
    return FORCE_WIDE_OFFSETS or span + 1 >= 2**31


def conv_silu_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Launch the forward kernel: ``x`` ``(B, Di, L)`` any strides, ``weight`` ``(Di, K)`` contiguous, ``bias``
    ``(Di,)`` contiguous or ``None``. Returns ``(B, Di, L)`` in ``x``'s dtype (no validation: see
    :func:`causal_conv1d_silu`)."""
    batch, dim, L = x.shape
    K = weight.shape[1]
    cfg = launch_config(dim, L)
    out = _alloc_like_x(x)
    n_t = _cdiv(L, cfg.block_t)
    grid = (batch * n_t, _cdiv(dim, cfg.block_c), 1)
    launch(conv_silu_fwd_kernel, grid,
           (x, weight, bias if bias is not None else dummy(x), out, dim, L, n_t, *x.stride(), *out.stride()),
           cfg.num_warps, K=K, HAS_BIAS=bias is not None, BLOCK_C=cfg.block_c, BLOCK_T=cfg.block_t,
           WIDE=_wide(x, out))
    return out


def conv_silu_backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                       dx_out: torch.Tensor | None = None):
    """Launch the backward kernel for output gradient ``dy`` ``(B, Di, L)`` (any strides). Returns ``(dx,
    dweight, dbias)``: ``dx`` like ``x`` (or written into ``dx_out``, a ``(B, Di, L)`` tensor of ``x``'s dtype
    with any strides); ``dweight`` ``(Di, K)`` and ``dbias`` ``(Di,)`` (``None`` without a bias) in float32,
    summed over the batch and time."""
    batch, dim, L = x.shape
    K = weight.shape[1]
    cfg = launch_config(dim, L, "bwd")
    n_t, n_c = _cdiv(L, cfg.block_t), _cdiv(dim, cfg.block_c)
    tiles = cfg.tiles_per_prog or max(1, min(n_t, (batch * n_c * n_t) // TARGET_BWD_PROGRAMS))
    n_split = _cdiv(n_t, tiles)
    dx = _alloc_like_x(x) if dx_out is None else dx_out
    # The weight's and the bias's partial sums side by side in the rows of one buffer: one reduction for both.
    cols = dim * K + (dim if bias is not None else 0)
    part = _alloc(batch * n_split, cols, dtype=torch.float32, device=x.device)
    grid = (batch * n_split, n_c, 1)
    launch(conv_silu_bwd_kernel, grid,
           (x, weight, bias if bias is not None else dummy(x), dy, dx, part, part[:, dim * K:] if bias is not None
            else dummy(x), dim, L, n_split, tiles, cols, *x.stride(), *dy.stride(), *dx.stride()),
           cfg.num_warps, K=K, K_PAD=next_pow2(K), HAS_BIAS=bias is not None, BLOCK_C=cfg.block_c,
           BLOCK_T=cfg.block_t, WIDE=_wide(x, dy, dx))
    sums = part.sum(0)
    return dx, sums[:dim * K].view(dim, K), None if bias is None else sums[dim * K:]


# ----------------------------------------------------------------------------------------- autograd
class CausalConv1dSiluFunction(torch.autograd.Function):
    """Differentiable :func:`causal_conv1d_silu` (``weight`` ``(Di, K)`` and ``bias`` contiguous here)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        out = conv_silu_forward(x, weight, bias)
        ctx.save_for_backward(x, weight, bias)  # the backward recomputes the pre-activation from x
        return out

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias = ctx.saved_tensors
        dx, dw, db = conv_silu_backward(dy, x, weight, bias)
        g = ctx.needs_input_grad
        return (dx if g[0] else None,
                dw.to(weight.dtype) if g[1] else None,
                db.to(bias.dtype) if bias is not None and g[2] else None)


# ----------------------------------------------------------------------------------------- public
def _check_param(name: str, t, shape: tuple, device) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{_WHERE}: {name} must be a torch.Tensor of shape {shape}; got {type(t).__name__}")
    if t.dtype not in _FLOATS:
        raise TypeError(f"{_WHERE}: {name} must be float32, bfloat16 or float16 (the kernels compute in float32; "
                        f"float64 runs on causal_conv1d_silu_ref); got {t.dtype}")
    if t.device != device:
        raise ValueError(f"{_WHERE}: {name} is on {t.device} but x is on {device}")


def causal_conv1d_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``silu(causal depthwise conv(x) + bias)`` on the Triton kernels, differentiable in all three inputs.

    ``x``: ``(B, Di, L)``, any strides, float32/bfloat16/float16, on a CUDA device (or any device under
    ``TRITON_INTERPRET=1``); ``weight``: ``(Di, K)`` or ``(Di, 1, K)`` (``nn.Conv1d``'s layout), ``1 <= K <=
    8``; ``bias``: ``(Di,)`` or ``None``. Returns ``(B, Di, L)`` in ``x``'s dtype, laid out like ``x``. Equal,
    within float32 rounding, to :func:`~evmamba.kernels.conv_ref.causal_conv1d_silu_ref`.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{_WHERE}: x must be a torch.Tensor of shape (B, Di, L); got {type(x).__name__}")
    if x.dim() != 3 or any(n == 0 for n in x.shape):
        raise ValueError(f"{_WHERE}: x must have shape (B, Di, L) with no empty dimension; got {tuple(x.shape)}")
    if x.dtype not in _FLOATS:
        raise TypeError(f"{_WHERE}: x must be float32, bfloat16 or float16 (float64 runs on "
                        f"causal_conv1d_silu_ref); got {x.dtype}")
    if not (x.is_cuda or INTERPRETING):
        raise ValueError(f"{_WHERE}: x must be a CUDA tensor (the Triton kernels run on the GPU; set "
                         f"TRITON_INTERPRET=1 for the CPU interpreter); got {x.device}")
    dim = x.shape[1]
    if isinstance(weight, torch.Tensor) and weight.dim() == 3 and weight.shape[1] == 1:
        weight = weight[:, 0, :]  # nn.Conv1d's (Di, 1, K); a view, so the gradient flows back in that shape
    _check_param("weight", weight, (dim, "K"), x.device)
    if weight.dim() != 2 or weight.shape[0] != dim or not 1 <= weight.shape[1] <= MAX_KERNEL_SIZE:
        raise ValueError(f"{_WHERE}: weight must have shape (Di, K) or (Di, 1, K) with Di = {dim} (x's channels) "
                         f"and 1 <= K <= {MAX_KERNEL_SIZE}; got {tuple(weight.shape)}")
    if bias is not None:
        _check_param("bias", bias, (dim,), x.device)
        if tuple(bias.shape) != (dim,):
            raise ValueError(f"{_WHERE}: bias must have shape (Di,) = ({dim},) or be None; got {tuple(bias.shape)}")
        bias = bias.contiguous()
    weight = weight.contiguous()  # (Di, K): the kernels read it with unit stride (Di * K elements)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
        return CausalConv1dSiluFunction.apply(x, weight, bias)
    return conv_silu_forward(x, weight, bias)


__all__ = ["MAX_KERNEL_SIZE", "CausalConv1dSiluFunction", "ConvLaunchConfig", "causal_conv1d_silu",
           "launch_config"]
