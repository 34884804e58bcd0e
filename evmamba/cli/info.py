"""evmamba info: describe event files, or the dataset of a config.

For a file: the format, sensor size, number of events, duration (first to last event), the mean event
rate and the peak rate over 10 ms windows, the polarity balance, whether the timestamps are in order
(files whose time goes backwards are described after a stable sort, and say so), the longest silence
between two events and the coordinate ranges.

For a config name or YAML path (as evmamba train takes it, with key.sub=value overrides): the dataset's
sensor size and classes and, per split (train, the config's train.val_split if any, and test, or the
--split values), the recordings per class and the events and duration per recording (min / median /
max), from reading every recording (or --max-recordings of them).

--json prints a JSON array with one record per target instead of the text.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

DESCRIPTION = __doc__.split("\n\n", 1)[1]
EXAMPLE = "evmamba info ../shared/data/format_samples/tonic_test_data/sample.aedat4 nmnist_small"

_OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "targets",
        nargs="+",
        metavar="FILE_OR_CONFIG",
        help="event files, config names (nmnist_small) or YAML paths; key.sub=value overrides apply to configs",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--split", action="append", default=None, metavar="SPLIT",
                        help="dataset split to describe (repeatable; default: train, validation, test)")
    parser.add_argument("--max-recordings", type=int, default=None, metavar="N",
                        help="read at most N recordings per split, spread evenly (default: all)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if args.max_recordings is not None and args.max_recordings < 1:
        print(f"evmamba info: --max-recordings must be a positive int; got {args.max_recordings}", file=sys.stderr)
        return 2
    overrides = [t for t in args.targets if _OVERRIDE.match(t) and not Path(t).exists()]
    targets = [t for t in args.targets if t not in overrides]
    if not targets:
        print("evmamba info: name at least one event file or config", file=sys.stderr)
        return 2
    records, failed = [], False
    for target in targets:
        try:
            record = describe(target, overrides, args.split, args.max_recordings, not args.no_progress)
        except (ValueError, TypeError, FileNotFoundError, OSError) as exc:
            print(f"evmamba info: {exc}", file=sys.stderr)
            failed = True
            continue
        records.append(record)
        if not args.json:
            print(format_record(record))
            print()
    if args.json:
        print(json.dumps(records, indent=2))
    return 1 if failed else 0


def describe(target: str, overrides: list[str], splits: list[str] | None, max_recordings: int | None,
             progress: bool) -> dict[str, Any]:
    """The record of one target: an event file when the path is a file that is not YAML, else a config."""
    from ..datasets.inspect import file_info

    p = Path(target)
    if p.is_file() and p.suffix.lower() not in (".yaml", ".yml"):
        return {"kind": "file", **file_info(p)}
    if p.is_dir():
        raise ValueError(f"{p}: is a folder; name an event file in it, or a config whose dataset.root is the folder")
    from ..core.config import find_config

    try:
        find_config(target)
    except FileNotFoundError:
        raise FileNotFoundError(f"{target}: no such event file, and no config of that name in configs/") from None
    return dataset_record(target, overrides, splits, max_recordings, progress)


def dataset_record(config: str, overrides: list[str], splits: list[str] | None, max_recordings: int | None,
                   progress: bool) -> dict[str, Any]:
    """Sensor, classes and per-split figures of a config's dataset (see the module docstring)."""
    from ..core.config import find_config, load_config
    from ..datasets.inspect import split_info
    from ..datasets.registry import build_dataset
    from ..training.auto import resolve_config
    from ..training.data import section

    # A dataset-only config: the splits `evmamba train` would make (a folder without splits: the hold-out).
    cfg = resolve_config(load_config(config, overrides), progress=progress, echo=None, dataset_only=True)
    ds_cfg = section(cfg, "dataset")
    if not splits:
        val = section(cfg, "train").get("val_split")
        splits = ["train", *([str(val)] if val else []), "test"]
    where = find_config(config).resolve()
    try:
        where = where.relative_to(Path.cwd().resolve())
    except ValueError:
        pass  # outside the current folder: keep the absolute path
    record: dict[str, Any] = {"kind": "dataset", "config": str(where), "dataset": ds_cfg.get("name"),
                              "sensor_size": None, "classes": None, "splits": {}}
    for split in splits:
        ds = build_dataset(ds_cfg, split)
        if record["classes"] is None:
            record["sensor_size"] = [int(v) for v in ds.sensor_size]
            record["classes"] = [str(c) for c in ds.classes]
        record["splits"][split] = split_info(ds, max_recordings, progress)
    val_fraction = section(cfg, "train").get("val_fraction")
    if val_fraction:
        record["train_val_fraction"] = float(val_fraction)
    return record


