"""``evmamba bench scan``: throughput of the selective scan on the CPU, PyTorch reference and fused numba path.

Reports elements per second, counting one element per ``(batch, channel, time, state)`` entry of the
recurrence (``B * D * L * N`` per call), for the forward pass alone and for forward + backward.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ..core.output import format_table, write_json
from ..kernels import selective_scan_ref
from ..kernels.cpu_scan import selective_scan_cpu

PATHS = {"reference": selective_scan_ref, "numba": selective_scan_cpu}

EXAMPLE = "evmamba bench scan --quick"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=int, default=8, help="batch size B (default 8)")
    parser.add_argument("--dim", type=int, default=256, help="channels D (d_inner)")
    parser.add_argument("--length", type=int, default=4096, help="sequence length L (default 4096)")
    parser.add_argument("--state", type=int, default=16, help="state size N")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--paths", nargs="+", choices=sorted(PATHS), default=sorted(PATHS),
                        help="implementations to time (default: all)")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    parser.add_argument("--json", default=None, help="write the results here")


def _problem(b: int, d: int, L: int, n: int, event: bool, grad: bool):
    g = torch.Generator().manual_seed(0)
    t = lambda *s: torch.randn(*s, generator=g).requires_grad_(grad)  # noqa: E731
    return dict(
        u=t(b, d, L), delta=t(b, d, L), A=-(torch.rand(d, n, generator=g) + 0.5).requires_grad_(grad),
        B=t(b, n, L), C=t(b, n, L), D=t(d), z=t(b, d, L), delta_bias=t(d), rate=t(d),
        dt=(torch.rand(b, L, generator=g) * 5.0) if event else None,
    )


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    b, d, L, n = (2, 32, 512, 16) if args.quick else (args.batch, args.dim, args.length, args.state)
    elements = b * d * L * n
    rows, results = [], []
    for path in args.paths:
        scan = PATHS[path]
        for event in (True, False):
            p = _problem(b, d, L, n, event, grad=False)
            with torch.no_grad():
                t_fwd = _time(lambda scan=scan, p=p: scan(**p), args.repeats)
            q = _problem(b, d, L, n, event, grad=True)
            t_fb = _time(lambda scan=scan, q=q: scan(**q).square().mean().backward(), max(1, args.repeats // 2))
            mode = "event" if event else "standard"
            for what, secs in (("forward", t_fwd), ("forward+backward", t_fb)):
                rate = elements / secs
                rows.append([path, mode, what, f"{secs * 1e3:.1f}", f"{rate / 1e6:.1f}"])
                results.append({"path": path, "mode": mode, "pass": what, "seconds": secs, "elements_per_s": rate})
    print(f"selective scan on the CPU, B={b} D={d} L={L} N={n}, {torch.get_num_threads()} torch threads")
    print(format_table(["path", "mode", "pass", "ms", "M elements/s"], rows))
    write_json(args.json, {"benchmark": "scan", "shape": {"B": b, "D": d, "L": L, "N": n}, "results": results})
    return 0
