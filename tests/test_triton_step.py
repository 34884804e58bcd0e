"""The fused Triton step against the PyTorch reference step in float64 (GPU when present, else the interpreter)."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("triton")

pytestmark = pytest.mark.gpu  # the Triton step: compiled on a GPU, on the interpreter elsewhere

from evmamba.kernels import DISCRETIZATIONS, mamba_step_ref, triton_step  # noqa: E402
from evmamba.kernels.triton_step import mamba_step_triton  # noqa: E402
from evmamba.model import Mamba  # noqa: E402
from seeds import stable_seed  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")


@pytest.fixture(autouse=True)
def poisoned_output(monkeypatch):
    nan = float("nan")
    monkeypatch.setattr(
        triton_step, "_alloc", lambda *shape, dtype, device: torch.full(shape, nan, dtype=dtype, device=device)
    )


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    assert torch.isfinite(a).all(), "non-finite values"
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def weights(di, n, rank, k, conv_bias, event, seed):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    w = dict(
        conv_weight=r(di, k) * 0.5,
        conv_bias=r(di) if conv_bias else None,
        x_proj_weight=r(rank + 2 * n, di) * di**-0.5,
        dt_proj_weight=r(di, rank) * rank**-0.5,
        dt_bias=r(di) * 0.5 - 3.0,
        A=-(torch.rand(di, n, generator=g) * 4 + 0.05),
        D=r(di),
        rate=r(di) - 2.0 if event else None,
    )
    return {key: None if v is None else v.to(DEVICE) for key, v in w.items()}, g


# Up to 512 channels the step runs as one block; wider layers take the two-pass kernel.
if CUDA:
    CASES = [(1, 256, 16, 8, 4, True), (64, 512, 16, 16, 4, True), (5, 100, 4, 3, 3, False),
             (2, 1040, 16, 8, 4, True)]
else:
    CASES = [(1, 40, 16, 5, 4, True), (3, 7, 4, 2, 3, False), (1, 520, 4, 3, 4, True)]


@pytest.mark.parametrize("disc", DISCRETIZATIONS)
@pytest.mark.parametrize("event", [False, True], ids=["standard", "event"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"B{c[0]}Di{c[1]}N{c[2]}R{c[3]}K{c[4]}")
def test_steps_match_reference(disc, event, case):
    """Three successive steps: outputs, the shifted conv state and the SSM state, all updated in place."""
    batch, di, n, rank, k, conv_bias = case
    seed = stable_seed(disc, event, case)
    w, g = weights(di, n, rank, k, conv_bias, event, seed=seed)
    conv = torch.randn(batch, di, k, generator=g).to(DEVICE)
    ssm = torch.randn(batch, di, n, generator=g).to(DEVICE)
    conv64, ssm64 = conv.double(), ssm.double()
    w64 = {key: None if v is None else v.double() for key, v in w.items()}
    for _ in range(3):
        xz = torch.randn(batch, 2 * di, generator=g).to(DEVICE)
        ts = (torch.rand(batch, generator=g) * 3).to(DEVICE) if event else None
        y = mamba_step_triton(xz, conv, ssm, dt=ts, discretization=disc, **w)
        y_ref = mamba_step_ref(xz.double(), conv64, ssm64, dt=None if ts is None else ts.double(),
                               discretization=disc, **w64)
        assert y.dtype == xz.dtype
        assert rel(y, y_ref) < 1e-5, f"y {rel(y, y_ref):.2e} (seed {seed})"
        assert torch.equal(conv, conv64.float()), f"conv state (seed {seed})"
        assert rel(ssm, ssm64) < 1e-5, f"state {rel(ssm, ssm64):.2e} (seed {seed})"


@pytest.mark.parametrize("event", [False, True], ids=["standard", "event"])
def test_bfloat16_step(event):
    batch, di, n, rank, k = (4, 256, 16, 8, 4) if CUDA else (2, 24, 16, 3, 4)
    w, g = weights(di, n, rank, k, True, event, seed=3)
    conv = torch.randn(batch, di, k, generator=g).to(DEVICE, torch.bfloat16)
    ssm = torch.randn(batch, di, n, generator=g).to(DEVICE, torch.bfloat16)
    xz = torch.randn(batch, 2 * di, generator=g).to(DEVICE, torch.bfloat16)
    ts = (torch.rand(batch, generator=g) * 3).to(DEVICE) if event else None
    conv64, ssm64 = conv.double(), ssm.double()
    y = mamba_step_triton(xz, conv, ssm, dt=ts, discretization="mamba", **w)
    y_ref = mamba_step_ref(xz.double(), conv64, ssm64, dt=None if ts is None else ts.double(),
                           discretization="mamba", **{key: None if v is None else v.double() for key, v in w.items()})
    assert y.dtype == torch.bfloat16 and ssm.dtype == torch.bfloat16
    assert rel(y, y_ref) < 1e-2 and rel(ssm, ssm64) < 1e-2


@pytest.mark.parametrize("case", [CASES[0], CASES[-1]], ids=["one-block", "two-pass"])
def test_a_log_in_the_kernel_matches_a_given(case):
    """The layer passes A_log and the kernel forms A = -exp(A_log); same result as passing A (and the reference)."""
    batch, di, n, rank, k, conv_bias = case
    w, g = weights(di, n, rank, k, conv_bias, True, seed=11)
    a_log = (torch.rand(di, n, generator=g) * 4 - 2).to(DEVICE)
    conv, ssm = torch.randn(batch, di, k, generator=g).to(DEVICE), torch.randn(batch, di, n, generator=g).to(DEVICE)
    conv2, ssm2 = conv.clone(), ssm.clone()
    conv64, ssm64 = conv.double(), ssm.double()
    xz = torch.randn(batch, 2 * di, generator=g).to(DEVICE)
    ts = (torch.rand(batch, generator=g) * 3).to(DEVICE)
    rest = {key: v for key, v in w.items() if key != "A"}
    y_log = mamba_step_triton(xz, conv, ssm, A=None, dt=ts, discretization="zoh", A_log=a_log, **rest)
    y_a = mamba_step_triton(xz, conv2, ssm2, dt=ts, discretization="zoh", A=-torch.exp(a_log), **rest)
    y_ref = mamba_step_ref(xz.double(), conv64, ssm64, A=None, dt=ts.double(), discretization="zoh",
                           A_log=a_log.double(), **{key: None if v is None else v.double() for key, v in rest.items()})
    assert rel(y_log, y_a) < 1e-5 and rel(ssm, ssm2) < 1e-5
    assert rel(y_log, y_ref) < 1e-5 and rel(ssm, ssm64) < 1e-5
    with pytest.raises(ValueError, match="exactly one of A and A_log"):
        mamba_step_triton(xz, conv, ssm, dt=ts, discretization="zoh", A_log=a_log, A=-torch.exp(a_log), **rest)


def test_invalid_inputs_name_the_argument():
    w, g = weights(8, 4, 2, 4, True, True, seed=1)
    conv = torch.zeros(2, 8, 4, device=DEVICE)
    ssm = torch.zeros(2, 8, 4, device=DEVICE)
    xz = torch.randn(2, 16, device=DEVICE)
    with pytest.raises(ValueError, match="xz must have shape"):
        mamba_step_triton(xz[:, :10], conv, ssm, **{**w, "rate": None})
    with pytest.raises(ValueError, match="ssm_state must have shape"):
        mamba_step_triton(xz, conv, ssm[:, :, :3], **{**w, "rate": None})
    with pytest.raises(ValueError, match="rate"):
        mamba_step_triton(xz, conv, ssm, dt=torch.ones(2, device=DEVICE), **{**w, "rate": None})


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("disc", DISCRETIZATIONS)
@pytest.mark.parametrize("event", [False, True], ids=["standard", "event"])
def test_mamba_step_fast_path_equals_reference_path(disc, event):
    torch.manual_seed(0)
    fast = Mamba(128, discretization=disc, use_fast_path=True).to(DEVICE)
    slow = Mamba(128, discretization=disc, use_fast_path=False).to(DEVICE)
    slow.load_state_dict(fast.state_dict())
    cf, cs = fast.allocate_inference_cache(2, 0), slow.allocate_inference_cache(2, 0)
    with torch.no_grad():
        for _ in range(5):
            x = torch.randn(2, 1, 128, device=DEVICE)
            ts = torch.rand(2, 1, device=DEVICE) * 2 if event else None
            yf, _ = fast.step(x, cf, ts)
            ys, _ = slow.step(x, cs, ts)
            assert rel(yf, ys) < 1e-4
    assert rel(cf["lrnn_state"], cs["lrnn_state"]) < 1e-4
    assert torch.equal(cf["conv_state"], cs["conv_state"])


@pytest.mark.parametrize("disc", DISCRETIZATIONS)
@pytest.mark.parametrize("case", [CASES[1], CASES[-1]], ids=["one-block", "two-pass"])
def test_strided_vectors_are_read_with_their_strides(disc, case):
    """Time steps taken as a column of a (B, L) tensor (as a layer stepping through a sequence passes them) and
    parameter vectors that are views with a stride: each stream must read its own time step and every channel
    its own parameter (a kernel that assumes unit strides reads another stream's value)."""
    batch, di, n, rank, k, conv_bias = case
    batch = max(batch, 3)
    seed = 101
    w, g = weights(di, n, rank, k, conv_bias, True, seed=seed)
    wide = {key: torch.stack([v, torch.full_like(v, 1e3)], dim=-1)[..., 0]
            for key, v in w.items() if v is not None and v.dim() == 1}
    w_strided = {**w, **wide}
    assert all(v.stride() == (2,) for v in wide.values())
    conv, ssm = torch.randn(batch, di, k, generator=g).to(DEVICE), torch.randn(batch, di, n, generator=g).to(DEVICE)
    conv64, ssm64 = conv.double(), ssm.double()
    w64 = {key: None if v is None else v.double() for key, v in w.items()}
    steps = (torch.rand(batch, 5, generator=g) * 3).to(DEVICE)  # distinct per stream and position
    for t in range(steps.shape[1]):
        xz = torch.randn(batch, 2 * di, generator=g).to(DEVICE)
        ts = steps[:, t]
        assert ts.stride() == (5,)
        y = mamba_step_triton(xz, conv, ssm, dt=ts, discretization=disc, **w_strided)
        y_ref = mamba_step_ref(xz.double(), conv64, ssm64, dt=ts.double(), discretization=disc, **w64)
        err = rel(y, y_ref)
        assert err < 1e-5, f"step {t}: y {err:.2e} (seed {seed})"
        assert rel(ssm, ssm64) < 1e-5, f"step {t}: state (seed {seed})"


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("disc", DISCRETIZATIONS)
@pytest.mark.parametrize("event", [False, True], ids=["standard", "event"])
@pytest.mark.parametrize("batch,seqlen", [(2, 64), (7, 1000), (64, 4096)], ids=lambda v: str(v))
def test_layer_steps_equal_float64_forward(disc, event, batch, seqlen):
    """A layer stepped one element at a time on the fused path equals the float64 reference forward, with a
    distinct time step per stream and position (time steps given alternately as (B,) and (B, 1) columns)."""
    seed = stable_seed(disc, event, batch, seqlen)
    torch.manual_seed(seed)
    layer = Mamba(32, d_state=16, discretization=disc).to(DEVICE).eval()
    ref = copy.deepcopy(layer).double()
    ref.use_fast_path = False
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    x = torch.randn(batch, seqlen, 32, device=DEVICE, generator=g)
    ts = torch.rand(batch, seqlen, device=DEVICE, generator=g) * 0.1 if event else None
    with torch.no_grad():
        y_ref = ref(x.double(), None if ts is None else ts.double())
        cache = layer.allocate_inference_cache(batch, seqlen)
        ys = []
        for t in range(seqlen):
            step_ts = None if ts is None else (ts[:, t] if t % 2 else ts[:, t:t + 1])
            ys.append(layer.step(x[:, t:t + 1], cache, step_ts)[0])
    err = rel(torch.cat(ys, dim=1), y_ref)
    assert err < 1e-4, f"relative error {err:.2e} (seed {seed})"
