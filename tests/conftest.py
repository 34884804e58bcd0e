"""Shared test setup."""

import os

import pytest
import torch

# Without a GPU the Triton kernels run on Triton's CPU interpreter. Triton reads this variable when kernels are
# decorated, so it must be set before any kernel module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    """Every test that needs a CUDA device carries the ``gpu`` marker, so ``pytest -m gpu`` on a GPU machine
    runs all of them: a test skipped for want of CUDA without the marker is a collection error."""
    missing = []
    for item in items:
        needs_cuda = any(
            "cuda" in str(mark.kwargs.get("reason", "")).lower() or "gpu" in str(mark.kwargs.get("reason", "")).lower()
            for mark in item.iter_markers("skipif")
        )
        if needs_cuda and item.get_closest_marker("gpu") is None:
            missing.append(item.nodeid)
    if missing:
        raise pytest.UsageError("tests that need CUDA must be marked @pytest.mark.gpu: " + ", ".join(missing))
