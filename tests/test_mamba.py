"""The ``Mamba`` layer's contract on the reference path (CPU)."""

from __future__ import annotations

import inspect

import pytest
import torch

from evmamba.kernels import DISCRETIZATIONS
from evmamba.model import Mamba

D_MODEL = 16


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def make_layer(disc: str, seed: int = 0, **kw) -> Mamba:
    torch.manual_seed(seed)
    layer = Mamba(D_MODEL, d_state=8, discretization=disc, **kw)
    # Random (not initial) values everywhere, so that every term of the layer matters.
    with torch.no_grad():
        layer.D.normal_()
        layer.A_log.add_(0.3 * torch.randn_like(layer.A_log))
        layer.conv1d.bias.normal_(0, 0.2)
    return layer


def inputs(batch: int, L: int, event: bool, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, L, D_MODEL, generator=g)
    ts = torch.rand(batch, L, generator=g) * 20.0 if event else None  # gaps up to 20 ms
    return x, ts


def test_signature_matches_specification():
    params = inspect.signature(Mamba.__init__).parameters
    expected = dict(
        d_state=16, d_conv=4, expand=2, dt_rank="auto", dt_min=0.001, dt_max=0.1, dt_init="random", dt_scale=1.0,
        dt_init_floor=1e-4, conv_bias=True, bias=False, use_fast_path=True, layer_idx=None, device=None,
        dtype=None, discretization="mamba",
    )
    assert list(params)[1:] == ["d_model", *expected]
    for name, default in expected.items():
        assert params[name].default == default, name
    m = Mamba(32)
    assert m.d_inner == 64 and m.dt_rank == 2
    names = {n for n, _ in m.named_parameters()}
    assert names == {
        "in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight", "dt_proj.bias",
        "dtA_proj.bias", "A_log", "D", "out_proj.weight",
    }


@pytest.mark.parametrize("disc", DISCRETIZATIONS)
@pytest.mark.parametrize("event", [False, True], ids=["standard", "event"])
@pytest.mark.parametrize("L", [1, 7, 64, 333])
def test_step_matches_forward(disc, event, L):
    layer = make_layer(disc)
    x, ts = inputs(2, L, event)
    with torch.no_grad():
        y = layer(x, integration_timesteps=ts)
        cache = layer.allocate_inference_cache(2, L)
        outs = []
        for t in range(L):
            step_ts = None if ts is None else (ts[:, t : t + 1] if t % 2 else ts[:, t])  # (B, 1) and (B,)
            out, returned = layer.step(x[:, t : t + 1], cache, step_ts)
            assert returned is cache and out.shape == (2, 1, D_MODEL)
            outs.append(out)
    assert cache["seqlen_offset"] == L
    assert rel_err(torch.cat(outs, 1), y) < 1e-5


@pytest.mark.parametrize("disc", DISCRETIZATIONS)
@pytest.mark.parametrize("event", [False, True], ids=["standard", "event"])
def test_chunked_forward_with_cache_matches_one_forward(disc, event):
    layer = make_layer(disc, seed=3)
    L = 150
    x, ts = inputs(3, L, event, seed=4)
    with torch.no_grad():
        y = layer(x, integration_timesteps=ts)
        cache = layer.allocate_inference_cache(3, L)
        pieces, start = [], 0
        for size in (2, 1, 61, 1, 1, 84):  # includes L == 1 pieces after the start (the step route)
            sl = slice(start, start + size)
            pieces.append(layer(x[:, sl], None if ts is None else ts[:, sl], inference_cache=cache))
            start += size
        assert start == L and cache["seqlen_offset"] == L
        # The cache now holds the final state: stepping on equals one forward over the longer sequence.
        x_next, ts_next = inputs(3, 1, event, seed=5)
        out, _ = layer.step(x_next, cache, ts_next)
        y_long = layer(torch.cat([x, x_next], 1), None if ts is None else torch.cat([ts, ts_next], 1))
    assert rel_err(torch.cat(pieces, 1), y) < 1e-5
    assert rel_err(out[:, 0], y_long[:, -1]) < 1e-5


