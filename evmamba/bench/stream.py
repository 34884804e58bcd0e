"""``evmamba bench stream``: the real-time loop on the ten DVS Gesture trials (real-time factor, latency).

    evmamba bench stream [--checkpoint checkpoints/dvsgesture.pt] [--device cpu|cuda] [--quick] [--json PATH]

**CPU** (batch 1, the loop of ``evmamba stream`` with the compiled step), per trial:

* ``--speed max``: events, tokens, compute time (binning, step, decisions; wall clock and the loop thread's
  CPU time), ``real_time_factor`` = recording duration / compute time (also per CPU-second), and the
  step's share in µs per token;
* real time (``--speed 1``): token latency p50 / p99 / max, from the moment a token's releasing slice
  was due to its logits;
* the step alone: the trial's tokens through :class:`~evmamba.streaming.fast_step.FastStepper` in one call
  (best of three), µs per token.

Plus µs per token of the step alone for a few model sizes (random weights, the densest trial's tokens)
and of the classifier's PyTorch ``step`` (one token per call) for comparison.

**GPU** (``--device cuda``): the step captured in a CUDA graph (:class:`~evmamba.streaming.gpu_step.GraphStepper`)
-- the classifier's own step, or with ``--gpu-step fused`` the one-kernel fused model step (the default where the
model is supported; the table and the JSON say which ran): per-token latency at batch 1 (copy in, replay, copy out,
synchronise), µs per token when a trial's tokens are replayed back to back, the loop's real-time factor at ``--speed
max``, and aggregate events/s of ``--streams`` (1 024) concurrent streams in lockstep. With the fused step, three
batch-1 experiments: the replays alone with 1, 2, 4 and 8 warps per program, the latency with the copies captured in
the graph beside the kernel (one replay and one wait per token), and zero-copy -- the record and the logits in
pinned host memory, read and written by the kernel itself, waiting by spinning on the logits or by synchronising
(its logits are compared with the stepper's). Then the resident serving loop
(:class:`~evmamba.streaming.gpu_serve.ServeStepper`, what ``evmamba stream`` runs for one stream on a GPU by
default): the latency of its ``run`` with one token per call, with the default warps (2), 1 and 4, and the loop's
real-time factor with it. Each part says on standard error when it is done (the whole takes about 3 minutes on an
H200 with ``--quick``, most of it compiling kernels). The streams run with the stepper's default feeding: time-major
and double-buffered for the fused step (``GraphStepper.overlap``); such a stepper is also fed batch-major, in the
same run, for comparison, and the two must reach the same final decisions. The table and the JSON (``feed`` of each
run) say which feeding ran.

``--quick``: trials 1 and 5 only, one real-time replay, fewer model sizes and GPU steps.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from ..core.output import format_table, write_json

DEFAULT_CHECKPOINT = "checkpoints/dvsgesture.pt"
EXAMPLE = "evmamba bench stream --quick --json stream.json"
TRIALS = [f"{i}.bs2" for i in range(1, 11)]
# (d_model, n_layers, d_state) for the step-only table; the first is the default DVS model.
MODEL_SIZES = [(32, 2, 16), (16, 2, 8), (32, 4, 16), (64, 2, 16), (64, 4, 16)]


def configure(parser) -> None:
    parser.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help=f"the model (default {DEFAULT_CHECKPOINT})")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="cpu (default) or cuda")
    parser.add_argument("--quick", action="store_true", help="two trials, one real-time replay")
    parser.add_argument("--streams", type=int, default=1024, help="concurrent streams on the GPU (default 1024)")
    parser.add_argument("--gpu-step", default="auto", choices=("auto", "fused", "unfused"),
                        help="GPU step: fused (one kernel per token; an error if the model is not supported), "
                             "unfused (the classifier's step) or auto (fused when supported; default)")
    parser.add_argument("--block-streams", type=int, default=None,
                        help="streams per program of the fused kernel at --streams (default: 16)")
    parser.add_argument("--json", metavar="PATH", default=None, help="write the results as JSON")


def _trials(quick: bool):
    from ..datasets.paths import data_root
    from ..streaming.sources import file_recordings

    folder = data_root() / "dvsgesture_slayer_bs2"
    names = ["1.bs2", "5.bs2"] if quick else TRIALS
    paths = [folder / n for n in names]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{missing[0]}: DVS Gesture trial not found (set $EVMAMBA_DATA)")
    return file_recordings(paths, (128, 128, 2))


def _run_loop(stepper, sm, rec, speed: float) -> dict:
    from ..streaming.loop import LoopConfig, StreamLoop
    from ..streaming.sources import RecordingSource

    loop = StreamLoop(stepper, sm.binning, sm.sensor_size, sm.classes, LoopConfig(speed=speed, predictions=False))
    return loop.run(RecordingSource([rec], sm.sensor_size)).to_dict()


def _step_alone(stepper, seq, surf=None, repeats: int = 3) -> tuple[float, float]:
    """Best µs per token of one call over a whole token sequence: ``(wall clock, thread CPU time)``; ``surf``
    the tokens' local surfaces when the model reads them (made beforehand: the loop's figures include them)."""
    best, best_cpu = math.inf, math.inf
    for _ in range(repeats):
        stepper.reset()
        t0, c0 = time.perf_counter(), time.thread_time()
        stepper.run(seq.tokens, seq.dt, seq.counts, copy=False, check=False, surfaces=surf)
        best, best_cpu = min(best, time.perf_counter() - t0), min(best_cpu, time.thread_time() - c0)
    stepper.reset()
    n = max(seq.num_tokens, 1)
    return best / n * 1e6, best_cpu / n * 1e6


def _torch_step_us(model, seq, surf=None, n: int = 200) -> float:
    import torch

    torch.set_num_threads(1)
    cache = model.allocate_inference_cache(1)
    tok = torch.from_numpy(seq.tokens[:n].astype(np.int64))
    dt = torch.from_numpy(seq.dt[:n])
    cnt = torch.from_numpy(seq.counts[:n].astype(np.float32))
    sf = None if surf is None else torch.from_numpy(surf[:n])
    s = lambda i: None if sf is None else sf[i:i + 1]  # noqa: E731
    with torch.no_grad():
        for i in range(10):
            model.step(tok[i:i + 1], dt[i:i + 1], cache, cnt[i:i + 1], s(i))
        t0 = time.perf_counter()
        for i in range(n):
            model.step(tok[i:i + 1], dt[i:i + 1], cache, cnt[i:i + 1], s(i))
    return (time.perf_counter() - t0) / n * 1e6


def bench_cpu(sm, recs, quick: bool) -> dict:
    from tqdm import tqdm

    from ..model.classifier import EventClassifier
    from ..pipeline.binning import bin_events, vocab_size
    from ..streaming.fast_step import FastStepper
    from ..streaming.steppers import warm_up

    stepper = FastStepper(sm.model)
    warm_up(stepper, sm.binning, sm.sensor_size)
    rows = []
    densest = None
    for i, rec in enumerate(tqdm(recs, desc="trials", unit="trial", file=sys.stderr)):
        fast = _run_loop(stepper, sm, rec, math.inf)
        live = _run_loop(stepper, sm, rec, 1.0) if (not quick or i == len(recs) - 1) else None
        seq = bin_events(rec.load(), sm.sensor_size, sm.binning)
        surf = sm.surfaces(seq)
        if densest is None or seq.num_tokens > densest.num_tokens:
            densest, densest_surf = seq, surf
        rows.append({
            "trial": Path(rec.name).name, "events": fast["events"], "tokens": fast["tokens"],
            "duration_s": fast["duration_s"], "compute_s": fast["compute_s"], "compute_cpu_s": fast["compute_cpu_s"],
            "real_time_factor": fast["real_time_factor"], "real_time_factor_cpu": fast["real_time_factor_cpu"],
            "events_per_s": fast["events_per_s"], "loop_step_us_per_token": fast["us_per_token_step"],
            **dict(zip(("step_alone_us_per_token", "step_alone_us_per_token_cpu"), _step_alone(stepper, seq, surf))),
            "latency_us_p50": live["latency_us_p50"] if live else None,
            "latency_us_p99": live["latency_us_p99"] if live else None,
            "latency_us_max": live["latency_us_max"] if live else None,
            "realtime_compute_s": live["compute_s"] if live else None,
            "final_class": (fast["per_recording"][0]["final"] or {}).get("class"),
        })
    sizes = []
    cfg = dict(sm.model.config)
    vocab, n_classes = vocab_size(sm.sensor_size, sm.binning), sm.model.n_classes
    for d, n_layers, n_state in (MODEL_SIZES[:3] if quick else MODEL_SIZES):
        kw = {k: v for k, v in cfg.items() if k not in ("vocab_size", "n_classes", "d_model", "n_layers", "d_state")}
        if kw.get("pool_stride") not in (None, 1) and not isinstance(kw.get("pool_stride"), int):
            kw["pool_stride"] = None  # a per-layer list does not fit other depths
        model = EventClassifier(vocab, n_classes, d_model=d, n_layers=n_layers, d_state=n_state, **kw).eval()
        st = FastStepper(model)
        st.run(densest.tokens[:4], densest.dt[:4], densest.counts[:4],
               surfaces=None if densest_surf is None else densest_surf[:4])
        us, us_cpu = _step_alone(st, densest, densest_surf)
        sizes.append(
            {
                "d_model": d,
                "n_layers": n_layers,
                "d_state": n_state,
                "parameters": sum(p.numel() for p in model.parameters()),
                "step_us_per_token": us,
                "step_us_per_token_cpu": us_cpu,
                "densest_trial_step_s": us * densest.num_tokens / 1e6,
                "densest_trial_rtf_step_only": 1.45 / (us * densest.num_tokens / 1e6),
            }
        )
    torch_us = _torch_step_us(sm.model, densest, densest_surf)
    return {"trials": rows, "model_sizes": sizes, "torch_step_us_per_token": torch_us,
            "densest_tokens": densest.num_tokens}


def _token_latencies(stepper, tokens: np.ndarray, dt: np.ndarray, counts: np.ndarray,
                     surfaces: np.ndarray | None = None) -> np.ndarray:
    """Per-token latency of a :class:`~evmamba.streaming.gpu_step.GraphStepper` at batch 1, in seconds: copy one
    token into its device buffers, replay its graph, copy the logits out, wait -- what a caller that needs each
    token's logits on the host before the next token sees. (It reaches into the stepper's buffers: a
    measurement, not an interface.)"""
    import torch

    if stepper.n_streams != 1 or not stepper.graphed:
        raise ValueError("token latencies are measured at batch 1 on a CUDA device")
    copy_in = _fused_copy_in(stepper, tokens, dt, counts, surfaces) if stepper.fused else _graph_copy_in(
        stepper, tokens, dt, counts, surfaces)
    lat = np.empty(tokens.shape[0])
    h_out = torch.zeros(stepper.n_classes, dtype=torch.float32).pin_memory()
    stream = torch.cuda.current_stream(stepper.device)
    stepper.pos.zero_()
    for i in range(tokens.shape[0]):
        p = i % stepper.block  # the graph reads and writes at pos, which it advances itself
        if p == 0 and i:
            stepper.pos.zero_()
        t0 = time.perf_counter()
        copy_in(i, p)
        stepper.graph.replay()
        h_out.copy_(stepper.logits[0, p], non_blocking=True)
        stream.synchronize()
        lat[i] = time.perf_counter() - t0
    return lat


def _in_graph_latencies(model, seq, part, n: int, warm: int = 200) -> np.ndarray:
    """Batch-1 token latencies (s) of the fused step captured together with its copies: the record from a
    pinned host buffer into the device, the position reset, the kernel, the logits back into pinned memory --
    one replay and one wait per token. Every token is stepped at position 0 of the stepper's buffers (the
    streams' state still advances). The first ``warm`` tokens are stepped untimed, then the state is reset."""
    import torch

    from ..model.cuda_graph import capture_graph
    from ..streaming.gpu_step import GraphStepper

    g = GraphStepper(model, 1, device="cuda", block=8, fused=True)
    h_rec = torch.zeros(g.inp.shape[-1], dtype=torch.float32).pin_memory()
    h_out = torch.zeros(g.n_classes, dtype=torch.float32).pin_memory()
    rec = h_rec.numpy()

    def step():
        g.inp[0, 0].copy_(h_rec, non_blocking=True)
        g.pos.zero_()
        g._fused_step(g.inp, g.logits)
        h_out.copy_(g.logits[0, 0], non_blocking=True)

    graph, _ = capture_graph(step, 3, g.device)
    stream = torch.cuda.current_stream(g.device)
    lat = np.empty(n)
    for i, timed, t0 in _record_each_token(g, rec, seq, part(n), n, warm):
        graph.replay()
        stream.synchronize()
        if timed:
            lat[i] = time.perf_counter() - t0
    return lat


