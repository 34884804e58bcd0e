"""Where real recordings live: ``$EVMAMBA_DATA``, by default ``../shared/data`` beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "EVMAMBA_DATA"


def data_root() -> Path:
    """The folder that holds the staged recordings (``nmnist_small/``, ``poker_dvs/``, ...).

    ``$EVMAMBA_DATA`` when set; otherwise ``../shared/data`` relative to the working directory if that
    exists, else relative to the source checkout that holds this package. The folder may not exist:
    callers that need it raise an error that names it (see :func:`require_data`).
    """
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    cwd_candidate = Path.cwd() / ".." / "shared" / "data"
    if cwd_candidate.is_dir():
        return cwd_candidate.resolve()
    return (Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()


def require_data(*parts: str) -> Path:
    """``data_root()/parts...``, or ``FileNotFoundError`` saying where the data was expected and how to set it."""
    path = data_root().joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist. Place the recordings there or point ${ENV_VAR} at the folder that holds them."
        )
    return path
