"""The peers that ``evmamba bench kernels --peers`` and ``evmamba bench layer --peers`` time beside evmamba:
mamba_ssm's CUDA selective scan and ``Mamba`` layer (with causal_conv1d's CUDA convolution, its fused path), and
lrnnx's scan and ``Mamba`` layer (which has the event mode). None of them is a dependency: they are built from
their source distributions on the GPU machine by ``scripts/peers/build.sh`` and found here at run time.

Where they are: ``build.sh`` installs causal-conv1d and mamba-ssm into one folder (default ``/tmp/peers-site``,
or ``$EVMAMBA_PEERS_SITE``) and lrnnx into its sub-folder ``lrnnx-site``. lrnnx's compiled scan is a top-level
module named ``selective_scan_cuda``, like mamba_ssm's, so the two cannot share a folder, and they are not
loaded into one process: a plain import of the second returns the first (a compiled module imported again under
the same name, from another file, comes back as the first one), and loaded from its file under a name of its own,
lrnnx's extension took over mamba_ssm's calls (on the H200 machine, 2026-12-02, the rows labelled mamba_ssm ran
lrnnx's scan: its times, and its refusal of bfloat16 inputs). :func:`load_peers` therefore imports lrnnx only in
a process without mamba_ssm's extension (``--peers SITE/lrnnx-site`` times lrnnx alone, as
``scripts/peers/gpu_run.sh`` does) and says so in :attr:`Peers.messages` otherwise.

Nothing here fails: every import that does not work becomes a plain line in :attr:`Peers.messages`, and the
benchmarks time whatever did import (evmamba alone when nothing did).

:func:`copy_parameters` (CPU-safe, no peer needed) copies a layer's weights into another with the same
parameter names, which is how the layer benchmark gives both sides the same weights.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import re
import sys
import types
from dataclasses import dataclass, field
from typing import Any

#: Where ``scripts/peers/build.sh`` installs the peers unless told otherwise.
DEFAULT_SITE = "/tmp/peers-site"
#: The sub-folder of the site that holds lrnnx (its extension's name clashes with mamba_ssm's).
LRNNX_SUBDIR = "lrnnx-site"

#: The parameters of a Mamba-1 layer as mamba_ssm, lrnnx and evmamba name them (``in_proj.bias`` and
#: ``out_proj.bias`` only exist with ``bias=True``; ``conv1d.bias`` only with ``conv_bias=True``).
MAMBA_PARAMETERS = ("in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight",
                    "dt_proj.bias", "A_log", "D", "out_proj.weight")


def default_site() -> str:
    """``$EVMAMBA_PEERS_SITE`` or :data:`DEFAULT_SITE`."""
    return os.environ.get("EVMAMBA_PEERS_SITE") or DEFAULT_SITE


@dataclass
class Peers:
    """What imported. Each field is None when its peer did not import; :attr:`messages` says why."""

    mamba_scan: Any = None  # mamba_ssm.ops.selective_scan_interface.selective_scan_fn
    mamba_layer: Any = None  # mamba_ssm.modules.mamba_simple.Mamba
    mamba_fused: bool = False  # causal_conv1d imported inside mamba_simple: its Mamba takes the fused path
    lrnnx_scan: Any = None  # lrnnx.ops.selective_scan.selective_scan_fn
    lrnnx_layer: Any = None  # lrnnx.models.ltv.mamba.Mamba
    versions: dict[str, str] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)

    @property
    def any(self) -> bool:
        return self.mamba_scan is not None or self.lrnnx_scan is not None

    def summary(self) -> dict[str, Any]:
        """JSON-ready description: which peers imported, their versions and the messages."""
        return {
            "mamba_ssm": self.mamba_scan is not None, "mamba_ssm_layer": self.mamba_layer is not None,
            "mamba_ssm_fused_path": self.mamba_fused, "lrnnx": self.lrnnx_scan is not None,
            "lrnnx_layer": self.lrnnx_layer is not None, "versions": dict(self.versions),
            "messages": list(self.messages),
        }


def _error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text if len(text) <= 300 else text[:297] + "..."


def _version(dist: str, module: Any = None) -> str:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:  # noqa: BLE001 - a version is information, never a reason to fail
        pass
    if hasattr(module, "__version__"):
        return str(module.__version__)
    try:  # a package imported without its __init__ (import_bypassing_inits): read the line that sets it
        with open(module.__file__, encoding="utf-8") as f:
            found = re.search(r"^__version__\s*=\s*[\"']([^\"']+)[\"']", f.read(), re.MULTILINE)
        return found.group(1) if found else "?"
    except Exception:  # noqa: BLE001
        return "?"


def _forget(prefix: str) -> None:
    """Drop ``prefix`` and its submodules from ``sys.modules`` (after a failed, half-done import)."""
    for name in [m for m in sys.modules if m == prefix or m.startswith(prefix + ".")]:
        del sys.modules[name]


def import_bypassing_inits(name: str) -> types.ModuleType:
    """Import the module ``name`` (``a.b.c``) without running the ``__init__`` of its parent packages.

    A package's ``__init__`` may import parts the benchmark does not use (mamba_ssm's imports Mamba2, Mamba3 and
    a language model; lrnnx's imports every model and their extensions); when one of those fails, this still
    reaches the module wanted. Each missing parent becomes an empty package whose ``__path__`` is the real one.
    """
    parts = name.split(".")
    for i in range(1, len(parts)):
        pkg = ".".join(parts[:i])
        if pkg in sys.modules:
            continue
        spec = importlib.util.find_spec(pkg)
        if spec is None or spec.submodule_search_locations is None:
            raise ImportError(f"no package {pkg!r} on the path")
        mod = types.ModuleType(pkg)
        mod.__path__ = list(spec.submodule_search_locations)
        mod.__spec__ = spec
        mod.__file__ = spec.origin
        sys.modules[pkg] = mod
        if i > 1:  # make `a.b` reachable as an attribute of `a`, as a normal import does
            setattr(sys.modules[".".join(parts[: i - 1])], parts[i - 1], mod)
    return importlib.import_module(name)


def _import(names: list[str], package: str, messages: list[str]) -> list[types.ModuleType] | None:
    """Import ``names`` normally; if that fails, once more without the packages' ``__init__``; None if both fail."""
    try:
        return [importlib.import_module(n) for n in names]
    except ModuleNotFoundError as exc:
        if exc.name == package:
            messages.append(f"{package}: not installed (no module named {package!r} on the path)")
            return None
        first = _error(exc)
    except Exception as exc:  # noqa: BLE001 - any failure of a peer is reported, not raised
        first = _error(exc)
    _forget(package)
    try:
        mods = [import_bypassing_inits(n) for n in names]
    except Exception as exc:  # noqa: BLE001
        messages.append(f"{package}: import failed: {first}; without its package __init__: {_error(exc)}")
        _forget(package)
        return None
    messages.append(f"{package}: its package __init__ failed ({first}); imported {', '.join(names)} without it")
    return mods