def _each_token(stepper, n: int, warm: int):
    """The token loop of the batch-1 experiments: ``warm`` untimed tokens (cycling through the first ``n``), a
    reset of ``stepper``'s state, then the ``n`` timed ones; yields ``(i, timed)``."""
    for j in range(warm + n):
        if j == warm:
            stepper.reset()
        yield (j - warm if j >= warm else j % n), j >= warm


def _record_each_token(stepper, rec: np.ndarray, seq, surf, n: int, warm: int):
    """:func:`_each_token` that also writes each token's record into ``rec`` (id, gap, count, surface); yields
    ``(i, timed, t0)``, ``t0`` taken before the write."""
    for i, timed in _each_token(stepper, n, warm):
        t0 = time.perf_counter()
        rec[0], rec[1], rec[2] = seq.tokens[i], seq.dt[i], seq.counts[i]
        if surf is not None:
            rec[3:] = surf[i]
        yield i, timed, t0


def _graph_logits(model, seq, n: int, surf, num_warps: int | None = None) -> np.ndarray:
    """The fused graph stepper's logits ``(n, C)`` (``num_warps`` per program) for the first ``n`` tokens of
    ``seq`` from a zero state: what the batch-1 experiments' logits are compared with."""
    from ..streaming.gpu_step import GraphStepper

    g = GraphStepper(model, 1, device="cuda", block=512, fused=True, num_warps=num_warps)
    return g.run_batch(seq.tokens[None, :n], seq.dt[None, :n], seq.counts[None, :n],
                       surfaces=None if surf is None else surf[None])[0]


