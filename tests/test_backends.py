"""The explicit choice of the scan and step backends (evmamba.kernels.backends)."""

from __future__ import annotations

import pytest
import torch

from evmamba.kernels import scan_backend, selective_scan, selective_scan_ref, step_backend
from evmamba.kernels.cpu_scan import selective_scan_cpu
from evmamba.model import Mamba


def test_auto_picks_numba_for_low_precision_cpu_tensors_and_the_reference_for_float64():
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        assert scan_backend(torch.zeros(1, 1, 1, dtype=dtype)) == "numba"
    assert scan_backend(torch.zeros(1, 1, 1, dtype=torch.float64)) == "reference"
    assert step_backend(torch.zeros(1, 2)) == "reference"  # one element of a layer: no numba step


def test_an_explicit_backend_that_cannot_serve_the_tensors_is_an_error_naming_it():
    with pytest.raises(ValueError, match="backend 'numba'"):
        scan_backend(torch.zeros(1, 1, 1, dtype=torch.float64), "numba")
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        scan_backend(torch.zeros(1, 1, 1), "cuda")
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        step_backend(torch.zeros(1, 2), "numba")


def test_selective_scan_runs_the_backend_asked_for():
    g = torch.Generator().manual_seed(0)
    b, d, L, n = 2, 3, 9, 4
    args = (torch.randn(b, d, L, generator=g), torch.randn(b, d, L, generator=g), -torch.rand(d, n, generator=g) - 0.1,
            torch.randn(b, n, L, generator=g), torch.randn(b, n, L, generator=g))
    kw = dict(dt=torch.rand(b, L, generator=g), rate=torch.randn(d, generator=g), discretization="zoh")
    assert torch.equal(selective_scan(*args, **kw, backend="reference"), selective_scan_ref(*args, **kw))
    assert torch.equal(selective_scan(*args, **kw, backend="numba"), selective_scan_cpu(*args, **kw))
    assert torch.equal(selective_scan(*args, **kw), selective_scan_cpu(*args, **kw))


def test_the_layer_backend_follows_use_fast_path():
    layer = Mamba(8, use_fast_path=False)
    assert layer.backend == "reference"
    layer.use_fast_path = True
    assert layer.backend == "auto"
