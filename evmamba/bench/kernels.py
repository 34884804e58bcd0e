"""``evmamba bench kernels``: the Triton scan, its backward and the fused step against the GPU's copy bandwidth.

What it measures (CUDA device required), each a median of ``--reps`` timed runs (device events) after warm-up:

1. Copy bandwidth: a large device-to-device copy, counting bytes read plus bytes written. Every scan time
   below is also given as achieved bytes/s (the fewest bytes the operation must move) over this number.
2. Selective scan forward (no autograd) and forward + backward (all gradients a layer trains: ``u``, ``delta``,
   ``A``, ``B``, ``C``, ``D``, ``z``, ``delta`` bias and, in event mode, the rate) at
   ``(B, D, L, N) = (16, 256, 8192, 16), (8, 1536, 2048, 16), (64, 256, 2048, 16)``; float32 and bfloat16;
   event and standard mode; ``mamba`` discretization, ``z`` and ``D`` present, contiguous ``(B, D, L)`` inputs.
3. The layer's depthwise causal convolution (PyTorch's ``conv1d``, forward and forward + backward) at the same
   shapes, to show whether it is worth a kernel of its own next to the scan.
4. Step latency of one ``Mamba`` layer (``in_proj``, fused step kernel, ``out_proj``) at batch 1 and 64 for
   ``d_model`` 64/128/256: eager (host clock over many consecutive steps, launch overhead included) and
   replayed as a CUDA graph; and the fused step kernel alone.

``--sweep`` first times a few tile shapes of the forward and backward kernels at (16, 256, 8192).

``--peers [FOLDER]`` also times the peers (:mod:`evmamba.bench.peers`) on the same inputs in the same run, each
after checking that its outputs and gradients agree with ours (max relative difference, printed; a disagreement
is reported in the row): standard-mode rows against mamba_ssm's ``selective_scan_fn`` and lrnnx's, event-mode
rows against lrnnx's scan with ``deltaA = dt * softplus(rate)`` materialised as ``(B, D, L)`` (its input; the
time to compute it is counted as lrnnx's). mamba_ssm has no event mode. ``--scan-only`` skips the convolution,
step and profile parts.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

from ..core.output import format_table, write_json
from .common import HOST_REPS, host_ms

SCAN_SHAPES = [(16, 256, 8192, 16), (8, 1536, 2048, 16), (64, 256, 2048, 16)]
STEP_MODELS = [64, 128, 256]
STEP_BATCHES = [1, 64]

# Targets on one H200 (fp32, event mode unless noted), in milliseconds / microseconds.
TARGETS = {
    ("fwd", (16, 256, 8192, 16), "float32", "event"): 0.45,
    ("fwd+bwd", (16, 256, 8192, 16), "float32", "event"): 2.0,
    ("fwd", (8, 1536, 2048, 16), "float32", "event"): 0.35,
    ("fwd", (16, 256, 8192, 16), "bfloat16", "event"): 0.3,
}
STEP_TARGETS_US = {("eager", 1, 128): 30.0, ("graph", 1, 128): 10.0}
EXAMPLE = "evmamba bench kernels --quick --json kernels.json   # on a CUDA GPU"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", metavar="PATH", default=None, help="write all numbers to this JSON file")
    parser.add_argument("--reps", type=int, default=30, help="timed runs per measurement (median; default 30)")
    parser.add_argument("--quick", action="store_true", help="first scan shape only, fewer step sizes")
    parser.add_argument("--sweep", action="store_true", help="also time a few tile shapes of the scan kernels")
    parser.add_argument("--no-steps", action="store_true", help="skip the step-latency part")
    parser.add_argument("--scan-only", action="store_true", help="time the selective scan only (no conv, step or "
                        "profile parts)")
    parser.add_argument("--peers", nargs="?", const="", default=None, metavar="FOLDER",
                        help="also time mamba_ssm's and lrnnx's scans on the same inputs, imported from FOLDER (as "
                        "built by scripts/peers/build.sh; default $EVMAMBA_PEERS_SITE or /tmp/peers-site)")


def _median_ms(fn: Callable[[], Any], reps: int, warmup: int = 3) -> float:
    """Median device time of ``fn`` in ms, by CUDA events around each run, after ``warmup`` runs."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    events = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        events.append((start, end))
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events)


