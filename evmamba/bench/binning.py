"""``evmamba bench binning``: events/s of our binning, frames, downsampling and denoise against tonic.

Two inputs: a synthetic DVS128-like stream (1 M events over 1 s by default: two moving objects whose
leading edges emit ON and trailing edges OFF events, plus 15 % background noise) and the ten real DVS
Gesture trials under ``data_root()/dvsgesture_slayer_bs2``. For each operation the same input goes through
our implementation and tonic's; outputs that must match (frames, downsampled events, denoised events) are
compared and the run fails if they differ.

Timing: the steady state is the median of several calls after a warm-up call, as wall-clock time and as
the thread's CPU time (on a shared machine other processes take turns on the cores; the CPU time is what
the call itself consumed). The first call of each compiled kernel -- numba compiling it, or loading it from
its cache -- is timed separately in fresh subprocesses, once with an empty numba cache and once with a
filled one. Everything runs on one thread.

JSON, all on the synthetic stream: ``evmamba_events_per_s`` (token ids + Δt, one token per event, full
resolution), ``evmamba_binned_events_per_s`` (the same with 2x downsampling and 5 ms bin merging),
``tonic_toframe_events_per_s`` (tonic's ToFrame, 10 ms windows), ``speedup_vs_tonic_toframe`` (the first
over the third), ``frames_speedup_vs_tonic_toframe`` (our frames against ToFrame, identical output), each
also per CPU-second (``..._cpu``); and one row per (input, operation, implementation) under ``results``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np

from ..core.output import format_table, write_json
from .common import load_average as _load
from .common import time_calls as _time

SENSOR = (128, 128, 2)
EXAMPLE = "evmamba bench binning --quick --json binning.json"
HEADLINE_TOKENS = "tokens k=1"
HEADLINE_BINNED = "tokens k=2 bin=5ms"  # the binning section of configs/synthetic.yaml
TOKEN_CONFIGS = {
    "tokens k=1": {},
    "tokens k=4": {"downsample": 4},
    "tokens k=2 bin=1ms": {"downsample": 2, "bin_us": 1000},
    "tokens k=2 bin=5ms": {"downsample": 2, "bin_us": 5000},
    "tokens k=1 bin=20ms": {"bin_us": 20000},
    "tokens k=2 bin=5ms denoise=10ms": {"downsample": 2, "bin_us": 5000, "denoise_us": 10000},
}
FRAME_CONFIGS = {
    "frames window=10ms": {"time_window": 10000},
    "frames window=50ms": {"time_window": 50000},
    "frames n_time_bins=20": {"n_time_bins": 20},
    "frames event_count=10000": {"event_count": 10000},
}
DENOISE_US = 10000
DOWNSAMPLE_FACTOR = 0.25


def configure(parser) -> None:
    parser.add_argument("--quick", action="store_true", help="smaller synthetic stream, fewer repeats")
    parser.add_argument("--json", metavar="PATH", default=None, help="write the results as JSON")
    parser.add_argument("--events", type=int, default=None, help="events in the synthetic stream (default 1e6)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per measurement (default 9)")
    parser.add_argument("--no-first-call", action="store_true", help="skip the first-call subprocess timings")


# -- inputs ---------------------------------------------------------------------------------------------


def dvs128_like_stream(n_events: int, seed: int = 0, duration_us: int = 1_000_000) -> np.ndarray:
    """A sorted DVS128-like stream: two objects moving on circles (events scattered around their centre,
    ON ahead of the motion and OFF behind it) and uniform background noise."""
    from ..core.events import make_events

    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, duration_us, n_events))
    noise = rng.random(n_events) < 0.15
    which = rng.integers(0, 2, n_events)
    period = np.where(which == 0, 0.5e6, 0.8e6)
    radius = np.where(which == 0, 35.0, 22.0)
    phase = 2 * np.pi * t / period + which * 2.0
    cx, cy = 64 + radius * np.cos(phase), 64 + radius * np.sin(phase)
    vx, vy = -np.sin(phase), np.cos(phase)  # direction of motion
    dx, dy = rng.normal(0, 5.0, (2, n_events))
    x = np.where(noise, rng.integers(0, 128, n_events), np.rint(cx + dx))
    y = np.where(noise, rng.integers(0, 128, n_events), np.rint(cy + dy))
    p = np.where(noise, rng.integers(0, 2, n_events), (dx * vx + dy * vy > 0).astype(np.int64))
    return make_events(np.clip(x, 0, 127), np.clip(y, 0, 127), t, p)


def _gesture_trials() -> list[tuple[str, np.ndarray]]:
    """The real DVS Gesture trials as (name, events); empty when the folder is missing."""
    from ..datasets.paths import data_root
    from ..pipeline.events import to_event_array

    folder = data_root() / "dvsgesture_slayer_bs2"
    files = sorted(folder.glob("*.bs2"), key=lambda p: int(p.stem)) if folder.is_dir() else []
    out = []
    for path in files:
        try:
            from ..pipeline.readers import read_events

            ev, _ = read_events(path, SENSOR)
        except ImportError:  # the readers are optional here: tonic reads this format too
            import tonic

            ev = to_event_array(
                tonic.io.read_mnist_file(str(path), dtype=tonic.datasets.NMNIST.dtype), source=str(path)
            )
        out.append((path.name, ev))
    return out


def _as_tonic(events: np.ndarray) -> np.ndarray:
    """The same events in tonic's DVS Gesture dtype (int16 x/y, bool p, int64 t), as its datasets give them."""
    import tonic

    out = np.empty(events.size, dtype=tonic.datasets.DVSGesture.dtype)
    for f in "xytp":
        out[f] = events[f]
    return out


