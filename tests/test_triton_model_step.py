"""The one-kernel step of a whole classifier (:mod:`evmamba.kernels.triton_model_step`) against
``EventClassifier.step`` of a float64 copy of the model, token by token: logits after every token and the
committed layer states, for each embedding, norm, readout, discretization, standard and event mode, with and
without pooling, several streams with their own gaps. Without a GPU the kernel runs on Triton's interpreter
(tiny models); the ``gpu`` variants run it compiled at 64 and 4 096 streams and through the CUDA graph."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

pytest.importorskip("triton")

from evmamba.kernels import triton_model_step as T  # noqa: E402
from evmamba.model.classifier import EventClassifier  # noqa: E402
from evmamba.streaming.gpu_step import GraphStepper, fused_support, pack  # noqa: E402

CUDA = torch.cuda.is_available()
GPU = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs a CUDA device")]
GRID = [5, 4, 2]
VOCAB = 40
SURFACE = dict(radius=1, tau_us=[3000.0], scales=[1])
# Compiled, the kernel uses the approximate exp2/log2 instructions (as the layer step does); the interpreter
# computes exactly in float32.
TOL = 1e-4 if CUDA else 1e-5

# name -> classifier settings (d_model 16, d_state 8 unless given): every embedding, pooling 1 and 4,
# 2 or 3 layers, each readout, both norms, all four discretizations, event and standard mode.
CONFIGS = {
    "table-mean-zoh": dict(embedding="table", n_layers=2, readout="mean", discretization="zoh"),
    "factorised-pool4-last-layernorm-bilinear": dict(embedding="factorised", n_layers=3, pool_stride=[4, 1],
                                                     readout="last", norm="layer", discretization="bilinear"),
    "surface-inputpool2-pool4-dtmean-mamba": dict(embedding="surface", surface=SURFACE, surface_hidden=12,
                                                  n_layers=2, input_pool=2, pool_stride=4, readout="dt_mean",
                                                  discretization="mamba"),
    "surface-linear-standard-dirac-pool4-last": dict(embedding="surface", surface=SURFACE, surface_hidden=0,
                                                     n_layers=3, pool_stride=4, readout="last",
                                                     discretization="dirac", event_mode=False, count_feature=False),
    # The context stage: neighbours inside and outside the grid, the token's own cell, ids seen and not yet.
    "surface-context-inputpool2-pool2": dict(embedding="surface", surface=SURFACE, surface_hidden=12, n_layers=2,
                                             input_pool=2, pool_stride=2,
                                             context={"radius": 1, "dilation": 1, "channels": 6, "tau": 2.0}),
    "table-context-linear-dilation2-last": dict(embedding="table", n_layers=2, readout="last",
                                                context={"radius": 2, "dilation": 2, "channels": 5, "tau": 0.7,
                                                         "activation": "none"}),
}


def make_model(seed=0, **kw) -> EventClassifier:
    torch.manual_seed(seed)
    kw = {"d_model": 16, "d_state": 8, "grid": GRID, **kw}
    m = EventClassifier(VOCAB, 7, **kw).eval()
    with torch.no_grad():  # away from the initialisation (unit norms, zero biases, D = 1)
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def make_inputs(model, batch, length, seed=1):
    """Token ids, per-stream gaps (distinct, some zero), counts and local surfaces (random features: the
    kernel does not care how they were made), as (B, L) / (B, L, F) tensors."""
    g = torch.Generator().manual_seed(seed)
    tok = torch.randint(0, VOCAB, (batch, length), generator=g)
    dt = torch.rand(batch, length, generator=g) * 3 * (torch.arange(batch)[:, None] + 1) / batch
    dt[torch.rand(batch, length, generator=g) < 0.2] = 0.0
    dt[:, 0] = 0.0
    cnt = torch.randint(1, 6, (batch, length), generator=g).float()
    n_surface = model.embedding.n_surface if model.embedding.needs_surfaces else 0
    surf = torch.rand(batch, length, n_surface, generator=g) if n_surface else None
    return tok, dt, cnt, surf


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    assert torch.isfinite(a).all(), "non-finite values (an unwritten output?)"
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@torch.no_grad()
def check_against_step(model, batch, length, device, block_streams=None, tol=TOL, seed=1):
    """Run the fused kernel ``length`` times (it advances its own position) next to the float64 classifier's
    ``step``; compare every token's logits and, at the end, the committed layer states."""
    dev = torch.device(device)
    ref = copy.deepcopy(model).double().to(dev)
    tok, dt, cnt, surf = (None if t is None else t.to(dev) for t in make_inputs(model, batch, length, seed))
    w = pack(model, dev)
    state = T.allocate_state(w, batch, dev)
    inputs = T.pack_inputs(tok, dt, cnt, surf)
    pos = torch.zeros(1, dtype=torch.long, device=dev)
    counter = torch.zeros(1, dtype=torch.int32, device=dev)
    logits = torch.full((batch, length, model.n_classes), float("nan"), device=dev)  # poisoned
    cache = ref.allocate_inference_cache(batch, dtype=torch.float64, device=dev)
    for i in range(length):
        T.model_step_triton(w, state, inputs, pos, logits, counter, block_streams=block_streams)
        want = ref.step(tok[:, i], dt[:, i].double(), cache, cnt[:, i].double(),
                        None if surf is None else surf[:, i].double())
        assert rel(logits[:, i], want) < tol, f"token {i}: {rel(logits[:, i], want):.2e}"
    assert int(pos) == length and int(counter) == 0
    for li in range(model.n_layers):
        committed = cache["layers"][li]
        assert rel(state["ssm"][:, li], committed["lrnn_state"].transpose(1, 2)) < tol, f"layer {li} state"
        assert rel(state["conv"][:, li], committed["conv_state"].transpose(1, 2)) < tol, f"layer {li} conv"
    if model.context is not None:  # the neighbour map: every id's latest projected embedding and its time
        ctx = cache["context"]
        assert rel(state["ctx_h"], ctx["h"][:, :VOCAB]) < tol and rel(state["ctx_now"], ctx["now"]) < 1e-12
        assert torch.equal(state["ctx_t"], ctx["t"][:, :VOCAB])


