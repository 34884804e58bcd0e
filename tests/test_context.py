"""The context stage (evmamba.model.context): latest-neighbour search, the stage against a plain loop over its
definition, forward == step == chunks == prefixes through the classifier, configs and checkpoints."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from evmamba.model.classifier import ClassifierConfig, EventClassifier
from evmamba.model.context import ContextConfig, ContextStage, latest_match, neighbour_ids, sorted_keys

GRID = (6, 5, 2)
VOCAB = 60
CTX = {"radius": 1, "dilation": 2, "channels": 3, "tau": 4.0}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def random_stream(batch, length, vocab, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (batch, length), generator=g)
    # Distinct time scales per stream: gaps of ~0.5, ~2 and ~8 ms.
    scale = torch.tensor([0.5, 2.0, 8.0, 1.0])[:batch, None].to(dtype)
    dt = torch.rand(batch, length, generator=g, dtype=dtype) * scale
    dt[:, 0] = 0.25  # the first token at its own dt (the binning's first_dt)
    counts = torch.randint(1, 4, (batch, length), generator=g).float()
    return tokens, dt, counts


def reference_context(stage: ContextStage, e, tokens, dt, length):
    """The stage's definition, one token at a time, for one unpadded row: ``e`` (L, d) -> (L, d)."""
    w, h, p = stage.grid
    cfg = stage.config
    rx = cfg.radius if w > 1 else 0
    ry = cfg.radius if h > 1 else 0
    proj = stage.in_proj(e)
    hs = torch.nn.functional.silu(proj) if cfg.activation == "silu" else proj
    times = []
    t = 0.0
    for k in range(length):
        t += float(dt[k])
        times.append(t)
    out = []
    for i in range(length):
        tok = int(tokens[i])
        x, y = (tok // p) % w, (tok // p) // w
        feats = []
        for oy in range(-ry, ry + 1):
            for ox in range(-rx, rx + 1):
                for q in range(p):
                    nx, ny = x + ox * cfg.dilation, y + oy * cfg.dilation
                    value = torch.zeros(stage.channels, dtype=e.dtype)
                    if 0 <= nx < w and 0 <= ny < h:
                        want = (ny * w + nx) * p + q
                        for j in range(i, -1, -1):
                            if int(tokens[j]) == want:
                                value = hs[j] * math.exp(-(times[i] - times[j]) / cfg.tau)
                                break
                    feats.append(value)
        out.append(e[i] + stage.out_proj(torch.cat(feats)))
    return torch.stack(out) if out else e[:0]


# ------------------------------------------------------------------------------------------ neighbour search
def test_latest_match_agrees_with_a_plain_loop():
    g = torch.Generator().manual_seed(5)
    batch, length, vocab = 3, 40, 7
    ids = torch.randint(0, vocab, (batch, length), generator=g)
    ids[2, 25:] = vocab  # padding: an id outside the vocabulary
    q_ids = torch.randint(-1, vocab, (batch, 200), generator=g)
    q_pos = torch.randint(0, length, (batch, 200), generator=g)
    j, found = latest_match(sorted_keys(ids), q_ids, q_pos)
    for b in range(batch):
        for m in range(200):
            want = next((k for k in range(int(q_pos[b, m]), -1, -1) if int(ids[b, k]) == int(q_ids[b, m])), None)
            assert bool(found[b, m]) == (want is not None), (b, m)
            if want is not None:
                assert int(j[b, m]) == want, (b, m)


def test_neighbour_ids_follow_the_token_layout():
    cfg = ContextConfig(radius=1, dilation=2)
    offs = cfg.offsets(GRID)
    assert len(offs) == 9 and offs[0] == (-2, -2) and offs[4] == (0, 0)
    dx = torch.tensor([o[0] for o in offs for _ in range(2)])
    dy = torch.tensor([o[1] for o in offs for _ in range(2)])
    dp = torch.arange(2).repeat(9)
    tok = torch.tensor([(1 * 6 + 2) * 2 + 1])  # x=2, y=1, p=1
    got = neighbour_ids(tok, GRID, dx, dy, dp)[0].tolist()
    # Offsets with dy = -2 leave the grid (y = -1); (dx, dy) = (2, 2) is the cell (4, 3).
    assert got[:6] == [-1] * 6
    assert got[16:18] == [(3 * 6 + 4) * 2, (3 * 6 + 4) * 2 + 1]
    assert got[8:10] == [(1 * 6 + 2) * 2, (1 * 6 + 2) * 2 + 1]  # the token's own cell, both polarities
    assert ContextConfig(radius=2).offsets((10, 1, 2)) == [(-4, 0), (-2, 0), (0, 0), (2, 0), (4, 0)]


# ------------------------------------------------------------------------------------------ the stage itself
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("grid,cfg", [(GRID, CTX), ((12, 1, 2), {"radius": 2, "dilation": 1, "channels": 2,
                                                                  "tau": 3.0, "activation": "none"})])
def test_stage_forward_step_and_chunks_follow_the_definition(dtype, grid, cfg):
    torch.manual_seed(0)
    vocab = math.prod(grid)
    stage = ContextStage(grid, 8, cfg).to(dtype)
    batch, length = 3, 30
    tokens, dt, _ = random_stream(batch, length, vocab, dtype=dtype)
    # Few distinct cells, so that neighbours are found often.
    tokens = tokens % (vocab // 2)
    e = torch.randn(batch, length, 8, dtype=dtype)
    lengths = torch.tensor([30, 17, 1])
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    with torch.no_grad():
        out = stage(e, tokens, dt, lengths)
        for b in range(batch):
            n = int(lengths[b])
            want = reference_context(stage, e[b, :n], tokens[b, :n], dt[b, :n], n)
            assert rel_err(out[b, :n], want) < tol, b
        # Token by token.
        state = stage.allocate_state(batch)
        stepped = torch.stack([stage.step(e[:, k], tokens[:, k], dt[:, k], state) for k in range(length)], 1)
        assert rel_err(stepped, stage(e, tokens, dt)) < tol
        # Chunks of random sizes per row (0 included).
        g = torch.Generator().manual_seed(3)
        state = stage.allocate_state(batch)
        pos = torch.zeros(batch, dtype=torch.long)
        pieces = []
        while bool((pos < lengths).any()):
            n = torch.minimum(torch.randint(0, 6, (batch,), generator=g), lengths - pos)
            width = int(n.max())
            idx = (pos[:, None] + torch.arange(width)[None]).clamp_max(length - 1)
            got = stage.forward_chunk(e.gather(1, idx[..., None].expand(-1, -1, 8)), tokens.gather(1, idx),
                                      dt.gather(1, idx), n, state)
            for b in range(batch):
                pieces.append((b, int(pos[b]), got[b, : int(n[b])]))
            pos = pos + n
        for b, start, piece in pieces:
            if len(piece):
                assert rel_err(piece, out[b, start : start + len(piece)]) < tol, (b, start)


def test_padding_is_never_a_neighbour():
    torch.manual_seed(0)
    stage = ContextStage(GRID, 8, CTX)
    tokens, dt, _ = random_stream(2, 12, VOCAB)
    e = torch.randn(2, 12, 8)
    lengths = torch.tensor([12, 5])
    with torch.no_grad():
        out = stage(e, tokens, dt, lengths)
        tokens2, dt2, e2 = tokens.clone(), dt.clone(), e.clone()
        tokens2[1, 5:] = tokens2[1, 4]  # the same cell as the last real token, later
        dt2[1, 5:] = 1e6
        e2[1, 5:] = 100.0
        assert torch.equal(stage(e2, tokens2, dt2, lengths)[1, :5], out[1, :5])


def test_gradients_reach_both_projections_and_the_embeddings():
    torch.manual_seed(0)
    stage = ContextStage(GRID, 8, CTX)
    tokens, dt, _ = random_stream(2, 20, VOCAB)
    e = torch.randn(2, 20, 8, requires_grad=True)
    stage(e, tokens % 10, dt).square().sum().backward()
    for p in (stage.in_proj.weight, stage.out_proj.weight, e):
        assert p.grad is not None and p.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------ the classifier
def make_model(pool_stride=None, input_pool=1, embedding="factorised", grid=GRID, seed=0, context=CTX, **kw):
    torch.manual_seed(seed)
    model = EventClassifier(math.prod(grid), 4, d_model=16, n_layers=3, d_state=4, pool_stride=pool_stride,
                            input_pool=input_pool, embedding=embedding, grid=grid, context=context, **kw)
    with torch.no_grad():
        for layer in model.layers:
            layer.D.normal_()
        model.head.bias.normal_()
        model.context.out_proj.weight.mul_(3.0)  # make the context matter in the logits
    return model.eval()


POOLINGS = [(None, 1), ([2, 1], 1), ([1, 2], 3)]


@pytest.mark.parametrize("pool_stride,input_pool", POOLINGS)
def test_classifier_step_chunks_and_prefixes_equal_forward(pool_stride, input_pool):
    model = make_model(pool_stride, input_pool)
    tokens, dt, counts = random_stream(3, 24, VOCAB)
    tokens = tokens % 20  # the cells of the first two rows: many neighbours
    lengths = torch.tensor([24, 15, 1])
    batch, length = tokens.shape
    with torch.no_grad():
        rows = torch.arange(batch).repeat_interleave(length)
        ends = torch.arange(1, length + 1).repeat(batch)
        want = model(tokens[rows], dt[rows], counts[rows], ends).view(batch, length, -1)
        assert rel_err(model(tokens, dt, counts, lengths)[1], want[1, 14]) < 1e-5  # padding honoured
        cache = model.allocate_inference_cache(batch)
        for k in range(length):
            got = model.step(tokens[:, k], dt[:, k], cache, counts[:, k])
            assert rel_err(got, want[:, k]) < 1e-5, k
        q_ends = torch.tensor([[3, 11, 24], [1, 9, 15], [0, 1, 1]])
        got = model.forward_prefixes(tokens, dt, q_ends, counts, lengths, max_chunk=4)
        for b in range(batch):
            for q in range(3):
                if q_ends[b, q]:
                    assert rel_err(got[b, q], want[b, int(q_ends[b, q]) - 1]) < 1e-5, (b, q)
        # Chunks, then a reset: the cache starts a new stream.
        model.reset_inference_cache(cache)
        model.forward_chunk(tokens[:, :10], dt[:, :10], cache, counts[:, :10])
        got = model.forward_chunk(tokens[:, 10:], dt[:, 10:], cache, counts[:, 10:])
        assert rel_err(got, want[:, -1]) < 1e-5


@pytest.mark.parametrize("embedding,extra", [("table", {}), ("surface", {"surface": {"radius": 1}})])
def test_other_embeddings_and_a_1d_grid(embedding, extra):
    from evmamba.pipeline.surfaces import token_surfaces  # noqa: F401  (the surfaces come from the data)

    grid = (16, 1, 1)
    model = make_model(embedding=embedding, grid=grid, **extra)
    tokens, dt, counts = random_stream(2, 15, 16)
    surfaces = None
    if embedding == "surface":
        surfaces = torch.rand(2, 15, model.embedding.n_surface)
    with torch.no_grad():
        cache = model.allocate_inference_cache(2)
        for k in range(15):
            got = model.step(tokens[:, k], dt[:, k], cache, counts[:, k],
                             None if surfaces is None else surfaces[:, k])
        want = model(tokens, dt, counts, surfaces=surfaces)
    assert rel_err(got, want) < 1e-5
    assert model.context.n_neighbours == 3  # (2r+1) x 1 offsets, one polarity


DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.gpu,
                                pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]),
]


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("device", DEVICES)
def test_graph_stepper_runs_the_context_and_resets_rows(device, fused):
    """The classifier's step (on CUDA captured in a CUDA graph) and the one-kernel step (on the CPU through
    Triton's interpreter) with the context stage: the logits of the forward pass, and a reset row starts over."""
    from evmamba.streaming.gpu_step import GraphStepper

    if fused and device == "cpu" and torch.cuda.is_available():
        pytest.skip("the Triton interpreter is off on a machine with a CUDA device")
    model = make_model()
    tokens, dt, counts = random_stream(2, 12, VOCAB)
    stepper = GraphStepper(copy.deepcopy(model), n_streams=2, device=device, block=5, fused=fused)
    assert stepper.step_kind == ("fused" if fused else "unfused")
    if device == "cuda":  # the default there is the fused kernel, context stage included
        assert GraphStepper(copy.deepcopy(model), n_streams=2, device=device, block=5).step_kind == "fused"
    tol = 1e-4 if device == "cuda" and fused else 1e-5  # compiled, the kernel's exp2/log2 are approximate
    with torch.no_grad():
        want = model(tokens, dt, counts)
        got = stepper.run_batch(tokens.numpy(), dt.numpy(), counts.numpy())
        assert rel_err(torch.from_numpy(got[:, -1]), want) < tol
        stepper.reset(1)
        again = stepper.run_batch(tokens.numpy()[:, :4], dt.numpy()[:, :4], counts.numpy()[:, :4])
        assert rel_err(torch.from_numpy(again[1, -1]), model(tokens[1:, :4], dt[1:, :4], counts[1:, :4])[0]) < tol