@pytest.mark.parametrize("disc", ["mamba", "bilinear"])
@pytest.mark.parametrize("event", [False, True], ids=["standard", "event"])
def test_padding_does_not_change_valid_outputs_or_final_state(disc, event):
    layer = make_layer(disc, seed=6)
    lengths = [40, 17, 1, 0]
    L = 40
    x, ts = inputs(len(lengths), L, event, seed=7)
    with torch.no_grad():
        cache = layer.allocate_inference_cache(len(lengths), L)
        y = layer(x, ts, lengths=torch.tensor(lengths), inference_cache=cache)
        for b, n in enumerate(lengths):
            if n == 0:
                assert cache["lrnn_state"][b].abs().max() == 0
                continue
            own = layer.allocate_inference_cache(1, n)
            y_b = layer(x[b : b + 1, :n], None if ts is None else ts[b : b + 1, :n], inference_cache=own)
            assert rel_err(y[b : b + 1, :n], y_b) < 1e-5
            assert rel_err(cache["lrnn_state"][b], own["lrnn_state"][0]) < 1e-5
            torch.testing.assert_close(cache["conv_state"][b], own["conv_state"][0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("disc", DISCRETIZATIONS)
@pytest.mark.parametrize("event", [False, True], ids=["standard", "event"])
def test_every_parameter_gets_a_gradient(disc, event):
    layer = make_layer(disc)
    x, ts = inputs(2, 9, event)
    layer(x, integration_timesteps=ts).square().mean().backward()
    missing = [n for n, p in layer.named_parameters() if p.grad is None]
    assert missing == []
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


def test_bf16_autocast_close_to_fp32():
    layer = make_layer("mamba")
    x, ts = inputs(2, 128, True)
    with torch.no_grad():
        y32 = layer(x, ts)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y16 = layer(x, ts)
    assert y16.dtype == torch.bfloat16
    assert rel_err(y16.float(), y32) < 1e-2


def test_event_rate_spans_time_scales():
    layer = Mamba(64)
    tau = 1.0 / torch.nn.functional.softplus(layer.dtA_proj.bias.detach().double())
    assert tau.min() == pytest.approx(1.0, rel=1e-4) and tau.max() == pytest.approx(1000.0, rel=1e-4)
    layer.init_event_rate(0.01, 5.0)
    tau = 1.0 / torch.nn.functional.softplus(layer.dtA_proj.bias.detach().double())
    assert tau.min() == pytest.approx(0.01, rel=1e-4) and tau.max() == pytest.approx(5.0, rel=1e-4)
    with pytest.raises(ValueError, match="tau_min"):
        layer.init_event_rate(10.0, 1.0)


def test_dt_bias_initialised_in_range():
    layer = Mamba(64, dt_min=0.01, dt_max=0.05)
    dt = torch.nn.functional.softplus(layer.dt_proj.bias.detach())
    assert dt.min() >= 0.01 * (1 - 1e-4) and dt.max() <= 0.05 * (1 + 1e-4)
    torch.testing.assert_close(layer.A_log[0].detach().exp(), torch.arange(1, 17, dtype=torch.float32))


def test_loads_an_lrnnx_state_dict():
    src = make_layer("zoh", seed=11)
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    sd["dtA_proj.weight"] = torch.randn(src.d_inner, src.dt_rank)  # present in lrnnx, unused by its forward
    dst = make_layer("zoh", seed=12)
    dst.load_state_dict(sd)  # strict
    x, ts = inputs(1, 20, True)
    with torch.no_grad():
        assert torch.equal(dst(x, ts), src(x, ts))


def test_allocate_inference_cache_contract():
    layer = Mamba(8, d_state=4, d_conv=3)
    cache = layer.allocate_inference_cache(5, 100)
    assert set(cache) == {"conv_state", "lrnn_state", "seqlen_offset"}
    assert cache["conv_state"].shape == (5, 16, 3) and cache["lrnn_state"].shape == (5, 16, 4)
    assert cache["conv_state"].dtype == torch.float32 and cache["seqlen_offset"] == 0
    assert not cache["lrnn_state"].any()
    c16 = layer.allocate_inference_cache(2, 1, dtype=torch.bfloat16)
    assert c16["lrnn_state"].dtype == torch.bfloat16


def test_step_accepts_and_ignores_extra_kwargs():
    layer = make_layer("mamba")
    cache = layer.allocate_inference_cache(1, 1)
    out, _ = layer.step(torch.randn(1, 1, D_MODEL), cache, something_else=3)
    assert out.shape == (1, 1, D_MODEL)


# ---------------------------------------------------------------- invalid input


@pytest.mark.parametrize(
    "kwargs, exc, word",
    [
        (dict(discretization="euler"), ValueError, "discretization"),
        (dict(discretization=3), TypeError, "discretization"),
        (dict(d_state=0), ValueError, "d_state"),
        (dict(d_conv=-1), ValueError, "d_conv"),
        (dict(expand=0), ValueError, "expand"),
        (dict(dt_rank="big"), ValueError, "dt_rank"),
        (dict(dt_rank=0), ValueError, "dt_rank"),
        (dict(dt_min=0.5, dt_max=0.1), ValueError, "dt_min"),
        (dict(dt_min=-1.0), ValueError, "dt_min"),
        (dict(dt_init="normal"), ValueError, "dt_init"),
        (dict(dt_scale=float("nan")), ValueError, "dt_scale"),
        (dict(layer_idx=-2), ValueError, "layer_idx"),
    ],
)
def test_bad_constructor_values(kwargs, exc, word):
    with pytest.raises(exc, match=word):
        Mamba(16, **kwargs)


def test_bad_d_model():
    with pytest.raises(ValueError, match="d_model"):
        Mamba(0)
    with pytest.raises(TypeError, match="d_model"):
        Mamba(16.5)


@pytest.mark.parametrize(
    "bad, exc",
    [
        (torch.full((2, 5), float("nan")), ValueError),
        (torch.full((2, 5), float("inf")), ValueError),
        (torch.tensor([[1.0, 2.0, -float("inf"), 0.0, 1.0]] * 2), ValueError),
        (-torch.ones(2, 5), ValueError),
        (torch.ones(2, 4), ValueError),
        (torch.ones(2, 5, 1), ValueError),
        (torch.ones(2, 5, dtype=torch.int64), TypeError),
        ([[1.0] * 5] * 2, TypeError),
    ],
)
def test_bad_integration_timesteps(bad, exc):
    layer = make_layer("mamba")
    with pytest.raises(exc, match="integration_timesteps"):
        layer(torch.randn(2, 5, D_MODEL), integration_timesteps=bad)


def test_timestep_values_name_what_is_wrong():
    layer = make_layer("mamba")
    x = torch.randn(2, 5, D_MODEL)
    with pytest.raises(ValueError, match="must be finite"):
        layer(x, integration_timesteps=torch.tensor([[1.0, float("nan"), 1.0, 1.0, 1.0]] * 2))
    with pytest.raises(ValueError, match=r"non-negative .* got min -2.5"):
        layer(x, integration_timesteps=torch.tensor([[1.0, -2.5, 1.0, 0.0, 1.0]] * 2))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the check is remembered for CUDA tensors only")
def test_checked_cuda_timesteps_are_checked_again_after_an_in_place_change():
    """The layers of a model share one time-step tensor; its values are checked once (each check waits for the
    GPU), and again after any in-place change."""
    layer = make_layer("mamba").cuda()
    x = torch.randn(2, 5, D_MODEL, device="cuda")
    ts = torch.rand(2, 5, device="cuda")
    layer(x, integration_timesteps=ts)
    layer(x, integration_timesteps=ts)  # remembered: not read again
    ts[1, 3] = -1.0
    with pytest.raises(ValueError, match="non-negative"):
        layer(x, integration_timesteps=ts)


def test_bad_step_timesteps():
    layer = make_layer("mamba")
    cache = layer.allocate_inference_cache(2, 1)
    with pytest.raises(ValueError, match="integration_timesteps"):
        layer.step(torch.randn(2, 1, D_MODEL), cache, torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="integration_timesteps"):
        layer.step(torch.randn(2, 1, D_MODEL), cache, torch.ones(3))


@pytest.mark.parametrize(
    "x, exc",
    [
        (torch.randn(2, 5, D_MODEL + 1), ValueError),
        (torch.randn(5, D_MODEL), ValueError),
        (torch.ones(2, 5, D_MODEL, dtype=torch.int32), TypeError),
        (torch.randn(2, 5, D_MODEL, dtype=torch.float64), TypeError),
        (None, TypeError),
    ],
)
def test_bad_hidden_states(x, exc):
    with pytest.raises(exc, match="hidden_states"):
        make_layer("mamba")(x)


def test_bad_lengths_and_cache():
    layer = make_layer("mamba")
    x = torch.randn(2, 5, D_MODEL)
    with pytest.raises(ValueError, match="lengths"):
        layer(x, lengths=torch.tensor([6, 1]))
    with pytest.raises(TypeError, match="lengths"):
        layer(x, lengths=torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="lengths"):
        layer(x, lengths=torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="inference_cache"):
        layer(x, inference_cache=layer.allocate_inference_cache(3, 5))
    with pytest.raises(ValueError, match="inference_cache"):
        layer(x, inference_cache={"conv_state": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"\(B, 1, 16\)"):
        layer.step(x, layer.allocate_inference_cache(2, 5))


@pytest.mark.parametrize("event_mode", [False, True])
def test_zero_length_input_gives_an_empty_output_and_keeps_the_cache(event_mode):
    torch.manual_seed(0)
    layer = Mamba(8, d_state=4)
    x = torch.randn(2, 0, 8)
    ts = torch.zeros(2, 0) if event_mode else None
    assert layer(x, ts).shape == (2, 0, 8)
    assert layer(x, ts, lengths=torch.zeros(2, dtype=torch.long)).shape == (2, 0, 8)
    cache = layer.allocate_inference_cache(2, 0)
    layer(torch.randn(2, 3, 8), torch.rand(2, 3) if event_mode else None, inference_cache=cache)
    before = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in cache.items()}
    assert layer(x, ts, inference_cache=cache).shape == (2, 0, 8)
    for key, value in before.items():
        assert torch.equal(cache[key], value) if isinstance(value, torch.Tensor) else cache[key] == value
