"""The real-time loop: its logits are the classifier's on the binned tokens, replay follows the timestamps,
drops are counted exactly, recordings reset the state, decisions and Ctrl-C behave."""

from __future__ import annotations

import _thread
import math
import signal
import threading
import time

import numpy as np
import pytest
import torch

from evmamba.core.events import empty_events, make_events
from evmamba.datasets.paths import data_root
from evmamba.model.classifier import EventClassifier
from evmamba.pipeline.binning import BinningConfig, TokenSequence, bin_events, vocab_size
from evmamba.streaming.backlog import EventQueue
from evmamba.streaming.coarsen import Coarsener
from evmamba.streaming.fast_step import FastStepper
from evmamba.streaming.loop import LoopConfig, StreamLoop
from evmamba.streaming.sources import Chunk, Recording, RecordingSource

SENSOR = (128, 128, 2)
BINNING = BinningConfig(downsample=8, bin_us=5000)


def trial_events(name="1.bs2", ms=150):
    """The first ``ms`` milliseconds of a real DVS Gesture trial."""
    from evmamba.pipeline.readers import read_events

    path = data_root() / "dvsgesture_slayer_bs2" / name
    if not path.exists():
        pytest.skip(f"recording {path} is not available")
    ev, _ = read_events(path)
    return ev[ev["t"] < ev["t"][0] + ms * 1000]


def small_model(seed=0, **kw):
    torch.manual_seed(seed)
    return EventClassifier(vocab_size(SENSOR, BINNING), 5, d_model=16, n_layers=2, d_state=8, **kw).eval()


class Recorder:
    """A stepper wrapper that keeps every token it was given (and can be slowed down)."""

    def __init__(self, inner, delay=0.0, interrupt_after=None):
        self.inner, self.delay, self.interrupt_after = inner, delay, interrupt_after
        self.vocab_size = inner.vocab_size
        self.seen: list[TokenSequence] = []
        self.resets = 0

    def run(self, tokens, dt, counts, need=None, check=True):
        self.seen.append(TokenSequence(tokens.copy(), counts.copy(), dt.copy(), np.zeros(tokens.size, np.int64)))
        if self.interrupt_after is not None and len(self.seen) >= self.interrupt_after:
            raise KeyboardInterrupt
        if self.delay:
            time.sleep(self.delay)
        return self.inner.run(tokens, dt, counts, need, check=check)

    def reset(self):
        self.resets += 1
        self.inner.reset()


def run_loop(stepper, recordings, records=None, logits=None, **cfg):
    loop = StreamLoop(stepper, BINNING, SENSOR, [f"c{i}" for i in range(5)], LoopConfig(**cfg),
                      emit=None if records is None else records.append,
                      on_logits=None if logits is None else (lambda name, tok, lg: logits.append((name, tok, lg))))
    return loop.run(RecordingSource(recordings, SENSOR, chunk_us=1000))


