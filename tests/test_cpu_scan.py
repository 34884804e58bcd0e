"""The fused CPU scan (numba) against the PyTorch reference in float64: outputs, final state and gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evmamba.kernels import DISCRETIZATIONS, cpu_scan, selective_scan_ref
from evmamba.kernels.cpu_scan import selective_scan_cpu
from evmamba.model import Mamba
from seeds import stable_seed


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    """Every output buffer starts as NaN, so an element the kernels never write cannot pass."""
    monkeypatch.setattr(cpu_scan, "_alloc", lambda *shape: np.full(shape, np.nan, dtype=np.float32))


def rel(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    assert torch.isfinite(a).all(), "non-finite values"
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def problem(batch, dim, L, N, event, with_z, with_h0, seed):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return dict(
        u=r(batch, dim, L), delta=r(batch, dim, L) * 0.7, A=-(torch.rand(dim, N, generator=g) * 3 + 0.05),
        B=r(batch, N, L), C=r(batch, N, L), D=r(dim), z=r(batch, dim, L) if with_z else None,
        delta_bias=r(dim) * 0.5, dt=torch.rand(batch, L, generator=g) * 3 if event else None, rate=r(dim),
        initial_state=r(batch, dim, N) if with_h0 else None,
    )


CASES = [
    # (batch, dim, L, N, with_z, with_h0, lengths)
    (2, 5, 1, 4, True, True, None),
    (1, 3, 64, 16, False, False, None),
    (2, 7, 131, 4, True, False, [131, 0]),
    (3, 4, 200, 16, True, True, [1, 200, 65]),
]


@pytest.mark.parametrize("disc", DISCRETIZATIONS)
@pytest.mark.parametrize("event", [False, True], ids=["standard", "event"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"B{c[0]}D{c[1]}L{c[2]}N{c[3]}")
def test_matches_reference(disc, event, case):
    batch, dim, L, N, with_z, with_h0, lengths = case
    seed = stable_seed(disc, event, case)
    p = problem(batch, dim, L, N, event, with_z, with_h0, seed=seed)
    lengths = None if lengths is None else torch.tensor(lengths)
    p64 = {k: None if v is None else v.double().requires_grad_() for k, v in p.items()}
    p32 = {k: None if v is None else v.clone().requires_grad_() for k, v in p.items()}
    y_ref, h_ref = selective_scan_ref(**p64, discretization=disc, lengths=lengths, return_final_state=True)
    y, h = selective_scan_cpu(**p32, discretization=disc, lengths=lengths, return_final_state=True)
    assert y.dtype == torch.float32 and h.shape == h_ref.shape
    assert rel(y, y_ref) < 1e-5 and rel(h, h_ref) < 1e-5, f"seed {seed}"

    gy, gh = torch.randn_like(y_ref), torch.randn_like(h_ref)
    ((y_ref * gy).sum() + (h_ref * gh).sum()).backward()
    ((y * gy.float()).sum() + (h * gh.float()).sum()).backward()
    for name, ref_t in p64.items():
        if ref_t is None:
            continue
        got = p32[name].grad
        assert got is not None, name
        if ref_t.grad.norm() == 0:
            assert not got.any(), f"{name} (seed {seed})"
        else:
            assert rel(got, ref_t.grad) < 1e-4, f"{name}: {rel(got, ref_t.grad):.2e} (seed {seed})"


def test_bf16_inputs():
    p = problem(2, 8, 150, 16, True, True, False, seed=3)
    y_ref = selective_scan_ref(**{k: None if v is None else v.double() for k, v in p.items()})
    pb = {k: None if v is None or k in ("A", "D", "rate", "delta_bias") else v.bfloat16() for k, v in p.items()}
    pb.update(A=p["A"], D=p["D"], rate=p["rate"], delta_bias=p["delta_bias"])
    y = selective_scan_cpu(**pb)
    assert y.dtype == torch.bfloat16
    assert rel(y.float(), y_ref) < 1e-2


@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
def test_layer_fast_path_matches_reference_path(disc):
    torch.manual_seed(0)
    layer = Mamba(24, d_state=8, discretization=disc)
    x, ts = torch.randn(2, 90, 24), torch.rand(2, 90) * 10
    y_fast = layer(x, ts)
    layer.use_fast_path = False
    y_ref = layer(x, ts)
    assert rel(y_fast, y_ref) < 1e-5
