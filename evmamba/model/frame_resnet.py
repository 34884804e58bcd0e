"""The frame baseline: event-count frames -> a small ResNet built from torchvision's ``BasicBlock``.

Input: ``frames`` ``(B, T, P, H, W)`` event counts (``tonic.transforms.ToFrame``'s layout, T time bins of P
polarities), made by :func:`evmamba.pipeline.frames.to_frames`. The T*P count images are stacked as channels
after ``log1p`` (counts span orders of magnitude), then a 3x3 stem, one ResNet stage per entry of
``widths`` (the first at stride 1, the others at stride 2), global average pooling and a linear head.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
from torchvision.models.resnet import BasicBlock

MODEL_TYPE = "frame_resnet"


def _positive_ints(value: Any, name: str) -> list[int]:
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)) or not value:
        raise ValueError(f"FrameResNet: argument '{name}' must be a non-empty list of positive ints; got {value!r}")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"FrameResNet: argument '{name}' must hold positive ints; got {value!r}")
    return [int(v) for v in value]


class FrameResNet(nn.Module):
    """``(B, T, P, H, W)`` counts -> logits ``(B, n_classes)``.

    Args:
        n_time_bins, n_polarities: T and P of the input frames (their product is the stem's input channels).
        n_classes: number of classes.
        widths: channels of each ResNet stage.
        blocks: ``BasicBlock`` count per stage (same length as ``widths``).
        dropout: dropout before the head.
    """

    def __init__(self, n_time_bins: int, n_polarities: int, n_classes: int, widths=(32, 64, 128), blocks=(1, 1, 1),
                 dropout: float = 0.0):
        super().__init__()
        for name, v in (("n_time_bins", n_time_bins), ("n_polarities", n_polarities), ("n_classes", n_classes)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"FrameResNet: argument '{name}' must be a positive int; got {v!r}")
        widths, blocks = _positive_ints(widths, "widths"), _positive_ints(blocks, "blocks")
        if len(widths) != len(blocks):
            raise ValueError(f"FrameResNet: 'widths' and 'blocks' need the same length; got {widths} and {blocks}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"FrameResNet: argument 'dropout' must lie in [0, 1); got {dropout!r}")
        self.in_channels = n_time_bins * n_polarities
        self.config = dict(n_time_bins=n_time_bins, n_polarities=n_polarities, n_classes=n_classes,
                           widths=widths, blocks=blocks, dropout=float(dropout))
        self.stem = nn.Sequential(
            nn.Conv2d(self.in_channels, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        stages, c_in = [], widths[0]
        for k, (c, n) in enumerate(zip(widths, blocks)):
            stride = 1 if k == 0 else 2
            for j in range(n):
                s = stride if j == 0 else 1
                down = None
                if s != 1 or c_in != c:
                    down = nn.Sequential(nn.Conv2d(c_in, c, 1, stride=s, bias=False), nn.BatchNorm2d(c))
                stages.append(BasicBlock(c_in, c, stride=s, downsample=down))
                c_in = c
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(c_in, n_classes)

    #: Constructor arguments that come from the data, not from the config's ``model`` section.
    DATA_ARGS = ("n_time_bins", "n_polarities", "n_classes")

    @classmethod
    def config_keys(cls) -> list[str]:
        """The keys a ``model`` section of ``type: frame_resnet`` may hold: ``type`` and the constructor's
        arguments that do not come from the data."""
        import inspect

        params = inspect.signature(cls.__init__).parameters
        return sorted({"type"} | {k for k in params if k != "self" and k not in cls.DATA_ARGS})

    @classmethod
    def from_config(cls, model_cfg: Mapping, n_time_bins: int, n_polarities: int, n_classes: int) -> FrameResNet:
        """Build from a config's ``model`` section (``type: frame_resnet`` and :meth:`config_keys`)."""
        if hasattr(model_cfg, "_metadata"):
            from omegaconf import OmegaConf

            model_cfg = OmegaConf.to_container(model_cfg, resolve=True)
        kwargs = dict(model_cfg)
        kind = kwargs.pop("type", None)
        if kind != MODEL_TYPE:
            raise ValueError(f"config: key 'model.type' is {kind!r}; FrameResNet builds {MODEL_TYPE!r}")
        unknown = sorted(set(kwargs) - set(cls.config_keys()))
        if unknown:
            raise ValueError(
                f"config: unknown key(s) {['model.' + k for k in unknown]} for a frame_resnet model; "
                f"valid: {cls.config_keys()}"
            )
        return cls(n_time_bins, n_polarities, n_classes, **kwargs)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        if not isinstance(frames, torch.Tensor) or frames.dim() != 5:
            got = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
            raise ValueError(f"FrameResNet: argument 'frames' must have shape (B, T, P, H, W); got {got}")
        b, t, p, h, w = frames.shape
        if t * p != self.in_channels:
            raise ValueError(f"FrameResNet: frames have T*P = {t}*{p} channels; the model expects {self.in_channels}")
        x = torch.log1p(frames.float().clamp_min(0)).reshape(b, t * p, h, w)
        x = self.stages(self.stem(x))
        return self.head(self.drop(torch.flatten(self.pool(x), 1)))


__all__ = ["FrameResNet", "MODEL_TYPE"]
