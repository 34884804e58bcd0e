"""Feeding the fused GPU step time-major and double-buffered (``GraphStepper(overlap=True)`` and
``run_records(time_major=True)``): the very same logits as the batch-major feed and the float64 classifier
step, block after block (T a multiple of the block or not, shorter than a block, one token), several streams
with their own gaps, with and without local surfaces. Without a GPU it runs synchronously on Triton's
interpreter (tiny models, the helpers of tests/test_triton_model_step.py); the ``gpu`` variants run it through
the captured graphs and the copy streams at 256 streams."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

pytest.importorskip("triton")

from test_triton_model_step import CONFIGS, CUDA, TOL, make_inputs, make_model, rel  # noqa: E402

from evmamba.kernels import triton_model_step as T  # noqa: E402
from evmamba.streaming import concurrent  # noqa: E402
from evmamba.streaming.gpu_step import GraphStepper, pack  # noqa: E402

GPU = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs a CUDA device")]
# The interpreter path needs the interpreter, which conftest switches on only without a CUDA device.
ON_INTERPRETER = pytest.mark.skipif(CUDA, reason="the Triton interpreter is off on this machine")
NO_SURFACE, SURFACE = "table-mean-zoh", "surface-inputpool2-pool4-dtmean-mamba"


@torch.no_grad()
def float64_logits(model, tok, dt, cnt, surf) -> np.ndarray:
    """Every token's logits ``(B, T, C)`` of a float64 copy of ``model``'s ``step``, all streams at once."""
    ref = copy.deepcopy(model).double().cpu()
    cache = ref.allocate_inference_cache(tok.shape[0], dtype=torch.float64)
    rows = [ref.step(tok[:, i], dt[:, i].double(), cache, cnt[:, i].double(),
                     None if surf is None else surf[:, i].double()) for i in range(tok.shape[1])]
    return torch.stack(rows, 1).numpy()


def compare_feeds(model, batch: int, lengths, device: str, block: int, seed: int = 1, tol: float = TOL):
    """For each length: the batch-major feed and the overlapped time-major feed of one stepper (reset in
    between) give identical logits, and those are the float64 step's (inputs are prefixes of one draw)."""
    tok, dt, cnt, surf = make_inputs(model, batch, max(lengths), seed)
    want = float64_logits(model, tok, dt, cnt, surf)
    g = GraphStepper(copy.deepcopy(model), batch, device=device, block=block, fused=True, overlap=True)
    assert g.overlap and g.step_kind == "fused"
    for t in lengths:
        part = (tok[:, :t], dt[:, :t], cnt[:, :t], None if surf is None else surf[:, :t])
        g.reset()
        batch_major = g.run_records(T.pack_inputs(*part))
        g.reset()
        time_major = g.run_records(T.pack_inputs_time_major(*part, pin_memory=g.graphed), time_major=True)
        assert time_major.shape == (batch, t, model.n_classes)
        np.testing.assert_array_equal(time_major, batch_major, err_msg=f"T={t}")
        assert rel(torch.from_numpy(np.ascontiguousarray(time_major)), torch.from_numpy(want[:, :t])) < tol, f"T={t}"
    return g


# ------------------------------------------------------------------------------------------------ layout
def test_time_major_records_are_the_batch_major_records_transposed():
    model = make_model(**CONFIGS[SURFACE])
    tok, dt, cnt, surf = make_inputs(model, 3, 5)
    for parts in ((tok, dt, cnt, surf), (tok, dt, None, None), (tok.numpy(), dt.numpy(), cnt.numpy(), surf.numpy())):
        got = T.pack_inputs_time_major(*parts)
        want = T.pack_inputs(*(None if p is None else torch.as_tensor(p) for p in parts))
        assert got.shape == (5, 3, want.shape[-1]) and got.is_contiguous()
        assert torch.equal(got, want.transpose(0, 1))
    with pytest.raises(ValueError, match="'dt' must start with the tokens' shape"):
        T.pack_inputs_time_major(tok, dt[:, :4])
    with pytest.raises(ValueError, match="'surfaces' must have 3 dimensions"):
        T.pack_inputs_time_major(tok, dt, cnt, surf[0])