@pytest.mark.parametrize("batch", [1, 3, 5])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_fused_step_equals_classifier_step(name, batch):
    check_against_step(make_model(**CONFIGS[name]), batch, 9, "cuda" if CUDA else "cpu")


@pytest.mark.parametrize("name", ["table-mean-zoh", "surface-inputpool2-pool4-dtmean-mamba",
                                  "table-context-linear-dilation2-last"])
def test_blocks_of_streams_through_tl_dot(name):
    """16 streams per program (the ``tl.dot`` path) with 5 real streams: the padded rows stay out."""
    check_against_step(make_model(**CONFIGS[name]), 5, 9, "cuda" if CUDA else "cpu", block_streams=16)


def test_a_single_token():
    check_against_step(make_model(**CONFIGS["factorised-pool4-last-layernorm-bilinear"]), 3, 1,
                       "cuda" if CUDA else "cpu")


def test_pack_refuses_what_the_kernel_does_not_serve():
    with pytest.raises(ValueError, match="d_state"):
        pack(make_model(d_state=T.MAX_D_STATE + 1), "cpu")
    with pytest.raises(ValueError, match="d_conv"):
        pack(make_model(d_conv=T.MAX_D_CONV + 1), "cpu")
    big = EventClassifier(1 << 24, 3, d_model=8, n_layers=1, d_state=4, embedding="factorised",
                          grid=[4096, 4096, 1])
    with pytest.raises(ValueError, match="vocab_size"):
        pack(big, "cpu")
    with pytest.raises(TypeError, match="EventClassifier"):
        pack(torch.nn.Linear(2, 2), "cpu")
    assert fused_support(make_model()) is None
    # Asking the stepper for the fused step of such a model is an error, not a silent fallback.
    with pytest.raises(ValueError, match="fused step was asked for.*d_state"):
        GraphStepper(make_model(d_state=T.MAX_D_STATE + 1), 1, device="cpu", fused=True)


def test_warps_per_program_are_checked():
    dev = "cuda" if CUDA else "cpu"
    model = make_model(**CONFIGS["table-mean-zoh"])
    w = pack(model, dev)
    state = T.allocate_state(w, 2, dev)
    tok, dt, cnt, _ = make_inputs(model, 2, 1)
    logits = torch.zeros(2, 1, model.n_classes, device=dev)
    with pytest.raises(ValueError, match="num_warps must be 1, 2, 4, 8 or 16; got 3"):
        T.model_step_triton(w, state, T.pack_inputs(tok, dt, cnt).to(dev), torch.zeros(1, dtype=torch.long,
                            device=dev), logits, num_warps=3)