# ---------------------------------------------------------------------------------------------- text
def _n(v) -> str:
    return "-" if v is None else f"{v:,}" if isinstance(v, int) else f"{v:,.1f}"


def _us(v) -> str:
    if v is None:
        return "-"
    if abs(v) >= 1_000_000:
        return f"{v / 1e6:.3f} s"
    if abs(v) >= 1000:
        return f"{v / 1000:.2f} ms"
    return f"{int(v)} µs"


def _rate(v) -> str:
    if v is None:
        return "-"
    return f"{v / 1e6:.3g} M ev/s" if v >= 1e6 else f"{v / 1e3:.3g} k ev/s" if v >= 1e3 else f"{v:.3g} ev/s"


def format_record(r: dict[str, Any]) -> str:
    """The text ``evmamba info`` prints for one record."""
    return _format_file(r) if r["kind"] == "file" else _format_dataset(r)


def _sensor(size) -> str:
    w, h, p = size
    return f"{w} x {h}, {p} polarit{'y' if p == 1 else 'ies'}" + ("  (spike data: x = channel)" if h == 1 else "")


def _format_file(r: dict[str, Any]) -> str:
    rows = [("format", r["format"]), ("sensor", _sensor(r["sensor_size"])), ("events", _n(r["events"]))]
    if r["events"]:
        rows += [
            ("duration", f"{_us(r['duration_us'])}  (t = {r['t_first_us']:,} .. {r['t_last_us']:,} µs)"),
            ("event rate", f"{_rate(r['rate_mean_per_s'])} mean, {_rate(r['rate_peak_per_s'])} peak "
                           f"({r['peak_window_us'] / 1000:g} ms windows; busiest at {_us(r['peak_at_us'])})"),
            ("polarity", f"ON {r['on']:,} ({100 * r['on_fraction']:.1f} %), OFF {r['off']:,}"),
        ]
    order = r["time_order"]
    if order["sorted"]:
        text = "sorted"
    else:
        text = f"NOT sorted (figures are after a stable sort): {order['problem']}"
    if r["events"]:
        text += (f"; longest gap {_us(r['largest_gap_us'])} at {_us(r['largest_gap_at_us'])}; "
                 f"{100 * r['same_time_fraction']:.1f} % of events share the previous timestamp")
        rows += [("time order", text), ("x, y range", f"x {r['x_range'][0]}..{r['x_range'][1]}, "
                                                     f"y {r['y_range'][0]}..{r['y_range'][1]}")]
    else:
        rows.append(("time order", text))
    width = max(len(k) for k, _ in rows)
    return "\n".join([r["path"], *(f"  {k.ljust(width)}  {v}" for k, v in rows)])


def _spread(s, fmt) -> str:
    return "-" if s is None else f"{fmt(s['min'])} / {fmt(s['median'])} / {fmt(s['max'])}"


def _format_dataset(r: dict[str, Any]) -> str:
    from ..core.output import format_table

    lines = [f"{r['dataset']}  (config {r['config']})", f"  sensor   {_sensor(r['sensor_size'])}",
             f"  classes  {len(r['classes'])}: {', '.join(r['classes'])}"]
    if r.get("train_val_fraction"):
        lines.append(f"  training holds out {100 * r['train_val_fraction']:g} % of train for validation "
                     "(train.val_fraction)")
    splits = r["splits"]
    rows = []
    for name, s in splits.items():
        read = "" if s["recordings_read"] == s["recordings"] else f" ({s['recordings_read']} read)"
        rows.append((name, f"{s['recordings']:,}{read}", _spread(s["events_per_recording"], _n),
                     _spread(s["duration_us"], _us)))
    table = format_table(["split", "recordings", "events per recording (min / median / max)",
                          "duration (min / median / max)"], rows)
    lines += ["", *("  " + ln for ln in table.splitlines())]
    per_class = [(c, *(str(s["class_counts"].get(c, 0)) for s in splits.values())) for c in r["classes"]]
    table = format_table(["class", *splits], per_class)
    lines += ["", *("  " + ln for ln in table.splitlines())]
    return "\n".join(lines)


__all__ = ["EXAMPLE", "configure", "dataset_record", "describe", "format_record", "run"]