def _latency_summary(lat: np.ndarray, diff: float) -> dict:
    """p50 / p99 / max of latencies ``lat`` (s) in µs, with the largest logits difference ``diff``."""
    us = lat * 1e6
    return {"latency_us_p50": float(np.percentile(us, 50)), "latency_us_p99": float(np.percentile(us, 99)),
            "latency_us_max": float(us.max()), "max_abs_diff": diff, "tokens": int(lat.shape[0])}


def _zero_copy_latencies(model, seq, part, n: int, num_warps: int | None = None, spin: bool = True,
                         warm: int = 200) -> tuple[np.ndarray, float]:
    """Batch-1 token latencies (s) of the fused step reading its record from, and writing its logits to, pinned
    host memory (zero-copy: the graph is the kernel alone, no copies around it). Per token: write the record,
    mark the logits slot with NaN, replay, then wait -- by spinning on the slot until all its values are written
    (``spin``; each float is one aligned 4-byte write, so once none is NaN all are final) or by synchronising
    the stream. Also the largest difference of the ``n`` tokens' logits from the stepper's own path (device
    buffers, the same tokens from a reset state). Every token is stepped at position 0."""
    import torch

    from ..kernels.triton_model_step import model_step_triton
    from ..model.cuda_graph import capture_graph
    from ..streaming.gpu_step import GraphStepper

    g = GraphStepper(model, 1, device="cuda", block=8, fused=True, num_warps=num_warps)
    h_rec = torch.zeros(1, 1, g.inp.shape[-1], dtype=torch.float32).pin_memory()
    h_out = torch.full((1, 1, g.n_classes), float("nan"), dtype=torch.float32).pin_memory()
    rec, res = h_rec.numpy()[0, 0], h_out.numpy()[0, 0]
    graph, _ = capture_graph(lambda: model_step_triton(g.weights, g.cache, h_rec, g.pos, h_out, None,
                                                       num_warps=num_warps), 3, g.device)
    surf = part(n)
    stream = torch.cuda.current_stream(g.device)
    lat, got = np.empty(n), np.empty((n, g.n_classes), np.float32)
    g.pos.zero_()
    for i, timed, t0 in _record_each_token(g, rec, seq, surf, n, warm):
        res[:] = np.nan
        graph.replay()
        if spin:
            deadline = t0 + 1.0
            while np.isnan(res).any():
                if time.perf_counter() > deadline:
                    raise RuntimeError("zero-copy step: the logits did not arrive in host memory within 1 s")
        else:
            stream.synchronize()
        if timed:
            lat[i] = time.perf_counter() - t0
            got[i] = res
    stream.synchronize()
    return lat, float(np.abs(got - _graph_logits(model, seq, n, surf, num_warps)).max())


