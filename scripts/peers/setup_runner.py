"""Run a peer's ``setup.py`` (in the current folder) with its CUDA build narrowed, without editing its files.

    python3 setup_runner.py bdist_wheel -d DIST      # what scripts/peers/build.sh runs in each unpacked sdist

Before ``setup.py`` runs, ``torch.utils.cpp_extension.CUDAExtension`` and ``setuptools.setup`` are wrapped:

* every ``-gencode`` pair (and ``-gencode=...``, ``--generate-code``, ``-arch``) in an extension's nvcc flags
  other than ``$PEERS_GENCODE`` (default ``arch=compute_90,code=sm_90``, the H200) is dropped, so each .cu file
  is compiled once, not for eight architectures; an extension with no such flags gets torch's from
  ``TORCH_CUDA_ARCH_LIST`` (build.sh sets 9.0);
* when torch's headers refuse anything older than C++20 (torch >= 2.14 does), a pinned ``-std=c++17`` becomes
  ``-std=c++20``;
* ``$PEERS_ONLY_EXT`` (comma-separated extension names) keeps only those extensions (lrnnx: its selective scan,
  not its S5 and S4 kernels, which the benchmarks do not use);
* ``wheel.bdist_wheel``, which their setup.py imports, is served by setuptools' own when ``wheel`` is missing.

Every change is printed. The prebuilt-wheel download in their ``bdist_wheel`` is switched off by their own
variables (``MAMBA_FORCE_BUILD=TRUE``, ``CAUSAL_CONV1D_FORCE_BUILD=TRUE``), which build.sh sets.
"""

from __future__ import annotations

import os
import runpy
import sys
import types


def log(text: str) -> None:
    print(f"[setup_runner] {text}", flush=True)


def torch_needs_cxx20() -> bool:
    import torch

    inc = os.path.join(os.path.dirname(torch.__file__), "include")
    for rel in ("ATen/ATen.h", "torch/csrc/api/include/torch/all.h", "c10/macros/Macros.h"):
        try:
            with open(os.path.join(inc, rel), encoding="utf-8", errors="replace") as f:
                if "C++20 or later" in f.read():
                    return True
        except OSError:
            continue
    return False


def narrow_nvcc(flags: list[str], keep: str) -> list[str]:
    """``flags`` without the architecture flags other than ``-gencode keep`` (kept once if any was there)."""
    out, dropped, had_arch = [], [], False
    i = 0
    while i < len(flags):
        f = flags[i]
        if f in ("-gencode", "--generate-code", "-arch", "--gpu-architecture") and i + 1 < len(flags):
            had_arch = True
            if flags[i + 1] != keep:
                dropped.append(f"{f} {flags[i + 1]}")
            i += 2
            continue
        if f.startswith(("-gencode=", "--generate-code=", "-arch=", "--gpu-architecture=")):
            had_arch = True
            if f.split("=", 1)[1] != keep:
                dropped.append(f)
            i += 1
            continue
        out.append(f)
        i += 1
    if had_arch:
        out += ["-gencode", keep]
    if dropped:
        log(f"dropped {len(dropped)} architecture flags: {' '.join(dropped)}; kept -gencode {keep}")
    return out


def main() -> None:
    keep = os.environ.get("PEERS_GENCODE", "arch=compute_90,code=sm_90")
    only = [n for n in os.environ.get("PEERS_ONLY_EXT", "").split(",") if n]
    cxx20 = torch_needs_cxx20()
    log(f"gencode kept: {keep}; only extensions: {only or 'all'}; torch headers need C++20: {cxx20}")

    try:
        import wheel.bdist_wheel  # noqa: F401
    except ImportError as exc:
        try:
            from setuptools.command import bdist_wheel as st_bdist_wheel
        except ImportError:
            log(f"neither wheel ({exc}) nor setuptools.command.bdist_wheel imports: setuptools >= 70.1 or wheel "
                "is needed")
            raise
        shim = types.ModuleType("wheel")
        shim.__path__ = []
        sub = types.ModuleType("wheel.bdist_wheel")
        sub.bdist_wheel = st_bdist_wheel.bdist_wheel
        shim.bdist_wheel = sub
        sys.modules["wheel"], sys.modules["wheel.bdist_wheel"] = shim, sub
        log(f"wheel missing ({exc}): wheel.bdist_wheel served by setuptools.command.bdist_wheel")

    import setuptools
    import torch.utils.cpp_extension as cpp

    real_cuda_ext = cpp.CUDAExtension

    def cuda_extension(name, sources, *args, **kwargs):
        extra = kwargs.get("extra_compile_args")
        if isinstance(extra, dict):
            extra = {k: list(v) for k, v in extra.items()}
            if "nvcc" in extra:
                extra["nvcc"] = narrow_nvcc(extra["nvcc"], keep)
            if cxx20:
                for key in extra:
                    if "-std=c++17" in extra[key]:
                        extra[key] = ["-std=c++20" if f == "-std=c++17" else f for f in extra[key]]
                        log(f"{name}: {key} -std=c++17 -> -std=c++20 (torch's headers require C++20)")
            kwargs["extra_compile_args"] = extra
            log(f"{name}: {len(sources)} sources; nvcc flags: {' '.join(extra.get('nvcc', []))}")
        return real_cuda_ext(name, sources, *args, **kwargs)

    cpp.CUDAExtension = cuda_extension

    real_setup = setuptools.setup

    def setup(**kwargs):
        exts = kwargs.get("ext_modules") or []
        if only:
            kept = [e for e in exts if e.name in only]
            log(f"extensions kept: {[e.name for e in kept]}; skipped: {[e.name for e in exts if e.name not in only]}")
            kwargs["ext_modules"] = kept
        return real_setup(**kwargs)

    setuptools.setup = setup
    sys.argv = ["setup.py"] + sys.argv[1:]
    sys.path.insert(0, os.getcwd())
    runpy.run_path("setup.py", run_name="__main__")


if __name__ == "__main__":
    main()