def stepper_devices():
    # The eager "cpu" form of the fused stepper needs Triton's interpreter, which conftest switches on only on
    # machines without a CUDA device.
    on_interpreter = pytest.mark.skipif(CUDA, reason="the Triton interpreter is off on this machine")
    return [pytest.param("cpu", marks=on_interpreter), pytest.param("cuda", marks=GPU)]


@pytest.mark.parametrize("device", stepper_devices())
@torch.no_grad()
def test_graph_stepper_fused_mode_with_a_row_reset(device):
    """The stepper's fused mode (one kernel per replay, blocks of 4 tokens): lockstep streams, one of them
    reset midway, each gives its own classifier-step logits."""
    model = make_model(**CONFIGS["surface-inputpool2-pool4-dtmean-mamba"])
    tok, dt, cnt, surf = (t.numpy() for t in make_inputs(model, 3, 10))
    g = GraphStepper(copy.deepcopy(model), 3, device=device, block=4, fused=True)
    assert g.step_kind == "fused"
    first = g.run_batch(tok[:, :6], dt[:, :6], cnt[:, :6], surfaces=surf[:, :6])
    g.reset(1)
    second = g.run_batch(tok[:, 6:], dt[:, 6:], cnt[:, 6:], surfaces=surf[:, 6:])

    def reference(b, start):
        ref = copy.deepcopy(model).double()
        cache = ref.allocate_inference_cache(1, dtype=torch.float64)
        rows = [ref.step(torch.tensor(tok[b, i:i + 1]), torch.tensor(dt[b, i:i + 1]).double(), cache,
                         torch.tensor(cnt[b, i:i + 1]).double(), torch.tensor(surf[b, i:i + 1]).double())[0]
                for i in range(start, 10)]
        return torch.stack(rows)

    for b in (0, 2):
        assert rel(torch.from_numpy(np.concatenate([first[b], second[b]])), reference(b, 0)) < TOL
    assert rel(torch.from_numpy(second[1]), reference(1, 6)) < TOL


def test_the_default_step_on_the_cpu_is_the_classifier_step():
    assert GraphStepper(make_model(), 1, device="cpu").step_kind == "unfused"
    assert GraphStepper(make_model(), 1, device="cpu", fused=False).fallback_reason == "fused=False"


