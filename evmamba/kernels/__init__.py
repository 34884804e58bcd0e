"""Numerics (layer 2): every backend of the selective scan and of the layer step, over one discretization
module per technology.

* :mod:`.discretization` (PyTorch, the single source of truth), :mod:`.numba_discretization`, and the Triton
  restatement in :mod:`.triton_primitives`;
* references :mod:`.scan_ref`, :mod:`.step_ref` and :mod:`.conv_ref` (causal convolution + SiLU); the numba
  CPU scan :mod:`.cpu_scan` and compiled classifier step :mod:`.cpu_step`; the Triton scan :mod:`.triton_scan`
  (kernels in :mod:`.triton_scan_kernels`), fused step :mod:`.triton_step` and causal convolution + SiLU
  :mod:`.triton_conv`;
* :mod:`.backends` -- the explicit choice between them (:func:`selective_scan`, :func:`mamba_step`,
  :func:`conv_backend`).

Only torch, numba and triton (and :mod:`evmamba.core`) are imported here.
"""

from .backends import (
    CONV_BACKENDS,
    SCAN_BACKENDS,
    STEP_BACKENDS,
    conv_backend,
    mamba_step,
    scan_backend,
    selective_scan,
    step_backend,
)
from .conv_ref import causal_conv1d_silu_ref
from .discretization import DISCRETIZATIONS, discretize, event_decay_step, input_factor, input_step, transition
from .scan_ref import linear_recurrence, selective_scan_ref
from .step_ref import mamba_step_ref

__all__ = [
    "CONV_BACKENDS",
    "DISCRETIZATIONS",
    "SCAN_BACKENDS",
    "STEP_BACKENDS",
    "causal_conv1d_silu_ref",
    "conv_backend",
    "discretize",
    "event_decay_step",
    "input_factor",
    "input_step",
    "linear_recurrence",
    "mamba_step",
    "mamba_step_ref",
    "selective_scan",
    "scan_backend",
    "selective_scan_ref",
    "step_backend",
    "transition",
]
