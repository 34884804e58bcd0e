"""Building models from a config, and feeding them a batch (rebuilding one from a checkpoint:
:func:`evmamba.model.checkpoint.model_from_checkpoint`).

``model.type: event_mamba`` -> :class:`~evmamba.model.classifier.EventClassifier` over tokens;
``model.type: frame_resnet`` -> :class:`~evmamba.model.frame_resnet.FrameResNet` over event-count frames.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from ..model.checkpoint import TOKEN_MODEL, DataInfo
from ..model.classifier import EventClassifier
from .data import model_type, section


def build_model(cfg: Mapping, info: DataInfo) -> torch.nn.Module:
    """A freshly initialised model for the config's ``model`` section and the data described by ``info``."""
    kind = model_type(cfg)
    model_cfg = section(cfg, "model")
    if kind == TOKEN_MODEL:
        return EventClassifier.from_config(model_cfg, info.vocab_size, info.n_classes, grid=info.grid)
    from ..model.frame_resnet import FrameResNet  # torchvision takes a second to import: only when needed

    return FrameResNet.from_config(model_cfg, info.n_time_bins, info.frame_size[2], info.n_classes)


def check_model_section(cfg: Mapping) -> None:
    """Check the config's ``model`` section for the model its ``type`` names: unknown keys (``ValueError``
    naming them and listing the valid ones) and, for token models, every value (parsed into the
    :class:`~evmamba.model.classifier.ClassifierConfig` the model is built from). A frame model's values are
    checked when it is built."""
    kind = model_type(cfg)
    given = section(cfg, "model")
    if kind == TOKEN_MODEL:
        valid = EventClassifier.config_keys()
    else:
        from ..model.frame_resnet import FrameResNet

        valid = FrameResNet.config_keys()
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise ValueError(
            f"config: unknown key(s) {['model.' + k for k in unknown]} for model.type {kind!r}; valid: {valid}"
        )
    if kind == TOKEN_MODEL:
        EventClassifier.parse_section(given)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    non_blocking = device.type == "cuda"
    return {k: v.to(device, non_blocking=non_blocking) for k, v in batch.items()}


def forward_batch(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits of a collated batch: token batches (``tokens``, ``dt``, ``counts``, ``lengths``) or frame
    batches (``frames``)."""
    if "frames" in batch:
        return model(batch["frames"])
    if "surfaces" in batch:  # the tokens' local surfaces, for a "surface" embedding
        return model(batch["tokens"], batch["dt"], batch["counts"], batch["lengths"], surfaces=batch["surfaces"])
    return model(batch["tokens"], batch["dt"], batch["counts"], batch["lengths"])


def autocast(device: torch.device, amp: str):
    """bf16 autocast on CUDA when ``amp == "bf16"``; a no-op context otherwise (CPU runs in fp32)."""
    if amp not in ("bf16", "none"):
        raise ValueError(f"config: key 'train.amp' must be 'bf16' or 'none'; got {amp!r}")
    enabled = amp == "bf16" and device.type == "cuda"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def forward_loss(model, batch, device: torch.device, amp: str = "none", label_smoothing: float = 0.0):
    """``(mean cross-entropy, correct predictions, batch size)`` of one batch (already on ``device``).

    A batch with ``soft_labels`` (B, C) (mixed training samples) is scored by cross-entropy against those
    soft targets, and its accuracy by its ``labels``, the argmax of the soft labels."""
    with autocast(device, amp):
        logits = forward_batch(model, batch)
    logits = logits.float()
    target = batch["soft_labels"].float() if "soft_labels" in batch else batch["labels"]
    loss = F.cross_entropy(logits, target, label_smoothing=label_smoothing)
    correct = (logits.argmax(-1) == batch["labels"]).sum()
    return loss, correct, batch["labels"].shape[0]


@torch.no_grad()
def evaluate_loader(model, loader, device: torch.device, amp: str = "none") -> dict[str, float]:
    """Summed ``loss``, ``correct`` and sample count ``n`` over a loader (this process's share)."""
    was_training = model.training
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    for batch in loader:
        batch = to_device(batch, device)
        loss, c, b = forward_loss(model, batch, device, amp)
        loss_sum += float(loss) * b
        correct += int(c)
        n += b
    model.train(was_training)
    return {"loss": loss_sum, "correct": float(correct), "n": float(n)}