def _serve_latencies(model, seq, part, n: int, num_warps: int | None = None, release: bool | None = None,
                     warm: int = 200) -> tuple[np.ndarray, float]:
    """Batch-1 token latencies (s) of the resident serving loop (:class:`~evmamba.streaming.gpu_serve.
    ServeStepper`) through its ``run`` with one token per call, as the stream loop calls it: from the call to
    the logits returned on the host. Also the largest difference of the ``n`` tokens' logits from the graph
    stepper's (the same tokens from a reset state)."""
    from ..streaming.gpu_serve import ServeStepper

    surf = part(n)
    lat, got = np.empty(n), np.empty((n, model.n_classes), np.float32)
    with ServeStepper(model, "cuda", num_warps=num_warps, release=release) as s:
        for i, timed in _each_token(s, n, warm):
            one = slice(i, i + 1)
            t0 = time.perf_counter()
            out = s.run(seq.tokens[one], seq.dt[one], seq.counts[one], check=False,
                        surfaces=None if surf is None else surf[one])
            if timed:
                lat[i] = time.perf_counter() - t0
                got[i] = out.logits[0]
    return lat, float(np.abs(got - _graph_logits(model, seq, n, surf)).max())


def _replays_us(stepper) -> float:
    """µs per graph replay of ``stepper``: one block of replays back to back on whatever its device buffers
    hold (the kernel's work does not depend on the values), after one untimed replay, timed with CUDA events."""
    import torch

    stepper.pos.zero_()
    stepper.graph.replay()
    stepper.pos.zero_()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(stepper.block):
        stepper.graph.replay()
    end.record()
    end.synchronize()
    stepper.reset()
    return start.elapsed_time(end) * 1e3 / stepper.block


