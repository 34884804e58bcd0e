"""Which implementation runs a selective scan or a layer step: an explicit choice of backend, or ``"auto"``.

* ``reference`` -- plain PyTorch: :func:`~evmamba.kernels.scan_ref.selective_scan_ref` and
  :func:`~evmamba.kernels.step_ref.mamba_step_ref`, any device and dtype;
* ``numba`` -- the fused CPU scan :func:`~evmamba.kernels.cpu_scan.selective_scan_cpu` (scan only);
* ``triton`` -- the GPU kernels :func:`~evmamba.kernels.triton_scan.selective_scan_triton` and
  :func:`~evmamba.kernels.triton_step.mamba_step_triton`.

``"auto"`` picks by the tensors: CUDA tensors go to ``triton`` when Triton imports; float32, bfloat16 and
float16 CPU tensors go to ``numba`` (scan; the step of one element runs on the reference); everything else,
float64 included, to ``reference``. An explicit backend that cannot serve the tensors (``numba`` for a CUDA
tensor, ``triton`` without CUDA, either for float64) is a ``ValueError`` naming it. Every backend has the
reference's signature and agrees with it within tolerance (the tests compare them in float64).

The ``Mamba`` layer's depthwise causal convolution + SiLU has its own choice, :func:`conv_backend`: the Triton
kernel of :mod:`~evmamba.kernels.triton_conv` for CUDA activations (verified on an H200 against the float64
reference; there it cuts the layer's forward time by 7-43 %, forward+backward by 4-15 %), PyTorch's ``conv1d``
and ``silu`` elsewhere; ``EVMAMBA_TRITON_CONV=0`` keeps PyTorch everywhere and ``=1`` asks for the kernel
wherever it runs (also Triton's CPU interpreter).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .scan_ref import selective_scan_ref
from .step_ref import mamba_step_ref

SCAN_BACKENDS = ("reference", "numba", "triton")
STEP_BACKENDS = ("reference", "triton")
#: The dtypes the fast kernels (Triton, numba) read; float64 runs on the reference.
KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def triton_available() -> bool:
    """Whether the Triton kernels import (Triton installed)."""
    try:
        from . import triton_scan  # noqa: F401
    except ImportError:
        return False
    return True


def _triton_serves(t: torch.Tensor) -> bool:
    from .triton_primitives import INTERPRETING  # the CPU interpreter serves CPU tensors (tests)

    return (t.is_cuda or INTERPRETING) and t.dtype in KERNEL_DTYPES


def _choose(t: torch.Tensor, backend: str, known: tuple[str, ...], what: str) -> str:
    if not isinstance(backend, str) or (backend != "auto" and backend not in known):
        raise ValueError(f"{what}: backend must be 'auto' or one of {known}; got {backend!r}")
    if backend == "auto":
        if t.is_cuda and t.dtype in KERNEL_DTYPES and triton_available():
            return "triton"
        if "numba" in known and t.device.type == "cpu" and t.dtype in KERNEL_DTYPES:
            return "numba"
        return "reference"
    if backend == "numba" and not (t.device.type == "cpu" and t.dtype in KERNEL_DTYPES):
        raise ValueError(f"{what}: backend 'numba' serves float32/bfloat16/float16 CPU tensors; got {t.dtype} "
                         f"on {t.device}")
    if backend == "triton" and not (triton_available() and _triton_serves(t)):
        raise ValueError(f"{what}: backend 'triton' serves float32/bfloat16/float16 CUDA tensors with Triton "
                         f"installed; got {t.dtype} on {t.device}")
    return backend


#: The environment variable that chooses the layer's convolution (read at every call): ``1`` the Triton kernel
#: wherever it runs, ``0`` PyTorch's ``conv1d``, unset the default (the kernel for CUDA activations).
TRITON_CONV_ENV = "EVMAMBA_TRITON_CONV"
CONV_BACKENDS = ("torch", "triton")


def _triton_conv_setting() -> str:
    """``EVMAMBA_TRITON_CONV`` as ``"1"``, ``"0"`` or ``""`` (unset); anything else is a ``ValueError`` naming the
    variable and its value."""
    value = os.environ.get(TRITON_CONV_ENV, "")
    if value not in ("", "0", "1"):
        raise ValueError(f"environment variable {TRITON_CONV_ENV} must be 1 (the Triton causal convolution wherever "
                         f"it runs), 0 (PyTorch's conv1d) or unset (the Triton kernel on CUDA); got {value!r}")
    return value


def triton_conv_opted_in() -> bool:
    """Whether ``EVMAMBA_TRITON_CONV=1`` asks for the Triton convolution wherever it runs (an invalid value is a
    ``ValueError``)."""
    return _triton_conv_setting() == "1"


@contextmanager
def triton_conv_opt_in(enabled: bool = True) -> Iterator[None]:
    """Inside the block, ``EVMAMBA_TRITON_CONV`` is ``"1"`` (``enabled``) or ``"0"``; its previous value (or its
    absence) comes back after, whatever happens inside."""
    if not isinstance(enabled, bool):
        raise TypeError(f"triton_conv_opt_in: enabled must be True or False; got {enabled!r}")
    saved = os.environ.get(TRITON_CONV_ENV)
    os.environ[TRITON_CONV_ENV] = "1" if enabled else "0"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(TRITON_CONV_ENV, None)
        else:
            os.environ[TRITON_CONV_ENV] = saved


def conv_backend(x: torch.Tensor, backend: str = "auto", kernel_size: int = 4) -> str:
    """Which implementation runs the ``Mamba`` layer's causal convolution + SiLU on ``x`` ``(B, Di, L)``:
    ``"torch"`` (``conv1d`` then ``silu``) or ``"triton"`` (:func:`~evmamba.kernels.triton_conv.causal_conv1d_silu`).

    ``backend`` is the layer's (``"auto"`` or ``"reference"``) or an explicit ``"torch"``/``"triton"``. ``"auto"``
    gives ``"triton"`` when Triton imports, ``x`` is a non-empty float32/bfloat16/float16 tensor the kernel
    serves, ``kernel_size`` is 1..8 and ``EVMAMBA_TRITON_CONV`` (read now) allows it: unset, a CUDA tensor;
    ``1``, also any device under ``TRITON_INTERPRET=1``; ``0``, never. Otherwise ``"torch"``, which is also what
    ``"reference"`` always gives. An explicit ``"triton"`` that cannot serve ``x`` is a ``ValueError``.
    """
    known = ("auto", "reference") + CONV_BACKENDS
    if not isinstance(backend, str) or backend not in known:
        raise ValueError(f"causal conv: backend must be one of {known}; got {backend!r}")
    if backend in ("reference", "torch"):
        return "torch"
    setting = _triton_conv_setting() if backend == "auto" else "1"  # read first: a mistyped value is an error
    if setting == "0" or (setting == "" and not x.is_cuda):
        return "torch"
    serves = x.numel() > 0 and 1 <= kernel_size <= 8 and triton_available() and _triton_serves(x)
    if backend == "triton":
        if not serves:
            raise ValueError(f"causal conv: backend 'triton' serves non-empty float32/bfloat16/float16 CUDA tensors "
                             f"with 1 <= kernel_size <= 8 and Triton installed; got {x.dtype} {tuple(x.shape)} on "
                             f"{x.device}, kernel_size {kernel_size}")
        return "triton"
    return "triton" if serves else "torch"


def scan_backend(u: torch.Tensor, backend: str = "auto") -> str:
    """The backend that :func:`selective_scan` runs for input ``u`` (``backend``: a name or ``"auto"``)."""
    return _choose(u, backend, SCAN_BACKENDS, "selective_scan")


def step_backend(xz: torch.Tensor, backend: str = "auto") -> str:
    """The backend that :func:`mamba_step` runs for input ``xz`` (``backend``: a name or ``"auto"``)."""
    return _choose(xz, backend, STEP_BACKENDS, "mamba_step")


def selective_scan(
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
    *,
    backend: str = "auto",
):
    """:func:`~evmamba.kernels.scan_ref.selective_scan_ref` (same arguments, shapes and results) on
    ``backend`` (see the module docstring)."""
    chosen = scan_backend(u, backend)
    if chosen == "triton":
        from .triton_scan import selective_scan_triton as scan
    elif chosen == "numba":
        from .cpu_scan import selective_scan_cpu as scan
    else:
        scan = selective_scan_ref
    return scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, dt, rate, discretization, initial_state,
                lengths, return_final_state)


def mamba_step(
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
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """:func:`~evmamba.kernels.step_ref.mamba_step_ref` (same arguments, shapes and results) on ``backend``
    (see the module docstring)."""
    if step_backend(xz, backend) == "triton":
        from .triton_step import mamba_step_triton as step
    else:
        step = mamba_step_ref
    return step(xz, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_bias, A, D, dt,
                rate, discretization, A_log)


__all__ = ["CONV_BACKENDS", "SCAN_BACKENDS", "STEP_BACKENDS", "TRITON_CONV_ENV", "conv_backend", "mamba_step",
           "scan_backend", "selective_scan", "step_backend", "triton_available", "triton_conv_opt_in",
           "triton_conv_opted_in"]
