"""The Triton causal convolution + SiLU (forward, dx, dweight, dbias) against the float64 PyTorch reference, and
the ``Mamba`` layer's choice of convolution (the kernel by default on CUDA; ``EVMAMBA_TRITON_CONV=0`` / ``=1``).

Without a CUDA GPU the kernels run on Triton's CPU interpreter (set up in conftest.py) at tiny shapes, with
small tiles forced so that several time tiles, channel blocks and backward splits occur; the realistic shapes
run only on a GPU (``pytest -m gpu tests/test_triton_conv.py``). Every buffer a kernel writes starts as NaN, so
an element a kernel never writes cannot pass.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

pytestmark = pytest.mark.gpu  # the Triton conv: compiled on a GPU, on the interpreter elsewhere

from evmamba.kernels import backends, conv_backend, triton_conv  # noqa: E402
from evmamba.kernels.conv_ref import causal_conv1d_silu_ref  # noqa: E402
from evmamba.kernels.triton_conv import ConvLaunchConfig, causal_conv1d_silu  # noqa: E402
from evmamba.model import Mamba  # noqa: E402
from seeds import stable_seed  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
GPU_ONLY = pytest.mark.skipif(not CUDA, reason="needs a CUDA device (realistic shapes: too slow on the interpreter)")


@pytest.fixture(autouse=True)
def poisoned_outputs(monkeypatch):
    """Every buffer the kernels write (output, dx, partial dweight / dbias sums) starts as NaN."""
    nan = float("nan")
    monkeypatch.setattr(
        triton_conv, "_alloc", lambda *shape, dtype, device: torch.full(shape, nan, dtype=dtype, device=device)
    )
    monkeypatch.delenv(backends.TRITON_CONV_ENV, raising=False)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    assert torch.isfinite(a).all(), "non-finite values"
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def problem(batch, dim, L, K, with_bias, layout, seed, dtype=torch.float32, param_dtype=torch.float32):
    """Fresh random ``x`` (``"transposed"``: the layer's view of a ``(B, L, 2 Di)`` buffer, channels innermost;
    ``"contiguous"``: time innermost), ``weight`` ``(Di, 1, K)`` and ``bias``, as leaf tensors; plus the
    float64 copies of the same (rounded) values."""
    g = torch.Generator().manual_seed(seed)
    if layout == "transposed":
        base = torch.randn(batch, L, 2 * dim, generator=g).to(dtype)
        x = base.to(DEVICE)[..., :dim].transpose(1, 2)
    else:
        base = torch.randn(batch, dim, L, generator=g).to(dtype)
        x = base.to(DEVICE)
    w = (torch.randn(dim, 1, K, generator=g) * 0.6).to(param_dtype).to(DEVICE)
    b = (torch.randn(dim, generator=g) * 0.5).to(param_dtype).to(DEVICE) if with_bias else None
    x = x.detach().requires_grad_() if layout == "contiguous" else x
    leaves = [t for t in (x, w, b) if t is not None]
    for t in leaves:
        t.requires_grad_()
    x64 = x.detach().double().requires_grad_()
    w64 = w.detach().double().requires_grad_()
    b64 = None if b is None else b.detach().double().requires_grad_()
    return (x, w, b), (x64, w64, b64), g


def check_against_reference(batch, dim, L, K, with_bias, layout, seed, dtype=torch.float32,
                            param_dtype=torch.float32, tol_y=2e-6, tol_g=2e-6):
    (x, w, b), (x64, w64, b64), g = problem(batch, dim, L, K, with_bias, layout, seed, dtype, param_dtype)
    y = causal_conv1d_silu(x, w, b)
    y_ref = causal_conv1d_silu_ref(x64, w64, b64)
    assert y.shape == (batch, dim, L) and y.dtype == dtype
    assert y.stride(1) < y.stride(2) if layout == "transposed" else y.is_contiguous()
    assert rel(y, y_ref) < tol_y, f"y: {rel(y, y_ref):.2e} (seed {seed})"

    dy = torch.randn(batch, dim, L, generator=g).to(dtype).to(DEVICE)
    (y_ref * dy.double()).sum().backward()
    y.backward(dy)
    for name, got, ref in (("x", x, x64), ("weight", w, w64), ("bias", b, b64)):
        if got is None:
            continue
        assert got.grad is not None, f"{name}: no gradient"
        assert got.grad.shape == got.shape and got.grad.dtype == got.dtype, name
        err = rel(got.grad, ref.grad)
        assert err < tol_g, f"d{name}: {err:.2e} (seed {seed})"


# (batch, Di, L, K, bias, layout, forced tile or None)
CASES = [
    (3, 7, 13, 4, True, "transposed", ConvLaunchConfig(4, 4, 2)),  # Di odd, L not a multiple of the tile, splits
    (2, 5, 1, 4, True, "contiguous", None),  # L = 1
    (2, 6, 3, 4, False, "transposed", None),  # L < K, no bias
    (1, 9, 10, 2, True, "contiguous", ConvLaunchConfig(8, 4, 1)),
    (2, 3, 17, 3, False, "transposed", ConvLaunchConfig(2, 8)),  # tiles per program chosen by the launcher
    (2, 4, 6, 8, True, "transposed", ConvLaunchConfig(4, 2, 2)),  # the widest kernel, K > L
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"B{c[0]}D{c[1]}L{c[2]}K{c[3]}{'b' if c[4] else ''}-{c[5]}")
def test_float32_matches_float64_reference(case, monkeypatch):
    batch, dim, L, K, with_bias, layout, cfg = case
    monkeypatch.setattr(triton_conv, "CONFIG_OVERRIDE", cfg)
    check_against_reference(batch, dim, L, K, with_bias, layout, stable_seed("fp32", case[:6]))


@pytest.mark.parametrize("param_dtype", [torch.float32, torch.bfloat16], ids=["fp32-params", "bf16-params"])
def test_bfloat16_matches_float64_reference(param_dtype, monkeypatch):
    # bf16 activations (and, as under autocast, float32 or bf16 parameters); the reference sees the same
    # rounded inputs, so the error is the bf16 rounding of the results (2**-9 relative).
    monkeypatch.setattr(triton_conv, "CONFIG_OVERRIDE", ConvLaunchConfig(4, 8, 2))
    check_against_reference(2, 6, 19, 4, True, "transposed", stable_seed("bf16", str(param_dtype)),
                            dtype=torch.bfloat16, param_dtype=param_dtype, tol_y=6e-3, tol_g=6e-3)


def test_64_bit_offsets_path(monkeypatch):
    # Chosen by itself only past 2**31 elements per sequence (too large here): forced on a small problem.
    monkeypatch.setattr(triton_conv, "FORCE_WIDE_OFFSETS", True)
    monkeypatch.setattr(triton_conv, "CONFIG_OVERRIDE", ConvLaunchConfig(4, 4, 2))
    check_against_reference(2, 5, 11, 4, True, "transposed", seed=23)


def test_streams_do_not_mix(monkeypatch):
    # Each sequence of a batch is convolved on its own: stream b's result equals the kernel run on stream b alone.
    monkeypatch.setattr(triton_conv, "CONFIG_OVERRIDE", ConvLaunchConfig(4, 4, 2))
    (x, w, b), _, _ = problem(3, 5, 9, 4, True, "transposed", seed=11)
    with torch.no_grad():
        y = causal_conv1d_silu(x, w, b)
        for i in range(3):
            alone = causal_conv1d_silu(x[i:i + 1], w, b)
            assert torch.equal(y[i:i + 1], alone)
        assert not torch.allclose(y[0], y[1])


def test_gradient_of_x_alone_and_no_grad_forward():
    (x, w, b), (x64, w64, b64), _ = problem(2, 5, 7, 3, True, "contiguous", seed=5)
    w.requires_grad_(False)
    b.requires_grad_(False)
    y = causal_conv1d_silu(x, w, b)
    y.sum().backward()
    causal_conv1d_silu_ref(x64, w64, b64).sum().backward()
    assert rel(x.grad, x64.grad) < 2e-6 and w.grad is None and b.grad is None
    with torch.no_grad():
        assert torch.equal(causal_conv1d_silu(x, w, b), y.detach())


@pytest.mark.parametrize("call, exc, words", [
    (lambda x, w, b: causal_conv1d_silu(x.tolist(), w, b), TypeError, "x must be a torch.Tensor"),
    (lambda x, w, b: causal_conv1d_silu(x[0], w, b), ValueError, "x must have shape (B, Di, L)"),
    (lambda x, w, b: causal_conv1d_silu(x[:, :, :0], w, b), ValueError, "no empty dimension"),
    (lambda x, w, b: causal_conv1d_silu(x.double(), w, b), TypeError, "x must be float32"),
    (lambda x, w, b: causal_conv1d_silu(x, w[:3], b), ValueError, "weight must have shape"),
    (lambda x, w, b: causal_conv1d_silu(x, torch.zeros(4, 1, 9, device=x.device), b), ValueError, "1 <= K <= 8"),
    (lambda x, w, b: causal_conv1d_silu(x, w.double(), b), TypeError, "weight must be float32"),
    (lambda x, w, b: causal_conv1d_silu(x, [[1.0]], b), TypeError, "weight must be a torch.Tensor"),
    (lambda x, w, b: causal_conv1d_silu(x, w, b[:2]), ValueError, "bias must have shape (Di,) = (4,)"),
    (lambda x, w, b: causal_conv1d_silu(x, w, b.to(torch.int32)), TypeError, "bias must be float32"),
])
def test_bad_inputs_are_named(call, exc, words):
    x = torch.randn(2, 4, 5, device=DEVICE)
    w = torch.randn(4, 1, 3, device=DEVICE)
    b = torch.randn(4, device=DEVICE)
    with pytest.raises(exc) as info:
        call(x, w, b)
    assert words in str(info.value)


# ------------------------------------------------------------------------------------------ opt-in
def test_conv_backend_is_the_kernel_on_cuda_by_default(monkeypatch):
    x = torch.randn(2, 4, 5, device=DEVICE)
    # Unset: the kernel for CUDA activations; CPU tensors stay on PyTorch even under the interpreter.
    assert conv_backend(x) == ("triton" if CUDA else "torch")
    assert conv_backend(x.cpu()) == "torch"
    assert conv_backend(x, "reference") == "torch"
    monkeypatch.setenv(backends.TRITON_CONV_ENV, "0")
    assert conv_backend(x) == "torch"
    monkeypatch.setenv(backends.TRITON_CONV_ENV, "1")  # read at call time; also the interpreter's CPU tensors
    assert conv_backend(x) == "triton"
    assert conv_backend(x, "reference") == "torch"  # use_fast_path=False stays on PyTorch
    assert conv_backend(x.double()) == "torch"  # float64 is the reference's
    assert conv_backend(x, kernel_size=9) == "torch"
    assert conv_backend(x[:, :, :0]) == "torch"
    monkeypatch.setenv(backends.TRITON_CONV_ENV, "yes")
    with pytest.raises(ValueError, match="EVMAMBA_TRITON_CONV must be 1 .*, 0 .* or unset .* got 'yes'"):
        conv_backend(x)
    with pytest.raises(ValueError, match="backend must be one of"):
        conv_backend(x, "cudnn")
    with pytest.raises(ValueError, match="backend 'triton' serves"):
        conv_backend(x.double(), "triton")


def test_opt_in_context_restores_the_variable(monkeypatch):
    with backends.triton_conv_opt_in():
        assert backends.triton_conv_opted_in()
    assert backends.TRITON_CONV_ENV not in __import__("os").environ
    monkeypatch.setenv(backends.TRITON_CONV_ENV, "1")
    with pytest.raises(RuntimeError), backends.triton_conv_opt_in(False):
        assert not backends.triton_conv_opted_in()
        raise RuntimeError("inside")
    assert backends.triton_conv_opted_in()


def count_conv_kernel_calls(monkeypatch) -> list:
    """A list that gets an entry each time the layer runs the Triton convolution's forward kernel, through either
    training path: the general one (``causal_conv1d_silu``) or the one-node one (:mod:`evmamba.model.mamba_inner`,
    which calls the launcher directly)."""
    from evmamba.model import mamba_inner

    calls = []
    launcher = triton_conv.conv_silu_forward

    def counted(*args, **kwargs):
        calls.append(1)
        return launcher(*args, **kwargs)

    monkeypatch.setattr(triton_conv, "conv_silu_forward", counted)
    monkeypatch.setattr(mamba_inner, "conv_silu_forward", counted)
    return calls


def _layer_grads(layer, x, ts):
    x = x.detach().clone().requires_grad_()
    layer.zero_grad()
    y = layer(x, integration_timesteps=ts)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(3)).to(y.device)
    y.backward(dy)
    return y.detach(), x.grad, {n: p.grad.clone() for n, p in layer.named_parameters()}


@pytest.mark.parametrize("event", [False, True], ids=["standard", "event"])
def test_mamba_forward_and_backward_equal_the_pytorch_conv_path(event, monkeypatch):
    calls = count_conv_kernel_calls(monkeypatch)
    torch.manual_seed(stable_seed("layer", event))
    layer = Mamba(6, d_state=4, discretization="zoh").to(DEVICE)  # Di = 12, K = 4
    with torch.no_grad():
        layer.conv1d.bias.normal_(0, 0.3)
    g = torch.Generator().manual_seed(stable_seed("layer-inputs", event))
    x = torch.randn(3, 11, 6, generator=g).to(DEVICE)
    ts = (torch.rand(3, 11, generator=g) * 5).to(DEVICE) if event else None
    monkeypatch.setenv(backends.TRITON_CONV_ENV, "0")
    y0, dx0, grads0 = _layer_grads(layer, x, ts)
    assert calls == []  # EVMAMBA_TRITON_CONV=0 never calls the kernel
    if CUDA:
        monkeypatch.delenv(backends.TRITON_CONV_ENV)  # the default on CUDA
    else:
        monkeypatch.setenv(backends.TRITON_CONV_ENV, "1")  # the interpreter's CPU tensors only when asked
    y1, dx1, grads1 = _layer_grads(layer, x, ts)
    assert calls == [1]
    assert rel(y1, y0) < 1e-5 and rel(dx1, dx0) < 1e-5
    for name, g0 in grads0.items():
        if float(g0.norm()) == 0.0:
            assert float(grads1[name].norm()) == 0.0, name
        else:
            assert rel(grads1[name], g0) < 1e-5, name
    # With a cache (the stateful path: chunks and steps) the convolution stays on PyTorch.
    with torch.no_grad():
        layer(x, integration_timesteps=ts, inference_cache=layer.allocate_inference_cache(3, 11))
    assert calls == [1]


# ------------------------------------------------------------------------------------- GPU shapes
@GPU_ONLY
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 6e-3)], ids=["fp32", "bf16"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
def test_realistic_shape_on_the_gpu(dtype, tol, with_bias):
    # The layer's shape at d_model 768 (Di = 1536), the tile chosen by the launcher.
    check_against_reference(8, 1536, 2048, 4, with_bias, "transposed", stable_seed("gpu", str(dtype), with_bias),
                            dtype=dtype, tol_y=tol, tol_g=tol)


@GPU_ONLY
@pytest.mark.parametrize("shape", [(16, 256, 8192), (64, 256, 2048), (2, 100, 4099)], ids=str)
def test_other_gpu_shapes_and_contiguous_x(shape):
    batch, dim, L = shape
    check_against_reference(batch, dim, L, 4, True, "transposed", stable_seed("gpu-t", shape))
    check_against_reference(batch, dim, L, 3, False, "contiguous", stable_seed("gpu-c", shape))


@GPU_ONLY
def test_mamba_default_on_the_gpu_equals_the_pytorch_conv(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # compare with cuDNN's exact float32
    calls = count_conv_kernel_calls(monkeypatch)
    torch.manual_seed(0)
    layer = Mamba(768).to(DEVICE)
    x = torch.randn(4, 512, 768, device=DEVICE)
    monkeypatch.setenv(backends.TRITON_CONV_ENV, "0")
    y0, dx0, grads0 = _layer_grads(layer, x, None)
    monkeypatch.delenv(backends.TRITON_CONV_ENV)
    y1, dx1, grads1 = _layer_grads(layer, x, None)
    assert calls == [1]
    assert rel(y1, y0) < 1e-5 and rel(dx1, dx0) < 1e-5
    for name, g0 in grads0.items():
        assert rel(grads1[name], g0) < 1e-4, name
