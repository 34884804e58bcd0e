"""The discretization of :mod:`evmamba.kernels.discretization` in numba, and the float32 functions it needs.

One module for every numba path that advances a state: the fused CPU scan (:mod:`.cpu_scan`, forward and
backward) and the compiled classifier step of the stream loop (:mod:`.cpu_step`). Both are tested against
the PyTorch references built on :mod:`evmamba.kernels.discretization`.

Discretization codes (``method``): :data:`~evmamba.kernels.discretization.METHOD_CODES` -- 0 ``mamba``,
1 ``zoh``, 2 ``bilinear``, 3 ``dirac``.

The exponentials of the state update (``D * N`` per element) are the hot spot of both paths, and which
exponential is fastest depends on the loop around it, so :func:`transition` and :func:`input_factor` take it
as an argument: :func:`fexp` and :func:`fexpm1` are branch-free float32 versions that let a loop over
channels vectorise (the C library's ``expf`` does not; the classifier step), accurate to a few units in the
last place of float32; :func:`libm_exp` and :func:`libm_expm1` are the C library's, faster in scalar loops
(the scan, whose state is float64). Every function here is inlined into its callers.

numba's on-disk cache notices changes of the file that defines a cached function only: after editing this
module, delete the ``__pycache__/*.nbi`` / ``*.nbc`` files of the modules that use it (or run with a fresh
``NUMBA_CACHE_DIR``), or they keep their old compiled code.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# fastmath stays off (no reassociation: results do not depend on the vector width); error_model="numpy" lets
# a division by zero give inf/nan instead of raising, which keeps divisions inside vectorised loops.
JIT = dict(cache=True, nogil=True, fastmath=False, error_model="numpy")
_INLINE = dict(JIT, inline="always")

MAMBA, ZOH, BILINEAR, DIRAC = 0, 1, 2, 3

_LOG2E = np.float32(1.4426950408889634)
# ln 2 split in a part with few mantissa bits (k * _LN2_HI is exact) and the rest.
_LN2_HI = np.float32(0.693359375)
_LN2_LO = np.float32(-2.12194440e-4)
_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_HALF = np.float32(0.5)


@njit(**_INLINE)
def fexp(x):
    """``exp(x)`` for float32 ``x``, relative error below 1e-7; inputs are clamped to [-87, 88].

    Range reduction ``x = k ln2 + r`` (|r| <= ln2 / 2), a degree-7 Taylor polynomial for ``exp(r)`` and the
    scaling by ``2**k`` done on the exponent bits. Below -87 the true value (< 1.7e-38) is returned as
    ``exp(-87)``: no term of the model can tell the two apart.
    """
    x = min(max(x, np.float32(-87.0)), np.float32(88.0))
    k = np.floor(x * _LOG2E + _HALF)
    r = x - k * _LN2_HI
    r = r - k * _LN2_LO
    p = np.float32(1.0 / 5040.0)
    p = p * r + np.float32(1.0 / 720.0)
    p = p * r + np.float32(1.0 / 120.0)
    p = p * r + np.float32(1.0 / 24.0)
    p = p * r + np.float32(1.0 / 6.0)
    p = p * r + _HALF
    p = p * r + _F1
    p = p * r + _F1
    bits = np.int32(np.float32(p).view(np.int32) + (np.int32(k) << np.int32(23)))
    return bits.view(np.float32)


@njit(**_INLINE)
def fexpm1(x):
    """``exp(x) - 1`` for float32 ``x`` without cancellation near 0: a degree-9 Taylor polynomial for
    ``|x| < 0.5`` (relative error < 1e-8), ``fexp(x) - 1`` elsewhere (where the result is at least 0.39)."""
    p = np.float32(1.0 / 362880.0)
    p = p * x + np.float32(1.0 / 40320.0)
    p = p * x + np.float32(1.0 / 5040.0)
    p = p * x + np.float32(1.0 / 720.0)
    p = p * x + np.float32(1.0 / 120.0)
    p = p * x + np.float32(1.0 / 24.0)
    p = p * x + np.float32(1.0 / 6.0)
    p = p * x + _HALF
    p = p * x + _F1
    small = p * x
    big = fexp(x) - _F1
    return small if abs(x) < _HALF else big


@njit(**_INLINE)
def libm_exp(x):
    """The C library's ``exp``."""
    return math.exp(x)


@njit(**_INLINE)
def libm_expm1(x):
    """The C library's ``expm1``."""
    return math.expm1(x)


