"""``evmamba stream``: classify a live or replayed event stream token by token.

    evmamba stream --checkpoint CKPT --source SRC [--source SRC ...] [--speed 1|N|max] [--json PATH] [...]

Sources (``--source``, repeatable for recordings):

* an event file in any supported format (``.bs2``, ``.aedat``, ``.raw``, ``.dat``, ``.npy``, ``.h5`` ...);
* ``sample:[SPLIT:]I[,J...]`` -- samples of the checkpoint's dataset (``sample:test:0,1,2``; split
  ``--split``, default test); their labels are known, so decisions are scored;
* ``-`` -- evmamba packets on stdin (format in docs/streaming.md);
* ``udp://HOST:PORT`` -- datagrams on a UDP socket, evmamba packets or jAER unicast (``--udp-format``).

Recordings are replayed in real time by default (``--speed 1``), ``N`` times faster (``--speed N``) or as
fast as possible (``--speed max``); live sources are never paced. Standard output receives JSON lines:
``prediction`` (every ``--report-every-ms`` of stream time), ``early`` (the early decision), ``final``
(each recording's decision) and, last, ``summary``. The summary is also printed to standard error and,
with ``--json PATH``, written there with the machine's description. Ctrl-C or SIGTERM stops the loop and
still prints and writes the summary (exit status 130 or 143).

``--streams N`` runs N concurrent streams of the given recordings as fast as possible (throughput mode:
final decisions and aggregate events/s only). ``--device cuda`` runs the classifier's step in a CUDA graph:
one fused kernel per token for the whole model (``--gpu-step fused``: an unsupported model is an error), the
classifier's own ``step`` (``unfused``), one resident program that serves a single stream (``serve``), or
(``auto``, the default) ``serve`` for one stream -- ``fused`` for a model with the context stage, where the
serving loop is slower --, ``fused`` for several, and ``unfused`` where the model is not supported; which step
ran, and why, is printed. The default device (``auto``) uses the compiled CPU step unless ``--streams`` > 1 and
a GPU is present.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

from ..streaming.backlog import POLICIES
from ..streaming.pacing import parse_speed
from ..streaming.sources import source_from_specs
from ..streaming.steppers import warm_up

EXAMPLE = ("evmamba stream --checkpoint checkpoints/dvsgesture.pt "
           "--source ../shared/data/dvsgesture_slayer_bs2/5.bs2 --speed max --live")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a .pt checkpoint or a run folder (its model.pt)")
    parser.add_argument(
        "--source",
        action="append",
        required=True,
        metavar="SRC",
        help="event file, sample:[SPLIT:]I[,J..], '-' (stdin) or udp://HOST:PORT; repeat for more recordings",
    )
    parser.add_argument("--split", default="test", help="dataset split for sample: sources (default test)")
    parser.add_argument("--speed", default="1", help="replay speed: 1 (real time), a factor, or max (default 1)")
    parser.add_argument("--chunk-us", type=int, default=1000, help="replay slice in µs of stream time (default 1000)")
    parser.add_argument(
        "--udp-format", choices=("evmamba", "jaer"), default="evmamba", help="datagram format (default evmamba)"
    )
    parser.add_argument(
        "--max-packet",
        type=int,
        default=65507,
        help="largest accepted packet in bytes, UDP datagram (at most 65507) or stdin packet (default 65507)",
    )
    parser.add_argument("--idle-end-s", type=float, default=None, help="UDP: this much silence ends a recording")
    parser.add_argument("--policy", choices=POLICIES, default="block", help="when compute falls behind (default block)")
    parser.add_argument(
        "--queue-events", type=int, default=1 << 20, help="input queue capacity in events (default 1048576)"
    )
    parser.add_argument(
        "--coarse-us",
        type=int,
        default=None,
        help="coarse bin width for --policy coarsen (default 4 x bin_us, >= 1000)",
    )
    parser.add_argument(
        "--report-every-ms",
        type=float,
        default=100.0,
        help="stream time between prediction lines; 0 = every token (default 100)",
    )
    parser.add_argument("--no-predictions", action="store_true", help="write only decisions and the summary")
    parser.add_argument(
        "--early-threshold", type=float, default=0.9, help="early decision probability (default 0.9; > 1 disables)"
    )
    parser.add_argument("--early-tokens", type=int, default=50, help="tokens the threshold must hold (default 50)")
    parser.add_argument("--reset-gap-ms", type=float, default=None, help="a silence this long starts a new recording")
    parser.add_argument("--logits-every", type=int, default=1, help="evaluate the logits every N tokens (default 1)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    parser.add_argument(
        "--streams", type=int, default=1, help="concurrent streams from the recordings (throughput mode)"
    )
    parser.add_argument("--gpu-step", default="auto", choices=GPU_STEPS,
                        help="on CUDA: serve (one stream: the fused step resident on the GPU, no launch per "
                             "token), fused (one kernel launch per token), unfused (the classifier's step) or "
                             "auto (default: serve for one stream and fused for several, where the model is "
                             "supported)")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the summary as JSON here")
    parser.add_argument("--out", default=None, metavar="PATH", help="write the JSON lines here instead of stdout")
    parser.add_argument("--quiet", action="store_true", help="no JSON lines")
    parser.add_argument("--live", action="store_true", help="a live status line on standard error")


def run(args: argparse.Namespace) -> int:
    try:
        return stream(args)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError, OSError) as exc:
        print(f"evmamba stream: {exc}", file=sys.stderr)
        return 1


# evmamba.streaming.gpu_step.GPU_STEP_CHOICES and "serve" (not imported at start-up)
GPU_STEPS = ("auto", "serve", "fused", "unfused")


def gpu_stepper(model, n_streams: int, device, gpu_step: str = "auto", **kwargs):
    """The GPU stepper for ``--gpu-step``: a :class:`~evmamba.streaming.gpu_serve.ServeStepper` for ``serve``
    and, where it runs, for ``auto`` with one stream; else a :class:`~evmamba.streaming.gpu_step.GraphStepper`.
    Says on standard error which step runs (and why not the fused one, when ``auto`` fell back)."""
    from ..streaming.gpu_serve import ServeStepper, serve_support
    from ..streaming.gpu_step import GPU_STEP_CHOICES, GraphStepper

    if gpu_step not in GPU_STEPS:
        raise ValueError(f"--gpu-step: expected one of {GPU_STEPS}; got {gpu_step!r}")
    if gpu_step == "serve" and n_streams != 1:
        raise ValueError(f"--gpu-step serve: the serving loop runs one stream; got --streams {n_streams} "
                         f"(use fused)")
    # With the context stage the serving loop's one program is slower than the fused step's graph replays
    # (469 against 69 us a token for the N-MNIST checkpoint on an H200, docs/benchmarks.md): auto takes those.
    auto_one = gpu_step == "auto" and n_streams == 1
    slow_serve = auto_one and getattr(model, "context", None) is not None
    if gpu_step == "serve" or (auto_one and not slow_serve and serve_support(model) is None):
        stepper = ServeStepper(model, device=device)
        print(f"GPU step: {stepper.step_kind}", file=sys.stderr, flush=True)
        return stepper
    fused = GPU_STEP_CHOICES[gpu_step]
    stepper = GraphStepper(model, n_streams, device=device, fused=fused, **kwargs)
    why = "" if stepper.fused or gpu_step == "unfused" else f" ({stepper.fallback_reason})"
    if slow_serve and stepper.fused:
        why = " (not serve: the serving loop is slower with the context stage)"
    print(f"GPU step: {stepper.step_kind}{why}", file=sys.stderr, flush=True)
    return stepper


def _device(name: str, streams: int) -> str:
    import torch

    if name == "auto":
        return "cuda" if (streams > 1 and torch.cuda.is_available()) else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise ValueError(f"--device: expected auto, cpu or cuda; got {name!r}")
    return name


# ---------------------------------------------------------------------------------------------- main
class _Terminate:
    """While active, SIGTERM (``kill``, a service manager, ``docker stop``) stops the command as Ctrl-C does,
    so the loop still prints and writes its summary; ``received`` tells which of the two it was."""

    def __init__(self) -> None:
        self.received = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        self.received = True
        raise KeyboardInterrupt

    def __enter__(self) -> _Terminate:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def stream(args: argparse.Namespace) -> int:
    with _Terminate() as term:
        code = _stream(args)
    # 128 + signal number, as a shell reports a process ended by that signal: 130 for Ctrl-C, 143 for SIGTERM.
    return 143 if (code == 130 and term.received) else code


def _stream(args: argparse.Namespace) -> int:
    from ..core.output import write_json
    from ..streaming.loading import load_stream_model
    from ..streaming.summary import format_summary

    speed = parse_speed(args.speed)
    if args.streams < 1:
        raise ValueError(f"--streams: must be a positive int; got {args.streams}")
    sm = load_stream_model(args.checkpoint)
    device = _device(args.device, args.streams)
    if args.streams > 1:
        return _throughput(args, sm, device)

    from ..streaming.fast_step import FastStepper
    from ..streaming.loop import JsonLines, LiveView, LoopConfig, StreamLoop

    if device.startswith("cuda"):
        stepper = gpu_stepper(sm.model, 1, device, args.gpu_step)
    else:
        stepper = FastStepper(sm.model)
    warm_up(stepper, sm.binning, sm.sensor_size)
    source = source_from_specs(args.source, sm, split=args.split, chunk_us=args.chunk_us, udp_format=args.udp_format,
                               max_packet=args.max_packet, idle_end_s=args.idle_end_s)
    if source.live:
        print(f"evmamba stream: reading {source.name} ({sm.sensor_size[0]}x{sm.sensor_size[1]} sensor); Ctrl-C stops",
              file=sys.stderr, flush=True)
    out_stream = None
    if not args.quiet:
        out_stream = open(args.out, "w") if args.out else sys.stdout
    emit = JsonLines(out_stream)
    cfg = LoopConfig(
        speed=speed, policy=args.policy, queue_events=args.queue_events, coarse_us=args.coarse_us,
        report_every_us=int(round(args.report_every_ms * 1000)), early_threshold=args.early_threshold,
        early_tokens=args.early_tokens,
        reset_gap_us=None if args.reset_gap_ms is None else int(round(args.reset_gap_ms * 1000)),
        logits_every=args.logits_every, predictions=not args.no_predictions,
    )
    live = LiveView(sm.classes) if args.live else None
    loop = StreamLoop(stepper, sm.binning, sm.sensor_size, sm.classes, cfg, emit=emit, live=live)
    try:
        summary = loop.run(source)
    finally:
        if hasattr(stepper, "close"):
            stepper.close()  # a serving loop leaves the GPU
        if out_stream is not None and out_stream is not sys.stdout:
            out_stream.close()
    record = summary.to_dict()
    record["settings"] = {
        "checkpoint": sm.path, "device": device, "speed": "max" if math.isinf(speed) else speed,
        "gpu_step": getattr(stepper, "step_kind", None),
        "sources": list(args.source), "binning": sm.binning.to_dict(), "policy": args.policy,
        "queue_events": args.queue_events, "chunk_us": args.chunk_us, "logits_every": args.logits_every,
        "early_threshold": args.early_threshold, "early_tokens": args.early_tokens,
    }
    if not args.quiet and not args.out:
        JsonLines(sys.stdout)({"type": "summary", **{k: v for k, v in record.items() if k != "per_recording"}})
    print(format_summary(record), file=sys.stderr)
    write_json(args.json, {"command": "stream", **record})
    # 128 + signal number, as a shell reports a process ended by that signal: 130 for Ctrl-C, 143 for SIGTERM.
    return (143 if summary.stop_signal == "SIGTERM" else 130) if summary.interrupted else 0


def _throughput(args, sm, device: str) -> int:
    from ..core.output import write_json
    from ..streaming import concurrent
    from ..streaming.sources import RecordingSource

    source = source_from_specs(args.source, sm, split=args.split, chunk_us=args.chunk_us, udp_format=args.udp_format,
                               max_packet=args.max_packet, idle_end_s=args.idle_end_s)
    if not isinstance(source, RecordingSource):
        raise ValueError("--streams > 1 replays recordings (files or sample: sources), not live sources")
    binned, bin_s = concurrent.bin_recordings(source.recordings, sm.sensor_size, sm.binning, sm.model.surface_config)
    t0 = time.perf_counter()
    if device.startswith("cuda"):
        stepper = gpu_stepper(sm.model, args.streams, device, args.gpu_step)
        result = concurrent.run_gpu(stepper, binned, args.streams)
        result["gpu_step"] = stepper.step_kind
    else:
        from ..streaming.fast_step import FastStepper

        stepper = FastStepper(sm.model, n_streams=args.streams)
        warm_up(stepper, sm.binning, sm.sensor_size)
        result = concurrent.run_cpu(stepper, binned, args.streams)
    result["binning_s"] = bin_s
    result["setup_s"] = time.perf_counter() - t0 - result["step_s"]
    if not args.quiet:
        out = open(args.out, "w") if args.out else sys.stdout
        try:
            for rec in result["per_stream"]:
                out.write(_dumps({"type": "final", **rec}) + "\n")
            out.write(_dumps({"type": "summary", **{k: v for k, v in result.items() if k != "per_stream"}}) + "\n")
        finally:
            if out is not sys.stdout:
                out.close()
    print(
        f"{result['streams']} streams on {result['device']}: {result['events']:,} events, {result['tokens']:,} tokens "
        f"in {result['step_s']:.3f} s -> {result['events_per_s']:,.0f} events/s "
        f"(binning {bin_s:.3f} s once per recording)",
        file=sys.stderr,
    )
    write_json(args.json, {"command": "stream", "settings": {"checkpoint": sm.path, "sources": list(args.source),
                                                               "streams": args.streams}, **result})
    return 0


def _dumps(record) -> str:
    import json

    return json.dumps(record, separators=(",", ":"))


__all__ = ["configure", "run", "stream"]

