"""A recording's logits over time (``evmamba view``'s panel) equal what the stream loop computes, token for
token, and are stamped with the time the loop would have them."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from evmamba.datasets.paths import require_data
from evmamba.pipeline.binning import bin_events
from evmamba.pipeline.readers import read_events
from evmamba.render.panel import ProbabilityPanel
from evmamba.streaming.fast_step import FastStepper
from evmamba.streaming.loading import load_stream_model
from evmamba.streaming.loop import LoopConfig, StreamLoop
from evmamba.streaming.probabilities import logits_over_time
from evmamba.streaming.sources import RecordingSource, file_recordings

CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "nmnist_small.pt"


@pytest.fixture(scope="module")
def model():
    return load_stream_model(CHECKPOINT)


@pytest.fixture(scope="module")
def recording(model):
    path = require_data("format_samples", "tonic_test_data", "sample_nmnist.bin")
    events, _ = read_events(path, model.sensor_size)
    return path, events


def test_logits_equal_the_stream_loop_token_for_token(model, recording):
    path, events = recording
    seen = {}

    def on_logits(name, tokens_after, logits):
        for k, row in zip(tokens_after.tolist(), logits):
            seen[k] = row.copy()

    stepper = FastStepper(model.model)
    loop = StreamLoop(stepper, model.binning, model.sensor_size, model.classes,
                      LoopConfig(speed=math.inf, predictions=False), on_logits=on_logits)
    loop.run(RecordingSource(file_recordings([path], model.sensor_size), model.sensor_size, chunk_us=1000))
    lot = logits_over_time(model, events)
    n_tokens = bin_events(events, model.sensor_size, model.binning).num_tokens
    assert lot.tokens.tolist() == list(range(1, n_tokens + 1)) == sorted(seen)
    loop_logits = np.stack([seen[k] for k in lot.tokens.tolist()])
    np.testing.assert_allclose(lot.logits, loop_logits, rtol=1e-5, atol=1e-6)
    assert lot.events[-1] == events.size and lot.classes == model.classes


def test_rows_are_stamped_with_the_end_of_their_time_bin(model, recording):
    _, events = recording
    lot = logits_over_time(model, events)
    seq = bin_events(events, model.sensor_size, model.binning)
    t0, last = int(events["t"][0]), int(events["t"][-1])
    b = model.binning.bin_us  # 20 ms bins, aligned to the first event; the last bin closes with the recording
    want = np.minimum(((seq.t - t0) // b + 1) * b, last - t0)
    assert np.array_equal(lot.t_us, want)
    assert lot.duration_us == last - t0
    # the latest row at a moment holds only tokens released by then
    assert lot.index_at(-1) == -1 and lot.index_at(lot.t_us[0]) >= 0
    assert lot.index_at(last - t0) == len(lot.t_us) - 1


def test_every_keeps_every_nth_row_and_the_last(model, recording):
    _, events = recording
    full = logits_over_time(model, events)
    some = logits_over_time(model, events, every=7)
    n = len(full.tokens)
    want = [k for k in range(1, n + 1) if k % 7 == 0] + ([n] if n % 7 else [])
    assert some.tokens.tolist() == want
    np.testing.assert_allclose(some.logits, full.logits[np.asarray(want) - 1], rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="'every'"):
        logits_over_time(model, events, every=0)


def test_events_outside_the_model_sensor_are_refused(model):
    from evmamba.core.events import make_events

    with pytest.raises(ValueError, match="field 'x'"):
        logits_over_time(model, make_events([40], [0], [0], [1]), source="probe")


def test_panel_shows_the_latest_decision_and_nothing_before_the_first_token():
    times = np.array([1000, 2000, 3000])
    probs = np.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8]])
    panel = ProbabilityPanel(times, probs, ["a", "b", "c"], duration_us=4000, height=260, top_k=3)
    assert panel.decision(999) is None
    assert panel.decision(1000) == (0, 0.6) and panel.decision(2999) == (1, 0.7) and panel.decision(9000) == (2, 0.8)
    # curve colours by rank of each class's highest probability: c (0.8), b (0.7), a (0.6)
    assert panel.curve_classes == [2, 1, 0]
    before, after = panel.render(500), panel.render(4000)
    assert before.shape == after.shape == (260, 300, 3)
    x0, y0, x1, y1 = panel.box
    plot_before, plot_after = before[y0 + 1:y1, x0 + 1:x1 - 1], after[y0 + 1:y1, x0 + 1:x1 - 1]
    for c in panel.curve_classes:
        color = panel.color[c]
        assert not (plot_before == color).all(-1).any()  # no curve before the first token
        assert (plot_after == color).all(-1).any()
    with pytest.raises(ValueError, match="probs"):
        ProbabilityPanel(times, probs[:, :2], ["a", "b", "c"], 4000)