@njit(**_INLINE)
def libm_log1p(x):
    """The C library's ``log1p``."""
    return math.log1p(x)


@njit(**_INLINE)
def flog1p(u):
    """``log(1 + u)`` for float32 ``0 <= u <= 1``, relative error about 1e-7, branch-free.

    ``v = 1 + u`` is rounded, so ``log(v) * u / (v - 1)`` corrects for the rounding (exact ``u`` when
    ``v == 1``). ``log(v)`` for ``v`` in [1, 2]: halve ``v`` above sqrt(2) (adding ln 2), then the
    series ``2 atanh(s)`` with ``s = (m - 1) / (m + 1)``, ``|s| < 0.172``, to the ninth power.
    """
    v = _F1 + u
    big = v > np.float32(1.4142135)
    m = v * _HALF if big else v
    s = (m - _F1) / (m + _F1)
    s2 = s * s
    p = np.float32(1.0 / 9.0)
    p = p * s2 + np.float32(1.0 / 7.0)
    p = p * s2 + np.float32(1.0 / 5.0)
    p = p * s2 + np.float32(1.0 / 3.0)
    p = p * s2 + _F1
    logv = np.float32(2.0) * s * p + (np.float32(0.6931471805599453) if big else _F0)
    w = v - _F1
    return u if w == _F0 else logv * (u / w)


@njit(**_INLINE)
def softplus(x, exp, log1p):
    """``torch.nn.functional.softplus(x)`` (beta 1, threshold 20): ``max(x, 0) + log1p(exp(-|x|))``, and
    ``x`` itself above 20 (``exp``, ``log1p``: :func:`fexp` and :func:`flog1p`, or the C library's)."""
    sp = max(x, _F0) + log1p(exp(-abs(x)))
    return x if x > np.float32(20.0) else sp


@njit(**_INLINE)
def sigmoid(x, exp):
    """``1 / (1 + exp(-x))`` (the derivative of :func:`softplus`)."""
    return _F1 / (_F1 + exp(-x))


@njit(**_INLINE)
def silu(x, exp):
    """``x * sigmoid(x)``."""
    return x / (_F1 + exp(-x))


@njit(**_INLINE)
def transition(x, method, exp):
    """``Abar`` from ``x = dtA * A`` (<= 0): ``(1 + x/2) / (1 - x/2)`` for bilinear, else ``exp(x)`` (with
    the exponential ``exp``: :func:`fexp` or :func:`libm_exp`)."""
    if method == BILINEAR:
        half = _HALF * x
        return (_F1 + half) / (_F1 - half)
    return exp(x)


@njit(**_INLINE)
def input_factor(dtb, a, method, expm1):
    """``Bbar / B`` for input step ``dtB`` and ``A[d, n] = a``: ``dtB`` (mamba), ``expm1(dtB A) / A`` (zoh;
    ``expm1``: :func:`fexpm1` or :func:`libm_expm1`), ``dtB / (1 - dtB A / 2)`` (bilinear) or 1 (dirac)."""
    if method == MAMBA:
        return dtb
    if method == ZOH:
        return expm1(dtb * a) / a
    if method == BILINEAR:
        return dtb / (_F1 - _HALF * (dtb * a))
    return _F1


@njit(**JIT)
def discretize_into(dta, dtb, a, method, abar, fac):
    """Elementwise ``abar = transition(dta * a)`` and ``fac = input_factor(dtb, a)`` over flat arrays with the
    float32 exponentials (tests compare it with the PyTorch module)."""
    for i in range(dta.size):
        abar[i] = transition(dta[i] * a[i], method, fexp)
        fac[i] = input_factor(dtb[i], a[i], method, fexpm1)


def discretize_np(dta, dtb, a, method: str) -> tuple[np.ndarray, np.ndarray]:
    """``(Abar, Bbar / B)`` through these float32 functions; all arguments broadcast to one shape."""
    from .discretization import METHOD_CODES

    dta, dtb, a = np.broadcast_arrays(*(np.asarray(v, np.float32) for v in (dta, dtb, a)))
    abar = np.empty(dta.shape, np.float32)
    fac = np.empty(dta.shape, np.float32)
    discretize_into(dta.ravel().copy(), dtb.ravel().copy(), a.ravel().copy(), METHOD_CODES[method],
                    abar.reshape(-1), fac.reshape(-1))
    return abar, fac


__all__ = ["discretize_np", "fexp", "fexpm1", "flog1p", "input_factor", "libm_exp", "libm_expm1", "libm_log1p",
           "sigmoid", "silu",
           "softplus", "transition"]