def _host_us_per_call(fn: Callable[[], Any], calls: int = 200, rounds: int = 5) -> float:
    """Median over ``rounds`` of (host wall time of ``calls`` back-to-back calls, synchronized) / ``calls``, µs."""
    import torch

    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    per_call = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        per_call.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(per_call)


def copy_bandwidth(reps: int) -> float:
    """Device-to-device copy of 2 GiB: (bytes read + bytes written) / median time, in bytes/s."""
    import torch

    n = 2 * 1024**3 // 4
    src = torch.randn(n, device="cuda")
    dst = torch.empty_like(src)
    ms = _median_ms(lambda: dst.copy_(src), reps)
    src = dst = None  # free the 4 GiB before emptying the cache
    torch.cuda.empty_cache()
    return 2 * n * 4 / (ms * 1e-3)


def scan_inputs(batch, dim, L, n, dtype, event, seed=0):
    import torch

    g = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *s: torch.randn(*s, device="cuda", generator=g)  # noqa: E731
    return dict(
        u=r(batch, dim, L).to(dtype), delta=(r(batch, dim, L) * 0.5).to(dtype),
        A=-(torch.rand(dim, n, device="cuda", generator=g) * 3 + 0.05), B=r(batch, n, L).to(dtype),
        C=r(batch, n, L).to(dtype), D=r(dim), z=r(batch, dim, L).to(dtype), delta_bias=r(dim) * 0.5 - 3.0,
        dt=torch.rand(batch, L, device="cuda", generator=g) * 2 if event else None,
        rate=r(dim) - 3.0 if event else None,
    )