def load_peers(site: str | None = None) -> Peers:
    """Import the peers, from ``site`` (see the module docstring) when given, else from the normal path."""
    peers = Peers()
    msg = peers.messages
    lrnnx_dir = None
    if site is not None:
        if os.path.isdir(site):
            if site not in sys.path:
                sys.path.insert(0, site)
            if os.path.isdir(os.path.join(site, LRNNX_SUBDIR)):
                lrnnx_dir = os.path.join(site, LRNNX_SUBDIR)
        else:
            msg.append(f"peers folder {site} does not exist (built by scripts/peers/build.sh); "
                       "looking on the normal import path")

    try:
        import causal_conv1d

        peers.versions["causal_conv1d"] = _version("causal_conv1d", causal_conv1d)
    except ModuleNotFoundError as exc:
        what = "not installed" if exc.name == "causal_conv1d" else f"import failed: {_error(exc)}"
        msg.append(f"causal_conv1d: {what} (mamba_ssm's Mamba then runs without its fused path)")
    except Exception as exc:  # noqa: BLE001
        msg.append(f"causal_conv1d: import failed: {_error(exc)} (mamba_ssm's Mamba then runs without its fused path)")

    mods = _import(["mamba_ssm.ops.selective_scan_interface", "mamba_ssm.modules.mamba_simple"], "mamba_ssm", msg)
    if mods is not None:
        scan_mod, layer_mod = mods
        peers.mamba_scan = scan_mod.selective_scan_fn
        peers.mamba_layer = layer_mod.Mamba
        peers.mamba_fused = getattr(layer_mod, "causal_conv1d_fn", None) is not None
        peers.versions["mamba_ssm"] = _version("mamba_ssm", sys.modules.get("mamba_ssm"))
        ext = sys.modules.get("selective_scan_cuda")
        peers.versions["mamba_ssm_extension"] = getattr(ext, "__file__", "?")

    _load_lrnnx(peers, lrnnx_dir)
    if not peers.any:
        msg.append("no peer imported: evmamba is timed alone (build them with scripts/peers/build.sh on the GPU "
                   "machine, then pass --peers FOLDER)")
    return peers


def _extension_file(folder: str, module: str) -> str | None:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(folder, module + suffix)
        if os.path.isfile(path):
            return path
    return None