def _graph_copy_in(stepper, tokens, dt, counts, surfaces):
    """``copy_in(i, p)`` for the captured classifier step: token ``i``'s id, gap, count (and surface) into the
    stepper's separate buffers at position ``p``."""
    import torch

    h_tok = torch.zeros(1, dtype=torch.long).pin_memory()
    h_val = torch.zeros(2, dtype=torch.float32).pin_memory()
    h_surf = torch.zeros(max(stepper.n_surface, 1), dtype=torch.float32).pin_memory()
    n_tok, n_val = h_tok.numpy(), h_val.numpy()  # numpy views: writing them costs no torch dispatch

    def copy_in(i, p):
        n_tok[0] = tokens[i]
        n_val[0] = dt[i]
        n_val[1] = counts[i]
        stepper.tok[0, p:p + 1].copy_(h_tok, non_blocking=True)
        stepper.dt[0, p:p + 1].copy_(h_val[:1], non_blocking=True)
        stepper.cnt[0, p:p + 1].copy_(h_val[1:], non_blocking=True)
        if stepper.n_surface:
            h_surf.numpy()[:] = surfaces[i]
            stepper.surf[0, p].copy_(h_surf, non_blocking=True)

    return copy_in


def _fused_copy_in(stepper, tokens, dt, counts, surfaces):
    """``copy_in(i, p)`` for the fused step: one packed record (id, gap, count, surface) per token."""
    import torch

    h_rec = torch.zeros(stepper.inp.shape[-1], dtype=torch.float32).pin_memory()
    rec = h_rec.numpy()

    def copy_in(i, p):
        rec[0], rec[1], rec[2] = tokens[i], dt[i], counts[i]
        if stepper.n_surface:
            rec[3:] = surfaces[i]
        stepper.inp[0, p].copy_(h_rec, non_blocking=True)

    return copy_in


