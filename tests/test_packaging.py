"""A built wheel carries the shipped configs, so a non-editable install runs ``evmamba train`` from any folder."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_wheel_carries_every_config_inside_the_package(tmp_path):
    # Built from a copy of the sources, so that the build leaves nothing in the checkout.
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc")
    for name in ("evmamba", "configs"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path), str(src)], check=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("evmamba-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
    assert shipped and all(f"evmamba/configs/{name}" in names for name in shipped)
    assert "evmamba/cli/__init__.py" in names and "evmamba/core/config.py" in names


def test_configs_are_found_by_name_from_any_folder(tmp_path, monkeypatch):
    from evmamba.core.config import CONFIG_DIR, find_config

    monkeypatch.chdir(tmp_path)
    assert find_config("synthetic") == CONFIG_DIR / "synthetic.yaml"
    with pytest.raises(FileNotFoundError, match="no_such_config"):
        find_config("no_such_config")
