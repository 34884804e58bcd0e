"""The cached launch path (evmamba.kernels.triton_launch): which launches reuse a compiled kernel, and that the
kernels give the same results through it as through ``kernel[grid]``.

Without a GPU the cache is exercised with a stand-in for Triton's JIT function and compiled kernel (the
interpreter always takes ``kernel[grid]``); on a GPU the scan and convolution kernels run both ways."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from evmamba.kernels import triton_launch  # noqa: E402

CUDA = torch.cuda.is_available()


class FakeCompiled:
    """Records the launches that reach the compiled kernel directly."""

    function = "fn-handle"
    packed_metadata = "packed"

    def __init__(self, log):
        self.log = log

    def launch_metadata(self, grid, stream, *args):
        return None

    def run(self, g0, g1, g2, stream, function, packed, meta, enter, leave, *args):
        self.log.append(("direct", (g0, g1, g2), stream, args))


class FakeKernel:
    """A JIT function with parameters ``(x, n, A, B)``, ``A`` and ``B`` constexprs."""

    arg_names = ["x", "n", "A", "B"]

    def __init__(self):
        self.log = []
        self.compiled = FakeCompiled(self.log)

    def __getitem__(self, grid):
        def run(*args, num_warps, **kwargs):
            self.log.append(("jit", grid, args, kwargs, num_warps))
            return self.compiled
        return run


@pytest.fixture
def fast_path(monkeypatch):
    """The fast path on, as on a GPU machine, with a stand-in current device and stream."""
    monkeypatch.setattr(triton_launch, "INTERPRETING", False)
    monkeypatch.setattr(triton_launch, "FAST_LAUNCH", True)
    monkeypatch.setattr(triton_launch, "_current_device_and_stream", lambda: (0, 1234))
    triton_launch.clear_cache()
    yield
    triton_launch.clear_cache()


def test_a_repeated_launch_goes_straight_to_the_compiled_kernel(fast_path):
    k = FakeKernel()
    x = torch.zeros(8)
    triton_launch.launch(k, (2, 1, 1), (x, 5), 4, B=True, A=3)
    triton_launch.launch(k, (3, 1, 1), (x, 5), 4, B=True, A=3)
    assert [e[0] for e in k.log] == ["jit", "direct"]
    kind, grid, stream, args = k.log[1]
    # The constexprs follow the positional arguments in the kernel's own order, as Triton passes them.
    assert grid == (3, 1, 1) and stream == 1234 and args == (x, 5, 3, True)


@pytest.mark.parametrize("change", ["int", "dtype", "alignment", "constexpr", "warps", "bool"])
def test_anything_triton_specialises_on_misses_the_cache(fast_path, change):
    k = FakeKernel()
    buf = torch.zeros(64)
    x = buf[:8]
    triton_launch.launch(k, (1, 1, 1), (x, 1), 4, A=1, B=False)
    args, warps, consts = (x, 1), 4, dict(A=1, B=False)
    if change == "int":
        args = (x, 2)
    elif change == "dtype":
        args = (x.double(), 1)
    elif change == "alignment":
        args = (buf[1:9], 1)  # the same shape and strides, 4 bytes off a 16-byte boundary
    elif change == "constexpr":
        consts = dict(A=2, B=False)
    elif change == "warps":
        warps = 8
    elif change == "bool":
        args = (x, True)  # equal to 1 as a key, but Triton passes it as a boolean
    triton_launch.launch(k, (1, 1, 1), args, warps, **consts)
    assert [e[0] for e in k.log] == ["jit", "jit"]


def test_switched_off_every_launch_goes_through_jit(fast_path, monkeypatch):
    monkeypatch.setattr(triton_launch, "FAST_LAUNCH", False)
    k = FakeKernel()
    for _ in range(3):
        triton_launch.launch(k, (1, 1, 1), (torch.zeros(4), 1), 1, A=0, B=0)
    assert [e[0] for e in k.log] == ["jit"] * 3


def test_the_cache_is_bounded(fast_path, monkeypatch):
    monkeypatch.setattr(triton_launch, "CACHE_SIZE", 4)
    k = FakeKernel()
    for n in range(10):
        triton_launch.launch(k, (1, 1, 1), (torch.zeros(4), n), 1, A=0, B=0)
    assert 1 <= len(triton_launch._cache) <= 4


def test_a_launch_that_leaves_a_parameter_to_its_default_is_not_cached(fast_path):
    k = FakeKernel()
    k.arg_names = ["x", "n", "A", "B", "C"]  # C has a default that only Triton knows
    for _ in range(2):
        triton_launch.launch(k, (1, 1, 1), (torch.zeros(4), 1), 1, A=0, B=0)
    assert [e[0] for e in k.log] == ["jit", "jit"]


def test_dummy_is_one_float_per_device():
    a, b = torch.zeros(3), torch.zeros(5, dtype=torch.float64)
    assert triton_launch.dummy(a) is triton_launch.dummy(b)
    assert triton_launch.dummy(a).numel() == 1 and triton_launch.dummy(a).dtype == torch.float32


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU: the fast path launches compiled kernels")
@pytest.mark.gpu
def test_scan_and_conv_give_the_same_results_through_the_cache(monkeypatch):
    """The layer's training kernels (conv and scan, forward and backward, both modes) launched through the cache
    equal the same launches through ``kernel[grid]`` bit for bit (per-block slices: no atomic adds), including a
    misaligned input that shares every integer argument with an aligned one launched before it."""
    from evmamba.kernels import triton_scan
    from evmamba.kernels.triton_conv import causal_conv1d_silu
    from evmamba.kernels.triton_scan import selective_scan_triton

    monkeypatch.setattr(triton_scan, "ATOMIC_CHANNEL_SUMS", False)
    g = torch.Generator().manual_seed(11)
    batch, dim, L, N = 3, 96, 1203, 16
    flat = torch.randn(batch * dim * L + 1, generator=g).cuda()
    inputs = {
        "delta": torch.randn(batch, dim, L, generator=g).cuda() * 0.5,
        "A": -torch.rand(dim, N, generator=g).cuda() - 0.1,
        "B": torch.randn(batch, N, L, generator=g).cuda(),
        "C": torch.randn(batch, N, L, generator=g).cuda(),
        "D": torch.randn(dim, generator=g).cuda(),
        "z": torch.randn(batch, dim, L, generator=g).cuda(),
        "delta_bias": torch.randn(dim, generator=g).cuda(),
        "dt": torch.rand(batch, L, generator=g).cuda(),
        "rate": torch.randn(dim, generator=g).cuda(),
    }
    w = torch.randn(dim, 4, generator=g).cuda()
    cb = torch.randn(dim, generator=g).cuda()

    def run(u_flat_offset, event):
        # u at an offset into flat keeps its (possibly misaligned) address: detach() shares the storage.
        uu = flat[u_flat_offset:u_flat_offset + batch * dim * L].view(batch, dim, L).detach().requires_grad_()
        leaves = {k: v.clone().requires_grad_() for k, v in inputs.items() if event or k != "dt"}
        xc = causal_conv1d_silu(uu, w, cb)
        y = selective_scan_triton(xc, **leaves, discretization="zoh")
        (y * torch.linspace(-1, 1, L, device="cuda")).sum().backward()
        return [y] + [uu.grad] + [v.grad for v in leaves.values()]

    for event in (False, True):
        for offset in (0, 1):  # 16-byte aligned, then 4 bytes off
            monkeypatch.setattr(triton_launch, "FAST_LAUNCH", True)
            triton_launch.clear_cache()
            run(offset, event)  # fills the cache
            cached = run(offset, event)
            monkeypatch.setattr(triton_launch, "FAST_LAUNCH", False)
            plain = run(offset, event)
            assert len(triton_launch._cache) > 0
            for a, b in zip(cached, plain):
                assert torch.equal(a, b)
    # Aligned first, then misaligned with the same integers: the second must not reuse the first's kernel.
    monkeypatch.setattr(triton_launch, "FAST_LAUNCH", True)
    triton_launch.clear_cache()
    run(0, True)
    mis = run(1, True)
    monkeypatch.setattr(triton_launch, "FAST_LAUNCH", False)
    ref = run(1, True)
    for a, b in zip(mis, ref):
        assert torch.equal(a, b)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU: the fast path launches compiled kernels")
@pytest.mark.gpu
def test_a_cached_launch_runs_on_the_callers_current_stream():
    """Under ``torch.cuda.stream(side)`` a cached launch is queued on ``side``, as ``kernel[grid]`` queues it. The
    side stream is held back by matrix products and then fills the scan's input; a launch queued on the default
    stream would run first and read the zeros that the input held before."""
    from evmamba.kernels.triton_scan import selective_scan_triton

    triton_launch.clear_cache()
    g = torch.Generator().manual_seed(5)
    batch, dim, L, N = 2, 64, 512, 16
    p = dict(u=torch.randn(batch, dim, L, generator=g).cuda(), delta=torch.randn(batch, dim, L, generator=g).cuda(),
             A=-torch.rand(dim, N, generator=g).cuda(), B=torch.randn(batch, N, L, generator=g).cuda(),
             C=torch.randn(batch, N, L, generator=g).cuda())
    expected = selective_scan_triton(**p)
    selective_scan_triton(**p)  # the launch's key is cached now
    assert triton_launch._current_device_and_stream() == (torch.cuda.current_device(),
                                                          torch.cuda.current_stream().cuda_stream)
    u_late = torch.zeros_like(p["u"])
    big = torch.randn(4096, 4096, device="cuda")
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        assert triton_launch._current_device_and_stream()[1] == side.cuda_stream
        for _ in range(8):
            big = big @ big / 4096 ** 0.5  # keeps the side stream busy
        u_late.copy_(p["u"])
        y = selective_scan_triton(**{**p, "u": u_late})
    torch.cuda.current_stream().wait_stream(side)
    assert torch.equal(y, expected)
