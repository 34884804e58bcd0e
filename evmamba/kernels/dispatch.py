"""Choose between the Triton fast paths and the PyTorch references.

The Triton kernels serve CUDA tensors when Triton is importable; the numba scan serves float32/bfloat16 CPU
tensors. Everything else (float64, ``use_fast_path=False``) runs the PyTorch references. All paths have the same
signatures and agree within tolerance.
"""

from __future__ import annotations

import torch

from .scan_ref import selective_scan_ref
from .step_ref import mamba_step_ref


def fast_path_available(t: torch.Tensor) -> bool:
    """Whether the Triton kernels can serve tensor ``t`` (a CUDA tensor with Triton installed)."""
    if not t.is_cuda:
        return False
    try:
        from . import triton_scan  # noqa: F401
    except ImportError:
        return False
    return True


def cpu_fast_path_available(t: torch.Tensor) -> bool:
    """Whether the numba scan can serve tensor ``t`` (a float32/bfloat16/float16 CPU tensor)."""
    return t.device.type == "cpu" and t.dtype in (torch.float32, torch.bfloat16, torch.float16)


def selective_scan(*args, use_fast_path: bool = True, **kwargs):
    """:func:`~evmamba.kernels.scan_ref.selective_scan_ref`'s contract, on the fastest available path."""
    u = args[0] if args else kwargs["u"]
    if use_fast_path and fast_path_available(u):
        from .triton_scan import selective_scan_triton

        return selective_scan_triton(*args, **kwargs)
    if use_fast_path and cpu_fast_path_available(u):
        from .cpu_scan import selective_scan_cpu

        return selective_scan_cpu(*args, **kwargs)
    return selective_scan_ref(*args, **kwargs)


def mamba_step(*args, use_fast_path: bool = True, **kwargs):
    """:func:`~evmamba.kernels.step_ref.mamba_step_ref`'s contract, on the fastest available path."""
    xz = args[0] if args else kwargs["xz"]
    if use_fast_path and fast_path_available(xz):
        from .triton_step import mamba_step_triton

        return mamba_step_triton(*args, **kwargs)
    return mamba_step_ref(*args, **kwargs)
