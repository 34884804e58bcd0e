"""A recording's class probabilities over time, as the stream loop would see them.

:func:`logits_over_time` is the one place where a whole recording's events become the classifier's
per-token logits outside the loop (``evmamba view`` uses it): the checkpoint's own binning
(:func:`~evmamba.pipeline.binning.bin_events`, token for token the streaming binner's output) and the
compiled CPU step (:class:`~evmamba.streaming.fast_step.FastStepper`, the loop's step). When the
classifier's inputs change, this function changes with them and its callers do not.

Each row is stamped with the stream time at which the loop would have it: a token of a time bin is
released when the stream reaches the end of its bin (the recording's last event for the last bin), an
unmerged token (``bin_us = 0``) by its own event. Times are µs relative to the recording's first event.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..pipeline.binning import bin_events
from ..pipeline.events import validate_events
from .decisions import softmax
from .loading import StreamModel

# Tokens per call of the compiled step: bounds the step's output buffers on long recordings.
_CHUNK = 1 << 16


@dataclass
class LogitsOverTime:
    """Logits after some of a recording's tokens (``M`` rows, in stream order).

    * ``t_us`` -- ``(M,)`` int64: when the row is available in stream time, µs since the first event;
    * ``tokens`` / ``events`` -- ``(M,)`` int64: tokens and events consumed when it is;
    * ``logits`` -- ``(M, C)`` float32;
    * ``classes`` -- the ``C`` class names; ``duration_us`` -- last minus first event of the recording.
    """

    t_us: np.ndarray
    tokens: np.ndarray
    events: np.ndarray
    logits: np.ndarray
    classes: list[str]
    duration_us: int

    def probabilities(self) -> np.ndarray:
        """``(M, C)`` float64 softmax of the logits."""
        return softmax(self.logits) if self.logits.shape[0] else np.zeros(self.logits.shape, np.float64)

    def index_at(self, t_us) -> np.ndarray:
        """Row of the latest logits available at each stream time ``t_us`` (µs since the first event);
        -1 where no token has been released yet. Accepts a scalar or an array; returns int64 of its shape."""
        return np.searchsorted(self.t_us, np.asarray(t_us, dtype=np.int64), side="right") - 1


def _release_times(t: np.ndarray, origin: int, last: int, bin_us: int) -> np.ndarray:
    if bin_us <= 0:
        return t - origin
    ends = ((t - origin) // bin_us + 1) * bin_us
    return np.minimum(ends, last - origin)


def logits_over_time(model: StreamModel, events: np.ndarray, *, every: int = 1, source: str = "recording",
                     progress: bool = False) -> LogitsOverTime:
    """Run one recording through the checkpoint's binning and the compiled CPU step.

    ``model`` comes from :func:`~evmamba.streaming.loading.load_stream_model`; ``events`` is the whole
    recording (:data:`~evmamba.pipeline.events.EVENT_DTYPE`, µs, sorted) inside the model's sensor.
    ``every`` keeps the logits after every ``every``-th token and after the last one (the state still
    advances by every token). Raises ``ValueError`` naming ``source`` for events outside the model's
    sensor or unsorted, and for ``every`` < 1. ``progress`` shows a bar over the tokens.
    """
    from tqdm.auto import tqdm

    from .fast_step import FastStepper

    if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
        raise ValueError(f"{source}: 'every' must be a positive int; got {every!r}")
    validate_events(events, model.sensor_size, source)
    classes = list(model.classes)
    if events.size == 0:
        empty = np.zeros(0, np.int64)
        return LogitsOverTime(empty, empty, empty, np.zeros((0, len(classes)), np.float32), classes, 0)
    origin, last = int(events["t"][0]), int(events["t"][-1])
    seq = bin_events(events, model.sensor_size, model.binning, source=source)
    n = seq.num_tokens
    keep = (np.arange(1, n + 1) % every == 0)
    if n:
        keep[-1] = True
    stepper = FastStepper(model.model)
    surf = model.surfaces(seq)  # the tokens' local surfaces, for a "surface" embedding
    rows, logits = [], []
    with tqdm(total=n, desc="classify", unit="tok", disable=not progress, leave=False) as bar:
        for a in range(0, n, _CHUNK):
            b = min(a + _CHUNK, n)
            out = stepper.run(seq.tokens[a:b], seq.dt[a:b], seq.counts[a:b], keep[a:b], check=False,
                              surfaces=None if surf is None else surf[a:b])
            rows.append(out.index + a)
            logits.append(out.logits)
            bar.update(b - a)
    index = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    tokens_after = index + 1
    events_after = np.cumsum(seq.counts, dtype=np.int64)[index] if n else np.zeros(0, np.int64)
    t_rel = _release_times(seq.t[index], origin, last, model.binning.bin_us)
    return LogitsOverTime(
        t_us=t_rel.astype(np.int64), tokens=tokens_after.astype(np.int64), events=events_after,
        logits=np.concatenate(logits) if logits else np.zeros((0, len(classes)), np.float32),
        classes=classes, duration_us=last - origin,
    )


__all__ = ["LogitsOverTime", "logits_over_time"]
