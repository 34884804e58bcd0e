"""Local surfaces (evmamba.pipeline.surfaces) and the "surface" embedding of the classifier."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from evmamba.model.classifier import EventClassifier
from evmamba.pipeline.binning import TokenSequence
from evmamba.pipeline.surfaces import SurfaceConfig, SurfaceTracker, token_surfaces

GRID = (5, 4, 2)  # (W', H', P)


def tok(x, y, p, grid=GRID):
    return (y * grid[0] + x) * grid[2] + p


def seq_of(tokens, t_us, counts=None):
    n = len(tokens)
    return TokenSequence(np.asarray(tokens, np.int32), np.asarray(counts or [1] * n, np.int32),
                         np.zeros(n, np.float32), np.asarray(t_us, np.int64))


def patch(row, cfg, grid=GRID):
    """One token's surface as (scale, tau, dy, dx, p)."""
    rx, ry = cfg.radii(grid)
    return row.reshape(len(cfg.scales), len(cfg.tau_us), 2 * ry + 1, 2 * rx + 1, grid[2])


def test_time_surface_against_hand_worked_values():
    cfg = SurfaceConfig(radius=1, tau_us=1000.0)
    # An ON event at (2, 1), then an OFF event at (3, 1) 1 ms later, then an ON event at (2, 1) 3 ms later.
    s = token_surfaces(seq_of([tok(2, 1, 1), tok(3, 1, 0), tok(2, 1, 1)], [0, 1000, 3000]), GRID, cfg)
    assert s.shape == (3, cfg.n_features(GRID)) == (3, 18) and s.dtype == np.float32
    assert not s[0].any()  # nothing happened before the first token
    p1 = patch(s[1], cfg)[0, 0]
    want1 = np.zeros((3, 3, 2))
    want1[1, 0, 1] = math.exp(-1.0)  # the left neighbour (dx = -1) fired ON 1 ms earlier
    np.testing.assert_allclose(p1, want1, rtol=1e-6)
    p2 = patch(s[2], cfg)[0, 0]
    want2 = np.zeros((3, 3, 2))
    want2[1, 1, 1] = math.exp(-3.0)  # its own cell: ON 3 ms earlier (read before the cell is updated)
    want2[1, 2, 0] = math.exp(-2.0)  # the right neighbour: OFF 2 ms earlier
    np.testing.assert_allclose(p2, want2, rtol=1e-6)


def test_count_surface_decays_and_accumulates():
    cfg = SurfaceConfig(radius=0, tau_us=[1000.0, 4000.0], kind="count")
    # Tokens with 3 and 2 events at one cell, then a probe at the same cell.
    s = token_surfaces(seq_of([tok(1, 1, 0)] * 3, [0, 1000, 2000], counts=[3, 2, 1]), GRID, cfg)
    for j, tau in enumerate([1000.0, 4000.0]):
        v1 = 3.0  # before the second token: 3 events, decayed over 1 ms
        assert patch(s[1], cfg)[0, j, 0, 0, 0] == pytest.approx(math.log1p(v1 * math.exp(-1000 / tau)), rel=1e-6)
        v2 = (3.0 * math.exp(-1000 / tau) + 2.0) * math.exp(-1000 / tau)
        assert patch(s[2], cfg)[0, j, 0, 0, 0] == pytest.approx(math.log1p(v2), rel=1e-6)


def test_coarse_scale_sees_a_wider_neighbourhood():
    grid = (8, 8, 1)
    cfg = SurfaceConfig(radius=1, tau_us=1000.0, scales=[1, 4])
    s = token_surfaces(seq_of([tok(7, 7, 0, grid), tok(0, 0, 0, grid)], [0, 0]), grid, cfg)
    fine, coarse = patch(s[1], cfg, grid)[:, 0, :, :, 0]
    assert not fine.any()  # (7, 7) is far outside the fine 3x3 patch around (0, 0)
    assert coarse[2, 2] == 1.0 and coarse.sum() == 1.0  # coarse cell (1, 1) is the diagonal neighbour of (0, 0)


def test_spike_data_uses_a_one_dimensional_patch():
    grid = (700, 1, 1)
    cfg = SurfaceConfig(radius=2)
    assert cfg.radii(grid) == (2, 0) and cfg.n_features(grid) == 5
    s = token_surfaces(seq_of([10, 12], [0, 0]), grid, cfg)
    assert s[1].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]  # channel 10 is two to the left of channel 12


@pytest.mark.parametrize("kind", ["time", "count"])
def test_chunked_tracker_equals_whole_sequence(kind):
    rng = np.random.default_rng(7)
    grid = (9, 7, 2)
    n = 3000
    seq = seq_of(rng.integers(0, 9 * 7 * 2, n), np.sort(rng.integers(0, 500_000, n)), rng.integers(1, 5, n).tolist())
    cfg = SurfaceConfig(radius=2, tau_us=[5000.0, 50_000.0], scales=[1, 3], kind=kind)
    whole = token_surfaces(seq, grid, cfg)
    tracker = SurfaceTracker(grid, cfg)
    cuts = np.sort(rng.choice(np.arange(1, n), 40, replace=False))
    parts = [tracker.push(seq.tokens[a:b], seq.t[a:b], seq.counts[a:b])
             for a, b in zip([0, *cuts], [*cuts, n])]
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    tracker.reset()
    np.testing.assert_array_equal(tracker.push(seq.tokens, seq.t, seq.counts), whole)


