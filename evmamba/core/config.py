"""YAML configs with command-line overrides (``key.sub=value``), resolved and saved with every run.

Configs are OmegaConf documents. ``${oc.env:EVMAMBA_DATA,../shared/data}`` and other interpolations are
resolved on load, so the saved config records the values a run actually used.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .files import write_text_atomic

_PACKAGE = Path(__file__).resolve().parent.parent
#: The shipped configs: the copy inside an installed package (``evmamba/configs/``, made by setup.py), else the
#: top-level ``configs/`` of a source checkout or an editable install, where users read and edit them.
CONFIG_DIR = next((d for d in (_PACKAGE / "configs", _PACKAGE.parent / "configs") if d.is_dir()), _PACKAGE / "configs")


def find_config(name_or_path: str | os.PathLike) -> Path:
    """A config file by path, or by name among the shipped configs (:data:`CONFIG_DIR`: ``synthetic`` ->
    ``configs/synthetic.yaml``), or in a ``configs/`` folder of the working directory."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    for cand in (CONFIG_DIR / p, CONFIG_DIR / f"{p}.yaml", Path("configs") / f"{p}.yaml"):
        if cand.is_file():
            return cand
    raise FileNotFoundError(f"config {str(name_or_path)!r} not found (looked for the file and in {CONFIG_DIR})")


def load_config(name_or_path: str | os.PathLike, overrides: Iterable[str] = ()) -> DictConfig:
    """Load a YAML config, apply ``key.sub=value`` overrides and resolve interpolations.

    Raises ``ValueError`` for an override that is not ``key=value``, naming it.
    """
    path = find_config(name_or_path)
    cfg = OmegaConf.load(path)
    overrides = list(overrides)
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ValueError(f"override {item!r} must have the form key.sub=value")
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    OmegaConf.resolve(cfg)
    return cfg


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """A plain ``dict`` copy of a resolved config (for JSON, HDF5 attributes and checkpoints)."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def save_config(cfg: DictConfig, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically."""
    write_text_atomic(path, OmegaConf.to_yaml(cfg, resolve=True))