@torch.no_grad()
def test_the_kernel_reads_and_writes_time_major_buffers_through_their_strides():
    """The same launches on batch-major buffers and on time-major buffers passed as transposed views: the same
    logits and states, bit for bit."""
    model = make_model(**CONFIGS[SURFACE])
    dev = "cuda" if CUDA else "cpu"
    tok, dt, cnt, surf = (t.to(dev) for t in make_inputs(model, 3, 4))
    w = pack(model, dev)
    runs = []
    for time_major in (False, True):
        state = T.allocate_state(w, 3, dev)
        pos = torch.zeros(1, dtype=torch.long, device=dev)
        counter = torch.zeros(1, dtype=torch.int32, device=dev)
        if time_major:
            inputs = T.pack_inputs_time_major(tok.cpu(), dt.cpu(), cnt.cpu(), surf.cpu()).to(dev).transpose(0, 1)
            logits = torch.full((4, 3, model.n_classes), float("nan"), device=dev).transpose(0, 1)
        else:
            inputs = T.pack_inputs(tok, dt, cnt, surf)
            logits = torch.full((3, 4, model.n_classes), float("nan"), device=dev)
        for _ in range(4):
            T.model_step_triton(w, state, inputs, pos, logits, counter)
        runs.append((logits.contiguous(), state))
    assert torch.isfinite(runs[0][0]).all()
    assert torch.equal(runs[0][0], runs[1][0])
    for key in runs[0][1]:
        assert torch.equal(runs[0][1][key], runs[1][1][key]), key


# ------------------------------------------------------------------------------------- stepper, interpreter
@ON_INTERPRETER
@pytest.mark.parametrize("name", [NO_SURFACE, SURFACE])
def test_overlapped_feed_equals_the_batch_major_feed_and_the_float64_step(name):
    """Three streams, blocks of 4: 9 tokens (two full blocks and one of 1), 3 (less than a block), 1."""
    compare_feeds(make_model(**CONFIGS[name]), 3, (9, 3, 1), "cpu", block=4)


@ON_INTERPRETER
@torch.no_grad()
def test_overlapped_feed_into_a_given_buffer_and_without_copy_out():
    model = make_model(**CONFIGS[NO_SURFACE])
    tok, dt, cnt, _ = make_inputs(model, 2, 6, seed=3)
    g = GraphStepper(copy.deepcopy(model), 2, device="cpu", block=4, fused=True, overlap=True)
    rec = T.pack_inputs_time_major(tok, dt, cnt)
    batch_major = g.run_records(T.pack_inputs(tok, dt, cnt))
    state = {k: v.clone() for k, v in g.cache.items()}
    g.reset()
    out = g.host_logits(6)
    got = g.run_records(rec, time_major=True, out=out)
    assert np.shares_memory(got, out.numpy())
    np.testing.assert_array_equal(got, batch_major)
    g.reset()
    assert g.run_records(rec, copy_out=False, time_major=True) is None
    for key, v in state.items():  # the streams advanced all the same
        assert torch.equal(g.cache[key], v), key


@ON_INTERPRETER
def test_overlap_refuses_what_it_cannot_feed():
    model = make_model(**CONFIGS[NO_SURFACE])
    tok, dt, cnt, _ = make_inputs(model, 2, 3)
    rec = T.pack_inputs_time_major(tok, dt, cnt)
    plain = GraphStepper(copy.deepcopy(model), 2, device="cpu", block=4, fused=True)
    assert not plain.overlap
    with pytest.raises(ValueError, match="overlap=True"):
        plain.run_records(rec, time_major=True)
    with pytest.raises(ValueError, match="overlap=True feeds the fused step"):
        GraphStepper(copy.deepcopy(model), 2, device="cpu", overlap=True)  # the CPU default is the unfused step
    with pytest.raises(ValueError, match="'overlap' must be None, True or False"):
        GraphStepper(copy.deepcopy(model), 2, device="cpu", fused=True, overlap="yes")
    g = GraphStepper(copy.deepcopy(model), 2, device="cpu", block=4, fused=True, overlap=True)
    with pytest.raises(ValueError, match=r"records must be float32 of shape \(T, 2, 3\)"):
        g.run_records(T.pack_inputs(tok, dt, cnt), time_major=True)  # batch-major (2, 3, 3)
    with pytest.raises(ValueError, match=r"out must be .* \(3, 2, 7\)"):
        g.run_records(rec, time_major=True, out=g.host_logits(4))
    with pytest.raises(ValueError, match="'out' is for time_major=True"):
        g.run_records(T.pack_inputs(tok, dt, cnt), out=g.host_logits(3))
    with pytest.raises(ValueError, match="overlap=True needs"):
        concurrent.run_gpu(plain, [], 2, overlap=True)


