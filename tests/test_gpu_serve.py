"""The resident serving loop (:func:`evmamba.kernels.triton_model_step.model_serve_triton`) and its stepper
(:class:`evmamba.streaming.gpu_serve.ServeStepper`) against the float64 ``EventClassifier.step``: chunks of
one token, of several, longer than the ring, with tokens asked for and not, and a reset between recordings.
Without a GPU the loop runs on Triton's interpreter (one synchronous launch per piece of a chunk); the ``gpu``
tests run it resident, with the host publishing tokens while it runs."""

from __future__ import annotations

import copy
import gc

import numpy as np
import pytest
import torch

pytest.importorskip("triton")

from test_triton_model_step import CONFIGS, make_inputs, make_model, rel  # noqa: E402

from evmamba.kernels import triton_model_step as T  # noqa: E402
from evmamba.streaming.gpu_serve import ServeStepper  # noqa: E402
from evmamba.streaming.gpu_step import GraphStepper, pack  # noqa: E402
from evmamba.streaming.steppers import Stepper  # noqa: E402

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
GPU = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs a CUDA device")]
TOL = 1e-4 if CUDA else 1e-5


@torch.no_grad()
def reference(model, tok, dt, cnt, surf, start=0):
    """The float64 classifier step of one stream from a zero state over tokens ``start ..``: (T, C)."""
    ref = copy.deepcopy(model).double().cpu()
    cache = ref.allocate_inference_cache(1, dtype=torch.float64)
    rows = []
    for i in range(start, tok.shape[0]):
        s = None if surf is None else torch.as_tensor(surf[i:i + 1]).double()
        rows.append(ref.step(torch.as_tensor(tok[i:i + 1]), torch.as_tensor(dt[i:i + 1]).double(), cache,
                             torch.as_tensor(cnt[i:i + 1]).double(), s)[0])
    return torch.stack(rows)


def one_stream(model, length, seed=1):
    tok, dt, cnt, surf = make_inputs(model, 1, length, seed)
    return tok[0].numpy(), dt[0].numpy(), cnt[0].numpy(), None if surf is None else surf[0].numpy()


def run_chunks(stepper, tok, dt, cnt, surf, sizes, need_every=1):
    """Feed the stream in chunks of ``sizes``; returns the logits of every ``need_every``-th token of each
    chunk and its last (what the stream loop asks for), with their positions in the stream."""
    got, where, s = [], [], 0
    for size in sizes:
        e = s + size
        need = np.zeros(size, bool)
        need[::need_every] = True
        need[-1] = True
        out = stepper.run(tok[s:e], dt[s:e], cnt[s:e], need, surfaces=None if surf is None else surf[s:e])
        assert np.array_equal(out.index, np.flatnonzero(need))
        got.append(out.logits)
        where.append(s + out.index)
        s = e
    return np.concatenate(got), np.concatenate(where)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_serving_equals_the_classifier_step(name):
    """Chunks of 1, 3, 9 (longer than the ring of 4: published half a ring at a time) and 2 tokens, every
    second token asked for, then a reset and a new recording."""
    model = make_model(**CONFIGS[name])
    tok, dt, cnt, surf = one_stream(model, 15)
    with ServeStepper(copy.deepcopy(model), DEV, ring=4) as s:
        assert isinstance(s, Stepper) and s.step_kind == "serve"
        got, where = run_chunks(s, tok, dt, cnt, surf, [1, 3, 9, 2], need_every=2)
        assert rel(torch.from_numpy(got), reference(model, tok, dt, cnt, surf)[where]) < TOL
        s.reset()
        got, where = run_chunks(s, tok[5:], dt[5:], cnt[5:], None if surf is None else surf[5:], [4, 6])
        assert rel(torch.from_numpy(got), reference(model, tok, dt, cnt, surf, start=5)[where]) < TOL


