"""Load what the stream loop needs from a training checkpoint: the classifier, its binning and its data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..pipeline.binning import BinningConfig


@dataclass
class StreamModel:
    """A checkpoint's classifier (eval mode, CPU) with the binning, sensor and classes it was trained on."""

    model: Any
    binning: BinningConfig
    sensor_size: tuple[int, int, int]
    classes: list[str]
    config: dict
    path: str

    def surfaces(self, seq):
        """The local surfaces ``(L, F)`` of a whole token sequence of this model's binning (from an empty
        state, as a new stream starts), or None when the model's embedding reads none."""
        from ..pipeline.binning import token_grid
        from ..pipeline.surfaces import token_surfaces

        surface = self.model.surface_config
        return None if surface is None else token_surfaces(seq, token_grid(self.sensor_size, self.binning), surface)


def load_stream_model(path) -> StreamModel:
    """Rebuild the token classifier stored in ``path`` (a ``.pt`` file or a run folder's ``model.pt``).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file for a checkpoint that
    is not a token model (``event_mamba``) or lacks a ``binning`` section.
    """
    from ..model.checkpoint import find_checkpoint, load_checkpoint, model_from_checkpoint

    ckpt_path = find_checkpoint(path, "model.pt")
    ckpt = load_checkpoint(ckpt_path)
    if ckpt["model_type"] != "event_mamba":
        raise ValueError(
            f"{ckpt_path}: model_type {ckpt['model_type']!r}; the stream loop runs token models (event_mamba)"
        )
    config = ckpt["config"] or {}
    if "binning" not in config:
        raise ValueError(f"{ckpt_path}: the saved config has no 'binning' section")
    binning = BinningConfig.from_dict(config["binning"], source=f"{ckpt_path}: config section 'binning'")
    model, info = model_from_checkpoint(ckpt)
    model.eval()
    sensor = tuple(int(v) for v in info.sensor_size)
    return StreamModel(model, binning, sensor, [str(c) for c in info.classes], config, str(ckpt_path))


__all__ = ["StreamModel", "load_stream_model"]
