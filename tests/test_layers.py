"""The import direction between evmamba's layers (shared/DESIGN.md section 1, docs/design.md).

Every module's imports are read with ``ast`` -- module level and inside functions, absolute and relative --
together with string constants that name an evmamba module (lazy exports, the command registry), and each
must point to the module's own layer or one below it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "evmamba"

#: Sub-package (or top-level module) -> layer, bottom (1) to top (7).
LAYERS = {
    "": 1,  # evmamba/__init__.py: the version only
    "core": 1,  # event dtype, sensor size, argument checks, atomic writes, JSON output, config files
    "kernels": 2,  # scans and steps: reference, numba, Triton
    "pipeline": 3,  # events in and out: readers, writers, binning, filters, augmentation
    "render": 3,  # pictures of events: frames, raster plots, probability panels, GIF/PNG/MP4 writers
    "model": 4,  # the Mamba layer, embeddings, classifiers, checkpoint I/O
    "datasets": 5,  # datasets, token caches, loaders
    "training": 6,  # applications: training ...
    "evaluation": 6,  # ... evaluation ...
    "streaming": 6,  # ... and the stream loop
    "cli": 7,  # the command line ...
    "bench": 7,  # ... and the benchmarks
    "__main__": 7,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _exists(module: str) -> bool:
    base = PACKAGE.parent.joinpath(*module.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _imports(path: Path) -> set[str]:
    """The evmamba modules that ``path`` imports (a name imported from a package counts as that package,
    unless the name is itself a module)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "evmamba"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "evmamba":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if _exists(sub) else target)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("evmamba."):
            if _exists(node.value):
                found.add(node.value)
    return found


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)
GRAPH = {_module_name(p): _imports(p) for p in MODULES}


def test_every_module_belongs_to_a_layer():
    assert sorted({_part(m) for m in GRAPH} - set(LAYERS)) == []


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_module_imports_a_higher_layer(module):
    layer = LAYERS[_part(module)]
    above = sorted(t for t in GRAPH[module] if LAYERS[_part(t)] > layer)
    assert above == [], f"{module} (layer {layer}) imports {above}"


def test_inference_never_imports_training():
    bad = {m: sorted(t for t in ts if _part(t) == "training") for m, ts in GRAPH.items() if _part(m) == "streaming"}
    assert {m: t for m, t in bad.items() if t} == {}


def test_only_the_command_line_imports_the_commands():
    outside = {m: ts for m, ts in GRAPH.items() if _part(m) not in ("cli", "__main__")}
    bad = {m: sorted(t for t in ts if _part(t) == "cli") for m, ts in outside.items()}
    assert {m: t for m, t in bad.items() if t} == {}


def test_the_checker_sees_imports_inside_functions_and_relative_ones():
    # The streaming package's lazy exports name its modules as strings; the loop imports the binner inside a
    # function. Both must show up, or the tests above would pass on an empty graph.
    assert "evmamba.streaming.loop" in GRAPH["evmamba.streaming"]
    assert any(t.startswith("evmamba.pipeline") for t in GRAPH["evmamba.streaming.loop"])
    assert len(GRAPH) > 100