def test_auto_gpu_step_of_one_stream_takes_the_graph_replays_for_the_context_stage(monkeypatch, capsys):
    """``evmamba stream --device cuda`` with one stream: the serving loop is slower than the fused step's graph
    replays for a model with the context stage (docs/benchmarks.md), so ``auto`` does not take it even where
    it runs; asked for by name, it is still served."""
    import evmamba.streaming.gpu_serve as gpu_serve
    from evmamba.cli.stream import gpu_stepper
    from evmamba.streaming.gpu_step import GraphStepper

    monkeypatch.setattr(gpu_serve, "serve_support", lambda model: None)  # as on a GPU machine
    stepper = gpu_stepper(make_model(), 1, "cpu", "auto", block=4)
    assert isinstance(stepper, GraphStepper)
    asked = []
    monkeypatch.setattr(gpu_serve, "ServeStepper", lambda model, device: asked.append(device) or stepper)
    assert gpu_stepper(make_model(), 1, "cpu", "serve") is stepper and asked == ["cpu"]
    plain = EventClassifier(VOCAB, 4, d_model=16, n_layers=2, d_state=4, embedding="factorised", grid=GRID)
    assert gpu_stepper(plain, 1, "cpu", "auto") is stepper and asked == ["cpu", "cpu"]  # no stage: served


