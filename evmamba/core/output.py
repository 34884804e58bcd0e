"""What commands and benchmarks print and write: plain-text tables, and JSON records that carry a description
of the machine that produced them."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .files import write_text_atomic


def machine_info() -> dict[str, Any]:
    """What ran the command: date (UTC), host, platform, Python, CPU count, torch and (when present) the CUDA
    device. torch is read only if it is already imported, or importable."""
    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["cuda_device"] = torch.cuda.get_device_name(0)
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    return info


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned text table; floats get four significant digits."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    cells = [[cell(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    out = [line(headers), line(["-" * w for w in widths])]
    out.extend(line(r) for r in cells)
    return "\n".join(out)


def write_json(path: str | os.PathLike | None, record: dict[str, Any]) -> None:
    """Write ``record`` (with a ``machine`` entry added first) to ``path`` atomically; ``None`` writes nothing."""
    if path is None:
        return
    record = {"machine": machine_info(), **record}
    write_text_atomic(Path(path), json.dumps(record, indent=2, default=float) + "\n")


__all__ = ["format_table", "machine_info", "write_json"]
