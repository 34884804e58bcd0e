"""Checking a whole run config before any work: every section known, every key known, values of the right kind.

Each top-level section is checked by the code that consumes it, so the valid keys are never listed twice:

==============  ==============================================================================================
section         checked by
==============  ==============================================================================================
``dataset``     :func:`evmamba.datasets.registry.check_dataset_section` (the builder's keys and the dataset
                class's constructor arguments)
``binning``     :meth:`evmamba.pipeline.binning.BinningConfig.from_dict` (its dataclass fields)
``augment``     :meth:`evmamba.pipeline.augment.AugmentConfig.from_dict` (its dataclass fields)
``model``       :func:`evmamba.training.models.check_model_section` (the fields of
                :class:`~evmamba.model.classifier.ClassifierConfig`, or the frame model's constructor)
``frames``      :meth:`evmamba.training.data.FramesConfig.from_config` (its dataclass fields)
``train``       :func:`evmamba.training.settings.train_settings` (:data:`~evmamba.training.settings.TRAIN_SETTINGS`)
``cache_dir``   a folder name (or null)
==============  ==============================================================================================

A new section is added to :data:`SECTIONS` with the function that checks it, next to the code that reads it.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["SECTIONS", "check_config"]


def _check_dataset(cfg: Mapping) -> None:
    from ..datasets.registry import check_dataset_section

    check_dataset_section(cfg["dataset"])


def _check_binning(cfg: Mapping) -> None:
    from ..pipeline.binning import BinningConfig

    BinningConfig.from_dict(cfg["binning"] or {}, source="config: section 'binning'")


def _check_augment(cfg: Mapping) -> None:
    from ..pipeline.augment import AugmentConfig

    AugmentConfig.from_dict(cfg["augment"] or {}, source="config: section 'augment'")


def _check_model(cfg: Mapping) -> None:
    from .models import check_model_section

    check_model_section(cfg)


def _check_frames(cfg: Mapping) -> None:
    from .data import FramesConfig

    FramesConfig.from_config(cfg)


def _check_train(cfg: Mapping) -> None:
    from .settings import train_settings

    train_settings(cfg)


def _check_cache_dir(cfg: Mapping) -> None:
    value = cfg["cache_dir"]
    if value is not None and (not isinstance(value, str) or not value):
        raise ValueError(f"config: key 'cache_dir' must be a folder name or null; got {value!r}")


#: Top-level section -> the function that checks it (given the whole config).
SECTIONS: dict[str, Callable[[Mapping], None]] = {
    "dataset": _check_dataset,
    "binning": _check_binning,
    "augment": _check_augment,
    "model": _check_model,
    "frames": _check_frames,
    "train": _check_train,
    "cache_dir": _check_cache_dir,
}


def check_config(cfg: Mapping[str, Any]) -> None:
    """Check every section of a resolved config (an OmegaConf ``DictConfig`` or a plain dict).

    Raises ``ValueError`` for an unknown top-level section (naming it, with the closest valid one and the
    list of valid sections), and passes on each section's own error for an unknown key or a bad value
    (naming ``section.key`` and the valid keys). Sections may be absent; the commands that need one say so.
    """
    if not isinstance(cfg, Mapping) and not hasattr(cfg, "keys"):
        raise TypeError(f"config: expected a mapping of sections; got {type(cfg).__name__}")
    unknown = sorted(str(k) for k in cfg if k not in SECTIONS)
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, SECTIONS, n=1)
            hints.append(f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name))
        raise ValueError(f"config: unknown section(s) {', '.join(hints)}; valid sections: {sorted(SECTIONS)}")
    for name, check in SECTIONS.items():
        if name in cfg:
            check(cfg)