def binned_recordings(model, spec):
    from evmamba.pipeline.binning import TokenSequence

    binned = []
    for seed, n in spec:
        tok, dt, cnt, surf = make_inputs(model, 1, n, seed)
        seq = TokenSequence(tok[0].numpy(), cnt[0].numpy().astype(np.int32), dt[0].numpy(), np.zeros(n, np.int64))
        binned.append(concurrent.Binned(f"r{seed}", None, seq, int(cnt.sum()), 0,
                                        None if surf is None else surf[0].numpy()))
    return binned


def compare_run_gpu(model, n_streams, spec, device, block):
    """``concurrent.run_gpu`` both ways on one stepper: the same decisions, and the result says which feeding
    ran (a stepper that overlaps is fed overlapped unless told otherwise)."""
    binned = binned_recordings(model, spec)
    g = GraphStepper(copy.deepcopy(model), n_streams, device=device, block=block, fused=True, overlap=True)
    plain = concurrent.run_gpu(g, binned, n_streams, overlap=False)
    over = concurrent.run_gpu(g, binned, n_streams)
    assert (plain["feed"], over["feed"]) == ("batch-major", "time-major-overlap")
    assert over["per_stream"] == plain["per_stream"]
    assert (over["events"], over["tokens"], over["padding_tokens"]) == (
        plain["events"], plain["tokens"], plain["padding_tokens"])
    return plain


@ON_INTERPRETER
def test_concurrent_streams_fed_overlapped_reach_the_same_decisions():
    result = compare_run_gpu(make_model(**CONFIGS[SURFACE]), 3, ((5, 7), (6, 4)), "cpu", block=4)
    assert [r["recording"] for r in result["per_stream"]] == ["r5", "r6", "r5"]


# --------------------------------------------------------------------------------------------- GPU only
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("name", list(CONFIGS))
def test_overlapped_feed_through_the_graphs_at_256_streams(name):
    """256 streams, blocks of 8 through the two captured graphs and the copy streams: 83 tokens (11 blocks,
    the last of 3: every buffer pair reused several times), 20, 5 (less than a block) and 1."""
    compare_feeds(make_model(**CONFIGS[name]), 256, (83, 20, 5, 1), "cuda", block=8, tol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_overlapped_feed_of_a_shipped_size_many_times():
    """The DVS Gesture architecture (surface MLP 50 -> 64 -> 32) at 512 streams, blocks of 16; a race between
    the copies and the replays would show only now and then, so five fresh draws."""
    model = make_model(d_model=32, d_state=16, n_layers=2, embedding="surface",
                       surface=dict(radius=2, tau_us=[20000.0], scales=[1]), surface_hidden=64)
    for seed in range(5):
        compare_feeds(model, 512, (100,), "cuda", block=16, seed=seed, tol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_many_fused_streams_on_the_gpu_overlap_by_default():
    model = make_model(**CONFIGS[SURFACE])
    many = GraphStepper(copy.deepcopy(model), 64, device="cuda", block=8)
    assert many.step_kind == "fused" and many.overlap
    one = GraphStepper(copy.deepcopy(model), 1, device="cuda", block=8)  # batch 1 is the latency path
    assert one.step_kind == "fused" and not one.overlap
    unfused = GraphStepper(copy.deepcopy(model), 64, device="cuda", block=8, fused=False)
    assert not unfused.overlap
    binned = binned_recordings(model, ((5, 9), (6, 4)))
    assert concurrent.run_gpu(many, binned, 64)["feed"] == "time-major-overlap"
    assert concurrent.run_gpu(unfused, binned, 64)["feed"] == "arrays"


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_concurrent_streams_fed_overlapped_on_the_gpu():
    compare_run_gpu(make_model(**CONFIGS[SURFACE]), 256, ((5, 30), (6, 17), (7, 9)), "cuda", block=8)


def test_graph_warm_up_runs_start_at_the_first_position():
    """A captured step advances its own position; its warm-up runs must each start at 0 (a block of fewer
    positions than warm-up runs would otherwise be run past), and the captured run must not reset it."""
    from evmamba.streaming.gpu_step import _at_first_position

    pos = torch.zeros(1, dtype=torch.long)
    seen = []

    def step():
        seen.append(int(pos))
        pos.add_(1)

    run = _at_first_position(pos, 3, step)
    for _ in range(5):
        run()
    assert seen == [0, 0, 0, 1, 2]