# -- timing ---------------------------------------------------------------------------------------------


def _time_many(fn: Callable[[np.ndarray], Any], inputs: list[np.ndarray], repeats: int) -> tuple[float, float]:
    """Like :func:`_time` for one pass over several recordings. Each output is dropped before the next
    call, as a data loader would hand it on: keeping them all would time the operating system mapping
    fresh pages for every output (frames of a 1.45 s trial at 10 ms are 9.4 MB) rather than the work."""

    def one_pass() -> None:
        for ev in inputs:
            fn(ev)

    return _time(one_pass, repeats)


_FIRST_CALL_SNIPPET = """
import json, sys, time
t0 = time.perf_counter()
import numpy as np
from evmamba.pipeline import BinningConfig, bin_events, to_frames, denoise, downsample, StreamingBinner
from evmamba.bench.binning import dvs128_like_stream
ev = dvs128_like_stream(20000)
imported = time.perf_counter()
import numba
out = {"import evmamba.pipeline": imported - t0, "import numba": time.perf_counter() - imported}
def first(name, fn):
    s = time.perf_counter(); fn(); out[name] = time.perf_counter() - s
first("bin_events, no bins", lambda: bin_events(ev, (128, 128, 2), BinningConfig()))
first("bin_events, bins", lambda: bin_events(ev, (128, 128, 2), BinningConfig(downsample=2, bin_us=5000)))
first("bin_events, denoise", lambda: bin_events(ev, (128, 128, 2), BinningConfig(denoise_us=10000)))
first("to_frames", lambda: to_frames(ev, (128, 128, 2), time_window=10000))
first("downsample", lambda: downsample(ev, 0.25))
first("StreamingBinner.push", lambda: StreamingBinner((128, 128, 2), BinningConfig(bin_us=5000)).push(ev))
print(json.dumps(out))
"""


def _first_calls() -> dict[str, dict[str, float]]:
    """First-call seconds per entry point, in fresh interpreters: with an empty and with a filled numba cache."""
    results = {}
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        for label in ("compile (empty cache)", "cache load"):
            proc = subprocess.run(
                [sys.executable, "-c", _FIRST_CALL_SNIPPET], env=env, capture_output=True, text=True, check=True
            )
            results[label] = json.loads(proc.stdout.strip().splitlines()[-1])
    return results


# -- the benchmark ----------------------------------------------------------------------------------------


def _row(results: list, data: str, op: str, impl: str, n_events: int, timing: tuple[float, float], **extra) -> dict:
    wall, cpu = timing
    row = {
        "input": data, "operation": op, "implementation": impl, "events": n_events,
        "steady_wall_s": wall, "steady_cpu_s": cpu,
        "events_per_s": n_events / wall if wall > 0 else float("inf"),
        "events_per_s_cpu": n_events / cpu if cpu > 0 else float("inf"),
        **extra,
    }
    results.append(row)
    return row


