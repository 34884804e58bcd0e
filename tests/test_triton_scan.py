"""The Triton selective scan (forward and backward) against the PyTorch reference in float64.

On a machine with a CUDA GPU the kernels are compiled and checked at larger shapes (and a 2**20-step
sequence); without one they run on Triton's CPU interpreter (set up in conftest.py) at small shapes.
Every output buffer starts as NaN, so an element a kernel never writes cannot pass.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

pytestmark = pytest.mark.gpu  # the Triton scan: compiled on a GPU, on the interpreter elsewhere

from evmamba.kernels import DISCRETIZATIONS, selective_scan_ref, triton_scan  # noqa: E402
from evmamba.kernels.triton_scan import selective_scan_triton  # noqa: E402
from evmamba.model import Mamba  # noqa: E402
from seeds import stable_seed  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "dt", "rate", "initial_state")


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    """Every buffer the kernels write starts as NaN."""
    nan = float("nan")
    monkeypatch.setattr(
        triton_scan, "_alloc", lambda *shape, dtype, device: torch.full(shape, nan, dtype=dtype, device=device)
    )
    monkeypatch.setattr(triton_scan, "_alloc_like", lambda t: torch.full_like(t, nan))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    assert torch.isfinite(a).all(), "non-finite values"
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def problem(batch, dim, L, N, event, with_z, with_h0, seed, dtype=torch.float32):
    """Fresh random inputs (dtype for the activations; A, D, biases, rate stay float32 as in the layer)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    p = dict(
        u=r(batch, dim, L).to(dtype),
        delta=(r(batch, dim, L) * 0.7).to(dtype),
        A=-(torch.rand(dim, N, generator=g) * 3 + 0.05),
        B=r(batch, N, L).to(dtype),
        C=r(batch, N, L).to(dtype),
        D=r(dim),
        z=r(batch, dim, L).to(dtype) if with_z else None,
        delta_bias=r(dim) * 0.5,
        dt=torch.rand(batch, L, generator=g) * 3 if event else None,
        rate=r(dim),
        initial_state=r(batch, dim, N) if with_h0 else None,
    )
    return {k: None if v is None else v.to(DEVICE) for k, v in p.items()}


def leaves(p, dtype=None):
    return {k: None if v is None else (v.double() if dtype == torch.float64 else v.clone()).requires_grad_()
            for k, v in p.items()}


def run_and_compare(p, disc, lengths, tol_y, tol_g, seed):
    p64, p32 = leaves(p, torch.float64), leaves(p)
    y_ref, h_ref = selective_scan_ref(**p64, discretization=disc, lengths=lengths, return_final_state=True)
    y, h = selective_scan_triton(**p32, discretization=disc, lengths=lengths, return_final_state=True)
    assert y.dtype == p["u"].dtype and y.shape == y_ref.shape
    assert h.dtype == torch.float32 and h.shape == h_ref.shape
    assert rel(y, y_ref) < tol_y, f"y: {rel(y, y_ref):.2e} (seed {seed})"
    assert rel(h, h_ref) < tol_y, f"final state: {rel(h, h_ref):.2e} (seed {seed})"

    g = torch.Generator().manual_seed(7)
    dy = torch.randn(y.shape, generator=g).to(DEVICE)
    dh = torch.randn(h.shape, generator=g).to(DEVICE)
    ((y_ref * dy.double()).sum() + (h_ref * dh.double()).sum()).backward()
    ((y.float() * dy).sum() + (h * dh).sum()).backward()
    for name in NAMES:
        ref, got = p64[name], p32[name]
        if ref is None:
            continue
        assert got.grad is not None, f"{name}: no gradient (seed {seed})"
        assert got.grad.dtype == got.dtype and got.grad.shape == got.shape
        if ref.grad is None or float(ref.grad.norm()) == 0.0:
            # Inputs a mode does not use take part with an exact zero gradient.
            assert torch.equal(got.grad, torch.zeros_like(got.grad)), f"{name}: expected a zero gradient (seed {seed})"
        else:
            err = rel(got.grad, ref.grad)
            assert err < tol_g, f"{name}: gradient error {err:.2e} (seed {seed})"


