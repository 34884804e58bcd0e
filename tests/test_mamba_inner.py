"""The ``Mamba`` layer's training path with conv, projections and scan in one autograd node
(:mod:`evmamba.model.mamba_inner`) against the general path (separate nodes), outputs and every gradient.

On a CUDA GPU both paths run the Triton kernels (float32, and bfloat16 under autocast); without one the node runs
on Triton's CPU interpreter and the general path on the CPU backends, at small shapes.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

pytestmark = pytest.mark.gpu  # Triton kernels: compiled on a GPU, on the interpreter elsewhere

from evmamba.model import Mamba  # noqa: E402
from evmamba.model import mamba as mamba_module  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    assert torch.isfinite(a).all(), "non-finite values"
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def make_layer(d_model: int, disc: str, seed: int) -> Mamba:
    torch.manual_seed(seed)
    layer = Mamba(d_model, d_state=16, discretization=disc).to(DEVICE)
    with torch.no_grad():  # random values everywhere, so that every term matters
        layer.D.normal_()
        layer.A_log.add_(0.3 * torch.randn_like(layer.A_log))
        layer.conv1d.bias.normal_(0, 0.2)
        layer.dtA_proj.bias.normal_(0, 0.5)
    return layer


def graph_nodes(y: torch.Tensor) -> list[str]:
    """The names of the autograd nodes behind ``y`` (which path ran)."""
    names, stack, seen = [], [y.grad_fn], {}
    while stack:
        f = stack.pop()
        # `seen` keeps the node objects alive: Python wrappers of graph nodes are made on access, and a freed
        # one's id may come back for another node.
        if f is not None and id(f) not in seen:
            seen[id(f)] = f
            names.append(type(f).__name__)
            stack.extend(g for g, _ in f.next_functions)
    return names


def run(layer, x, dt, lengths, dy, one_node: bool, monkeypatch, autocast: torch.dtype | None = None,
        dt_grad: bool = True):
    """Output and gradients (input, time steps unless ``dt_grad`` is false, every parameter) of one forward +
    backward on either path."""
    if one_node:
        # Off a GPU the layer would pick the CPU backends; the node itself runs on the interpreter.
        monkeypatch.setattr(Mamba, "_inner_in_one_node", lambda self, x, dt, lengths: True)
    else:
        monkeypatch.setattr(mamba_module, "INNER_IN_ONE_NODE", False)
    layer.zero_grad(set_to_none=True)
    xg = x.clone().requires_grad_()
    dtg = None if dt is None else dt.clone().requires_grad_(dt_grad)
    with torch.autocast("cuda", dtype=autocast, enabled=autocast is not None):
        y = layer(xg, integration_timesteps=dtg, lengths=lengths)
    names = [n for n, _ in layer.named_parameters()]
    nodes = graph_nodes(y)
    (y.float() * dy).sum().backward()
    grads = {"x": xg.grad, **({"dt": dtg.grad} if dtg is not None and dt_grad else {})}
    assert dt_grad or dtg is None or dtg.grad is None
    grads.update({n: p.grad for n, p in zip(names, layer.parameters())})
    monkeypatch.undo()
    return y, grads, nodes


CASES = [(2, 300, 64), (3, 1001, 48)] if CUDA else [(2, 37, 16)]


@pytest.mark.parametrize("disc", ["mamba", "zoh"])
@pytest.mark.parametrize("event", [False, True], ids=["standard", "event"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"B{c[0]}L{c[1]}d{c[2]}")
def test_one_node_equals_the_general_path(monkeypatch, disc, event, with_lengths, case):
    batch, L, d_model = case
    layer = make_layer(d_model, disc, seed=3)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(batch, L, d_model, generator=g).to(DEVICE)
    dt = (torch.rand(batch, L, generator=g) * 3).to(DEVICE) if event else None
    lengths = torch.tensor([L, L // 3, 1][:batch], device=DEVICE) if with_lengths else None
    dy = torch.randn(batch, L, d_model, generator=g).to(DEVICE)
    y0, g0, nodes0 = run(layer, x, dt, lengths, dy, False, monkeypatch)
    y1, g1, nodes1 = run(layer, x, dt, lengths, dy, True, monkeypatch)
    assert "MambaInnerFunctionBackward" in nodes1 and "MambaInnerFunctionBackward" not in nodes0
    assert rel(y1, y0) < 1e-5
    assert g0.keys() == g1.keys()
    for name in g0:
        assert g1[name] is not None and g1[name].shape == g0[name].shape and g1[name].dtype == g0[name].dtype, name
        if float(g0[name].norm()) == 0.0:
            assert float(g1[name].norm()) == 0.0, name  # e.g. the event rate in standard mode
        else:
            assert rel(g1[name], g0[name]) < 1e-4, f"{name}: {rel(g1[name], g0[name]):.2e}"


@pytest.mark.parametrize("disc", ["mamba", "zoh"])
def test_one_node_with_time_steps_as_data(monkeypatch, disc):
    """Event mode with time steps that need no gradient (data, as in training: the node's backward then skips
    their gradient): the input's and every parameter's gradient still equal the general path's."""
    batch, L, d_model = CASES[-1]
    layer = make_layer(d_model, disc, seed=13)
    g = torch.Generator().manual_seed(17)
    x = torch.randn(batch, L, d_model, generator=g).to(DEVICE)
    dt = (torch.rand(batch, L, generator=g) * 3).to(DEVICE)
    dy = torch.randn(batch, L, d_model, generator=g).to(DEVICE)
    y0, g0, _ = run(layer, x, dt, None, dy, False, monkeypatch, dt_grad=False)
    y1, g1, nodes1 = run(layer, x, dt, None, dy, True, monkeypatch, dt_grad=False)
    assert "MambaInnerFunctionBackward" in nodes1 and "dt" not in g1
    assert rel(y1, y0) < 1e-5 and g0.keys() == g1.keys()
    for name in g0:
        assert rel(g1[name], g0[name]) < 1e-4, f"{name}: {rel(g1[name], g0[name]):.2e}"