def scan_bytes(batch, dim, L, n, elt, event, backward, chunk) -> int:
    """Fewest bytes each pass must move: every input read once, every output written once."""
    bdl, bnl, bl = batch * dim * L, batch * n * L, batch * L
    fwd = 3 * bdl * elt + 2 * bnl * elt + (bl * 4 if event else 0) + bdl * elt  # u, delta, z, B, C, ts -> y
    if not backward:
        return fwd
    states = batch * dim * (-(-L // chunk)) * n * 4
    bwd_read = 4 * bdl * elt + 2 * bnl * elt + (bl * 4 if event else 0) + states  # u, delta, z, dy, B, C, ts
    bwd_write = 3 * bdl * elt + 2 * bnl * elt  # du, ddelta, dz, dB, dC
    return fwd + states + bwd_read + bwd_write


def bench_scan(shape, dtype_name, event, reps, peers=None) -> dict[str, Any]:
    """Our scan's forward and forward + backward times at ``shape``; with ``peers`` (a
    :class:`~evmamba.bench.peers.Peers`) also each peer's on the same inputs (see :func:`peer_scans`)."""
    import torch

    from evmamba.kernels.triton_scan import CHUNK, selective_scan_triton

    dtype = getattr(torch, dtype_name)
    batch, dim, L, n = shape
    p = scan_inputs(batch, dim, L, n, dtype, event)
    with torch.no_grad():
        fwd_ms = _median_ms(lambda: selective_scan_triton(**p), reps)
    trainable = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"] + (["rate"] if event else [])
    pg = {k: (v.clone().requires_grad_() if k in trainable else v) for k, v in p.items()}
    dy = torch.randn(batch, dim, L, device="cuda").to(dtype)
    leaves = [pg[k] for k in trainable]

    def fwd_bwd():
        y = selective_scan_triton(**pg)
        torch.autograd.grad(y, leaves, dy)

    fb_ms = _median_ms(fwd_bwd, reps)
    elt = torch.finfo(dtype).bits // 8
    record = dict(
        shape=list(shape), dtype=dtype_name, mode="event" if event else "standard",
        fwd_ms=fwd_ms, fwd_bytes=scan_bytes(batch, dim, L, n, elt, event, False, CHUNK),
        fwd_bwd_ms=fb_ms, fwd_bwd_bytes=scan_bytes(batch, dim, L, n, elt, event, True, CHUNK),
        # At the smaller shapes the forward's kernels take about as long as the host needs to reach the
        # backward's launch; a host time near fwd_bwd_ms says the figure is the host's.
        host_fwd_bwd_ms=host_ms(fwd_bwd, min(reps, HOST_REPS)),
    )
    if peers is not None:
        with torch.no_grad():
            y_ours = selective_scan_triton(**p)
        grads_ours = torch.autograd.grad(selective_scan_triton(**pg), leaves, dy)
        record["peers"] = []
        for name, fn in peer_scans(peers, event):
            if name == "lrnnx" and dtype_name != "float32":
                record["peers"].append(dict(peer=name, skipped=LRNNX_FP32_ONLY, ours_fwd_ms=fwd_ms,
                                            ours_fwd_bwd_ms=fb_ms))
                continue
            record["peers"].append(_time_peer_scan(name, fn, p, pg, trainable, dy, y_ours, grads_ours, dtype_name,
                                                   reps, fwd_ms, fb_ms, ours_host_ms=record["host_fwd_bwd_ms"]))
    return record


#: lrnnx's compiled scan instantiates float32 inputs only (its C++ refuses any other), so it sits out bfloat16.
LRNNX_FP32_ONLY = "lrnnx's CUDA scan takes float32 inputs only"


def peer_scans(peers, event: bool) -> list[tuple[str, Callable[..., Any]]]:
    """The peers' scans that compute what ours computes in this mode, as functions of our keyword arguments
    (``u, delta, A, B, C, D, z, delta_bias, dt, rate``). Their ``B``, ``C`` are ``(B, N, L)`` like ours (they
    also take ``(B, G, N, L)``); ``D`` and ``delta_bias`` float32 as here; ``delta_softplus=True`` as ours."""
    import torch.nn.functional as F

    out = []
    if not event and peers.mamba_scan is not None:
        scan = peers.mamba_scan
        out.append(("mamba_ssm", lambda u, delta, A, B, C, D, z, delta_bias, **_: scan(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus=True)))
    if peers.lrnnx_scan is not None:
        scan = peers.lrnnx_scan
        if event:
            # lrnnx takes the decay step itself, (B, D, L) in the input dtype, with the strides of delta.
            def lrnnx_event(u, delta, A, B, C, D, z, delta_bias, dt, rate, **_):
                dtA = (dt[:, None, :] * F.softplus(rate)[None, :, None]).to(u.dtype).contiguous()
                return scan(u, delta, A, B, C, D, z, delta_bias, dtA, True, False, "mamba")

            out.append(("lrnnx", lrnnx_event))
        else:
            out.append(("lrnnx", lambda u, delta, A, B, C, D, z, delta_bias, **_: scan(
                u, delta, A, B, C, D, z, delta_bias, None, True, False, "mamba")))
    return out


def _time_peer_scan(name, fn, p, pg, trainable, dy, y_ours, grads_ours, dtype_name, reps, fwd_ms, fb_ms,
                    timer=None, ours_host_ms=None):
    """One peer on our inputs: agreement of the output and of every gradient, then its times (``timer(fn,
    reps) -> ms``, CUDA events by default) and its host time for one forward + backward (:func:`host_ms`).
    Any error is recorded in the row (and printed), never raised."""
    import torch

    from .peers import agreement, max_rel_diff

    timer = _median_ms if timer is None else timer

    row: dict[str, Any] = dict(peer=name, ours_fwd_ms=fwd_ms, ours_fwd_bwd_ms=fb_ms, ours_host_ms=ours_host_ms)
    try:
        with torch.no_grad():
            y_peer = fn(**p)
        row["y_rel_diff"] = max_rel_diff(y_ours, y_peer)
        leaves = [pg[k] for k in trainable]
        grads_peer = torch.autograd.grad(fn(**pg), leaves, dy, allow_unused=True)
        worst, worst_name = 0.0, ""
        for k, g_ours, g_peer in zip(trainable, grads_ours, grads_peer):
            d = float("inf") if g_peer is None else max_rel_diff(g_ours, g_peer)
            if d > worst or not worst_name:
                worst, worst_name = d, k
        row["grad_rel_diff"], row["grad_worst"] = worst, worst_name
        row["agree"] = "ok" if agreement(max(row["y_rel_diff"], worst), dtype_name) == "ok" else "DIFFERS"
        with torch.no_grad():
            row["peer_fwd_ms"] = timer(lambda: fn(**p), reps)

        def fwd_bwd():
            torch.autograd.grad(fn(**pg), leaves, dy, allow_unused=True)

        row["peer_fwd_bwd_ms"] = timer(fwd_bwd, reps)
        row["peer_host_ms"] = host_ms(fwd_bwd, min(reps, HOST_REPS))
        row["fwd_speedup"] = row["peer_fwd_ms"] / fwd_ms
        row["fwd_bwd_speedup"] = row["peer_fwd_bwd_ms"] / fb_ms
    except Exception as exc:  # noqa: BLE001 - a peer's failure is a result to report
        row["error"] = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]
        print(f"  peer {name} failed: {row['error']}", flush=True)
    return row


def bench_conv(shape, dtype_name, reps) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    dtype = getattr(torch, dtype_name)
    batch, dim, L, _ = shape
    k = 4
    x = torch.randn(batch, dim, L, device="cuda", dtype=dtype, requires_grad=True)
    w = torch.randn(dim, 1, k, device="cuda", dtype=dtype, requires_grad=True)
    bias = torch.randn(dim, device="cuda", dtype=dtype, requires_grad=True)
    conv = lambda: F.conv1d(x, w, bias, padding=k - 1, groups=dim)[..., :L]  # noqa: E731
    with torch.no_grad():
        fwd_ms = _median_ms(conv, reps)
    dy = torch.randn(batch, dim, L, device="cuda", dtype=dtype)
    fb_ms = _median_ms(lambda: torch.autograd.grad(conv(), [x, w, bias], dy), reps)
    return dict(shape=list(shape), dtype=dtype_name, fwd_ms=fwd_ms, fwd_bwd_ms=fb_ms)


def bench_step(d_model, batch, event, reps) -> dict[str, Any]:
    import torch

    from evmamba.kernels.triton_step import mamba_step_triton
    from evmamba.model import Mamba
    from evmamba.model.cuda_graph import CudaGraphStep

    torch.manual_seed(0)
    layer = Mamba(d_model, discretization="mamba").cuda().eval()
    cache = layer.allocate_inference_cache(batch, 0)
    x = torch.randn(batch, 1, d_model, device="cuda")
    ts = torch.rand(batch, 1, device="cuda") if event else None

    def step(x_, ts_=None):
        return layer.step(x_, cache, ts_)[0]

    with torch.no_grad():
        eager_us = _host_us_per_call(lambda: step(x, ts))
        args = (x, ts) if event else (x,)
        graph = CudaGraphStep(step, args, state=[cache["conv_state"], cache["lrnn_state"]])
        graph_us = _host_us_per_call(lambda: graph(*args))
        graph_dev_ms = _median_ms(lambda: graph(*args), reps)
        # The fused kernel alone (between in_proj and out_proj): host time per eager call, and device time
        # from a graph of it (no launch gaps).
        xz = layer.in_proj(x[:, 0])
        A = -torch.exp(layer.A_log.float())
        w = (layer.conv1d.weight[:, 0, :], layer.conv1d.bias, layer.x_proj.weight, layer.dt_proj.weight,
             layer.dt_proj.bias, A, layer.D)
        ts1 = None if ts is None else ts[:, 0]

        def kernel():
            return mamba_step_triton(xz, cache["conv_state"], cache["lrnn_state"], *w, dt=ts1,
                                     rate=layer.dtA_proj.bias)

        kernel_eager_us = _host_us_per_call(kernel)
        # Device time: REPEAT calls recorded in one graph, replay time / REPEAT (no host submission inside).
        kernel_dev_us = _graph_device_us(lambda: [kernel() for _ in range(STEP_REPEAT)], reps) / STEP_REPEAT
        # A stack of layers stepped in one graph: per-layer device time of the whole layer step.
        stack = [Mamba(d_model, discretization="mamba").cuda().eval() for _ in range(STEP_REPEAT)]
        caches = [m.allocate_inference_cache(batch, 0) for m in stack]

        def stack_step():
            h = x
            for m, c in zip(stack, caches):
                h = m.step(h, c, ts)[0]
            return h

        stack_dev_us = _graph_device_us(stack_step, reps) / STEP_REPEAT
    return dict(
        d_model=d_model,
        batch=batch,
        mode="event" if event else "standard",
        eager_us=eager_us,
        graph_us=graph_us,
        graph_call_events_us=graph_dev_ms * 1e3,
        stack_graph_device_us_per_layer=stack_dev_us,
        kernel_eager_us=kernel_eager_us,
        kernel_device_us=kernel_dev_us,
    )


STEP_REPEAT = 8


def _graph_device_us(fn: Callable[[], Any], reps: int) -> float:
    """Median device time (µs) of one replay of a CUDA graph of ``fn`` (events around ``replay``)."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return _median_ms(graph.replay, reps) * 1e3


def profile_breakdown(shape=(16, 256, 8192, 16), event=True) -> list[dict[str, Any]]:
    """Device time per kernel of one forward + backward (torch profiler), fp32."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from evmamba.kernels.triton_scan import selective_scan_triton

    p = scan_inputs(*shape, torch.float32, event)
    trainable = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"] + (["rate"] if event else [])
    pg = {k: (v.clone().requires_grad_() if k in trainable else v) for k, v in p.items()}
    dy = torch.randn(*shape[:3], device="cuda")
    leaves = [pg[k] for k in trainable]
    for _ in range(3):
        torch.autograd.grad(selective_scan_triton(**pg), leaves, dy)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            torch.autograd.grad(selective_scan_triton(**pg), leaves, dy)
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        dev_us = getattr(e, "device_time_total", None)
        if dev_us is None:
            dev_us = getattr(e, "cuda_time_total", 0.0)
        if dev_us > 0:
            rows.append(dict(name=e.key[:70], calls=e.count // 5, us_per_iter=dev_us / 5))
    rows.sort(key=lambda r: -r["us_per_iter"])
    return rows[:12]


def sweep(reps) -> list[dict[str, Any]]:
    """Time a few tile shapes and segment targets of the forward and backward kernels at (16, 256, 8192, 16),
    fp32, event mode."""
    import torch

    from evmamba.kernels import triton_scan
    from evmamba.kernels.triton_scan import LaunchConfig, selective_scan_triton

    shape = (16, 256, 8192, 16)
    p = scan_inputs(*shape, torch.float32, True)
    trainable = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "rate"]
    pg = {k: (v.clone().requires_grad_() if k in trainable else v) for k, v in p.items()}
    dy = torch.randn(*shape[:3], device="cuda")
    rows = []
    T = triton_scan.CHUNK
    fwd_cfgs = [LaunchConfig(T, 16, 8, 2, 4), LaunchConfig(T, 32, 4, 4, 4), LaunchConfig(T, 8, 4, 4, 1)]
    bwd_cfgs = [LaunchConfig(T, 8, 4, 4, 1), LaunchConfig(T, 16, 4, 4, 2)]
    default_target = dict(triton_scan.TARGET_WARPS_PER_SM)
    try:
        for target in (8, 16, 0):
            # target 0: no segments (one program per row and channel block)
            triton_scan.TARGET_WARPS_PER_SM = {"fwd": max(target, 1), "bwd": max(target, 1)}
            triton_scan.CHUNKS_PER_SEGMENT_OVERRIDE = 10**9 if target == 0 else None
            for cfg in fwd_cfgs:
                triton_scan.CONFIG_OVERRIDES["fwd"] = cfg
                with torch.no_grad():
                    ms = _median_ms(lambda: selective_scan_triton(**p), reps)
                rows.append(dict(kernel="fwd", config=cfg.__dict__, target_warps=target, ms=ms))
                print(f"  sweep fwd {cfg} target {target}: {ms:.4f} ms", flush=True)
            triton_scan.CONFIG_OVERRIDES["fwd"] = None
            y = selective_scan_triton(**pg)
            for cfg in bwd_cfgs:
                triton_scan.CONFIG_OVERRIDES["bwd"] = cfg
                leaves = [pg[k] for k in trainable]
                ms = _median_ms(lambda y=y, leaves=leaves: torch.autograd.grad(y, leaves, dy, retain_graph=True), reps)
                rows.append(dict(kernel="bwd", config=cfg.__dict__, target_warps=target, ms=ms))
                print(f"  sweep bwd {cfg} target {target}: {ms:.4f} ms", flush=True)
            triton_scan.CONFIG_OVERRIDES["bwd"] = None
    finally:
        triton_scan.CONFIG_OVERRIDES["fwd"] = None
        triton_scan.CONFIG_OVERRIDES["bwd"] = None
        triton_scan.TARGET_WARPS_PER_SM = default_target
        triton_scan.CHUNKS_PER_SEGMENT_OVERRIDE = None
    return rows


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    peers = None
    if args.peers is not None:
        from .peers import default_site, load_peers

        peers = load_peers(args.peers or default_site())
        report_peers(peers)
    if not torch.cuda.is_available():
        print("evmamba bench kernels: needs a CUDA GPU (none visible); nothing measured")
        return 1
    if args.reps < 20:
        print(f"note: --reps {args.reps} is below the 20 runs the numbers are meant to be a median of")
    record: dict[str, Any] = {"benchmark": "kernels", "reps": args.reps}
    if peers is not None:
        record["peers"] = peers.summary()
        if not peers.any:
            peers = None  # ours alone, as said above
    bw = copy_bandwidth(args.reps)
    record["copy_bandwidth_bytes_per_s"] = bw
    print(f"copy bandwidth (read + write): {bw / 1e12:.3f} TB/s")

    if args.sweep:
        record["sweep"] = sweep(args.reps)

    shapes = SCAN_SHAPES[:1] if args.quick else SCAN_SHAPES
    cases = [(s, dt, ev) for s in shapes for dt in ("float32", "bfloat16") for ev in (True, False)]
    scans, convs = [], []
    for shape, dt, ev in tqdm(cases, desc="scan", unit="case"):
        scans.append(bench_scan(shape, dt, ev, args.reps, peers))
        for row in scans[-1].get("peers", []):
            print("  " + _peer_line(scans[-1], row), flush=True)
        record["scan"] = scans
        write_json(args.json, record)  # what is measured so far survives a time limit
    if not args.scan_only:
        for shape in tqdm(shapes, desc="conv", unit="shape"):
            for dt in ("float32", "bfloat16"):
                convs.append(bench_conv(shape, dt, args.reps))
    record["scan"], record["conv"] = scans, convs

    rows = []
    for r in scans:
        fb_key = ("fwd+bwd", tuple(r["shape"]), r["dtype"], r["mode"])
        f_key = ("fwd", tuple(r["shape"]), r["dtype"], r["mode"])
        r["fwd_bw_fraction"] = r["fwd_bytes"] / (r["fwd_ms"] * 1e-3) / bw
        r["fwd_bwd_bw_fraction"] = r["fwd_bwd_bytes"] / (r["fwd_bwd_ms"] * 1e-3) / bw
        r["fwd_target_ms"] = TARGETS.get(f_key)
        r["fwd_bwd_target_ms"] = TARGETS.get(fb_key)
        rows.append([
            "x".join(map(str, r["shape"])), r["dtype"], r["mode"], r["fwd_ms"], r["fwd_bw_fraction"],
            r["fwd_bwd_ms"], r["fwd_bwd_bw_fraction"], r["host_fwd_bwd_ms"],
            "" if r["fwd_target_ms"] is None else f"{r['fwd_target_ms']}",
            "" if r["fwd_bwd_target_ms"] is None else f"{r['fwd_bwd_target_ms']}",
        ])
    print("\nselective scan (Triton), median ms; bw = minimum bytes / time / copy bandwidth; host f+b = the host's "
          "time to issue one forward + backward with the GPU idle")
    print(format_table(["B x D x L x N", "dtype", "mode", "fwd ms", "fwd bw", "fwd+bwd ms", "f+b bw", "host f+b",
                        "fwd target", "f+b target"], rows))

    if peers is not None:
        print_peer_table(scans)

    conv_rows = []
    for c in convs:
        scan_fb = next(r["fwd_bwd_ms"] for r in scans if r["shape"] == c["shape"] and r["dtype"] == c["dtype"]
                       and r["mode"] == "event")
        c["fwd_bwd_over_scan"] = c["fwd_bwd_ms"] / scan_fb
        conv_rows.append(["x".join(map(str, c["shape"][:3])), c["dtype"], c["fwd_ms"], c["fwd_bwd_ms"],
                          c["fwd_bwd_over_scan"]])
    if conv_rows:
        print("\ndepthwise causal conv1d (PyTorch, K = 4), median ms")
        print(format_table(["B x D x L", "dtype", "fwd ms", "fwd+bwd ms", "f+b / scan f+b"], conv_rows))

    if not (args.no_steps or args.scan_only):
        models = [128] if args.quick else STEP_MODELS
        steps = []
        for dm in tqdm(models, desc="step", unit="d_model"):
            for batch in STEP_BATCHES:
                for ev in (True, False):
                    steps.append(bench_step(dm, batch, ev, args.reps))
        record["step"] = steps
        step_rows = [[s["d_model"], s["batch"], s["mode"], s["eager_us"], s["graph_us"],
                      s["stack_graph_device_us_per_layer"], s["kernel_eager_us"], s["kernel_device_us"]] for s in steps]
        print("\nMamba layer step latency, µs per layer: eager layer.step (host clock); one layer replayed as a graph"
              " (host clock, input copies included); a graph of 8 layers (device time / 8); the fused kernel alone"
              " eager (host) and in a graph (device). Targets at batch 1, d_model 128: eager 30, graph 10")
        print(format_table(["d_model", "batch", "mode", "eager", "graph", "graph/layer (dev)", "kernel eager",
                            "kernel (dev)"], step_rows))
    if not (args.quick or args.scan_only):
        record["profile"] = profile_breakdown()
        print("\nfwd + bwd at 16x256x8192x16, fp32, event: device time per kernel (torch profiler)")
        print(format_table(["kernel", "calls", "µs"], [[r["name"], r["calls"], r["us_per_iter"]]
                                                        for r in record["profile"]]))
    write_json(args.json, record)
    return 0


def report_peers(peers) -> None:
    """Print which peers imported (with versions) and, plainly, each import that failed."""
    found = [f"{k} {v}" for k, v in peers.versions.items() if not k.endswith("_extension")]
    print("peers: " + (", ".join(found) if found else "none imported"))
    if peers.mamba_layer is not None:
        print("  mamba_ssm Mamba path: " + ("fused (causal_conv1d's CUDA conv, mamba_inner_fn)" if peers.mamba_fused
                                            else "unfused (causal_conv1d missing: PyTorch conv1d)"))
    for m in peers.messages:
        print(f"  {m}")


def _peer_line(scan: dict[str, Any], row: dict[str, Any]) -> str:
    what = f"{'x'.join(map(str, scan['shape']))} {scan['dtype']} {scan['mode']} vs {row['peer']}"
    if "skipped" in row:
        return f"{what}: skipped ({row['skipped']})"
    if "error" in row:
        return f"{what}: ERROR {row['error']}"
    return (f"{what}: fwd {row['ours_fwd_ms']:.4g} / {row['peer_fwd_ms']:.4g} ms ({row['fwd_speedup']:.3g}x), "
            f"fwd+bwd {row['ours_fwd_bwd_ms']:.4g} / {row['peer_fwd_bwd_ms']:.4g} ms ({row['fwd_bwd_speedup']:.3g}x), "
            f"rel diff y {row['y_rel_diff']:.2g} grads {row['grad_rel_diff']:.2g} ({row['grad_worst']}) {row['agree']}")


def print_peer_table(scans: list[dict[str, Any]]) -> None:
    """Ours and each peer from the same run: times, speed-up (peer time / ours) and agreement."""
    rows = []
    for r in scans:
        for p in r.get("peers", []):
            head = ["x".join(map(str, r["shape"])), r["dtype"], r["mode"], p["peer"]]
            if "skipped" in p:
                rows.append(head + [r["fwd_ms"], "", "", r["fwd_bwd_ms"], "", "", "", "", "skipped: float32 only"])
                continue
            if "error" in p:
                rows.append(head + [r["fwd_ms"], "", "", r["fwd_bwd_ms"], "", "", "", "", "ERROR: " + p["error"][:60]])
                continue
            host = "/".join("?" if p.get(k) is None else f"{p[k]:.3g}" for k in ("ours_host_ms", "peer_host_ms"))
            rows.append(head + [p["ours_fwd_ms"], p["peer_fwd_ms"], f"{p['fwd_speedup']:.2f}x", p["ours_fwd_bwd_ms"],
                                p["peer_fwd_bwd_ms"], f"{p['fwd_bwd_speedup']:.2f}x", host, f"{p['y_rel_diff']:.1e}",
                                f"{p['grad_rel_diff']:.1e} ({p['grad_worst']}) {p['agree']}"])
    print("\nselective scan, ours vs peers on the same inputs (median ms; speed-up = peer / ours; rel diff = max|ours -"
          " peer| / max|peer|)")
    print(format_table(["B x D x L x N", "dtype", "mode", "peer", "ours fwd", "peer fwd", "speed-up", "ours f+b",
                        "peer f+b", "speed-up", "host f+b ours/peer", "y diff", "grad diff"], rows))
