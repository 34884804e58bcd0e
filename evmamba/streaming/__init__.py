"""evmamba.streaming (layer 6): the real-time loop -- events in, a decision available at any moment.

* :mod:`.sources` -- event files, dataset samples, stdin and UDP (:mod:`.protocol`: the wire formats);
* :mod:`.pacing` -- replay in real time, N times faster, or as fast as possible;
* :mod:`.backlog` -- the bounded input queue and its policies (block, drop oldest, coarser bins via
  :mod:`.coarsen`);
* :mod:`.steppers` -- the :class:`Stepper` interface of both steppers: :mod:`.fast_step` -- the classifier
  step compiled for the CPU; :mod:`.gpu_step` -- the fused step in a CUDA graph; :mod:`.gpu_serve` -- the
  fused step resident on the GPU for one stream (no launch per token); :mod:`.concurrent` -- many streams at
  once;
* :mod:`.decisions`, :mod:`.summary` -- early and final decisions, latency and throughput figures;
* :mod:`.liveview` -- the terminal view of ``--live``; :mod:`.probabilities` -- a whole recording's
  logits over time through the same binning and step (``evmamba view``);
* :mod:`.loop` -- :class:`StreamLoop`, which ties them together (``evmamba stream``).

Names are imported on first use, so that importing the package stays cheap.
"""

from __future__ import annotations

from ..core.lazy import lazy_getattr

_EXPORTS = {
    "StreamLoop": "evmamba.streaming.loop",
    "LoopConfig": "evmamba.streaming.loop",
    "JsonLines": "evmamba.streaming.loop",
    "LiveView": "evmamba.streaming.liveview",
    "FastStepper": "evmamba.streaming.fast_step",
    "export_weights": "evmamba.streaming.fast_step",
    "GraphStepper": "evmamba.streaming.gpu_step",
    "ServeStepper": "evmamba.streaming.gpu_serve",
    "Stepper": "evmamba.streaming.steppers",
    "StepOutput": "evmamba.streaming.steppers",
    "warm_up": "evmamba.streaming.steppers",
    "EventQueue": "evmamba.streaming.backlog",
    "POLICIES": "evmamba.streaming.backlog",
    "Pacer": "evmamba.streaming.pacing",
    "parse_speed": "evmamba.streaming.pacing",
    "Chunk": "evmamba.streaming.sources",
    "Recording": "evmamba.streaming.sources",
    "RecordingSource": "evmamba.streaming.sources",
    "source_from_specs": "evmamba.streaming.sources",
    "ByteStreamSource": "evmamba.streaming.sources",
    "UdpSource": "evmamba.streaming.sources",
    "DecisionTracker": "evmamba.streaming.decisions",
    "StreamSummary": "evmamba.streaming.summary",
    "load_stream_model": "evmamba.streaming.loading",
    "logits_over_time": "evmamba.streaming.probabilities",
    "LogitsOverTime": "evmamba.streaming.probabilities",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS)
