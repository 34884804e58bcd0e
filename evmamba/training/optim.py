"""AdamW with weight-decay groups, and a linear-warmup + cosine learning-rate schedule.

Parameter groups:

* **no weight decay** for parameters marked ``_no_weight_decay`` (the Mamba layer's ``A_log``, ``D`` and event
  rates), biases and other 1-D parameters, normalisation weights and -- unless ``decay_embeddings`` --
  embedding tables: decaying them pulls decay rates, skips, scales and rare tokens' rows toward zero
  rather than regularising a mapping;
* **SSM parameters** (``A_log``, ``D``, ``dt_proj``, ``dtA_proj`` of every Mamba layer) get the learning
  rate times ``ssm_lr_scale``: they set the time constants and are usually trained more gently.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from ..model.mamba import Mamba

_NORMS = (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)
_SSM_NAMES = ("A_log", "D", "dt_proj.weight", "dt_proj.bias", "dtA_proj.bias")


def classify_parameters(model: nn.Module, decay_embeddings: bool = False) -> dict[str, list[str]]:
    """Parameter names by group: ``decay``, ``no_decay``, ``ssm_decay``, ``ssm_no_decay``."""
    owner: dict[str, nn.Module] = {}
    mamba_prefix: dict[str, str] = {}
    for mod_name, module in model.named_modules():
        for p_name, _ in module.named_parameters(recurse=False):
            owner[f"{mod_name}.{p_name}" if mod_name else p_name] = module
        if isinstance(module, Mamba):
            mamba_prefix[mod_name] = mod_name
    groups: dict[str, list[str]] = {"decay": [], "no_decay": [], "ssm_decay": [], "ssm_no_decay": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        module = owner[name]
        no_decay = (
            getattr(p, "_no_weight_decay", False)
            or p.dim() < 2
            or isinstance(module, _NORMS)
            or (isinstance(module, nn.Embedding) and not decay_embeddings)
        )
        ssm = any(
            name == (f"{prefix}.{s}" if prefix else s) for prefix in mamba_prefix for s in _SSM_NAMES
        )
        groups[("ssm_" if ssm else "") + ("no_decay" if no_decay else "decay")].append(name)
    return groups


def build_optimizer(model: nn.Module, train_cfg: Mapping[str, Any]) -> torch.optim.AdamW:
    """AdamW over :func:`classify_parameters`'s groups (empty groups left out), from the ``train`` section:
    ``lr``, ``weight_decay``, ``ssm_lr_scale`` (default 1), ``betas`` (default (0.9, 0.999)), ``eps``,
    ``decay_embeddings`` (default False). Each group carries its ``name``."""
    lr = float(train_cfg["lr"])
    wd = float(train_cfg.get("weight_decay", 0.0))
    ssm_scale = float(train_cfg.get("ssm_lr_scale", 1.0))
    for key, value in (("lr", lr), ("weight_decay", wd), ("ssm_lr_scale", ssm_scale)):
        if not math.isfinite(value) or value < 0 or (key != "weight_decay" and value == 0):
            raise ValueError(f"config: key 'train.{key}' must be a positive number; got {value}")
    named = dict(model.named_parameters())
    groups = classify_parameters(model, bool(train_cfg.get("decay_embeddings", False)))
    settings = {
        "decay": (lr, wd),
        "no_decay": (lr, 0.0),
        "ssm_decay": (lr * ssm_scale, wd),
        "ssm_no_decay": (lr * ssm_scale, 0.0),
    }
    param_groups = [
        {"name": g, "params": [named[n] for n in names], "lr": settings[g][0], "weight_decay": settings[g][1]}
        for g, names in groups.items()
        if names
    ]
    betas = tuple(float(b) for b in train_cfg.get("betas", (0.9, 0.999)))
    return torch.optim.AdamW(param_groups, lr=lr, betas=betas, eps=float(train_cfg.get("eps", 1e-8)))


class WarmupCosine:
    """Learning-rate factor at optimizer step ``s``: linear from ``1/warmup`` to 1 over ``warmup`` steps,
    then a cosine from 1 down to ``min_ratio`` at ``total`` steps (and ``min_ratio`` after)."""

    def __init__(self, warmup: int, total: int, min_ratio: float = 0.0):
        if warmup < 0 or total < 1:
            raise ValueError(f"WarmupCosine needs warmup >= 0 and total >= 1; got warmup={warmup}, total={total}")
        if not 0.0 <= min_ratio <= 1.0:
            raise ValueError(f"config: key 'train.min_lr_ratio' must lie in [0, 1]; got {min_ratio}")
        self.warmup = int(warmup)
        self.total = int(total)
        self.min_ratio = float(min_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        span = max(self.total - self.warmup, 1)
        progress = min((step - self.warmup) / span, 1.0)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer, train_cfg: Mapping[str, Any], steps_per_epoch: int, epochs: int):
    """``LambdaLR`` with :class:`WarmupCosine`; warmup from ``train.warmup_steps`` or, if that is not set,
    ``train.warmup_epochs`` (default 0) times ``steps_per_epoch``."""
    warmup = train_cfg.get("warmup_steps")
    if warmup is None:
        warmup = round(float(train_cfg.get("warmup_epochs", 0)) * steps_per_epoch)
    total = max(int(epochs) * int(steps_per_epoch), 1)
    schedule = WarmupCosine(int(warmup), total, float(train_cfg.get("min_lr_ratio", 0.0)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
