"""Selective-scan kernels: the discretization math, plain PyTorch references and Triton fast paths.

This package imports nothing else of evmamba; only ``torch`` (and ``triton`` for the fast paths).
"""

from .discretization import DISCRETIZATIONS, discretize, event_decay_step, input_factor, input_step, transition
from .dispatch import fast_path_available, mamba_step, selective_scan
from .scan_ref import linear_recurrence, selective_scan_ref
from .step_ref import mamba_step_ref

__all__ = [
    "DISCRETIZATIONS",
    "discretize",
    "event_decay_step",
    "fast_path_available",
    "input_factor",
    "input_step",
    "linear_recurrence",
    "mamba_step",
    "mamba_step_ref",
    "selective_scan",
    "selective_scan_ref",
    "transition",
]
