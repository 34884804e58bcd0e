"""The reference scan and step: gradients against finite differences, and agreement with a naive loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from evmamba.kernels import (
    DISCRETIZATIONS,
    discretize,
    linear_recurrence,
    mamba_step_ref,
    selective_scan_ref,
)


def random_problem(batch=2, dim=3, L=11, N=4, event=True, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    return dict(
        u=r(batch, dim, L),
        delta=r(batch, dim, L) * 0.5,
        A=-(torch.rand(dim, N, generator=g, dtype=dtype) + 0.2),
        B=r(batch, N, L),
        C=r(batch, N, L),
        D=r(dim),
        z=r(batch, dim, L),
        delta_bias=r(dim) * 0.3,
        dt=torch.rand(batch, L, generator=g, dtype=dtype) * 2.0 if event else None,
        rate=r(dim),
        initial_state=r(batch, dim, N),
    )


def naive_scan(p, disc, lengths=None):
    """Element-by-element loop straight from the formulas, for comparison."""
    u, A = p["u"], p["A"]
    batch, dim, L = u.shape
    dtB = F.softplus(p["delta"] + p["delta_bias"][:, None])
    dtA = dtB if p["dt"] is None else p["dt"][:, None, :] * F.softplus(p["rate"])[None, :, None]
    h = p["initial_state"].clone()
    y = torch.zeros_like(u)
    for t in range(L):
        a, fac = discretize(dtA[:, :, t, None], dtB[:, :, t, None], A, disc)
        h_new = a * h + fac * p["B"][:, None, :, t] * u[:, :, t, None]
        if lengths is not None:
            keep = (t < lengths)[:, None, None]
            h_new = torch.where(keep, h_new, h)
        h = h_new
        y[:, :, t] = ((h * p["C"][:, None, :, t]).sum(-1) + p["D"] * u[:, :, t]) * F.silu(p["z"][:, :, t])
        if lengths is not None:
            y[:, :, t] *= (t < lengths)[:, None]
    return y, h


@pytest.mark.parametrize("disc", DISCRETIZATIONS)
@pytest.mark.parametrize("event", [False, True], ids=["standard", "event"])
def test_scan_matches_naive_loop(disc, event):
    p = random_problem(L=37, event=event)
    lengths = torch.tensor([37, 20])
    y, h = selective_scan_ref(**p, discretization=disc, lengths=lengths, return_final_state=True, chunk_size=8)
    y_n, h_n = naive_scan(p, disc, lengths)
    torch.testing.assert_close(y, y_n, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h, h_n, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_chunk_size_does_not_change_result(chunk):
    p = random_problem(L=23, dtype=torch.float32)
    ref = selective_scan_ref(**p, chunk_size=23)
    torch.testing.assert_close(selective_scan_ref(**p, chunk_size=chunk), ref, rtol=1e-6, atol=1e-6)


def test_linear_recurrence_gradcheck():
    g = torch.Generator().manual_seed(1)
    a = torch.rand(6, 2, 3, dtype=torch.float64, generator=g).requires_grad_()
    b = torch.randn(6, 2, 3, dtype=torch.float64, generator=g).requires_grad_()
    h0 = torch.randn(2, 3, dtype=torch.float64, generator=g).requires_grad_()
    assert torch.autograd.gradcheck(linear_recurrence, (a, b, h0))


@pytest.mark.parametrize("disc", DISCRETIZATIONS)
@pytest.mark.parametrize("event", [False, True], ids=["standard", "event"])
def test_scan_gradcheck(disc, event):
    p = random_problem(batch=2, dim=2, L=7, N=3, event=event)
    names = [k for k, v in p.items() if v is not None]
    tensors = [p[k].clone().requires_grad_() for k in names]
    lengths = torch.tensor([7, 4])

    def fn(*ts):
        kw = dict(zip(names, ts))
        y, h = selective_scan_ref(**kw, discretization=disc, lengths=lengths, return_final_state=True, chunk_size=3)
        return y, h

    assert torch.autograd.gradcheck(fn, tensors, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_unused_inputs_get_zero_gradients():
    p = random_problem(dtype=torch.float32)
    rate = p["rate"].requires_grad_()
    p["dt"] = None
    selective_scan_ref(**p).sum().backward()
    assert rate.grad is not None and not rate.grad.any()
    p = random_problem(dtype=torch.float32)
    delta = p["delta"].requires_grad_()
    selective_scan_ref(**p, discretization="dirac").sum().backward()
    assert delta.grad is not None and not delta.grad.any()


@pytest.mark.parametrize("disc", DISCRETIZATIONS)
@pytest.mark.parametrize("event", [False, True], ids=["standard", "event"])
def test_step_ref_matches_scan(disc, event):
    """The step, fed the projections the scan sees, reproduces the scan's outputs and state."""
    torch.manual_seed(2)
    batch, di, K, N, R, L = 2, 6, 3, 4, 2, 9
    x = torch.randn(batch, di, L, dtype=torch.float64)
    z = torch.randn(batch, di, L, dtype=torch.float64)
    conv_w, conv_b = torch.randn(di, K, dtype=torch.float64), torch.randn(di, dtype=torch.float64)
    xp_w = torch.randn(R + 2 * N, di, dtype=torch.float64) * 0.5
    dtp_w, dt_b = torch.randn(di, R, dtype=torch.float64) * 0.5, torch.randn(di, dtype=torch.float64)
    A = -(torch.rand(di, N, dtype=torch.float64) + 0.5)
    Dv, rate = torch.randn(di, dtype=torch.float64), torch.randn(di, dtype=torch.float64)
    ts = torch.rand(batch, L, dtype=torch.float64) if event else None

    xc = F.silu(F.conv1d(F.pad(x, (K - 1, 0)), conv_w[:, None, :], conv_b, groups=di))
    dt_low, Bm, Cm = torch.split(xc.transpose(1, 2) @ xp_w.t(), [R, N, N], dim=-1)
    delta = (dt_low @ dtp_w.t()).transpose(1, 2)
    y_scan, h_scan = selective_scan_ref(
        xc, delta, A, Bm.transpose(1, 2), Cm.transpose(1, 2), Dv, z, dt_b, dt=ts, rate=rate,
        discretization=disc, return_final_state=True,
    )
    conv_state = torch.zeros(batch, di, K, dtype=torch.float64)
    ssm_state = torch.zeros(batch, di, N, dtype=torch.float64)
    ys = []
    for t in range(L):
        xz = torch.cat([x[:, :, t], z[:, :, t]], dim=1)
        ys.append(
            mamba_step_ref(xz, conv_state, ssm_state, conv_w, conv_b, xp_w, dtp_w, dt_b, A, Dv,
                           None if ts is None else ts[:, t], rate, disc)
        )
    # The step computes in float32 (like the kernels); compare at that precision.
    torch.testing.assert_close(torch.stack(ys, -1), y_scan, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ssm_state, h_scan, rtol=1e-5, atol=1e-5)
