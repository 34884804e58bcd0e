"""``evmamba bench readers``: events/s of our Prophesee EVT 2.0 / EVT 3.0 decoders, with expelliarmus beside them.

Inputs: the staged recordings ``format_samples/expelliarmus_sample_files/evt2_sample.raw`` (539,481 events)
and ``evt3_sample.raw`` (219,596 events), as they are and enlarged to about ``--events`` events (10 M by
default). An enlarged file repeats the recording's words, each copy with its TIME_HIGH words moved on by
the recording's span, so that it is a valid stream whose times keep increasing; it is written to a
temporary directory and removed afterwards. Our decoder must return copies x the recording's events.

Rows, per input: ``read_prophesee_evt*`` (file -> checked events: what ``read_events`` runs),
``decode_evt*`` (bytes already in memory -> events, no checks) and, when ``expelliarmus`` is importable,
its ``Wizard.read`` (file -> events). expelliarmus is timed only: its EVT 3.0 timestamps are wrong (see
docs/datasets.md), and its output is not compared.

Timing: median of ``--repeats`` calls after a warm-up call (which also compiles or loads the numba
loops), as wall-clock time and as the thread's CPU time, on one thread. On a shared machine the CPU
column is the steadier one.

JSON: ``results`` (one row per input and implementation) and, for the enlarged inputs,
``evt2_read_events_per_s``, ``evt3_read_events_per_s`` (ours, file -> checked events) with their
``..._cpu`` variants and, when expelliarmus ran, ``evt2_read_speedup_vs_expelliarmus`` /
``evt3_read_speedup_vs_expelliarmus`` (wall and ``..._cpu``).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from ..core.output import format_table, write_json
from .common import load_average, time_calls

SAMPLES = {"evt2": "evt2_sample.raw", "evt3": "evt3_sample.raw"}
# Word layout needed to move TIME_HIGH on: (word dtype, type shift, TIME_HIGH type, payload mask).
_TIME_HIGH = {"evt2": ("<u4", 28, 0x8, 0xFFFFFFF), "evt3": ("<u2", 12, 0x8, 0xFFF)}


EXAMPLE = "evmamba bench readers --json readers.json"

def configure(parser) -> None:
    parser.add_argument("--quick", action="store_true", help="about 2 M events per enlarged input, fewer repeats")
    parser.add_argument("--json", metavar="PATH", default=None, help="write the results as JSON")
    parser.add_argument("--events", type=int, default=None, help="events per enlarged input (default 1e7)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per measurement (default 7)")


def enlarge(data: bytes, encoding: str, copies: int) -> tuple[bytes, int]:
    """``(file bytes, header length)`` of a recording repeated ``copies`` times, TIME_HIGH moved on each time.

    ``data`` is a whole ``.raw`` file of ``encoding`` ``"evt2"`` or ``"evt3"``. Copy ``k`` has every TIME_HIGH
    payload raised by ``k`` times the recording's TIME_HIGH span (modulo the payload width: the decoder
    counts the wraps), so times keep increasing from one copy to the next.
    """
    from ..pipeline.readers import read_prophesee_header

    if copies < 1:
        raise ValueError(f"copies must be >= 1; got {copies}")
    _, start = read_prophesee_header(data, encoding)
    dtype, shift, high_type, payload = _TIME_HIGH[encoding]
    words = np.frombuffer(data, dtype=dtype, offset=start)
    if words.size * words.itemsize != len(data) - start:
        raise ValueError(f"{encoding} sample: the data after the header is not whole words")
    is_high = (words >> shift) == high_type
    if not is_high.any():
        raise ValueError(f"{encoding} sample: no TIME_HIGH word to move on")
    high = (words[is_high] & payload).astype(np.int64)
    span = int(high[-1] - high[0]) + 1
    parts = []
    for k in range(copies):
        part = words.copy()
        part[is_high] = (high_type << shift) | ((high + k * span) & payload)
        parts.append(part)
    return data[:start] + np.concatenate(parts).astype(dtype).tobytes(), start


def _row(results: list, data: str, impl: str, n_events: int, timing: tuple[float, float], **extra) -> dict:
    wall, cpu = timing
    row = {
        "input": data, "implementation": impl, "events": n_events, "steady_wall_s": wall, "steady_cpu_s": cpu,
        "events_per_s": n_events / wall if wall > 0 else float("inf"),
        "events_per_s_cpu": n_events / cpu if cpu > 0 else float("inf"),
        **extra,
    }
    results.append(row)
    return row


def _bench_file(label: str, path: Path, encoding: str, expected: int, repeats: int, results: list) -> None:
    from ..pipeline.readers import read_prophesee_evt2, read_prophesee_evt3, read_prophesee_header
    from ..pipeline.readers.evt import decode_evt2, decode_evt3

    read = read_prophesee_evt2 if encoding == "evt2" else read_prophesee_evt3
    decode = decode_evt2 if encoding == "evt2" else decode_evt3
    events, _ = read(path)
    if events.size != expected:
        raise AssertionError(f"{label}: our {encoding} reader returned {events.size} events, expected {expected}")
    data = path.read_bytes()
    _, start = read_prophesee_header(data, str(path))
    body = memoryview(data)[start:]
    ours = _row(results, label, f"evmamba read_prophesee_{encoding}", expected, time_calls(lambda: read(path), repeats))
    _row(results, label, f"evmamba decode_{encoding} (in memory)", expected, time_calls(lambda: decode(body), repeats))
    try:
        from expelliarmus import Wizard
    except ImportError:
        return
    wizard = Wizard(encoding=encoding)
    n_theirs = len(wizard.read(str(path)))
    theirs = _row(
        results, label, "expelliarmus Wizard.read", n_theirs, time_calls(lambda: wizard.read(str(path)), repeats)
    )
    ours["speedup_vs_expelliarmus"] = ours["events_per_s"] / theirs["events_per_s"]
    ours["speedup_vs_expelliarmus_cpu"] = ours["events_per_s_cpu"] / theirs["events_per_s_cpu"]


def run(args) -> int:
    from tqdm import tqdm

    from ..datasets.paths import require_data

    quick = bool(args.quick)
    target = args.events or (2_000_000 if quick else 10_000_000)
    repeats = args.repeats or (3 if quick else 7)
    if target < 1 or repeats < 1:
        print("--events and --repeats must be positive", file=sys.stderr)
        return 2
    load_before = load_average()
    results: list[dict] = []
    summary: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="evmamba-bench-readers-") as tmp:
        for encoding, name in tqdm(SAMPLES.items(), desc="formats", unit="format"):
            src = require_data("format_samples", "expelliarmus_sample_files", name)
            from ..pipeline.readers import read_events

            n_sample = read_events(src)[0].size
            _bench_file(f"{name} (as staged)", src, encoding, n_sample, repeats, results)
            copies = max(1, round(target / n_sample))
            big_bytes, _ = enlarge(src.read_bytes(), encoding, copies)
            big = Path(tmp) / f"{encoding}_x{copies}.raw"
            big.write_bytes(big_bytes)
            del big_bytes
            label = f"{name} x{copies}"
            _bench_file(label, big, encoding, copies * n_sample, repeats, results)
            ours = next(r for r in results if r["input"] == label and r["implementation"].startswith("evmamba read"))
            summary[f"{encoding}_read_events_per_s"] = ours["events_per_s"]
            summary[f"{encoding}_read_events_per_s_cpu"] = ours["events_per_s_cpu"]
            if "speedup_vs_expelliarmus" in ours:
                summary[f"{encoding}_read_speedup_vs_expelliarmus"] = ours["speedup_vs_expelliarmus"]
                summary[f"{encoding}_read_speedup_vs_expelliarmus_cpu"] = ours["speedup_vs_expelliarmus_cpu"]
            big.unlink()

    headers = [
        "input",
        "implementation",
        "events",
        "M ev/s (wall)",
        "M ev/s (cpu)",
        "x expelliarmus (wall)",
        "x expelliarmus (cpu)",
    ]
    rows = [
        [r["input"], r["implementation"], r["events"], r["events_per_s"] / 1e6, r["events_per_s_cpu"] / 1e6,
         r.get("speedup_vs_expelliarmus", ""), r.get("speedup_vs_expelliarmus_cpu", "")]
        for r in results
    ]
    print(format_table(headers, rows))
    load_after = load_average()
    print(f"\nload average (1 min) before/after: {load_before:.2f} / {load_after:.2f} on {os.cpu_count()} CPUs")
    write_json(args.json, {
        "benchmark": "readers",
        "quick": quick,
        "target_events": target,
        "repeats": repeats,
        "load_average_before": load_before,
        "load_average_after": load_after,
        **summary,
        "results": results,
    })
    return 0