def bench_gpu(sm, recs, quick: bool, n_streams: int, gpu_step: str = "auto", block_streams=None) -> dict:
    """GPU figures (see the module docstring). Each part runs on its own: a failure is recorded under
    ``errors`` and the other parts still run. ``streams``: the stepper's default feed; where that overlaps,
    also ``streams_batch_major`` and ``streams_feeds_same_decisions`` (the final decisions of the two feeds)."""
    import traceback

    import torch

    from ..pipeline.binning import bin_events
    from ..streaming import concurrent
    from ..streaming.gpu_step import GPU_STEP_CHOICES, GraphStepper

    fused = GPU_STEP_CHOICES[gpu_step]
    if not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device")
    out: dict = {"device_name": torch.cuda.get_device_name(0), "errors": {}}
    seqs = [bin_events(r.load(), sm.sensor_size, sm.binning) for r in recs]
    densest = max(seqs, key=lambda s: s.num_tokens)
    surf = sm.surfaces(densest)
    part = lambda n: None if surf is None else surf[:n]  # noqa: E731

    def attempt(name, fn):
        # Each part says when it is done (the table comes at the end; a part with new kernels to compile
        # takes tens of seconds).
        t0 = time.perf_counter()
        try:
            fn()
            out[f"{name}_seconds"] = time.perf_counter() - t0
            print(f"bench stream: {name} done in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        except Exception as exc:  # noqa: BLE001 - recorded; the other parts still run
            out["errors"][name] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
            print(f"bench stream: {name} FAILED after {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)

    state: dict = {}

    def batch1():
        from ..streaming.steppers import warm_up

        g1 = state["g1"] = GraphStepper(sm.model, 1, device="cuda", fused=fused)
        out.update(batch1_step=g1.step_kind, step_fallback_reason=g1.fallback_reason if fused is None else None)
        warm_up(g1, sm.binning, sm.sensor_size)
        n_lat = min(densest.num_tokens, 2000 if quick else 5000)
        _token_latencies(g1, densest.tokens[:200], densest.dt[:200], densest.counts[:200], part(200))  # warm
        g1.reset()
        lat = (
            _token_latencies(g1, densest.tokens[:n_lat], densest.dt[:n_lat], densest.counts[:n_lat], part(n_lat)) * 1e6
        )
        out.update(batch1_latency_us_p50=float(np.percentile(lat, 50)),
                   batch1_latency_us_p99=float(np.percentile(lat, 99)), batch1_latency_us_max=float(lat.max()),
                   batch1_latency_tokens=int(n_lat))
        g1.reset()
        t0 = time.perf_counter()
        g1.run_batch(densest.tokens[None], densest.dt[None], densest.counts[None], copy_out=False,
                     surfaces=None if surf is None else surf[None])
        out["batch1_back_to_back_us_per_token"] = (time.perf_counter() - t0) / densest.num_tokens * 1e6
        g1.reset()
        if g1.fused:
            # The one program of a single stream with other warp counts: its replays back to back on inputs
            # already on the device, timed with CUDA events (fewer warps: fewer cross-warp reductions).
            sweep = {}
            for nw in (1, 2, 4, 8):
                g = GraphStepper(sm.model, 1, device="cuda", block=256, fused=True, num_warps=nw)
                sweep[nw] = _replays_us(g)
                del g
            out["batch1_replay_us_by_num_warps"] = sweep

    def in_graph():
        # The batch-1 latency with the copies inside the graph: one replay per token copies the record in,
        # steps and copies the logits out (two fewer calls on the host); an experiment, not the stepper's path.
        n_lat = min(densest.num_tokens, 2000 if quick else 5000)
        lat = _in_graph_latencies(sm.model, densest, part, n_lat) * 1e6
        out.update(batch1_in_graph_latency_us_p50=float(np.percentile(lat, 50)),
                   batch1_in_graph_latency_us_p99=float(np.percentile(lat, 99)))

    def zero_copy():
        # The batch-1 latency with the record and the logits in pinned host memory, the kernel reading and
        # writing them itself (no copies, one launch per token), waiting by spinning on the logits or by
        # synchronising; with the default warps and with 1 (the fastest replays above). An experiment.
        n_lat = min(densest.num_tokens, 2000 if quick else 5000)
        for nw, spin in ((None, True), (1, True), (1, False)):
            lat, diff = _zero_copy_latencies(sm.model, densest, part, n_lat, num_warps=nw, spin=spin)
            out[f"batch1_zero_copy_{'spin' if spin else 'sync'}_warps_{nw or 'default'}"] = _latency_summary(lat, diff)

    def serve():
        # The resident serving loop (what `evmamba stream` runs for one stream on a GPU by default): one token
        # per run() call, from the call to the logits on the host: the defaults (2 warps, a fence after every
        # token) and the same without the fence, three rounds taken in turn so that both see the same machine
        # (their latencies pooled), then 1 and 4 warps once.
        n_lat = min(densest.num_tokens, 2000 if quick else 5000)
        rounds: dict[str, list] = {}
        for nw, release in [(None, None), (None, False)] * 3 + [(1, None), (4, None)]:
            key = f"batch1_serve_{'no_fence_' if release is False else ''}warps_{nw or 'default'}"
            rounds.setdefault(key, []).append(_serve_latencies(sm.model, densest, part, n_lat, num_warps=nw,
                                                               release=release))
        for key, runs in rounds.items():
            out[key] = _latency_summary(np.concatenate([lat for lat, _ in runs]), max(d for _, d in runs))

    def loop():
        from ..streaming.gpu_serve import ServeStepper, serve_support
        from ..streaming.steppers import warm_up

        rec = recs[-1] if quick else recs[4]  # 5.bs2, the densest trial
        res = _run_loop(state["g1"], sm, rec, math.inf)
        out.update(loop_trial=Path(rec.name).name, loop_real_time_factor=res["real_time_factor"],
                   loop_compute_s=res["compute_s"], loop_tokens=res["tokens"], loop_events=res["events"],
                   loop_step=state["g1"].step_kind)
        if fused is not False and serve_support(sm.model) is None:
            with ServeStepper(sm.model, "cuda") as s:
                warm_up(s, sm.binning, sm.sensor_size)
                res = _run_loop(s, sm, rec, math.inf)
            out.update(loop_serve_real_time_factor=res["real_time_factor"], loop_serve_compute_s=res["compute_s"],
                       loop_serve_latency_us_p50=res.get("latency_us_p50"))

    def many():
        binned, bin_s = concurrent.bin_recordings(recs, sm.sensor_size, sm.binning, sm.model.surface_config)
        gb = GraphStepper(sm.model, n_streams, device="cuda", block=256, fused=fused, block_streams=block_streams)
        out.update(streams_step=gb.step_kind, streams_block_streams=getattr(gb, "block_streams", None))
        steps = 1024 if quick else 4096
        concurrent.run_gpu(gb, binned, n_streams, max_steps=256)  # warm
        res = concurrent.run_gpu(gb, binned, n_streams, max_steps=steps)
        decisions = res.pop("per_stream")
        out["streams"] = res
        if gb.overlap:
            # The same streams and stepper fed batch-major, block after block (what the overlapped feed
            # replaced); a failure here is recorded and the default feed's figures stand.
            try:
                concurrent.run_gpu(gb, binned, n_streams, max_steps=256, overlap=False)  # warm
                res_b = concurrent.run_gpu(gb, binned, n_streams, max_steps=steps, overlap=False)
                out["streams_feeds_same_decisions"] = res_b.pop("per_stream") == decisions
                out["streams_batch_major"] = res_b
            except Exception as exc:  # noqa: BLE001 - recorded; the other parts still run
                out["errors"]["streams_batch_major"] = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
        out["streams_binning_s"] = bin_s
        # The step alone: graph replays back to back on inputs already on the device (no host traffic), timed
        # with CUDA events; events/s at the run's mean events per token.
        us = _replays_us(gb)
        per_token = res["events"] / max(res["tokens"], 1)
        out.update(streams_replay_us_per_step=us,
                   streams_replay_events_per_s=n_streams * per_token / (us * 1e-6),
                   streams_replay_tokens_per_s=n_streams / (us * 1e-6))
        if gb.fused and block_streams is None:
            # Other blockings of the streams over programs, the replays alone (zero inputs: the kernel's work
            # does not depend on the values).
            sweep = {}
            del gb
            for bs in (4, 8, 32):
                g = GraphStepper(sm.model, n_streams, device="cuda", block=64, fused=True, block_streams=bs)
                sweep[bs] = _replays_us(g)
                del g
            out["streams_replay_us_per_step_by_block_streams"] = sweep

    attempt("batch1", batch1)
    if state.get("g1") is not None and state["g1"].fused:
        attempt("batch1_in_graph", in_graph)
        attempt("batch1_zero_copy", zero_copy)
        attempt("batch1_serve", serve)
    if "g1" in state:
        attempt("loop", loop)
        del state["g1"]
    attempt("streams", many)
    return out


def run(args) -> int:
    from ..streaming.loading import load_stream_model

    try:
        sm = load_stream_model(args.checkpoint)
        recs = _trials(args.quick)
    except (FileNotFoundError, ValueError) as exc:
        print(f"evmamba bench stream: {exc}", file=sys.stderr)
        return 1
    load = _load()
    record = {"benchmark": "stream", "checkpoint": sm.path, "binning": sm.binning.to_dict(),
              "model": {k: v for k, v in sm.model.config.items()},
              "parameters": sum(p.numel() for p in sm.model.parameters()), "quick": bool(args.quick),
              "load_average_before": load}
    if args.device == "cpu":
        res = bench_cpu(sm, recs, args.quick)
        record.update(res)
        rows = [[r["trial"], r["events"], r["tokens"], r["compute_s"], r["real_time_factor"], r["real_time_factor_cpu"],
                 r["loop_step_us_per_token"], r["step_alone_us_per_token"], r["step_alone_us_per_token_cpu"],
                 "-" if r["latency_us_p50"] is None else r["latency_us_p50"],
                 "-" if r["latency_us_p99"] is None else r["latency_us_p99"],
                 "-" if r["latency_us_max"] is None else r["latency_us_max"]] for r in res["trials"]]
        print(format_table(["trial", "events", "tokens", "compute s", "RTF", "RTF (CPU)", "loop step µs/tok",
                            "step alone µs/tok", "(CPU)", "lat p50 µs", "lat p99 µs", "lat max µs"], rows))
        print()
        print(format_table(["d_model", "layers", "d_state", "params", "step µs/token", "(CPU)", "densest trial s",
                            "RTF (step only)"],
                           [[s["d_model"], s["n_layers"], s["d_state"], s["parameters"], s["step_us_per_token"],
                             s["step_us_per_token_cpu"], s["densest_trial_step_s"], s["densest_trial_rtf_step_only"]]
                            for s in res["model_sizes"]]))
        rtfs = [r["real_time_factor"] for r in res["trials"]]
        record["min_real_time_factor"] = min(rtfs)
        record["min_real_time_factor_cpu"] = min(r["real_time_factor_cpu"] for r in res["trials"])
        record["median_step_alone_us_per_token"] = statistics.median(
            r["step_alone_us_per_token"] for r in res["trials"]
        )
        record["median_step_alone_us_per_token_cpu"] = statistics.median(
            r["step_alone_us_per_token_cpu"] for r in res["trials"])
        print(f"\nreal-time factor: min {min(rtfs):.2f} (CPU time {record['min_real_time_factor_cpu']:.2f}) over "
              f"{len(rtfs)} trials; step alone {record['median_step_alone_us_per_token']:.2f} µs/token (median; "
              f"CPU time {record['median_step_alone_us_per_token_cpu']:.2f}); "
              f"PyTorch step {res['torch_step_us_per_token']:.0f} µs/token")
    else:
        res = bench_gpu(sm, recs, args.quick, args.streams, args.gpu_step, args.block_streams)
        record["gpu"] = res
        s = res.get("streams") or {}
        so = res.get("streams_batch_major") or {}
        get = lambda d, k: d.get(k, "-") if d.get(k) is not None else "-"  # noqa: E731
        ns = s.get("streams", args.streams)
        print(format_table(["measure", "value"], [
            ["device", res["device_name"]],
            ["step (batch 1 / streams)", f"{res.get('batch1_step', '-')} / {res.get('streams_step', '-')}"],
            ["batch-1 token latency p50 (µs)", get(res, "batch1_latency_us_p50")],
            ["batch-1 token latency p99 (µs)", get(res, "batch1_latency_us_p99")],
            ["batch-1 token latency max (µs)", get(res, "batch1_latency_us_max")],
            ["batch-1 back-to-back (µs/token)", get(res, "batch1_back_to_back_us_per_token")],
            *([["batch-1 replays alone by warps (µs): " + ", ".join(f"{k}: {v:.2f}" for k, v in nw.items()), ""]]
              if (nw := res.get("batch1_replay_us_by_num_warps")) else []),
            ["batch-1 latency p50 / p99, copies in the graph (µs)",
             f"{get(res, 'batch1_in_graph_latency_us_p50')} / {get(res, 'batch1_in_graph_latency_us_p99')}"],
            *([f"batch-1 latency p50 / p99, zero-copy, {k[len('batch1_zero_copy_'):]} (µs; max diff)",
               f"{v['latency_us_p50']:.2f} / {v['latency_us_p99']:.2f} ({v['max_abs_diff']:.1e})"]
              for k, v in res.items() if k.startswith("batch1_zero_copy_") and isinstance(v, dict)),
            *([f"batch-1 latency p50 / p99, serving loop, {k[len('batch1_serve_'):]} (µs; max diff)",
               f"{v['latency_us_p50']:.2f} / {v['latency_us_p99']:.2f} ({v['max_abs_diff']:.1e})"]
              for k, v in res.items() if k.startswith("batch1_serve_") and isinstance(v, dict)),
            [f"loop RTF at --speed max ({res.get('loop_trial', '-')}, {res.get('loop_step', '-')})",
             get(res, "loop_real_time_factor")],
            [f"loop RTF at --speed max ({res.get('loop_trial', '-')}, serve)", get(res, "loop_serve_real_time_factor")],
            [f"{ns} streams: events/s ({s.get('feed', '-')} feed)", get(s, "events_per_s")],
            [f"{ns} streams: tokens/s ({s.get('feed', '-')} feed)", get(s, "tokens_per_s")],
            *([[f"{ns} streams: events/s ({so.get('feed', '-')} feed)", get(so, "events_per_s")],
               [f"{ns} streams: tokens/s ({so.get('feed', '-')} feed)", get(so, "tokens_per_s")],
               ["both feeds: same final decisions", get(res, "streams_feeds_same_decisions")]]
              if so else []),
            [f"{ns} streams, replays alone: µs per step", get(res, "streams_replay_us_per_step")],
            [f"{ns} streams, replays alone: events/s", get(res, "streams_replay_events_per_s")],
        ]))
        if res.get("step_fallback_reason"):
            print(f"the fused step did not run: {res['step_fallback_reason']}", file=sys.stderr)
        if res["errors"]:
            print(f"errors: {res['errors']}", file=sys.stderr)
    record["load_average_after"] = _load()
    write_json(args.json, record)
    return 0


def _load():
    try:
        import os

        return os.getloadavg()[0]
    except OSError:  # pragma: no cover
        return None


__all__ = ["bench_cpu", "bench_gpu", "configure", "run"]
