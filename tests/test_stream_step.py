"""The compiled CPU step computes the classifier: per-token logits equal ``EventClassifier.step`` and the
final logits equal ``forward``, for every discretization, embedding, norm and readout, with pooling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evmamba.kernels.discretization import input_factor, input_step, transition
from evmamba.kernels.numba_discretization import discretize_np
from evmamba.model.classifier import EventClassifier
from evmamba.streaming.fast_step import FastStepper, export_weights

GRID = (5, 4, 2)
VOCAB = 40


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def make_model(seed=0, **kw) -> EventClassifier:
    torch.manual_seed(seed)
    m = EventClassifier(VOCAB, 7, d_model=16, n_layers=3, d_state=8, grid=list(GRID), **kw).eval()
    with torch.no_grad():  # move away from the initialisation (unit norms, zero biases, ones D)
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def make_tokens(n, seed=1):
    rng = np.random.default_rng(seed)
    tok = rng.integers(0, VOCAB, n).astype(np.int32)
    dt = (rng.random(n) * 3).astype(np.float32)
    dt[0] = 0.0
    dt[rng.random(n) < 0.2] = 0.0  # tokens of one time bin share a timestamp
    cnt = rng.integers(1, 6, n).astype(np.int32)
    return tok, dt, cnt


def make_surfaces(model, tok, cnt, seed=1):
    """The local surfaces of the tokens (token times rebuilt from made-up gaps), or None for other embeddings."""
    if model.surface_config is None:
        return None
    from evmamba.pipeline.binning import TokenSequence
    from evmamba.pipeline.surfaces import token_surfaces

    t_us = np.cumsum(np.random.default_rng(seed).integers(0, 3000, tok.size)).astype(np.int64)
    seq = TokenSequence(tok, cnt, np.zeros(tok.size, np.float32), t_us)
    return token_surfaces(seq, GRID, model.surface_config)


@torch.no_grad()
def torch_step_logits(model, tok, dt, cnt, surf=None) -> np.ndarray:
    cache = model.allocate_inference_cache(1)
    s = lambda i: None if surf is None else torch.from_numpy(surf[i:i + 1])  # noqa: E731
    rows = [model.step(torch.tensor(tok[i:i + 1], dtype=torch.long), torch.tensor(dt[i:i + 1]), cache,
                       torch.tensor(cnt[i:i + 1], dtype=torch.float32), s(i))[0] for i in range(tok.size)]
    return torch.stack(rows).numpy()


@torch.no_grad()
def torch_forward_logits(model, tok, dt, cnt, surf=None) -> np.ndarray:
    t = lambda a, dtype: torch.tensor(a, dtype=dtype)[None]  # noqa: E731
    return model(t(tok, torch.long), t(dt, torch.float32), t(cnt, torch.float32),
                 surfaces=None if surf is None else t(surf, torch.float32))[0].numpy()


CASES = [
    dict(discretization="mamba"),
    dict(discretization="zoh"),
    dict(discretization="bilinear"),
    dict(discretization="dirac"),
    dict(readout="mean", pool_stride=2),
    dict(readout="last", pool_stride=2),
    dict(readout="dt_mean", pool_stride=[3, 2]),
    dict(embedding="factorised", norm="layer", readout="dt_mean", pool_stride=[1, 2]),
    dict(event_mode=False, count_feature=False, discretization="bilinear"),
    dict(input_pool=3, pool_stride=[1, 2], readout="last"),
    dict(embedding="surface", surface=dict(radius=1, tau_us=[2000.0], scales=[1, 2])),
    dict(embedding="surface", surface=dict(radius=2, tau_us=[500.0, 5000.0], kind="count"), surface_hidden=0,
         input_pool=2, pool_stride=[1, 2], readout="dt_mean", position_cells=2),
]


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_per_token_logits_equal_classifier_step_and_forward(kw):
    model = make_model(**kw)
    tok, dt, cnt = make_tokens(37)
    surf = make_surfaces(model, tok, cnt)
    want = torch_step_logits(model, tok, dt, cnt, surf)
    stepper = FastStepper(model)
    # Uneven chunks: the state carried between calls must not matter.
    s = lambda a, b: None if surf is None else surf[a:b]  # noqa: E731
    parts = [stepper.run(tok[a:b], dt[a:b], cnt[a:b], surfaces=s(a, b)).logits
             for a, b in ((0, 1), (1, 14), (14, 15), (15, 37))]
    got = np.concatenate(parts)
    assert got.shape == want.shape
    assert rel_err(got, want) < 1e-5
    assert rel_err(got[-1], torch_forward_logits(model, tok, dt, cnt, surf)) < 1e-5


def test_sparse_logits_skip_open_windows_without_changing_results():
    model = make_model(pool_stride=[2, 3], readout="dt_mean")
    tok, dt, cnt = make_tokens(50, seed=3)
    dense = FastStepper(model).run(tok, dt, cnt)
    need = np.zeros(50, bool)
    need[[4, 17, 18, 33, 49]] = True
    sparse = FastStepper(model).run(tok, dt, cnt, need=need)
    np.testing.assert_array_equal(sparse.index, np.flatnonzero(need))
    assert rel_err(sparse.logits, dense.logits[need]) < 1e-6


def test_streams_are_independent_and_reset_starts_over():
    model = make_model()
    tok, dt, cnt = make_tokens(20)
    tok2, dt2, cnt2 = make_tokens(20, seed=9)
    two = FastStepper(model, n_streams=2)
    a = two.run(tok[:10], dt[:10], cnt[:10], stream=0).logits
    two.run(tok2, dt2, cnt2, stream=1)
    b = two.run(tok[10:], dt[10:], cnt[10:], stream=0).logits
    alone = FastStepper(model).run(tok, dt, cnt).logits
    np.testing.assert_allclose(np.concatenate([a, b]), alone, rtol=0, atol=0)
    two.reset(0)
    again = two.run(tok, dt, cnt, stream=0).logits
    np.testing.assert_allclose(again, alone, rtol=0, atol=0)


@pytest.mark.parametrize("method", ["mamba", "zoh", "bilinear", "dirac"])
def test_discretization_matches_the_reference_formulas(method):
    rng = np.random.default_rng(0)
    a = -np.exp(rng.uniform(-2, 3, 4000)).astype(np.float32)  # A = -exp(A_log)
    dtb = np.exp(rng.uniform(-9, 2, 4000)).astype(np.float32)  # softplus outputs: 1e-4 .. 7
    dta = np.exp(rng.uniform(-9, 3, 4000)).astype(np.float32)
    abar, fac = discretize_np(dta, dtb, a, method)
    t = lambda v: torch.from_numpy(v).double()  # noqa: E731 - float64 reference values
    want_a = transition(t(dta), t(a), method).numpy()
    want_f = np.broadcast_to(input_factor(t(dtb), t(a), method).numpy(), a.shape)
    # |Abar| <= 1; bilinear's (1 + x/2) / (1 - x/2) crosses 0 at x = -2, where float32 keeps an absolute error.
    np.testing.assert_allclose(abar, want_a, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(fac, want_f, rtol=2e-6, atol=1e-30)


def test_softplus_matches_torch():
    from numba import njit

    from evmamba.kernels.numba_discretization import fexp, flog1p, softplus

    @njit
    def apply(x, out):
        for i in range(x.size):
            out[i] = softplus(x[i], fexp, flog1p)

    x = np.concatenate([np.linspace(-40, 40, 20001), np.random.default_rng(0).normal(0, 4, 5000)]).astype(np.float32)
    out = np.empty_like(x)
    apply(x, out)
    want = input_step(torch.from_numpy(x).double()).numpy()
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=0)


def test_inputs_are_checked():
    stepper = FastStepper(make_model())
    tok, dt, cnt = make_tokens(5)
    with pytest.raises(ValueError, match="'tokens' holds id 40"):
        stepper.run(np.array([1, 40]), dt[:2], cnt[:2])
    with pytest.raises(ValueError, match="'dt' must have shape"):
        stepper.run(tok, dt[:3], cnt)
    with pytest.raises(ValueError, match="'dt' must be finite and non-negative"):
        stepper.run(tok[:2], np.array([0.0, -1.0], np.float32), cnt[:2])
    with pytest.raises(ValueError, match="'stream'"):
        stepper.run(tok, dt, cnt, stream=1)
    with pytest.raises(TypeError, match="EventClassifier"):
        export_weights(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="only for models with the 'surface' embedding"):
        stepper.run(tok, dt, cnt, surfaces=np.zeros((5, 3), np.float32))
    surface = FastStepper(make_model(embedding="surface"))
    with pytest.raises(ValueError, match="needs argument 'surfaces' of shape"):
        surface.run(tok, dt, cnt)