if CUDA:
    CASES = [
        # (batch, dim, L, N, with_z, with_h0, lengths)
        (2, 256, 4099, 16, True, True, [4099, 1234]),
        (1, 64, 1, 16, True, False, None),
        (3, 100, 777, 4, False, True, [0, 777, 5]),
    ]
else:
    CASES = [
        (2, 5, 1, 4, True, True, None),
        (1, 24, 37, 16, False, False, None),
        (2, 32, 67, 4, True, False, [67, 0]),
        (2, 13, 300, 16, True, True, [300, 123]),
    ]


@pytest.mark.parametrize("disc", DISCRETIZATIONS)
@pytest.mark.parametrize("event", [False, True], ids=["standard", "event"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"B{c[0]}D{c[1]}L{c[2]}N{c[3]}")
def test_float32_matches_reference(disc, event, case):
    batch, dim, L, N, with_z, with_h0, lengths = case
    seed = stable_seed(disc, event, case)
    p = problem(batch, dim, L, N, event, with_z, with_h0, seed=seed)
    lengths = None if lengths is None else torch.tensor(lengths, device=DEVICE)
    run_and_compare(p, disc, lengths, tol_y=1e-5, tol_g=1e-4, seed=seed)


@pytest.mark.parametrize("disc", DISCRETIZATIONS)
@pytest.mark.parametrize("event", [False, True], ids=["standard", "event"])
def test_bfloat16_matches_reference(disc, event):
    shape = (2, 64, 1000, 16) if CUDA else (2, 12, 45, 16)
    p = problem(*shape, event, True, True, seed=11, dtype=torch.bfloat16)
    lengths = torch.tensor([shape[2], shape[2] // 3], device=DEVICE)
    run_and_compare(p, disc, lengths, tol_y=1e-2, tol_g=1e-2, seed=11)


@pytest.mark.parametrize("atomic", [False, True], ids=["slices", "atomic"])
def test_both_ways_of_summing_over_channels(monkeypatch, atomic):
    """The gradients of B and C sum over channel blocks (several blocks at these sizes) either with atomic adds
    or through per-block slices (the time steps' always through slices); both equal the reference, and the
    slices are bitwise reproducible."""
    monkeypatch.setattr(triton_scan, "ATOMIC_CHANNEL_SUMS", atomic)
    shape = (2, 300, 530, 16) if CUDA else (2, 40, 30, 16)
    p = problem(*shape, True, True, False, seed=23)
    run_and_compare(p, "zoh", None, tol_y=1e-5, tol_g=1e-4, seed=23)
    if not atomic:
        grads = []
        for _ in range(2):
            q = leaves(p)
            selective_scan_triton(**q, discretization="zoh").sum().backward()
            grads.append([q[k].grad for k in ("B", "C", "dt")])
        assert all(torch.equal(a, b) for a, b in zip(*grads))


@pytest.mark.parametrize("disc", ["zoh", "dirac"])
def test_time_steps_that_need_no_gradient_are_skipped(monkeypatch, disc):
    """Event mode with time steps given as data (no gradient wanted, as in training): the backward skips their
    gradient (the kernel is launched without it) and every other gradient is bit for bit the one computed
    when the time steps do want a gradient; with ``dt`` a leaf its gradient still equals the reference."""
    monkeypatch.setattr(triton_scan, "ATOMIC_CHANNEL_SUMS", False)  # reproducible sums, to compare bitwise
    flags = []
    real_launch = triton_scan.launch

    def recording_launch(kernel, *args, **kw):
        if kernel is triton_scan.scan_bwd_kernel:
            flags.append(kw["WANT_DTS"])
        return real_launch(kernel, *args, **kw)

    monkeypatch.setattr(triton_scan, "launch", recording_launch)
    shape = (3, 40, 70, 16) if CUDA else (2, 20, 27, 16)
    p = problem(*shape, True, True, True, seed=29)
    run_and_compare(p, disc, None, tol_y=1e-5, tol_g=1e-4, seed=29)  # dt a leaf: its gradient is computed
    assert flags and all(flags)
    grads = {}
    for want in (True, False):
        q = leaves(p)
        q["dt"].requires_grad_(want)
        flags.clear()
        y = selective_scan_triton(**q, discretization=disc)
        (y * torch.linspace(-1, 1, y.shape[-1], device=DEVICE)).sum().backward()
        assert flags and set(flags) == {want}
        assert (q["dt"].grad is not None) == want
        grads[want] = {k: q[k].grad for k in NAMES if k != "dt" and q[k] is not None}
    for k, g in grads[True].items():
        assert torch.equal(g, grads[False][k]), k


@pytest.mark.skipif(not CUDA, reason="the lane sums are inline PTX: compiled kernels only")
@pytest.mark.parametrize("atomic", [False, True], ids=["slices", "atomic"])
@pytest.mark.parametrize("event", [False, True], ids=["standard", "event"])
def test_lane_sums_of_B_and_C_gradients(monkeypatch, atomic, event):
    """The backward's reduce-scatter over a program's channel lanes (the default tile at N = 16): a partial last
    channel block (D = 109), sequences that end inside a chunk and inside the 4 steps a lane writes
    (L = 1001, lengths 1001 / 998 / 3), three rows: B's and C's gradients equal the float64 reference and the
    plain tl.sum path."""
    assert triton_scan.lane_sums_apply(triton_scan.launch_config(109, 16, "bwd"), 16)
    monkeypatch.setattr(triton_scan, "ATOMIC_CHANNEL_SUMS", atomic)
    p = problem(3, 109, 1001, 16, event, True, True, seed=37)
    lengths = torch.tensor([1001, 998, 3], device=DEVICE)
    run_and_compare(p, "zoh", lengths, tol_y=1e-5, tol_g=1e-4, seed=37)
    grads = {}
    for lane_sums in (True, False):
        monkeypatch.setattr(triton_scan, "LANE_SUMS", lane_sums)
        q = leaves(p)
        y = selective_scan_triton(**q, discretization="zoh", lengths=lengths)
        (y * torch.linspace(-1, 1, y.shape[-1], device=DEVICE)).sum().backward()
        grads[lane_sums] = [q[k].grad for k in ("B", "C")]
    for a, b in zip(grads[True], grads[False]):
        assert a.shape == b.shape and rel(a, b) < 1e-6


@pytest.mark.parametrize("split", [2, 3])
def test_forward_carry_pieces(monkeypatch, split):
    """The forward's carry pass cut into pieces (each segment's carry composed from several shorter ones; the
    last segment shorter than the others): the outputs, final state and gradients equal the float64
    reference, with lengths and an initial state."""
    monkeypatch.setattr(triton_scan, "CHUNKS_PER_SEGMENT_OVERRIDE", 6)
    monkeypatch.setattr(triton_scan, "CARRY_SPLIT_OVERRIDE", split)
    shape = (3, 80, 1003, 16) if CUDA else (2, 20, 165, 16)
    p = problem(*shape, True, True, True, seed=29)
    lengths = torch.tensor([shape[2], shape[2] - 77, 40][: shape[0]], device=DEVICE)
    run_and_compare(p, "zoh", lengths, tol_y=1e-5, tol_g=1e-4, seed=29)


@pytest.mark.parametrize("shape,segments", [((16, 256, 8192), 4), ((8, 1536, 2048), 2), ((64, 256, 2048), 1)])
def test_backward_segments_fill_their_last_wave(shape, segments):
    """The backward's split on an H200-like GPU (132 multiprocessors, 8 one-warp programs each): no last wave
    that is barely filled (as 1.45 waves were, at 5 segments of 16 x 256 x 8192), and no segments at all when
    a second wave of whole rows fills well."""
    from types import SimpleNamespace

    batch, dim, L = shape
    cfg = triton_scan.LaunchConfig(T=8, block_d=8, n1=4, n2=4, num_warps=1)
    props = SimpleNamespace(multi_processor_count=132, regs_per_multiprocessor=65536)
    programs, n_chunks = batch * dim // 8, L // 8
    per_seg = triton_scan._backward_segments(programs, n_chunks, 132 * 16, cfg, props)
    n_segs = -(-n_chunks // per_seg)
    assert n_segs == segments
    waves = programs * n_segs / (132 * 8)
    assert waves / -(-waves // 1) > 0.9


def test_deterministic_mode_selects_the_slices(monkeypatch):
    monkeypatch.setattr(triton_scan, "ATOMIC_CHANNEL_SUMS", None)
    assert triton_scan.use_atomic_sums()
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: True)
    assert not triton_scan.use_atomic_sums()


def test_strided_inputs_as_the_layer_passes_them():
    """u/delta/z as (B, D, L) views of (B, L, D) storage; B/C as views of one (B, L, R + 2N) projection."""
    batch, dim, L, N, R = (2, 96, 500, 16, 6) if CUDA else (2, 20, 41, 16, 3)
    g = torch.Generator().manual_seed(3)
    r = lambda *s: torch.randn(*s, generator=g).to(DEVICE)  # noqa: E731
    u, delta, z = (r(batch, L, dim).transpose(1, 2) for _ in range(3))
    x_dbl = r(batch, L, R + 2 * N)
    Bm, Cm = x_dbl[..., R:R + N].transpose(1, 2), x_dbl[..., R + N:].transpose(1, 2)
    A = -(torch.rand(dim, N, generator=g) * 3 + 0.05).to(DEVICE)
    kw = dict(D=r(dim), z=z, delta_bias=r(dim), dt=torch.rand(batch, L, generator=g).to(DEVICE),
              rate=r(dim), discretization="zoh", return_final_state=True)
    y, h = selective_scan_triton(u, delta, A, Bm, Cm, **kw)
    c = lambda t: t.contiguous()  # noqa: E731
    y_c, h_c = selective_scan_triton(c(u), c(delta), A, c(Bm), c(Cm), **{**kw, "z": c(z)})
    d = lambda t: t.double()  # noqa: E731
    y_ref, h_ref = selective_scan_ref(d(u), d(delta), d(A), d(Bm), d(Cm), **{
        k: d(v) if isinstance(v, torch.Tensor) else v for k, v in kw.items()})
    assert rel(y, y_ref) < 1e-5 and rel(h, h_ref) < 1e-5
    assert rel(y, y_c) < 1e-6 and rel(h, h_c) < 1e-6


def test_gradients_come_back_laid_out_like_the_inputs():
    """With u, delta and z as the layer passes them (channels innermost), their gradients are laid out the same
    way (what the layer does with them next reads them without a copy) and equal the float64 reference."""
    batch, dim, L, N = (2, 96, 500, 16) if CUDA else (2, 20, 41, 16)
    p = problem(batch, dim, L, N, True, True, False, seed=31)
    for name in ("u", "delta", "z"):  # the same values, stored as transposed (B, L, D) buffers
        p[name] = p[name].transpose(1, 2).contiguous().transpose(1, 2)
    run_and_compare(p, "zoh", None, tol_y=1e-5, tol_g=1e-4, seed=31)
    q = leaves(p)
    selective_scan_triton(**q, discretization="zoh").sum().backward()
    for name in ("u", "delta", "z"):
        assert q[name].grad.stride() == q[name].stride(), name


@pytest.mark.skipif(CUDA, reason="the GPU always runs the associative-scan path")
def test_associative_scan_path_under_the_interpreter(monkeypatch):
    """The GPU's tl.associative_scan formulation (forward, flipped reverse and shift scans), on a tiny case."""
    monkeypatch.setattr(triton_scan, "FORCE_NATIVE_SCAN", True)
    p = problem(1, 8, 19, 4, True, True, True, seed=5)
    run_and_compare(p, "bilinear", torch.tensor([15]), tol_y=1e-5, tol_g=1e-4, seed=5)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (2**20 steps are too slow for the interpreter)")
def test_million_step_sequence():
    """L = 2**20 at B = 1, D = 256: the full run agrees with a run split in two with the state carried
    (to rounding: the two runs cut the sequence into different parallel segments), and its last 512 steps
    equal the float64 reference started from that state."""
    L, tail = 2**20, 512
    p = problem(1, 256, L, 16, True, True, False, seed=13)
    y, h = selective_scan_triton(**p, discretization="mamba", return_final_state=True)
    assert torch.isfinite(y).all() and torch.isfinite(h).all()
    head = {k: v[..., : L - tail] if k in ("u", "delta", "B", "C", "z", "dt") else v for k, v in p.items()}
    y_head, h_mid = selective_scan_triton(**head, discretization="mamba", return_final_state=True)
    assert rel(y[..., : L - tail], y_head) < 1e-5
    last = {k: v[..., L - tail:] if k in ("u", "delta", "B", "C", "z", "dt") else v for k, v in p.items()}
    last = {k: None if v is None else v.double() for k, v in last.items()}
    last["initial_state"] = h_mid.double()
    y_ref, h_ref = selective_scan_ref(**last, discretization="mamba", return_final_state=True)
    assert rel(y[..., L - tail:], y_ref) < 1e-5 and rel(h, h_ref) < 1e-5


def test_invalid_inputs_name_the_argument():
    p = problem(1, 8, 10, 4, True, True, False, seed=1)
    bad_B = {**p, "B": p["B"][:, :3]}
    with pytest.raises(ValueError, match="B must have shape"):
        selective_scan_triton(**bad_B)
    with pytest.raises(ValueError, match="rate"):
        selective_scan_triton(**{**p, "rate": None})
    with pytest.raises(TypeError, match="lengths must be an integer"):
        selective_scan_triton(**p, lengths=torch.ones(1, device=DEVICE))
    with pytest.raises(ValueError, match="discretization"):
        selective_scan_triton(**p, discretization="euler")


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cpu_tensors_are_refused_on_a_gpu_machine():
    p = problem(1, 8, 10, 4, False, False, False, seed=1)
    with pytest.raises(ValueError, match="CUDA tensor"):
        selective_scan_triton(**{k: None if v is None else v.cpu() for k, v in p.items()})


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("disc", DISCRETIZATIONS)
@pytest.mark.parametrize("event", [False, True], ids=["standard", "event"])
def test_mamba_fast_path_equals_reference_path(disc, event):
    torch.manual_seed(0)
    fast = Mamba(64, d_state=16, discretization=disc, use_fast_path=True).to(DEVICE)
    slow = Mamba(64, d_state=16, discretization=disc, use_fast_path=False).to(DEVICE)
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(3, 300, 64, device=DEVICE)
    ts = torch.rand(3, 300, device=DEVICE) * 2 if event else None
    lengths = torch.tensor([300, 17, 150], device=DEVICE)
    y_fast = fast(x, integration_timesteps=ts, lengths=lengths)
    y_slow = slow(x, integration_timesteps=ts, lengths=lengths)
    assert rel(y_fast, y_slow) < 1e-4
    g = torch.randn_like(y_fast)
    (y_fast * g).sum().backward()
    (y_slow * g).sum().backward()
    for (name, pf), (_, ps) in zip(fast.named_parameters(), slow.named_parameters()):
        assert pf.grad is not None, name
        if float(ps.grad.norm()) == 0.0:
            assert float(pf.grad.norm()) == 0.0, name
        else:
            assert rel(pf.grad, ps.grad) < 1e-3, f"{name}: {rel(pf.grad, ps.grad):.2e}"
