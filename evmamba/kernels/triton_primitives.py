"""Triton building blocks shared by the scan and step kernels.

* The discretization formulas of :mod:`evmamba.kernels.discretization`, re-stated in Triton (``transition``,
  ``input_factor`` and their derivatives), with the numerically careful ``softplus`` and ``expm1`` they need.
* Scans along the time axis of a register tile: the linear recurrence ``h[t] = a[t] * h[t-1] + b[t]`` and
  one-place shifts. On a GPU they use ``tl.associative_scan``; under ``TRITON_INTERPRET=1`` the same results
  come from a log-step (Hillis-Steele) formulation built on ``tl.gather``, because the interpreter runs a
  generic ``associative_scan`` one element at a time in Python (minutes for a test-sized tile).

Discretization codes (constexpr ``METHOD``): 0 ``mamba``, 1 ``zoh``, 2 ``bilinear``, 3 ``dirac``.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

#: True when Triton runs kernels on the CPU interpreter (read once, like Triton itself does at decoration).
INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def next_pow2(n: int) -> int:
    """The smallest power of two >= ``n`` (1 for ``n <= 1``): Triton block shapes must be powers of two."""
    return 1 << max(0, (n - 1).bit_length())


LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


# ----------------------------------------------------------------------------------------------- math
@triton.jit
def exp2_fast(x, FAST: tl.constexpr):
    """``2**x``. With ``FAST`` one ``ex2.approx.ftz`` instruction (results below 2**-126 flush to zero);
    ``tl.exp2`` otherwise adds a denormal fix-up of three instructions around it."""
    if FAST:
        return tl.inline_asm_elementwise(
            "ex2.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1
        )
    else:
        return tl.exp2(x)


@triton.jit
def log2_fast(x, FAST: tl.constexpr):
    """``log2(x)`` for ``x > 0``; with ``FAST`` the ``lg2.approx.ftz`` instruction (relative error ~2**-22)."""
    if FAST:
        return tl.inline_asm_elementwise(
            "lg2.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1
        )
    else:
        return tl.log2(x)


@triton.jit
def exp_fast(x, FAST: tl.constexpr):
    return exp2_fast(x * 1.4426950408889634, FAST)


@triton.jit
def sigmoid(x, FAST: tl.constexpr):
    return 1.0 / (1.0 + exp_fast(-x, FAST))


@triton.jit
def softplus(x, FAST: tl.constexpr):
    """``log(1 + exp(x))``, and ``x`` above 20 (PyTorch's threshold).

    ``log1p(w)`` for ``w = exp(x)`` is computed as ``log(v) * w / (v - 1)`` with ``v = 1 + w``: the factor
    cancels the rounding of ``v``, so the result keeps full relative precision for very negative ``x``
    (plain ``log(1 + w)`` loses 1e-4 of it at ``x = -7``, a typical Mamba ``dt`` bias).
    """
    w = exp_fast(x, FAST)
    v = 1.0 + w
    d = v - 1.0
    lp = log2_fast(v, FAST) * 0.6931471805599453 * (w / tl.where(d == 0.0, 1.0, d))
    lp = tl.where(d == 0.0, w, lp)
    return tl.where(x > 20.0, x, lp)


@triton.jit
def expm1_neg(y, FAST: tl.constexpr):
    """``exp(y) - 1`` for ``y <= 0`` with full relative precision: a degree-7 Taylor polynomial where
    ``|y| < 0.3`` (truncation below 1e-8 relative), ``exp(y) - 1`` elsewhere (no cancellation there)."""
    p = 1.0 / 5040.0
    p = p * y + 1.0 / 720.0
    p = p * y + 1.0 / 120.0
    p = p * y + 1.0 / 24.0
    p = p * y + 1.0 / 6.0
    p = p * y + 0.5
    p = p * y + 1.0
    return tl.where(y > -0.3, p * y, exp_fast(y, FAST) - 1.0)


@triton.jit
def silu_parts(z, FAST: tl.constexpr):
    """``(silu(z), d silu / dz)``."""
    s = sigmoid(z, FAST)
    return z * s, s * (1.0 + z * (1.0 - s))


# --------------------------------------------------------------------------------- discretization
@triton.jit
def transition(dtA, A, A_log2e, METHOD: tl.constexpr, FAST: tl.constexpr):
    """``Abar`` for decay step ``dtA`` and ``A`` (``A_log2e = A * log2(e)``, precomputed for the exp form)."""
    if METHOD == 2:
        half = 0.5 * (dtA * A)
        return (1.0 + half) / (1.0 - half)
    else:
        return exp2_fast(dtA * A_log2e, FAST)


@triton.jit
def transition_grad(abar, dtA, A, METHOD: tl.constexpr):
    """``d Abar / d x`` at ``x = dtA * A``: ``Abar`` for the exp form, ``1 / (1 - x/2)**2`` for bilinear."""
    if METHOD == 2:
        r = 1.0 / (1.0 - 0.5 * (dtA * A))
        return r * r
    else:
        return abar


@triton.jit
def input_factor(dtB, A, A_inv, METHOD: tl.constexpr, FAST: tl.constexpr):
    """``Bbar / B``. ``mamba``: ``dtB``; ``zoh``: ``expm1(dtB*A)/A``; ``bilinear``: ``dtB / (1 - dtB*A/2)``;
    ``dirac``: 1 (callers skip the multiplication). ``A_inv = 1 / A``, precomputed."""
    if METHOD == 1:
        return expm1_neg(dtB * A, FAST) * A_inv
    elif METHOD == 2:
        return dtB / (1.0 - 0.5 * (dtB * A))
    else:
        return dtB


# --------------------------------------------------------------------------------------- scans
@triton.jit
def _linear_combine(a_l, b_l, a_r, b_r):
    # Segment composition for h -> a*h + b: first the left segment, then the right one.
    return a_l * a_r, a_r * b_l + b_r


@triton.jit
def _shift_combine(p_l, c_l, n_l, p_r, c_r, n_r):
    # (value before the segment's last element, the segment's last element, segment length). Associative:
    # a one-element right segment takes its predecessor from the left segment's last element.
    return tl.where(n_r == 1, c_l, p_r), c_r, n_l + n_r


@triton.jit
def _time_index(x, AXIS: tl.constexpr, T: tl.constexpr):
    """Integer tensor of ``x``'s shape holding each element's position along ``AXIS`` (rank 2 or 4)."""
    if len(x.shape) == 4:
        if AXIS == 1:
            i = tl.arange(0, T)[None, :, None, None]
        else:
            i = tl.arange(0, T)[:, None, None, None]
    else:
        if AXIS == 0:
            i = tl.arange(0, T)[:, None]
        else:
            i = tl.arange(0, T)[None, :]
    return i + tl.zeros(x.shape, tl.int32)


@triton.jit
def linear_scan_full(a, b, AXIS: tl.constexpr, T: tl.constexpr, REVERSE: tl.constexpr, NATIVE: tl.constexpr):
    """``(P, h)``: all states of ``h[t] = a[t] * h[t-1] + b[t]`` along ``AXIS`` (length ``T``) with
    ``h[-1] = 0``, and the running products ``P[t] = a[0] * ... * a[t]``. With ``REVERSE`` the recurrence runs
    from the end: ``g[t] = a[t] * g[t+1] + b[t]``, ``g[T] = 0``, ``P[t] = a[t] * ... * a[T-1]``."""
    if NATIVE:
        # Reverse scans go through tl.flip: with the time axis inside each thread a flip is free register
        # renaming, whereas associative_scan(reverse=True) was seen to emit hundreds of lane shuffles.
        if REVERSE:
            p, h = tl.associative_scan((tl.flip(a, AXIS), tl.flip(b, AXIS)), AXIS, _linear_combine)
            return tl.flip(p, AXIS), tl.flip(h, AXIS)
        else:
            p, h = tl.associative_scan((a, b), AXIS, _linear_combine)
            return p, h
    else:
        idx = _time_index(b, AXIS, T)
        for k in tl.static_range(0, 9):  # log2(T) doubling steps (T <= 512)
            if (1 << k) < T:
                if REVERSE:
                    src = idx + (1 << k)
                    has = src < T
                    src = tl.minimum(src, T - 1)
                else:
                    src = idx - (1 << k)
                    has = src >= 0
                    src = tl.maximum(src, 0)
                a_o = tl.gather(a, src, AXIS)
                b_o = tl.gather(b, src, AXIS)
                b = tl.where(has, a * b_o + b, b)
                a = tl.where(has, a * a_o, a)
        return a, b


@triton.jit
def linear_scan(a, b, AXIS: tl.constexpr, T: tl.constexpr, REVERSE: tl.constexpr, NATIVE: tl.constexpr):
    """The states of :func:`linear_scan_full` only (the unused products are left to dead-code elimination)."""
    _, h = linear_scan_full(a, b, AXIS, T, REVERSE, NATIVE)
    return h


@triton.jit
def shift_scan(x, edge, AXIS: tl.constexpr, T: tl.constexpr, REVERSE: tl.constexpr, NATIVE: tl.constexpr):
    """``x`` moved one place along ``AXIS``: ``out[t] = x[t-1]`` (``x[t+1]`` with ``REVERSE``); the vacated
    end (``t = 0``, or ``t = T-1`` with ``REVERSE``) takes ``edge`` (a tensor broadcastable to ``x``)."""
    idx = _time_index(x, AXIS, T)
    if REVERSE:
        at_edge = idx == T - 1
    else:
        at_edge = idx == 0
    if NATIVE:
        prev = tl.where(at_edge, edge, x)
        ones = tl.full(x.shape, 1, tl.int32)
        if REVERSE:
            out, _, _ = tl.associative_scan((tl.flip(prev, AXIS), tl.flip(x, AXIS), ones), AXIS, _shift_combine)
            return tl.flip(out, AXIS)
        else:
            out, _, _ = tl.associative_scan((prev, x, ones), AXIS, _shift_combine)
            return out
    else:
        if REVERSE:
            src = tl.minimum(idx + 1, T - 1)
        else:
            src = tl.maximum(idx - 1, 0)
        return tl.where(at_edge, edge, tl.gather(x, src, AXIS))


@triton.jit
def take_time(x, POS: tl.constexpr, AXIS: tl.constexpr, T: tl.constexpr):
    """The slice of ``x`` at position ``POS`` along ``AXIS``, keeping the axis (size 1). When the axis lies
    inside each thread's registers the compiler folds this to register moves."""
    idx = _time_index(x, AXIS, T)
    return tl.sum(tl.where(idx == POS, x, 0.0), axis=AXIS, keep_dims=True)
