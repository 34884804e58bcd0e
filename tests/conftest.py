"""Shared test setup."""

import os

import torch

# Without a GPU the Triton kernels run on Triton's CPU interpreter. Triton reads this variable when kernels are
# decorated, so it must be set before any kernel module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