def _check_same_events(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if a.size != b.size or any(not np.array_equal(a[f], b[f]) for f in "xytp"):
        raise AssertionError(f"{what}: evmamba and tonic outputs differ")


def _bench_input(
    name: str, recordings: list[np.ndarray], repeats: int, tonic_denoise_events: int, results: list
) -> None:
    import tonic

    from ..pipeline import BinningConfig, StreamingBinner, bin_events, denoise, downsample, to_frames

    n = sum(ev.size for ev in recordings)
    raws = [_as_tonic(ev) for ev in recordings]
    tonic_repeats = max(1, repeats // 3)

    for label, opts in TOKEN_CONFIGS.items():
        cfg = BinningConfig.from_dict(opts)
        timing = _time_many(lambda ev, cfg=cfg: bin_events(ev, SENSOR, cfg), recordings, repeats)
        tokens = sum(bin_events(ev, SENSOR, cfg).num_tokens for ev in recordings)
        _row(results, name, label, "evmamba", n, timing, tokens=tokens)

    cfg = BinningConfig.from_dict(TOKEN_CONFIGS[HEADLINE_BINNED])

    def streamed(ev: np.ndarray, chunk: int = 1000) -> None:
        binner = StreamingBinner(SENSOR, cfg)
        for i in range(0, ev.size, chunk):
            binner.push(ev[i:i + chunk])
        binner.flush()

    _row(
        results, name, "stream k=2 bin=5ms, 1000-event chunks", "evmamba", n, _time_many(streamed, recordings, repeats)
    )

    for label, opts in FRAME_CONFIGS.items():
        for ev, raw in zip(recordings, raws):
            ours = to_frames(ev, SENSOR, **opts)
            theirs = tonic.transforms.ToFrame(sensor_size=SENSOR, **opts)(raw)
            if ours.shape != theirs.shape or not np.array_equal(ours, theirs):
                raise AssertionError(f"{name} {label}: evmamba and tonic frames differ")
        ours_t = _time_many(lambda ev, opts=opts: to_frames(ev, SENSOR, **opts), recordings, repeats)
        theirs_t = _time_many(
            lambda raw, opts=opts: tonic.transforms.ToFrame(sensor_size=SENSOR, **opts)(raw), raws, tonic_repeats
        )
        _row(results, name, label, "tonic ToFrame", n, theirs_t)
        _row(results, name, label, "evmamba", n, ours_t, speedup_vs_tonic=theirs_t[0] / ours_t[0],
             speedup_vs_tonic_cpu=theirs_t[1] / ours_t[1], identical=True)

    down = tonic.transforms.Downsample(spatial_factor=DOWNSAMPLE_FACTOR)
    for ev, raw in zip(recordings, raws):
        ours, theirs = downsample(ev, DOWNSAMPLE_FACTOR), down(raw)
        if any(not np.array_equal(ours[f], theirs[f]) for f in "xytp"):
            raise AssertionError(f"{name} downsample: evmamba and tonic outputs differ")
    ours_t = _time_many(lambda ev: downsample(ev, DOWNSAMPLE_FACTOR), recordings, repeats)
    theirs_t = _time_many(down, raws, tonic_repeats)
    _row(results, name, "downsample x0.25", "tonic Downsample", n, theirs_t)
    _row(results, name, "downsample x0.25", "evmamba", n, ours_t, speedup_vs_tonic=theirs_t[0] / ours_t[0],
         speedup_vs_tonic_cpu=theirs_t[1] / ours_t[1], identical=True)

    # tonic's Denoise is a Python loop (~0.3 M events/s): time it on a prefix of each recording.
    share = max(1, tonic_denoise_events // len(recordings))
    prefixes = [ev[:share] for ev in recordings]
    raw_prefixes = [raw[:share] for raw in raws]
    theirs_d = tonic.transforms.Denoise(filter_time=DENOISE_US)
    for ev, raw in zip(prefixes, raw_prefixes):
        _check_same_events(denoise(ev, SENSOR, DENOISE_US), theirs_d(raw), f"{name} denoise")
    ours_t = _time_many(lambda ev: denoise(ev, SENSOR, DENOISE_US), recordings, repeats)
    theirs_t = _time_many(theirs_d, raw_prefixes, 1)
    m = sum(ev.size for ev in prefixes)
    tonic_row = _row(results, name, "denoise 10ms", "tonic Denoise", m, theirs_t)
    ours_row = _row(results, name, "denoise 10ms", "evmamba", n, ours_t, identical=True)
    ours_row["speedup_vs_tonic"] = ours_row["events_per_s"] / tonic_row["events_per_s"]
    ours_row["speedup_vs_tonic_cpu"] = ours_row["events_per_s_cpu"] / tonic_row["events_per_s_cpu"]


def run(args) -> int:
    from tqdm import tqdm

    quick = bool(args.quick)
    n_events = args.events or (200_000 if quick else 1_000_000)
    repeats = args.repeats or (3 if quick else 9)
    load_before = _load()
    inputs = [("synthetic DVS128-like", [dvs128_like_stream(n_events)])]
    trials = _gesture_trials()
    if trials:
        inputs.append((f"DVS Gesture trials ({len(trials)})", [ev for _, ev in trials]))
    else:
        print("DVS Gesture trials not found under data_root(); timing the synthetic stream only", file=sys.stderr)

    first = {} if args.no_first_call else _first_calls()
    results: list[dict] = []
    for name, recs in tqdm(inputs, desc="inputs", unit="input"):
        _bench_input(name, recs, repeats, 20_000 if quick else 100_000, results)

    def pick(data: str, op: str, impl: str) -> dict:
        return next(r for r in results if r["input"] == data and r["operation"] == op and r["implementation"] == impl)

    synth = inputs[0][0]
    ours = pick(synth, HEADLINE_TOKENS, "evmamba")
    binned = pick(synth, HEADLINE_BINNED, "evmamba")
    toframe = pick(synth, "frames window=10ms", "tonic ToFrame")
    frames = pick(synth, "frames window=10ms", "evmamba")
    summary = {
        "evmamba_events_per_s": ours["events_per_s"],
        "evmamba_events_per_s_cpu": ours["events_per_s_cpu"],
        "evmamba_config": TOKEN_CONFIGS[HEADLINE_TOKENS],
        "evmamba_binned_events_per_s": binned["events_per_s"],
        "evmamba_binned_events_per_s_cpu": binned["events_per_s_cpu"],
        "evmamba_binned_config": TOKEN_CONFIGS[HEADLINE_BINNED],
        "tonic_toframe_events_per_s": toframe["events_per_s"],
        "tonic_toframe_events_per_s_cpu": toframe["events_per_s_cpu"],
        "speedup_vs_tonic_toframe": ours["events_per_s"] / toframe["events_per_s"],
        "speedup_vs_tonic_toframe_cpu": ours["events_per_s_cpu"] / toframe["events_per_s_cpu"],
        "frames_events_per_s": frames["events_per_s"],
        "frames_speedup_vs_tonic_toframe": frames["speedup_vs_tonic"],
        "frames_speedup_vs_tonic_toframe_cpu": frames["speedup_vs_tonic_cpu"],
    }

    headers = [
        "input",
        "operation",
        "implementation",
        "events",
        "M ev/s (wall)",
        "M ev/s (cpu)",
        "x tonic (wall)",
        "x tonic (cpu)",
    ]
    rows = []
    for r in results:
        rows.append([
            r["input"], r["operation"], r["implementation"], r["events"], r["events_per_s"] / 1e6,
            r["events_per_s_cpu"] / 1e6, r.get("speedup_vs_tonic", ""), r.get("speedup_vs_tonic_cpu", ""),
        ])
    print(format_table(headers, rows))
    if first:
        print()
        labels = list(first)
        keys = list(first[labels[0]])
        print(format_table(["first call (s)", *labels], [[k, *(first[lab][k] for lab in labels)] for k in keys]))
    load_after = _load()
    print(f"\nload average (1 min) before/after: {load_before:.2f} / {load_after:.2f} on {os.cpu_count()} CPUs")
    mev = lambda key: summary[key] / 1e6  # noqa: E731
    print(
        f"tokens + dt: {mev('evmamba_events_per_s'):.1f} M ev/s "
        f"({mev('evmamba_events_per_s_cpu'):.1f} per CPU-second), "
        f"{summary['speedup_vs_tonic_toframe']:.1f}x tonic ToFrame; "
        f"with 5 ms bins {mev('evmamba_binned_events_per_s'):.1f} "
        f"({mev('evmamba_binned_events_per_s_cpu'):.1f}); "
        f"frames {summary['frames_speedup_vs_tonic_toframe']:.1f}x ToFrame "
        f"({summary['frames_speedup_vs_tonic_toframe_cpu']:.1f}x per CPU-second), identical output"
    )
    write_json(args.json, {
        "benchmark": "binning",
        "quick": quick,
        "synthetic_events": n_events,
        "repeats": repeats,
        "load_average_before": load_before,
        "load_average_after": load_after,
        **summary,
        "first_call_s": first,
        "results": results,
    })
    return 0
