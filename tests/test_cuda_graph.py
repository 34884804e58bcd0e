"""CudaGraphStep: replaying a captured stack of Mamba steps equals running them eagerly."""

from __future__ import annotations

import pytest
import torch

from evmamba.model import Mamba
from evmamba.model.cuda_graph import CudaGraphStep

CUDA = torch.cuda.is_available()
pytestmark = pytest.mark.gpu  # CUDA-graph capture (the eager fallback is checked on the CPU too)


def make_stack(device, event):
    torch.manual_seed(0)
    layers = [Mamba(32, d_state=16, discretization="zoh").to(device).eval() for _ in range(3)]
    caches = [layer.allocate_inference_cache(1, 0) for layer in layers]

    def step(x, dt):
        for layer, cache in zip(layers, caches):
            x, _ = layer.step(x, cache, dt if event else None)
        return x

    state = [t for c in caches for t in (c["conv_state"], c["lrnn_state"])]
    return step, caches, state


def tokens(device, n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(1, 1, 32, generator=g).to(device), (torch.rand(1, 1, generator=g) * 2).to(device))
            for _ in range(n)]


def test_without_cuda_tensors_the_step_runs_eagerly():
    step, caches, state = make_stack("cpu", event=True)
    x, dt = tokens("cpu", 1)[0]
    graph = CudaGraphStep(step, (x, dt), state=state)
    assert not graph.graphed
    y = graph(x, dt)
    assert y.shape == (1, 1, 32) and torch.isfinite(y).all()
    assert float(caches[0]["lrnn_state"].abs().sum()) > 0  # the eager call advanced the state


def test_inputs_must_match_the_captured_ones():
    step, _, state = make_stack("cpu", event=True)
    x, dt = tokens("cpu", 1)[0]
    graph = CudaGraphStep(step, (x, dt), state=state)
    with pytest.raises(ValueError, match="expected 2 inputs"):
        graph(x)
    with pytest.raises(ValueError, match="input 0 must be"):
        graph(x[:, :, :16], dt)
    with pytest.raises(TypeError, match="must be callable"):
        CudaGraphStep(42, (x, dt))


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("event", [False, True], ids=["standard", "event"])
def test_graph_replay_equals_eager_steps(event):
    dev = torch.device("cuda")
    step, caches, state = make_stack(dev, event)
    eager_step, eager_caches, _ = make_stack(dev, event)
    seq = tokens(dev, 6)
    before = [t.clone() for t in state]
    graph = CudaGraphStep(step, seq[0], state=state)
    assert graph.graphed
    for t, b in zip(state, before):
        assert torch.equal(t, b), "capture must leave the caches as they were"
    with torch.no_grad():
        for x, dt in seq:
            y = graph(x, dt).clone()
            y_eager = eager_step(x, dt)
            torch.testing.assert_close(y, y_eager, rtol=1e-5, atol=1e-6)
    for c, ce in zip(caches, eager_caches):
        torch.testing.assert_close(c["lrnn_state"], ce["lrnn_state"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(c["conv_state"], ce["conv_state"], rtol=1e-5, atol=1e-6)