# --------------------------------------------------------------------------------------------- GPU only
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("batch", [64, 4096])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_fused_step_on_the_gpu_at_many_streams(name, batch):
    check_against_step(make_model(**CONFIGS[name]), batch, 12, "cuda", tol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("name", list(CONFIGS))
def test_tl_dot_blocks_again_and_again(name):
    """The running states are read, updated and written back by one program, and with ``tl.dot`` layouts the
    threads that write an element are not those that read it: without a barrier between the two, the H200
    corrupted the committed readout sums now and then (3 runs in 4 at token 8 of 9). A race shows only
    sometimes, so the check runs twenty times on fresh inputs."""
    model = make_model(**CONFIGS[name])
    for seed in range(20):
        check_against_step(model, 5, 10, "cuda", block_streams=16, seed=seed)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("batch", [1, 64])
def test_fused_step_of_a_shipped_size_on_the_gpu(batch):
    """The DVS Gesture checkpoint's architecture (d_model 32, d_state 16, surface MLP 50 -> 64 -> 32)."""
    model = make_model(d_model=32, d_state=16, n_layers=2, embedding="surface",
                       surface=dict(radius=2, tau_us=[20000.0], scales=[1]), surface_hidden=64)
    check_against_step(model, batch, 12, "cuda", tol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("batch", [1, 64])
@torch.no_grad()
def test_graph_replays_equal_the_classifier_step(batch):
    """The captured graph of the one launch, replayed over three blocks, against the float64 step."""
    model = make_model(**CONFIGS["factorised-pool4-last-layernorm-bilinear"])
    tok, dt, cnt, _ = make_inputs(model, batch, 20)
    g = GraphStepper(copy.deepcopy(model), batch, device="cuda", block=8, fused=True)
    assert g.step_kind == "fused" and g.graph is not None
    got = torch.from_numpy(g.run_batch(tok.numpy(), dt.numpy(), cnt.numpy()))
    ref = copy.deepcopy(model).double().cuda()
    cache = ref.allocate_inference_cache(batch, dtype=torch.float64, device="cuda")
    for i in range(20):
        want = ref.step(tok[:, i].cuda(), dt[:, i].double().cuda(), cache, cnt[:, i].double().cuda())
        assert rel(got[:, i], want) < 1e-4, f"token {i}"


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("batch", [1, 3])
@torch.no_grad()
def test_records_and_logits_in_pinned_host_memory(batch):
    """Zero-copy: the kernel reads its records from, and writes its logits to, pinned host memory -- the same
    logits as with device buffers, token after token (distinct gaps per stream), and the float64 step's."""
    model = make_model(**CONFIGS["surface-inputpool2-pool4-dtmean-mamba"])
    tok, dt, cnt, surf = make_inputs(model, batch, 10)
    w = pack(model, "cuda")
    runs = []
    for host in (False, True):
        state = T.allocate_state(w, batch, "cuda")
        inputs = T.pack_inputs(tok, dt, cnt, surf)
        logits = torch.full((batch, 10, model.n_classes), float("nan"))
        inputs, logits = (inputs.pin_memory(), logits.pin_memory()) if host else (inputs.cuda(), logits.cuda())
        pos = torch.zeros(1, dtype=torch.long, device="cuda")
        counter = torch.zeros(1, dtype=torch.int32, device="cuda")
        for _ in range(10):
            T.model_step_triton(w, state, inputs, pos, logits, counter)
        torch.cuda.synchronize()
        runs.append(logits.cpu())
    assert torch.equal(runs[0], runs[1])
    ref = copy.deepcopy(model).double().cuda()
    cache = ref.allocate_inference_cache(batch, dtype=torch.float64, device="cuda")
    for i in range(10):
        want = ref.step(tok[:, i].cuda(), dt[:, i].double().cuda(), cache, cnt[:, i].double().cuda(),
                        surf[:, i].double().cuda())
        assert rel(runs[1][:, i], want) < 1e-4, f"token {i}"
    with pytest.raises(ValueError, match="logits must be on cuda:0 or in pinned host memory"):
        T.model_step_triton(w, state, inputs, pos, torch.zeros(batch, 10, model.n_classes), counter)


@torch.no_grad()
def test_concurrent_streams_feed_the_fused_step_records():
    """``concurrent.run_gpu`` with the fused stepper (input records made once): each stream's final decision
    is the float64 classifier step's on its recording."""
    from evmamba.pipeline.binning import TokenSequence
    from evmamba.streaming import concurrent

    model = make_model(**CONFIGS["table-mean-zoh"])
    binned = []
    for seed, n in ((5, 7), (6, 4)):
        tok, dt, cnt, _ = make_inputs(model, 1, n, seed)
        binned.append(concurrent.Binned(f"r{seed}", None, TokenSequence(tok[0].numpy(), cnt[0].numpy().astype(np.int32),
                                                                         dt[0].numpy(), np.zeros(n, np.int64)),
                                        int(cnt.sum()), 0))
    g = GraphStepper(copy.deepcopy(model), 3, device="cuda" if CUDA else "cpu", block=4, fused=True)
    result = concurrent.run_gpu(g, binned, 3)
    for rec, b in zip(result["per_stream"], (binned[0], binned[1], binned[0])):
        ref = copy.deepcopy(model).double()
        cache = ref.allocate_inference_cache(1, dtype=torch.float64)
        seq = b.seq
        for i in range(seq.num_tokens):
            last = ref.step(torch.tensor(seq.tokens[i:i + 1], dtype=torch.long), torch.tensor(seq.dt[i:i + 1]).double(),
                            cache, torch.tensor(seq.counts[i:i + 1]).double())[0]
        probs = torch.softmax(last, 0)
        assert rec["recording"] == b.name and rec["class"] == int(probs.argmax())
        assert rec["confidence"] == pytest.approx(float(probs.max()), rel=TOL)