# ---------------------------------------------------------------------------------------------- equivalence
def test_loop_logits_equal_classifier_forward_on_the_same_tokens():
    ev = trial_events()
    model = small_model()
    stepper = Recorder(FastStepper(model))
    logits: list = []
    summary = run_loop(stepper, [Recording("trial-1", lambda: ev)], logits=logits, speed=math.inf)
    offline = bin_events(ev, SENSOR, BINNING)
    fed = TokenSequence.concatenate(stepper.seen)
    for name in ("tokens", "counts", "dt"):
        np.testing.assert_array_equal(getattr(fed, name), getattr(offline, name), err_msg=name)
    after = np.concatenate([t for _, t, _ in logits])
    got = np.concatenate([lg for _, _, lg in logits])
    assert summary.tokens == offline.num_tokens and after[-1] == offline.num_tokens
    np.testing.assert_array_equal(after, np.arange(1, offline.num_tokens + 1))
    tok = torch.from_numpy(offline.tokens.astype(np.int64))[None]
    dt = torch.from_numpy(offline.dt)[None]
    cnt = torch.from_numpy(offline.counts.astype(np.float32))[None]
    with torch.no_grad():
        for k in (1, 17, offline.num_tokens // 2, offline.num_tokens):
            want = model(tok[:, :k], dt[:, :k], cnt[:, :k])[0].numpy()
            assert np.abs(got[k - 1] - want).max() / np.abs(want).max() < 1e-5, k


def test_surface_model_in_the_loop_equals_forward_with_offline_surfaces():
    """The loop keeps each stream's surfaces itself (chunk by chunk, reset per recording): its logits equal
    the classifier's forward pass on the offline tokens with their offline surfaces, for two recordings."""
    from evmamba.pipeline.binning import token_grid
    from evmamba.pipeline.surfaces import token_surfaces

    ev_a, ev_b = trial_events("1.bs2", 60), trial_events("2.bs2", 60)
    model = small_model(2, embedding="surface", grid=list(token_grid(SENSOR, BINNING)),
                        surface=dict(radius=2, tau_us=[5000.0], scales=[1, 4]))
    logits: list = []
    run_loop(FastStepper(model), [Recording("a", lambda: ev_a), Recording("b", lambda: ev_b)], logits=logits,
             speed=math.inf)
    for name, ev in (("a", ev_a), ("b", ev_b)):
        offline = bin_events(ev, SENSOR, BINNING)
        surf = token_surfaces(offline, token_grid(SENSOR, BINNING), model.surface_config)
        got = np.concatenate([lg for n, _, lg in logits if n == name])
        t = lambda a, dtype: torch.from_numpy(np.asarray(a)).to(dtype)[None]  # noqa: E731
        with torch.no_grad():
            for k in (1, offline.num_tokens // 3, offline.num_tokens):
                want = model(t(offline.tokens[:k], torch.long), t(offline.dt[:k], torch.float32),
                             t(offline.counts[:k], torch.float32), surfaces=t(surf[:k], torch.float32))[0].numpy()
                assert np.abs(got[k - 1] - want).max() / np.abs(want).max() < 1e-5, (name, k)


def test_context_model_in_the_loop_equals_forward_for_each_recording():
    """A model with the context stage (on the surface embedding, as the N-MNIST config has it) on the compiled
    CPU step: the loop's logits equal the classifier's forward pass on each recording's offline tokens, so the
    neighbour map starts empty for the second recording."""
    from evmamba.pipeline.binning import token_grid
    from evmamba.pipeline.surfaces import token_surfaces

    ev_a, ev_b = trial_events("1.bs2", 60), trial_events("2.bs2", 60)
    grid = list(token_grid(SENSOR, BINNING))
    model = small_model(3, embedding="surface", grid=grid, surface=dict(radius=1, tau_us=[5000.0]),
                        context=dict(radius=2, dilation=2, channels=4, tau=10.0), input_pool=2, pool_stride=2)
    with torch.no_grad():
        model.context.out_proj.weight.mul_(3.0)  # make the context matter in the logits
    logits: list = []
    run_loop(FastStepper(model), [Recording("a", lambda: ev_a), Recording("b", lambda: ev_b)], logits=logits,
             speed=math.inf)
    for name, ev in (("a", ev_a), ("b", ev_b)):
        offline = bin_events(ev, SENSOR, BINNING)
        surf = token_surfaces(offline, grid, model.surface_config)
        got = np.concatenate([lg for n, _, lg in logits if n == name])
        assert got.shape[0] == offline.num_tokens
        t = lambda a, dtype: torch.from_numpy(np.asarray(a)).to(dtype)[None]  # noqa: E731
        with torch.no_grad():
            for k in (1, 2, offline.num_tokens // 3, offline.num_tokens):
                want = model(t(offline.tokens[:k], torch.long), t(offline.dt[:k], torch.float32),
                             t(offline.counts[:k], torch.float32), surfaces=t(surf[:k], torch.float32))[0].numpy()
                assert np.abs(got[k - 1] - want).max() / np.abs(want).max() < 1e-5, (name, k)


def test_recordings_reset_the_state_and_each_gets_a_final_decision():
    ev_a, ev_b = trial_events("1.bs2", 60), trial_events("2.bs2", 60)
    model = small_model(1)
    records: list = []
    logits: list = []
    run_loop(FastStepper(model), [Recording("a", lambda: ev_a, 0), Recording("b", lambda: ev_b, 3)],
             records=records, logits=logits, speed=math.inf, report_every_us=0)
    finals = [r for r in records if r["type"] == "final"]
    assert [f["recording"] for f in finals] == ["a", "b"]
    assert finals[1]["true_class"] == 3 and isinstance(finals[1]["correct"], bool)
    alone: list = []
    run_loop(FastStepper(model), [Recording("b", lambda: ev_b)], logits=alone, speed=math.inf)
    b_in_pair = np.concatenate([lg for name, _, lg in logits if name == "b"])
    np.testing.assert_array_equal(b_in_pair, np.concatenate([lg for _, _, lg in alone]))
    preds = [r for r in records if r["type"] == "prediction" and r["recording"] == "a"]
    assert len(preds) == bin_events(ev_a, SENSOR, BINNING).num_tokens  # report_every_us=0: every token


def test_a_silence_gap_ends_the_recording():
    a = trial_events("1.bs2", 40)
    b = a.copy()
    b["t"] += int(a["t"][-1] - a["t"][0]) + 300_000  # 300 ms of silence, then the same events again
    joined = np.concatenate([a, b])
    records: list = []
    run_loop(FastStepper(small_model()), [Recording("joined", lambda: joined)], records=records,
             speed=math.inf, reset_gap_us=200_000)
    finals = [r for r in records if r["type"] == "final"]
    assert len(finals) == 2
    assert finals[0]["events"] == a.size and finals[1]["events"] == b.size
    assert finals[0]["class"] == finals[1]["class"] and finals[0]["confidence"] == pytest.approx(
        finals[1]["confidence"]
    )


def test_early_decision_once_confidence_holds_for_k_tokens():
    ev = trial_events("3.bs2", 60)
    records: list = []
    run_loop(FastStepper(small_model()), [Recording("r", lambda: ev)], records=records, speed=math.inf,
             early_threshold=0.1, early_tokens=7)  # the top class of 5 has p >= 0.2: the run reaches 7 at token 7
    early = [r for r in records if r["type"] == "early"]
    assert len(early) == 1 and early[0]["tokens"] == 7
    none: list = []
    run_loop(FastStepper(small_model()), [Recording("r", lambda: ev)], records=none, speed=math.inf,
             early_threshold=1.5)
    assert not [r for r in none if r["type"] == "early"]


# ---------------------------------------------------------------------------------------------- pacing
def synthetic_stream(duration_us=300_000, every_us=500):
    t = np.arange(0, duration_us + 1, every_us, dtype=np.int64)
    rng = np.random.default_rng(0)
    return make_events(rng.integers(0, 128, t.size), rng.integers(0, 128, t.size), t, rng.integers(0, 2, t.size))


@pytest.mark.parametrize("speed", [1.0, 3.0])
def test_replay_follows_the_timestamps(speed):
    ev = synthetic_stream()
    summary = run_loop(FastStepper(small_model()), [Recording("s", lambda: ev)], speed=speed)
    want = 0.3 / speed
    assert want * 0.7 <= summary.wall_s <= want * 1.3 + 0.02
    assert summary.events == ev.size and summary.dropped_events == 0
    assert summary.latency.n == summary.tokens  # every token has a latency


def test_max_speed_does_not_wait():
    ev = synthetic_stream()
    summary = run_loop(FastStepper(small_model()), [Recording("s", lambda: ev)], speed=math.inf)
    assert summary.wall_s < 0.15


# ---------------------------------------------------------------------------------------------- backlog
def chunk(n, t0=0, **flags):
    t = t0 + np.arange(n, dtype=np.int64)
    return Chunk(make_events(np.zeros(n), np.zeros(n), t, np.zeros(n)), **flags)


def test_drop_oldest_counts_every_dropped_event():
    q = EventQueue(capacity=100, policy="drop_oldest")
    q.put(chunk(30, 0, new_recording=True))
    for i in range(1, 5):
        q.put(chunk(30, 100 * i))
    assert q.dropped_events == 50 and q.backlog == 100 and q.high_water == 100
    q.put(chunk(250, 1000, end=True))  # larger than the whole queue: only its newest 100 events stay
    assert q.dropped_events == 50 + 100 + 150
    items = q.get_all()
    # The dropped first chunk started the recording: its marker stays, without events.
    assert items[0].new_recording and items[0].n_events == 0
    kept = np.concatenate([c.events["t"] for c in items if c.n_events])
    np.testing.assert_array_equal(kept, 1000 + np.arange(150, 250))
    assert items[-1].end


def test_block_waits_for_the_consumer():
    q = EventQueue(capacity=50, policy="block")
    q.put(chunk(40))
    done = threading.Event()
    th = threading.Thread(target=lambda: (q.put(chunk(40, 100)), done.set()), daemon=True)
    th.start()
    time.sleep(0.1)
    assert not done.is_set()  # no room: the producer waits
    assert q.get().n_events == 40
    assert done.wait(2.0) and q.dropped_events == 0


def test_loop_with_slow_compute_drops_exactly_what_it_does_not_process():
    ev = trial_events("4.bs2", 300)
    stepper = Recorder(FastStepper(small_model()), delay=0.02)
    summary = run_loop(stepper, [Recording("r", lambda: ev)], speed=4.0, policy="drop_oldest", queue_events=3000)
    assert summary.dropped_events > 0
    assert summary.events + summary.dropped_events == ev.size
    assert summary.queue_high_water <= 3000


def test_coarsen_merges_a_backlog_into_wider_bins_without_losing_events():
    ev = trial_events("4.bs2", 300)
    stepper = Recorder(FastStepper(small_model()), delay=0.02)
    summary = run_loop(stepper, [Recording("r", lambda: ev)], speed=4.0, policy="coarsen", queue_events=3000,
                       coarse_us=20_000)
    assert summary.dropped_events == 0 and summary.events == ev.size
    assert summary.coarsened_events > 0 and summary.tokens_merged > 0
    fed = TokenSequence.concatenate(stepper.seen)
    assert int(fed.counts.sum()) == ev.size  # every event reached the classifier, in fewer tokens


def test_coarse_merge_equals_binning_with_the_wider_bin():
    ev = trial_events("2.bs2", 200)
    fine = bin_events(ev, SENSOR, BINNING)
    wide = bin_events(ev, SENSOR, BinningConfig(downsample=8, bin_us=20_000))
    merged = Coarsener(vocab_size(SENSOR, BINNING), 20_000, 1000.0).merge(fine, int(ev["t"][0]))
    for name in TokenSequence._fields:
        np.testing.assert_array_equal(getattr(merged, name), getattr(wide, name), err_msg=name)


# ---------------------------------------------------------------------------------------------- Ctrl-C
@pytest.fixture
def python_handles_sigint():
    """SIGINT raises KeyboardInterrupt during the test, also where the suite runs as a background job (whose
    SIGINT is ignored, which makes ``_thread.interrupt_main`` do nothing)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_stops_the_loop_and_keeps_the_summary(python_handles_sigint):
    ev = synthetic_stream(2_000_000)
    timer = threading.Timer(0.3, _thread.interrupt_main)  # what Ctrl-C does: KeyboardInterrupt in the main thread
    records: list = []
    timer.start()
    try:
        summary = run_loop(FastStepper(small_model()), [Recording("s", lambda: ev)], records=records, speed=1.0)
    finally:
        timer.cancel()
    assert summary.interrupted
    duration_s = (int(ev["t"][-1]) - int(ev["t"][0])) / 1e6
    assert 0 < summary.events < ev.size and summary.wall_s < duration_s  # stopped before the stream's end
    assert [r["type"] for r in records if r["type"] == "final"] == ["final"]  # the partial recording's decision
    assert summary.to_dict()["interrupted"] is True


def test_empty_recording_gives_a_final_line_without_a_class():
    records: list = []
    run_loop(FastStepper(small_model()), [Recording("empty", empty_events)], records=records, speed=math.inf)
    (final,) = [r for r in records if r["type"] == "final"]
    assert final["class"] is None and final["events"] == 0
