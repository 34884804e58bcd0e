"""Checkpoint I/O next to the model: written atomically, loaded with ``torch.load(..., weights_only=True)``,
and the model rebuilt from one (:func:`model_from_checkpoint`) -- what inference needs, without training.

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
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.files import replacing

#: ``model_type`` of a checkpoint (and ``model.type`` of a config): tokens in, event-mode Mamba layers ...
TOKEN_MODEL = "event_mamba"
#: ... or event-count frames in, a small ResNet.
FRAME_MODEL = "frame_resnet"
MODEL_TYPES = (TOKEN_MODEL, FRAME_MODEL)

FORMAT = "evmamba-checkpoint"
VERSION = 1
REQUIRED = ("format", "version", "model", "model_type", "model_config", "data", "config")
TRAINING_STATE = ("optimizer", "scheduler", "rng", "epoch", "step")


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` (with ``format`` and ``version`` added) to ``path`` atomically: a temporary file in the
    same folder, flushed to disk, then renamed over ``path``; a crash leaves the previous file intact."""
    state = {"format": FORMAT, "version": VERSION, **state}
    with replacing(path) as tmp:
        with open(tmp, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


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


# ------------------------------------------------------------------------------------- the model in it
@dataclass
class DataInfo:
    """What a model needs to know about the data it was trained on (stored in checkpoints as a plain dict)."""

    kind: str
    n_classes: int
    classes: list[str]
    sensor_size: list[int]
    vocab_size: int | None = None
    grid: list[int] | None = None
    n_time_bins: int | None = None
    frame_size: list[int] | None = None  # (W, H, P) of the frames after downsampling

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DataInfo:
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__})


def check_same_data(ckpt_data: Mapping[str, Any], info: DataInfo, where) -> None:
    """Refuse data that a checkpoint's model was not trained on: ``ckpt_data`` (a checkpoint's ``data``) and
    ``info`` (the data at hand) must have the same class names, in the same order, and the same sensor
    size. ``ValueError`` naming ``where`` (the checkpoint) and both lists otherwise."""
    theirs = DataInfo.from_dict(ckpt_data)
    if theirs.classes is not None and [str(c) for c in theirs.classes] != [str(c) for c in info.classes]:
        raise ValueError(
            f"{where}: the model was trained on the classes {list(theirs.classes)}, but the data have "
            f"{list(info.classes)}; class indices would not match (use the dataset the model was trained on)"
        )
    for key in ("sensor_size", "vocab_size", "n_time_bins", "frame_size"):
        mine, want = getattr(info, key), getattr(theirs, key)
        if mine is not None and want is not None and list(np.atleast_1d(mine)) != list(np.atleast_1d(want)):
            raise ValueError(f"{where}: the model was trained with {key}={want}, but the data give {mine}")


def model_from_checkpoint(ckpt: Mapping[str, Any]) -> tuple[torch.nn.Module, DataInfo]:
    """Rebuild the model stored in a checkpoint and load its weights: ``(model, data description)``.

    ``model_config`` is the plain dict of constructor arguments that the model's ``config`` holds."""
    info = DataInfo.from_dict(ckpt["data"])
    kwargs = dict(ckpt["model_config"])
    if ckpt["model_type"] == TOKEN_MODEL:
        from .classifier import EventClassifier

        vocab, n_classes = kwargs.pop("vocab_size"), kwargs.pop("n_classes")
        model: torch.nn.Module = EventClassifier(vocab, n_classes, **kwargs)
    elif ckpt["model_type"] == FRAME_MODEL:
        from .frame_resnet import FrameResNet  # torchvision takes a second to import: only when needed

        model = FrameResNet(**kwargs)
    else:
        raise ValueError(f"checkpoint: unknown model_type {ckpt['model_type']!r}; known: {list(MODEL_TYPES)}")
    model.load_state_dict(ckpt["model"])
    return model, info
