"""The graph stepper (fused step in a CUDA graph) gives the classifier's own ``step`` logits, at batch 1 and
for many lockstep streams with per-stream resets. Its bookkeeping is also checked eagerly on the CPU."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from evmamba.model.classifier import EventClassifier
from evmamba.streaming.gpu_step import GraphStepper

CUDA = torch.cuda.is_available()
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs a CUDA device")]),
]


def model(**kw):
    torch.manual_seed(0)
    m = EventClassifier(64, 6, d_model=16, n_layers=2, d_state=8, **kw).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def tokens(n, seed):
    rng = np.random.default_rng(seed)
    dt = (rng.random(n) * 2).astype(np.float32)
    dt[0] = 0
    return rng.integers(0, 64, n).astype(np.int32), dt, rng.integers(1, 4, n).astype(np.int32)


@torch.no_grad()
def reference(m, tok, dt, cnt) -> np.ndarray:
    """Per-token logits of ``EventClassifier.step`` on the CPU, one token per call."""
    m = m.to("cpu")
    cache = m.allocate_inference_cache(1)
    rows = [m.step(torch.tensor(tok[i:i + 1], dtype=torch.long), torch.tensor(dt[i:i + 1]), cache,
                   torch.tensor(cnt[i:i + 1], dtype=torch.float32))[0] for i in range(tok.size)]
    return torch.stack(rows).numpy()


def rel_err(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kw", [{}, {"pool_stride": 2, "readout": "dt_mean"}])
def test_batch1_logits_equal_the_classifier_step(device, kw):
    tok, dt, cnt = tokens(40, 1)
    want = reference(model(**kw), tok, dt, cnt)
    g = GraphStepper(model(**kw), 1, device=device, block=16)  # 40 tokens = 3 blocks
    got = np.concatenate([g.run(tok[:25], dt[:25], cnt[:25]).logits, g.run(tok[25:], dt[25:], cnt[25:]).logits])
    assert rel_err(got, want) < 1e-4


@pytest.mark.parametrize("device", DEVICES)
def test_lockstep_streams_with_a_row_reset(device):
    seqs = [tokens(30, s) for s in (2, 3, 4)]
    g = GraphStepper(model(), 3, device=device, block=8)
    stack = lambda i, a, b: np.stack([s[i][a:b] for s in seqs])  # noqa: E731
    first = g.run_batch(stack(0, 0, 12), stack(1, 0, 12), stack(2, 0, 12))
    g.reset(1)  # stream 1 starts over with the rest of its tokens as a new recording
    second = g.run_batch(stack(0, 12, 30), stack(1, 12, 30), stack(2, 12, 30))
    for b in (0, 2):
        assert rel_err(np.concatenate([first[b], second[b]]), reference(model(), *seqs[b])) < 1e-4
    tok, dt, cnt = seqs[1]
    assert rel_err(second[1], reference(model(), tok[12:], dt[12:], cnt[12:])) < 1e-4


@pytest.mark.parametrize("device", DEVICES)
def test_concurrent_streams_give_each_recording_its_own_decision(device):
    from evmamba.pipeline.binning import TokenSequence
    from evmamba.streaming import concurrent

    binned = []
    for s, n in ((5, 23), (6, 9), (7, 16)):
        tok, dt, cnt = tokens(n, s)
        binned.append(concurrent.Binned(f"r{s}", None, TokenSequence(tok, cnt, dt, np.zeros(n, np.int64)),
                                        int(cnt.sum()), 0))
    result = concurrent.run_gpu(GraphStepper(model(), 4, device=device, block=8), binned, 4)  # stream 3 replays r5
    assert result["padding_tokens"] == 4 * 23 - (23 + 9 + 16 + 23)
    assert result["events"] == sum(b.n_events for b in binned) + binned[0].n_events
    by_name = {b.name: b.seq for b in binned}
    for rec in result["per_stream"]:
        seq = by_name[rec["recording"]]
        last = reference(model(), seq.tokens, seq.dt, seq.counts)[-1].astype(np.float64)
        probs = np.exp(last - last.max()) / np.exp(last - last.max()).sum()
        assert rec["class"] == int(probs.argmax())
        assert rec["confidence"] == pytest.approx(float(probs.max()), rel=1e-4)


def test_cpu_streams_take_turns_with_their_own_state():
    from evmamba.pipeline.binning import TokenSequence
    from evmamba.streaming import concurrent
    from evmamba.streaming.fast_step import FastStepper

    binned = []
    for s, n in ((5, 23), (6, 9)):
        tok, dt, cnt = tokens(n, s)
        binned.append(concurrent.Binned(f"r{s}", None, TokenSequence(tok, cnt, dt, np.zeros(n, np.int64)),
                                        int(cnt.sum()), 0))
    result = concurrent.run_cpu(FastStepper(model(), n_streams=3), binned, 3, chunk=4)
    assert [r["recording"] for r in result["per_stream"]] == ["r5", "r6", "r5"]
    assert result["per_stream"][0]["confidence"] == result["per_stream"][2]["confidence"]
    last = reference(model(), binned[1].seq.tokens, binned[1].seq.dt, binned[1].seq.counts)[-1].astype(np.float64)
    probs = np.exp(last - last.max()) / np.exp(last - last.max()).sum()
    assert result["per_stream"][1]["confidence"] == pytest.approx(float(probs.max()), rel=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_loop_on_the_gpu_matches_the_eager_loop():
    from evmamba.core.events import make_events
    from evmamba.pipeline.binning import BinningConfig
    from evmamba.streaming.loop import LoopConfig, StreamLoop
    from evmamba.streaming.sources import Recording, RecordingSource

    rng = np.random.default_rng(0)
    n = 3000
    ev = make_events(rng.integers(0, 32, n), rng.integers(0, 16, n), np.sort(rng.integers(0, 200_000, n)),
                     rng.integers(0, 2, n))
    binning = BinningConfig(downsample=2, bin_us=5000)  # a 16x8x2 grid: 256 ids
    finals = []
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        m = EventClassifier(256, 6, d_model=16, n_layers=2, d_state=8).eval()
        out = []
        loop = StreamLoop(GraphStepper(m, 1, device=device), binning, (32, 16, 2), list("abcdef"),
                          LoopConfig(speed=math.inf), emit=out.append)
        summary = loop.run(RecordingSource([Recording("r", lambda: ev)], (32, 16, 2)))
        finals.append([r for r in out if r["type"] == "final"][0])
        assert summary.events == n
    assert finals[0]["class"] == finals[1]["class"]
    assert finals[0]["confidence"] == pytest.approx(finals[1]["confidence"], rel=1e-4)


def surface_model():
    return model(embedding="surface", grid=[8, 4, 2], surface=dict(radius=1, tau_us=[3000.0], scales=[1, 2]))


def surface_tokens(n, seed):
    """Tokens, gaps and counts with their local surfaces (times rebuilt from the gaps, in ms)."""
    from evmamba.pipeline.binning import TokenSequence
    from evmamba.pipeline.surfaces import SurfaceConfig, token_surfaces

    tok, dt, cnt = tokens(n, seed)
    t_us = np.cumsum(dt.astype(np.float64) * 1000).astype(np.int64)
    seq = TokenSequence(tok, cnt, dt, t_us)
    return tok, dt, cnt, token_surfaces(seq, (8, 4, 2), SurfaceConfig(radius=1, tau_us=[3000.0], scales=[1, 2]))


@torch.no_grad()
def surface_reference(m, tok, dt, cnt, surf) -> np.ndarray:
    m = m.to("cpu")
    cache = m.allocate_inference_cache(1)
    rows = [m.step(torch.tensor(tok[i:i + 1], dtype=torch.long), torch.tensor(dt[i:i + 1]), cache,
                   torch.tensor(cnt[i:i + 1], dtype=torch.float32), torch.from_numpy(surf[i:i + 1]))[0]
            for i in range(tok.size)]
    return torch.stack(rows).numpy()


@pytest.mark.parametrize("device", DEVICES)
def test_surface_embedding_in_lockstep_streams(device):
    """The graph stepper with the "surface" embedding: three streams with their own tokens, gaps and surfaces
    give each stream's own classifier-step logits (run in two blocks), and batch 1 through ``run`` too."""
    seqs = [surface_tokens(30, s) for s in (2, 3, 4)]
    g = GraphStepper(surface_model(), 3, device=device, block=8)
    stack = lambda i: np.stack([s[i] for s in seqs])  # noqa: E731
    got = g.run_batch(stack(0), stack(1), stack(2), surfaces=stack(3))
    for b in range(3):
        assert rel_err(got[b], surface_reference(surface_model(), *seqs[b])) < 1e-4, f"stream {b}"
    one = GraphStepper(surface_model(), 1, device=device, block=16)
    tok, dt, cnt, surf = seqs[1]
    got1 = np.concatenate([one.run(tok[:20], dt[:20], cnt[:20], surfaces=surf[:20]).logits,
                           one.run(tok[20:], dt[20:], cnt[20:], surfaces=surf[20:]).logits])
    assert rel_err(got1, surface_reference(surface_model(), *seqs[1])) < 1e-4
    with pytest.raises(ValueError, match="needs surfaces"):
        g.run_batch(stack(0), stack(1), stack(2))
