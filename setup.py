"""Packaging hook (everything else is in pyproject.toml): the YAML configs live in the top-level ``configs/``
folder, where users read and edit them, and are copied into the built package as ``evmamba/configs/`` so
that a non-editable install finds them too (:data:`evmamba.core.config.CONFIG_DIR`)."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildPyWithConfigs(build_py):
    def run(self):
        super().run()
        target = Path(self.build_lib) / "evmamba" / "configs"
        target.mkdir(parents=True, exist_ok=True)
        for config in sorted((HERE / "configs").glob("*.yaml")):
            shutil.copy2(config, target / config.name)


setup(cmdclass={"build_py": BuildPyWithConfigs})