@pytest.mark.parametrize("bad,match", [
    (dict(radius=-1), "radius"), (dict(tau_us=0), "tau_us"), (dict(scales=[0]), "scales"),
    (dict(kind="hots"), "kind"),
])
def test_bad_settings_are_named(bad, match):
    with pytest.raises(ValueError, match=match):
        SurfaceConfig(**bad)
    with pytest.raises(ValueError, match="model.surface"):
        SurfaceConfig.from_dict(bad, source="config: key 'model.surface'")
    with pytest.raises(ValueError, match="unknown key"):
        SurfaceConfig.from_dict({"radiuss": 1})


def surface_model(seed=0, **kw):
    torch.manual_seed(seed)
    model = EventClassifier(5 * 4 * 2, 3, d_model=16, n_layers=2, d_state=4, embedding="surface", grid=GRID,
                            surface=dict(radius=1, tau_us=[2000.0], scales=[1, 2]), **kw)
    with torch.no_grad():
        for layer in model.layers:
            layer.D.normal_()
        model.head.bias.normal_()
    return model.eval()


def surface_stream(batch=3, length=30, seed=2):
    rng = np.random.default_rng(seed)
    tokens, dt, counts, surfaces = [], [], [], []
    cfg = SurfaceConfig(radius=1, tau_us=[2000.0], scales=[1, 2])
    for _ in range(batch):
        t = np.sort(rng.integers(0, 60_000, length))
        seq = seq_of(rng.integers(0, 40, length), t, rng.integers(1, 4, length).tolist())
        tokens.append(seq.tokens)
        dt.append(np.diff(t, prepend=t[0]) / 1000.0)
        counts.append(seq.counts)
        surfaces.append(token_surfaces(seq, GRID, cfg))
    f = lambda a, dtype: torch.tensor(np.stack(a), dtype=dtype)  # noqa: E731
    return f(tokens, torch.long), f(dt, torch.float32), f(counts, torch.float32), f(surfaces, torch.float32)


@pytest.mark.parametrize("pool_stride,input_pool", [(None, 1), ([2], 3)])
def test_surface_model_step_and_chunks_equal_forward(pool_stride, input_pool):
    model = surface_model(pool_stride=pool_stride, input_pool=input_pool)
    tokens, dt, counts, surfaces = surface_stream()
    batch, length = tokens.shape
    cache = model.allocate_inference_cache(batch)
    with torch.no_grad():
        stepped = [model.step(tokens[:, k], dt[:, k], cache, counts[:, k], surfaces[:, k]) for k in range(length)]
        for k in (0, 9, length - 1):
            want = model(tokens[:, :k + 1], dt[:, :k + 1], counts[:, :k + 1], surfaces=surfaces[:, :k + 1])
            assert (stepped[k] - want).norm() / want.norm() < 1e-5, f"after {k + 1} tokens"
        ends = torch.tensor([[5, 30], [1, 17], [0, 30]])
        got = model.forward_prefixes(tokens, dt, ends, counts, max_chunk=7, surfaces=surfaces)
        want = model(tokens[1:2, :17], dt[1:2, :17], counts[1:2, :17], surfaces=surfaces[1:2, :17])
        assert (got[1, 1] - want[0]).norm() / want.norm() < 1e-5


def test_surface_model_is_translation_equivariant_in_its_surface_part():
    """The surface MLP has the same weights at every position: two tokens with the same surface and polarity
    in one coarse position cell get the same embedding."""
    model = surface_model(position_cells=2)  # cells of 3 x 3 grid pixels
    emb = model.embedding
    s = torch.rand(1, 2, emb.n_surface)
    s[0, 1] = s[0, 0]
    e = emb(torch.tensor([[tok(0, 0, 1), tok(1, 0, 1)]]), None, s)  # (0,0) and (1,0) share a position cell
    assert emb.position_cell == 3 and torch.allclose(e[0, 0], e[0, 1])


def test_surface_model_needs_surfaces_of_the_right_width():
    model = surface_model()
    tokens, dt, counts, surfaces = surface_stream()
    with pytest.raises(ValueError, match="surfaces"):
        model(tokens, dt, counts)
    with pytest.raises(ValueError, match="surfaces"):
        model(tokens, dt, counts, surfaces=surfaces[..., :-1])
    table = EventClassifier(40, 3, d_model=8, n_layers=1)
    with pytest.raises(ValueError, match="only for embedding='surface'"):
        table(tokens, dt, counts, surfaces=surfaces)
