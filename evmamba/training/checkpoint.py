"""Checkpoints: written atomically, loaded with ``torch.load(..., weights_only=True)``.

A checkpoint is a dict of tensors and plain Python values only (no pickled objects), so loading it cannot run
code. Keys:

* ``format`` (``"evmamba-checkpoint"``), ``version``;
* ``model`` (state dict), ``model_type`` (``"event_mamba"`` or ``"frame_resnet"``), ``model_config``
  (constructor arguments), ``data`` (``vocab_size``, ``n_classes``, ``classes``, ``sensor_size``, ``grid``,
  frame sizes);
* ``config``: the resolved run config (plain dict);
* training state, absent from exported model files: ``optimizer``, ``scheduler``, ``rng``, ``epoch``
  (completed epochs), ``step`` (optimizer steps), ``best`` (``metric``, ``value``, ``epoch``).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch

FORMAT = "evmamba-checkpoint"
VERSION = 1
REQUIRED = ("format", "version", "model", "model_type", "model_config", "data", "config")
TRAINING_STATE = ("optimizer", "scheduler", "rng", "epoch", "step")


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` (with ``format`` and ``version`` added) to ``path`` atomically: a temporary file in the
    same folder, flushed to disk, then renamed over ``path``; a crash leaves the previous file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": FORMAT, "version": VERSION, **state}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _load_failure(path: Path, exc: Exception) -> str:
    """Why ``path`` could not be loaded safely, in words a user can act on."""
    import pickle

    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(4)
    if size == 0:
        return "not a checkpoint: the file is empty (truncated while being written or copied?)"
    # torch.save writes a zip archive (b"PK\x03\x04"); its legacy format and plain pickles start with b"\x80".
    if not head.startswith((b"PK\x03\x04", b"\x80")):
        return f"not a checkpoint: the file is not in PyTorch's checkpoint format ({size} bytes, starting {head!r})"
    if isinstance(exc, pickle.UnpicklingError):
        return (
            "not a safe checkpoint: it holds Python objects other than tensors and plain values, which evmamba "
            "never loads (loading them could run code from the file); it was not written by evmamba, or was "
            "altered. Use a checkpoint written by `evmamba train`"
        )
    return (
        f"not a complete checkpoint: the file is truncated or damaged ({size} bytes; a copy or a run that "
        "stopped while writing it?). Use another checkpoint, e.g. the run folder's last.pt or best.pt"
    )


def load_checkpoint(path: str | os.PathLike, map_location="cpu", need_training_state: bool = False) -> dict[str, Any]:
    """Load and check a checkpoint with ``weights_only=True``.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file for one that is not an
    evmamba checkpoint (or lacks the training state when ``need_training_state``): a truncated or damaged
    file, a file in another format, or one holding pickled objects that a safe load refuses (those are
    never loaded, and the message never suggests loading them unsafely).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols are no help to a user here
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated file, foreign pickle, ...
        # PyTorch's own message is deliberately not passed on: it explains how to load the file unsafely,
        # which would run any code the file holds.
        raise ValueError(f"{path}: {_load_failure(path, exc)}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path}: not an evmamba checkpoint (no format {FORMAT!r})")
    if ckpt.get("version") != VERSION:
        raise ValueError(f"{path}: checkpoint version {ckpt.get('version')!r}; this evmamba reads version {VERSION}")
    missing = [k for k in REQUIRED if k not in ckpt]
    if need_training_state:
        missing += [k for k in TRAINING_STATE if k not in ckpt]
    if missing:
        what = "an exported model cannot be resumed; use last.pt" if need_training_state else "damaged checkpoint"
        raise ValueError(f"{path}: checkpoint lacks {missing} ({what})")
    return ckpt


def export_model(ckpt: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write the model-only part of ``ckpt`` (weights, model config, data description, run config)."""
    keep = {k: ckpt[k] for k in REQUIRED if k not in ("format", "version")}
    for extra in ("epoch", "best", "metrics"):
        if extra in ckpt:
            keep[extra] = ckpt[extra]
    return save_checkpoint(keep, path)


def find_checkpoint(path: str | os.PathLike, name: str = "last.pt") -> Path:
    """``path`` itself if it is a file, else ``path/name`` (a run folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint here (give a .pt file or a run folder holding {name})")
    return path