# ------------------------------------------------------------------------------------------ the compiled CPU step
FAST_CASES = [
    dict(embedding="factorised"),
    dict(embedding="table", pool_stride=[2, 1]),
    dict(embedding="surface", surface={"radius": 1, "tau_us": [2000.0]}, pool_stride=[1, 2], input_pool=3,
         readout="dt_mean", context={**CTX, "channels": 6}),  # the kernel takes channels 4 at a time, then the rest
    # A 1-D grid (spike channels), no activation, adjacent cells.
    dict(embedding="factorised", grid=(16, 1, 1), pool_stride=[2, 1],
         context={"radius": 2, "dilation": 1, "channels": 2, "tau": 3.0, "activation": "none"}),
]


@torch.no_grad()
def step_reference(model, tokens, dt, counts, surfaces):
    """Per-token logits ``(L, n_classes)`` of one recording from the classifier's PyTorch step in float64."""
    ref = copy.deepcopy(model).double()
    cache = ref.allocate_inference_cache(1)
    rows = []
    for k in range(tokens.shape[0]):
        s = None if surfaces is None else surfaces[k : k + 1].double()
        rows.append(ref.step(tokens[k : k + 1], dt[k : k + 1].double(), cache, counts[k : k + 1].double(), s)[0])
    return torch.stack(rows).numpy()


