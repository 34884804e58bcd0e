"""Numerics (layer 2): every backend of the selective scan and of the layer step, over one discretization
module per technology.

* :mod:`.discretization` (PyTorch, the single source of truth), :mod:`.numba_discretization`, and the Triton
  restatement in :mod:`.triton_primitives`;
* references :mod:`.scan_ref` and :mod:`.step_ref`; the numba CPU scan :mod:`.cpu_scan` and compiled
  classifier step :mod:`.cpu_step`; the Triton scan :mod:`.triton_scan` (kernels in
  :mod:`.triton_scan_kernels`) and fused step :mod:`.triton_step`;
* :mod:`.backends` -- the explicit choice between them (:func:`selective_scan`, :func:`mamba_step`).

Only torch, numba and triton (and :mod:`evmamba.core`) are imported here.
"""

from .backends import SCAN_BACKENDS, STEP_BACKENDS, mamba_step, scan_backend, selective_scan, step_backend
from .discretization import DISCRETIZATIONS, discretize, event_decay_step, input_factor, input_step, transition
from .scan_ref import linear_recurrence, selective_scan_ref
from .step_ref import mamba_step_ref

__all__ = [
    "DISCRETIZATIONS",
    "SCAN_BACKENDS",
    "STEP_BACKENDS",
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
