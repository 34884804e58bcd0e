"""Training metrics: one CSV row and one JSON line per epoch (plus JSON lines every few steps), and the same
scalars to TensorBoard when the ``tensorboard`` package is installed.

``metrics.csv`` has a fixed header (:data:`EPOCH_COLUMNS`); ``metrics.jsonl`` has one object per line with a
``kind`` of ``"step"`` or ``"epoch"``. On resume, rows after the resumed epoch are dropped first, so the
files describe one consistent run.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any

from ..core.files import write_text_atomic

EPOCH_COLUMNS = (
    "epoch", "step", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_loss",
    "test_accuracy", "grad_norm", "epoch_seconds", "samples_per_second", "tokens_per_second",
)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLogger:
    """Append metrics to ``run_dir/metrics.csv`` and ``run_dir/metrics.jsonl`` (and TensorBoard if available).

    ``resume_epoch``: keep only rows up to this epoch from existing files (None: start new files).
    """

    def __init__(self, run_dir: str | os.PathLike, resume_epoch: int | None = None, tensorboard: bool = True):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.dir / "metrics.csv"
        self.jsonl_path = self.dir / "metrics.jsonl"
        self.epochs: list[dict[str, Any]] = []
        if resume_epoch is None:
            write_text_atomic(self.csv_path, ",".join(EPOCH_COLUMNS) + "\n")
            write_text_atomic(self.jsonl_path, "")
        else:
            self._truncate(resume_epoch)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                SummaryWriter = None
            if SummaryWriter is not None:
                self.tb = SummaryWriter(str(self.dir / "tensorboard"))

    def _truncate(self, epoch: int) -> None:
        lines = []
        if self.jsonl_path.exists():
            for line in self.jsonl_path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash
                if row.get("epoch", 0) <= epoch:
                    lines.append(line)
                    if row.get("kind") == "epoch":
                        self.epochs.append(row)
        write_text_atomic(self.jsonl_path, "".join(line + "\n" for line in lines))
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=EPOCH_COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in self.epochs:
            writer.writerow({k: _clean(row.get(k)) for k in EPOCH_COLUMNS})
        write_text_atomic(self.csv_path, out.getvalue())

    def log_step(self, row: dict[str, Any]) -> None:
        """A JSON line with ``kind: "step"`` (and TensorBoard scalars under ``step/``)."""
        self._jsonl({"kind": "step", **row})
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("epoch", "step") and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"step/{k}", v, row["step"])

    def log_epoch(self, row: dict[str, Any]) -> None:
        """One CSV row (columns :data:`EPOCH_COLUMNS`) and a JSON line with ``kind: "epoch"``."""
        row = {k: _clean(v) for k, v in row.items()}
        self.epochs.append(row)
        self._jsonl({"kind": "epoch", **row})
        with open(self.csv_path, "a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=EPOCH_COLUMNS, extrasaction="ignore", lineterminator="\n").writerow(
                {k: row.get(k) for k in EPOCH_COLUMNS}
            )
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("epoch", "step") and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"epoch/{k}", v, row["epoch"])
            self.tb.flush()

    def _jsonl(self, row: dict[str, Any]) -> None:
        with open(self.jsonl_path, "a") as fh:
            fh.write(json.dumps(row) + "\n")

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