@torch.no_grad()
def test_the_loop_serves_several_streams_in_lockstep():
    """``model_serve_triton`` at 3 streams (one program, records staged per stream) from a preset stop: the
    published tokens in two launches that continue from ``start``, each stream with its own gaps."""
    model = make_model(**CONFIGS["surface-inputpool2-pool4-dtmean-mamba"])
    tok, dt, cnt, surf = make_inputs(model, 3, 7)
    w = pack(model, DEV)
    state = T.allocate_state(w, 3, DEV)
    records = T.pack_inputs(tok, dt, cnt, surf)
    pin = (lambda t: t.pin_memory()) if CUDA else (lambda t: t)  # noqa: E731
    ring, inp = 4, pin(torch.zeros(3, 4, w.record, dtype=torch.long))
    logits = pin(torch.full((3, 4, model.n_classes), float("nan")))
    ctrl, done = pin(torch.zeros(1, dtype=torch.long)), pin(torch.zeros(1, dtype=torch.long))
    stage = torch.zeros(3, w.record, device=DEV)
    ref = copy.deepcopy(model).double()
    cache = ref.allocate_inference_cache(3, dtype=torch.float64)
    for first, end in ((0, 4), (4, 7)):
        for t in range(first, end):
            inp[:, t % ring] = torch.from_numpy(T.tag_records(records[:, t].numpy()[None], t)[0])
        ctrl[0] = -end - 1
        T.model_serve_triton(w, state, inp, logits, ctrl, done, stage, start=first)
        if CUDA:
            torch.cuda.synchronize()
        assert int(done[0]) == end
        for t in range(first, end):
            want = ref.step(tok[:, t], dt[:, t].double(), cache, cnt[:, t].double(), surf[:, t].double())
            assert rel(logits[:, t % ring], want) < TOL, f"token {t}"


def test_nothing_asked_and_empty_chunks():
    model = make_model(**CONFIGS["table-mean-zoh"])
    tok, dt, cnt, _ = one_stream(model, 6)
    s = ServeStepper(copy.deepcopy(model), DEV, ring=2)
    empty = s.run(tok[:0], dt[:0], cnt[:0])
    assert empty.logits.shape == (0, model.n_classes) and empty.index.shape == (0,)
    none = s.run(tok[:5], dt[:5], cnt[:5], np.zeros(5, bool))
    assert none.logits.shape == (0, model.n_classes)
    last = s.run(tok[5:], dt[5:], None)  # counts default to 1
    cnt1 = cnt.copy()
    cnt1[5] = 1.0
    assert rel(torch.from_numpy(last.logits), reference(model, tok, dt, cnt1, None)[5:]) < TOL
    s.close()
    s.close()  # idempotent


def test_arguments_are_checked():
    model = make_model(**CONFIGS["surface-inputpool2-pool4-dtmean-mamba"])
    with pytest.raises(ValueError, match="'ring' must be an int >= 2; got 1"):
        ServeStepper(model, DEV, ring=1)
    with pytest.raises(ValueError, match="'num_warps' must be 1, 2, 4, 8 or 16; got 3"):
        ServeStepper(model, DEV, num_warps=3)
    with pytest.raises(ValueError, match="'timeout_s' must be a positive"):
        ServeStepper(model, DEV, timeout_s=0)
    with pytest.raises(ValueError, match="fused step does not serve this model: .*d_state"):
        ServeStepper(make_model(d_state=128), DEV)
    s = ServeStepper(copy.deepcopy(model), DEV, ring=4)
    tok, dt, cnt, surf = one_stream(model, 3)
    with pytest.raises(ValueError, match="serves one stream"):
        s.run(tok, dt, cnt, stream=1, surfaces=surf)
    with pytest.raises(ValueError, match=r"ids outside \[0, 40\)"):
        s.run(tok + 100, dt, cnt, surfaces=surf)
    with pytest.raises(ValueError, match=r"surfaces of shape \(3, 18\); got None"):
        s.run(tok, dt, cnt)
    with pytest.raises(ValueError, match="'dt' and 'counts' must have the tokens' shape"):
        s.run(tok, dt[:2], cnt, surfaces=surf)
    with pytest.raises(ValueError, match="serves one stream"):
        s.reset(1)
    w = pack(model, DEV)
    state = T.allocate_state(w, 1, DEV)
    host = lambda *shape, **kw: torch.zeros(*shape, **kw).pin_memory() if CUDA else torch.zeros(*shape, **kw)  # noqa: E731
    inp = host(1, 4, w.record, dtype=torch.long)
    lo = host(1, 4, model.n_classes)
    count = lambda: host(1, dtype=torch.long)  # noqa: E731
    stage = torch.zeros(1, w.record, device=DEV)
    with pytest.raises(ValueError, match="ctrl must be a \\(1,\\) int64 tensor; got torch.int32"):
        T.model_serve_triton(w, state, inp, lo, torch.zeros(1, dtype=torch.int32), count(), stage)
    with pytest.raises(ValueError, match="inputs must be int64 with a contiguous last axis; got torch.float32"):
        T.model_serve_triton(w, state, host(1, 4, w.record), lo, count(), count(), stage)
    with pytest.raises(ValueError, match="stage must be a contiguous float32 tensor of shape \\(1, 21\\)"):
        T.model_serve_triton(w, state, inp, lo, count(), count(), torch.zeros(1, 20, device=DEV))
    big = T.allocate_state(w, 17, DEV)
    with pytest.raises(ValueError, match="at most 16 streams"):
        T.model_serve_triton(w, big, host(17, 4, w.record, dtype=torch.long), host(17, 4, model.n_classes),
                             count(), count(), torch.zeros(17, w.record, device=DEV))