@pytest.mark.parametrize("kw", FAST_CASES, ids=lambda kw: f"{kw['embedding']}-{kw.get('grid', GRID)}")
def test_fast_stepper_equals_the_classifier_step_token_by_token(kw):
    """The compiled CPU step of a context model: the logits after every token equal the float64 PyTorch step,
    for three recordings (different time scales), two interleaved on two streams and one after a reset."""
    import numpy as np

    from evmamba.streaming.fast_step import FastStepper

    model = make_model(**kw)
    vocab = model.vocab_size
    length = 30
    tokens, dt, counts = random_stream(3, length, vocab, seed=7)
    tokens = tokens % max(vocab // 3, 4)  # few cells: neighbours are found often
    dt[:, 5::7] = 0.0  # tokens of one time bin share a timestamp
    surfaces = torch.rand(3, length, model.embedding.n_surface) if model.surface_config is not None else None
    want = [step_reference(model, tokens[r], dt[r], counts[r], None if surfaces is None else surfaces[r])
            for r in range(3)]

    stepper = FastStepper(model, n_streams=2)

    def run(r, a, b, stream):
        s = None if surfaces is None else surfaces[r, a:b].numpy()
        return stepper.run(tokens[r, a:b].numpy(), dt[r, a:b].numpy(), counts[r, a:b].numpy().astype(np.int32),
                           stream=stream, surfaces=s).logits

    # Recordings 0 and 1 interleaved on streams 0 and 1, in uneven chunks; then stream 0 starts recording 2.
    got0, got1 = [], []
    for a, b in ((0, 1), (1, 13), (13, 14), (14, length)):
        got0.append(run(0, a, b, 0))
        got1.append(run(1, a, b, 1))
    stepper.reset(0)
    got2 = run(2, 0, length, 0)
    for r, got in enumerate((np.concatenate(got0), np.concatenate(got1), got2)):
        assert got.shape == want[r].shape
        err = np.abs(got - want[r]).max() / np.abs(want[r]).max()
        assert err < 1e-5, (r, err)
    # The context matters here: the same model without it gives other logits.
    plain = copy.deepcopy(model)
    plain.context = None
    other = FastStepper(plain).run(tokens[2].numpy(), dt[2].numpy(), counts[2].numpy().astype(np.int32),
                                   surfaces=None if surfaces is None else surfaces[2].numpy()).logits
    assert np.abs(other - want[2]).max() > 1e-2 * np.abs(want[2]).max()


# ------------------------------------------------------------------------------------------ configs
@pytest.mark.parametrize("values,match", [
    ({"radius": -1}, "'radius'"), ({"radius": 1.5}, "'radius'"), ({"dilation": 0}, "'dilation'"),
    ({"channels": 0}, "'channels'"), ({"tau": 0}, "'tau'"), ({"tau": "50"}, "'tau'"),
    ({"activation": "relu"}, "'activation'"), ({"radius:2": None}, "space after each colon"),
    ({"radiuss": 2}, "radiuss"),
])
def test_bad_context_values_are_named(values, match):
    with pytest.raises(ValueError, match=match):
        ClassifierConfig(embedding="factorised", grid=GRID, context=values)


def test_context_needs_a_grid_and_is_off_by_default():
    assert ClassifierConfig().context is None and EventClassifier(VOCAB, 3).context is None
    with pytest.raises(ValueError, match="'context' needs the token grid"):
        EventClassifier(VOCAB, 3, context=CTX)
    with pytest.raises(ValueError, match="has 60 cells but vocab_size is 61"):
        EventClassifier(VOCAB + 1, 3, embedding="table", grid=GRID, context=CTX)
    # A config's model section: the grid comes from the data, kept for the table embedding with a context.
    model = EventClassifier.from_config({"embedding": "table", "context": {}}, VOCAB, 3, grid=GRID)
    assert model.context.grid == GRID and model.architecture.context == ContextConfig()
    assert EventClassifier.from_config({"embedding": "table"}, VOCAB, 3, grid=GRID).architecture.grid is None


def test_dotted_overrides_turn_the_context_on_in_a_shipped_config():
    from evmamba.core.config import load_config
    from evmamba.training.sections import check_config

    cfg = load_config("nmnist_small", ["model.context.radius=1", "model.context.tau=30"])
    arch, _ = EventClassifier.parse_section(cfg.model)
    assert arch.context == ContextConfig(radius=1, tau=30.0, channels=32)  # the config's channels kept
    cfg = load_config("nmnist_small", ["model.context={radius: 3, dilation: 1}"])
    assert EventClassifier.parse_section(cfg.model)[0].context == ContextConfig(radius=3, dilation=1, channels=32)
    check_config(load_config("nmnist_small", ["model.context.channels=8"]))
    with pytest.raises(ValueError, match="'channels'"):
        check_config(load_config("nmnist_small", ["model.context.channels=0"]))


def test_checkpoint_round_trip(tmp_path):
    from evmamba.model.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint

    model = make_model()
    save_checkpoint({"model": model.state_dict(), "model_type": "event_mamba", "model_config": model.config,
                     "data": {"kind": "tokens", "n_classes": 4, "classes": list("abcd"), "sensor_size": [6, 5, 2],
                              "vocab_size": VOCAB, "grid": list(GRID)}, "config": {}}, tmp_path / "m.pt")
    ckpt = load_checkpoint(tmp_path / "m.pt")
    assert ckpt["model_config"]["context"] == {**CTX, "activation": "silu"}
    loaded, _ = model_from_checkpoint(ckpt)
    tokens, dt, counts = random_stream(2, 10, VOCAB)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(tokens, dt, counts), model(tokens, dt, counts))
    # A model without a context stage stores context: None and loads as before.
    assert EventClassifier(VOCAB, 3, embedding="factorised", grid=GRID).config["context"] is None