@pytest.mark.skipif(not CUDA, reason="autocast bfloat16 on the GPU")
@pytest.mark.parametrize("event", [False, True], ids=["standard", "event"])
def test_one_node_under_bf16_autocast(monkeypatch, event):
    """Under bfloat16 autocast the node computes what the general path does (its products in bfloat16, the
    parameters' gradients in float32), to bfloat16 rounding."""
    batch, L, d_model = 2, 777, 64
    layer = make_layer(d_model, "zoh", seed=7)
    g = torch.Generator().manual_seed(9)
    x = torch.randn(batch, L, d_model, generator=g).to(DEVICE)
    dt = (torch.rand(batch, L, generator=g) * 3).to(DEVICE) if event else None
    dy = torch.randn(batch, L, d_model, generator=g).to(DEVICE)
    y0, g0, _ = run(layer, x, dt, None, dy, False, monkeypatch, torch.bfloat16)
    y1, g1, nodes1 = run(layer, x, dt, None, dy, True, monkeypatch, torch.bfloat16)
    assert "MambaInnerFunctionBackward" in nodes1
    assert y1.dtype == y0.dtype == torch.bfloat16 and rel(y1, y0) < 1e-2
    for name in g0:
        assert g1[name].dtype == g0[name].dtype, name
        assert rel(g1[name], g0[name]) < 2e-2, f"{name}: {rel(g1[name], g0[name]):.2e}"


@pytest.mark.skipif(not CUDA, reason="the layer picks the Triton kernels for CUDA tensors")
def test_training_forward_on_the_gpu_takes_one_node(monkeypatch):
    layer = make_layer(32, "mamba", seed=1)
    x = torch.randn(2, 50, 32, device=DEVICE, requires_grad=True)
    assert "MambaInnerFunctionBackward" in graph_nodes(layer(x))
    monkeypatch.setattr(mamba_module, "INNER_IN_ONE_NODE", False)
    assert "MambaInnerFunctionBackward" not in graph_nodes(layer(x))


def test_which_forwards_take_one_node(monkeypatch):
    """The node serves training forwards whose tensors its kernels read; anything else takes the general path
    (where the kernels' own checks name what is wrong)."""
    monkeypatch.setattr(mamba_module, "conv_backend", lambda x, backend, k: "triton")
    monkeypatch.setattr(mamba_module, "scan_backend", lambda x, backend: "triton")
    layer = Mamba(16)
    x = torch.randn(2, 16, 10)  # (B, Di, L) as the layer passes it
    ok = layer._inner_in_one_node
    assert ok(x, None, None)
    assert ok(x, torch.rand(2, 10), torch.tensor([10, 4]))
    assert not ok(x, torch.rand(2, 10, dtype=torch.float64), None)  # the kernels read 16/32-bit time steps
    assert not ok(x, torch.rand(2, 10, device="meta"), None)  # time steps on another device
    assert not ok(x, None, torch.tensor([10, 4], device="meta"))
    with torch.no_grad():
        assert not ok(x, None, None)
    layer.requires_grad_(False)
    assert not ok(x, None, None)  # nothing wants a gradient
    assert ok(x.requires_grad_(), None, None)
    monkeypatch.setattr(mamba_module, "INNER_IN_ONE_NODE", False)
    assert not ok(x, None, None)
    monkeypatch.setattr(mamba_module, "INNER_IN_ONE_NODE", True)
    monkeypatch.setattr(mamba_module, "scan_backend", lambda x, backend: "numba")
    assert not ok(x, None, None)