def test_on_the_cpu_only_under_the_interpreter(monkeypatch):
    from evmamba.kernels import triton_primitives

    monkeypatch.setattr(triton_primitives, "INTERPRETING", False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        ServeStepper(make_model(), "cpu")


# --------------------------------------------------------------------------------------------- GPU only
@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@torch.no_grad()
def test_resident_loop_over_many_ring_turns_equals_the_graph_step():
    """3 000 tokens of the DVS Gesture checkpoint's architecture through a ring of 8, one token per call for
    the first 200 (the latency case), then chunks of 1-300: every token's logits equal the graph stepper's
    (the same arithmetic, another kernel) and the float64 step's."""
    model = make_model(d_model=32, d_state=16, n_layers=2, embedding="surface",
                       surface=dict(radius=2, tau_us=[20000.0], scales=[1]), surface_hidden=64)
    tok, dt, cnt, surf = one_stream(model, 3000, seed=3)
    rng = np.random.default_rng(0)
    sizes = [1] * 200
    while sum(sizes) < 3000:
        sizes.append(int(min(rng.integers(1, 300), 3000 - sum(sizes))))
    with ServeStepper(copy.deepcopy(model), "cuda", ring=8) as s:
        got, where = run_chunks(s, tok, dt, cnt, surf, sizes)
    assert np.array_equal(where, np.arange(3000))
    g = GraphStepper(copy.deepcopy(model), 1, device="cuda", fused=True, block=512)
    want = g.run_batch(tok[None], dt[None], cnt[None], surfaces=surf[None])[0]
    assert rel(torch.from_numpy(got), torch.from_numpy(want)) < 1e-5
    assert rel(torch.from_numpy(got[:300]), reference(model, tok[:300], dt[:300], cnt[:300], surf[:300])) < 1e-4


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_the_loop_ends_so_the_device_can_synchronise():
    """close(), a reset, ``with`` and garbage collection each end the resident loop: afterwards the whole
    device synchronises (it would wait forever on a loop left running), and a new run starts a new loop."""
    model = make_model(**CONFIGS["table-mean-zoh"])
    tok, dt, cnt, _ = one_stream(model, 4)
    s = ServeStepper(copy.deepcopy(model), "cuda", ring=4)
    s.run(tok, dt, cnt)
    s.close()
    torch.cuda.synchronize()
    s.run(tok, dt, cnt)
    s.reset()
    torch.cuda.synchronize()
    a = s.run(tok, dt, cnt).logits
    s.reset()
    b = s.run(tok, dt, cnt).logits
    assert np.array_equal(a, b)  # a reset starts the recording again
    del s
    gc.collect()
    torch.cuda.synchronize()
    with ServeStepper(copy.deepcopy(model), "cuda", ring=4) as s2:
        s2.run(tok, dt, cnt)
    torch.cuda.synchronize()


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_rings_must_be_pinned_on_the_gpu():
    model = make_model(**CONFIGS["table-mean-zoh"])
    w = pack(model, "cuda")
    state = T.allocate_state(w, 1, "cuda")
    pinned = lambda *shape, **kw: torch.zeros(*shape, **kw).pin_memory()  # noqa: E731
    stage = torch.zeros(1, w.record, device="cuda")
    with pytest.raises(ValueError, match="inputs must be in pinned host memory .*; got unpinned host memory"):
        T.model_serve_triton(w, state, torch.zeros(1, 4, w.record, dtype=torch.long), pinned(1, 4, model.n_classes),
                             pinned(1, dtype=torch.long), pinned(1, dtype=torch.long), stage)
    with pytest.raises(ValueError, match="done must be in pinned host memory .*; got cuda:0"):
        T.model_serve_triton(w, state, pinned(1, 4, w.record, dtype=torch.long), pinned(1, 4, model.n_classes),
                             pinned(1, dtype=torch.long), torch.zeros(1, dtype=torch.long, device="cuda"), stage)


def test_record_words_carry_the_value_and_the_tag():
    """A tagged word holds the float32 value's exact bits low and ``t % (2**31 - 1) + 1`` high (never 0, what a
    fresh ring holds), as the kernel decodes them."""
    vals = np.array([[3.0, -0.0, 1e-30], [np.inf, 7.5, -2.25]], np.float32)
    words = T.tag_records(vals, 2**31 - 2)
    assert words.dtype == np.int64 and words.shape == (2, 3)
    assert np.array_equal((words & 0xFFFFFFFF).astype(np.uint32).view(np.float32).view(np.uint32),
                          vals.view(np.uint32))
    assert np.array_equal(words >> 32, [[2**31 - 1] * 3, [1] * 3])
    assert T.record_tag(0) == 1 and T.record_tag(2**31 - 1) == 1
    mark = np.array([T.LOGITS_MARK], np.uint32).view(np.float32)
    with np.errstate(invalid="ignore"):
        assert np.isnan(mark[0]) and (mark * 1.0).view(np.uint32)[0] != T.LOGITS_MARK  # arithmetic quietens it


def test_a_slot_written_before_a_reset_is_not_served_again():
    """Tags keep counting over resets: the next token after a reset is the new one. (On a GPU the new loop is
    launched before the host writes that token's record; were tags to restart at 0, the loop would find the
    last loop's first record in slot 0 already carrying the tag it waits for.)"""
    model = make_model(**CONFIGS["table-mean-zoh"])
    tok, dt, cnt, _ = one_stream(model, 6)
    with ServeStepper(copy.deepcopy(model), DEV, ring=4) as s:
        first = s.run(tok[:1], dt[:1], cnt[:1]).logits
        s.reset()
        again = s.run(tok[3:4], dt[3:4], cnt[3:4]).logits
    want = reference(model, tok, dt, cnt, None, start=3)[:1]
    assert rel(torch.from_numpy(again), want) < TOL
    assert not np.array_equal(first, again)


def test_with_and_without_the_fence_the_logits_are_the_same():
    """The per-token fence (``release``) only changes when the logits reach the host, not what they are."""
    model = make_model(**CONFIGS["table-mean-zoh"])
    tok, dt, cnt, _ = one_stream(model, 7)
    got = []
    for release in (True, False):
        with ServeStepper(copy.deepcopy(model), DEV, ring=4, release=release) as s:
            assert s.release is release
            got.append(run_chunks(s, tok, dt, cnt, None, [1, 6])[0])
    assert np.array_equal(got[0], got[1])
    assert rel(torch.from_numpy(got[0]), reference(model, tok, dt, cnt, None)) < TOL