#: What :func:`load_peers` says when lrnnx is left out beside mamba_ssm (scripts/peers/gpu_run.sh looks for the
#: words "not timed in this process" and then times lrnnx in processes of its own).
LRNNX_LEFT_OUT = ("lrnnx: not timed in this process: its compiled scan has the module name of mamba_ssm's "
                  "(selective_scan_cuda), and with both loaded in one process mamba_ssm's calls ran lrnnx's code; "
                  "time it in a process of its own: --peers {folder}")


def _load_lrnnx(peers: Peers, lrnnx_dir: str | None) -> None:
    msg = peers.messages
    mamba_ext = sys.modules.get("selective_scan_cuda")
    if mamba_ext is not None:
        if lrnnx_dir is not None and _extension_file(lrnnx_dir, "selective_scan_cuda") is not None:
            msg.append(LRNNX_LEFT_OUT.format(folder=lrnnx_dir))
        elif lrnnx_dir is None and importlib.util.find_spec("lrnnx") is not None:
            msg.append(LRNNX_LEFT_OUT.format(folder="FOLDER/lrnnx-site (scripts/peers/build.sh)"))
        return
    if lrnnx_dir is not None:
        sys.path.insert(0, lrnnx_dir)
    try:
        mods = _import(["lrnnx.ops.selective_scan", "lrnnx.models.ltv.mamba"], "lrnnx", msg)
        if mods is not None:
            peers.lrnnx_scan = mods[0].selective_scan_fn
            peers.lrnnx_layer = mods[1].Mamba
            peers.versions["lrnnx"] = _version("lrnnx", sys.modules.get("lrnnx"))
            peers.versions["lrnnx_extension"] = getattr(sys.modules.get("selective_scan_cuda"), "__file__", "?")
    finally:
        if lrnnx_dir is not None and lrnnx_dir in sys.path:
            sys.path.remove(lrnnx_dir)


def copy_parameters(src, dst, names: tuple[str, ...] = MAMBA_PARAMETERS, extra: tuple[str, ...] = ()) -> list[str]:
    """Copy the parameters ``names`` (and those of ``extra`` that both modules have) from module ``src`` into
    module ``dst``, in place, converting to ``dst``'s dtype and device. Returns the names copied.

    A name of ``names`` that is missing from either module, or whose shapes differ, is a ``ValueError`` naming it
    (``conv1d.bias`` is skipped when neither side has it).
    """
    import torch

    src_params, dst_params = dict(src.named_parameters()), dict(dst.named_parameters())
    copied = []
    for name in tuple(names) + tuple(extra):
        if name not in src_params or name not in dst_params:
            optional = name in extra or (name == "conv1d.bias" and name not in src_params and name not in dst_params)
            if optional:
                continue
            side = type(src).__name__ if name not in src_params else type(dst).__name__
            raise ValueError(f"copy_parameters: {side} has no parameter {name!r}")
        s, d = src_params[name], dst_params[name]
        if tuple(s.shape) != tuple(d.shape):
            raise ValueError(f"copy_parameters: parameter {name!r} has shape {tuple(s.shape)} in "
                             f"{type(src).__name__} but {tuple(d.shape)} in {type(dst).__name__}")
        with torch.no_grad():
            d.copy_(s.detach().to(device=d.device, dtype=d.dtype))
        copied.append(name)
    return copied


def max_rel_diff(a, b) -> float:
    """``max |a - b| / max |b|`` in float32 (0 when both are zero): the difference relative to the peer's scale."""
    a32, b32 = a.detach().float(), b.detach().float()
    scale = float(b32.abs().max()) if b32.numel() else 0.0
    diff = float((a32 - b32).abs().max()) if a32.numel() else 0.0
    if scale == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / scale


#: Largest :func:`max_rel_diff` reported as agreement, by dtype of the activations. float32 leaves room for the
#: order of sums (and cuDNN's TF32 convolution); bfloat16 for the 8-bit mantissa of every stored activation.
AGREE_TOL = {"float32": 2e-3, "bfloat16": 5e-2}


def agreement(diff: float, dtype_name: str) -> str:
    """``"ok"`` when ``diff`` is within :data:`AGREE_TOL` for ``dtype_name``, else ``"DIFFERS"``."""
    return "ok" if diff <= AGREE_TOL.get(dtype_name, 2e-3) else "DIFFERS"


__all__ = ["AGREE_TOL", "DEFAULT_SITE", "LRNNX_SUBDIR", "MAMBA_PARAMETERS", "Peers", "agreement", "copy_parameters",
           "default_site", "import_bypassing_inits", "load_peers", "max_rel_diff"]
