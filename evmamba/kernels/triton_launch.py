"""Launching a Triton kernel with less host time: the compiled kernel is looked up by the launch's own arguments.

``kernel[grid](*args, **constexprs)`` derives a specialization key from every argument (the scan kernels have
60-80), hashes it and looks the compiled kernel up before it launches (Triton 3.6). A training step of the
``Mamba`` layer launches six such kernels, and in bfloat16 the layer's forward + backward is bound by its host
time (docs/benchmarks.md: the host of an H200 machine spent 3-4 ms on it, its kernels 2.2-2.9 ms). Going
straight to the compiled kernel saved 15-30 us of host time per launch there (the scan's forward launcher 138 ->
109 us, its backward's 283 -> 228 us). :func:`launch` keeps Triton's compiled kernel under a key that
*determines* Triton's specialization -- the exact integer arguments, each tensor's dtype and whether its address
is a multiple of 16, the constexprs, the launch options and the device -- so a repeated launch goes straight to
the compiled kernel's launcher (the call Triton itself ends with). The first launch of each key, or any launch
when the fast path is off or unavailable (the interpreter, a Triton without the ``CompiledKernel.run`` this
relies on), goes through ``kernel[grid]`` unchanged.

Exact integers make the key finer than Triton's (which only looks at divisibility by 16 and equality with 1),
so a new sequence length or stride costs one ordinary launch and a cache entry; the cache holds
``CACHE_SIZE`` entries and is cleared when full.
"""

from __future__ import annotations

import functools

import torch

from .triton_primitives import INTERPRETING

#: ``False`` sends every launch through ``kernel[grid](...)`` (tests compare the two; A/B timing).
FAST_LAUNCH = True
#: Entries kept before the cache is cleared (one per kernel, flags and distinct integer arguments).
CACHE_SIZE = 1024

_cache: dict[tuple, tuple] = {}


@functools.cache
def _runtime_knobs():
    from triton import knobs

    return knobs.runtime


def _hooks() -> tuple:
    """Triton's launch hooks ``(enter, exit)`` (a profiler's; usually ``None``), passed on as Triton does."""
    rt = _runtime_knobs()
    return rt.launch_enter_hook, rt.launch_exit_hook


def _key_args(args: tuple) -> tuple:
    """The part of the key that the arguments make. Triton specialises a tensor argument on its dtype and on 16-byte
    alignment, an integer on its value (a bool, equal to 1 or 0 as a key, adds its type). One comprehension
    rather than a function call per argument: the scan's kernels take 60-70 arguments, and building the key
    with a call each took about 90 us of each launch's host time on the H200 machine (docs/benchmarks.md,
    sixteenth session)."""
    return tuple([a if type(a) is int
                  else (a.dtype, a.data_ptr() % 16 == 0) if isinstance(a, torch.Tensor)
                  else (type(a), a) for a in args])


def _current_device_and_stream() -> tuple[int, int]:
    """The current CUDA device's index and its current stream's handle -- what Triton's own launch reads (by the
    same calls when this torch has them; ``torch.cuda.current_stream`` builds a Python stream object first)."""
    get_device = getattr(torch._C, "_cuda_getDevice", None)
    get_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    if get_device is None or get_stream is None:
        device = torch.cuda.current_device()
        return device, torch.cuda.current_stream(device).cuda_stream
    device = get_device()
    return device, get_stream(device)


def launch(kernel, grid: tuple[int, int, int], args: tuple, num_warps: int, **constexprs) -> None:
    """``kernel[grid](*args, **constexprs, num_warps=num_warps)``, by the cached compiled kernel when this launch's
    key was seen before. ``args`` are the kernel's leading parameters (tensors and integers), ``constexprs`` the
    rest, by name; ``grid`` has three entries."""
    if not FAST_LAUNCH or INTERPRETING:
        kernel[grid](*args, **constexprs, num_warps=num_warps)
        return
    device, stream = _current_device_and_stream()
    key = (id(kernel), device, num_warps, tuple(constexprs.items()), _key_args(args))
    hit = _cache.get(key)
    if hit is not None:
        compiled, tail = hit
        enter, leave = _hooks()
        full = args + tail
        meta = compiled.launch_metadata(grid, stream, *full) if enter is not None else None
        compiled.run(grid[0], grid[1], grid[2], stream, compiled.function, compiled.packed_metadata, meta, enter,
                     leave, *full)
        return
    compiled = kernel[grid](*args, **constexprs, num_warps=num_warps)
    if hasattr(compiled, "result"):  # an asynchronous compile's future
        compiled = compiled.result()
    if not all(hasattr(compiled, a) for a in ("run", "function", "packed_metadata", "launch_metadata")):
        return  # a Triton whose compiled kernels look different: keep to kernel[grid]
    try:
        _hooks()
    except (ImportError, AttributeError):
        return  # no launch-hook knobs to pass on
    names = tuple(kernel.arg_names[len(args):])
    if set(names) != set(constexprs):
        return  # defaults or positional constexprs: the order below would not be Triton's
    if len(_cache) >= CACHE_SIZE:
        _cache.clear()
    _cache[key] = (compiled, tuple(constexprs[name] for name in names))


_dummies: dict[torch.device, torch.Tensor] = {}


def dummy(ref: torch.Tensor) -> torch.Tensor:
    """A one-element float32 tensor on ``ref``'s device for a pointer argument that the kernel never touches
    (an absent optional input or output; its flag is off). Kept per device, so that a launch does not
    allocate one each time; during a CUDA graph capture a fresh one is made (the graph's memory pool)."""
    t = _dummies.get(ref.device)
    if t is None:
        t = torch.empty(1, device=ref.device, dtype=torch.float32)
        if not (t.is_cuda and torch.cuda.is_current_stream_capturing()):
            _dummies[ref.device] = t
    return t


def clear_cache() -> None:
    """Forget every cached kernel (tests)."""
    _cache.clear()
