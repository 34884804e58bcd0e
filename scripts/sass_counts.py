"""Compile the selective-scan kernels for an H100/H200 (sm_90) on a machine without a GPU and count their
machine instructions: registers, spills and the instructions of the main loop, per element and by opcode.

Kernel work is bound by instructions and registers (docs/benchmarks.md, "What limits the missed targets"), and
both can be read before any GPU time is spent: Triton compiles for a target given by hand, and its bundled
``nvdisasm`` and ``cuobjdump`` disassemble the result. The figures are the compiler's (this Triton version's),
not a measurement; a change that they favour still has to be timed on the GPU.

    python scripts/sass_counts.py                          # backward kernel, standard mode, fp32
    python scripts/sass_counts.py --kernel fwd --event --dtype bf16 --sass /tmp/fwd.sass

The main loop is the longest stretch closed by a backward branch; an element is one (state, step, channel) of
the program's 4-D tile per thread (``N2 * T`` of them).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from evmamba.kernels import triton_scan_kernels as kernels
from evmamba.kernels.discretization import METHOD_CODES
from evmamba.kernels.triton_scan import lane_sums_apply, launch_config

#: Activations in the inputs' dtype; every other pointer is float32 (states, partial sums) or int64 (lengths).
_ACTIVATIONS = {"u_ptr", "delta_ptr", "z_ptr", "B_ptr", "C_ptr", "dy_ptr", "y_ptr", "du_ptr", "ddelta_ptr", "dz_ptr"}
#: Strides that are 1 for contiguous inputs (Triton specialises them away, as it does at run time).
_UNIT = {"s_u_l", "s_dt_l", "s_z_l", "s_B_l", "s_C_l", "s_ts_l", "s_y_l", "s_dy_l", "s_A_n", "s_h0_n", "s_o_l",
         "s_dz_l"}
#: With --channels-last: the (B, D, L) activations and gradients are transposed (B, L, D) buffers, as in the layer.
_CHANNELS_LAST = {"s_u_l": "s_u_d", "s_dt_l": "s_dt_d", "s_z_l": "s_z_d", "s_y_l": "s_y_d", "s_dy_l": "s_dy_d",
                  "s_o_l": "s_o_d", "s_dz_l": "s_dz_d"}


def compile_sm90(fn, constants: dict, num_warps: int, dtype: str, channels_last: bool = False):
    """``fn`` compiled for sm_90 with ``constants`` for its constexpr parameters and contiguous inputs (or,
    with ``channels_last``, activations contiguous along channels)."""
    unit = {_CHANNELS_LAST.get(n, n) for n in _UNIT} if channels_last else _UNIT
    signature, constexprs, attrs = {}, {}, {}
    for i, name in enumerate(fn.arg_names):
        if fn.params[i].is_constexpr:
            if name not in constants and not fn.params[i].has_default:
                raise KeyError(f"compile_sm90: no value for {fn.__name__}'s constexpr {name}")
            signature[name] = "constexpr"
            constexprs[name] = constants[name] if name in constants else fn.params[i].default
        elif name.endswith("_ptr"):
            kind = dtype if name in _ACTIVATIONS else ("i64" if name == "len_ptr" else "fp32")
            signature[name], attrs[(i,)] = "*" + kind, [["tt.divisibility", 16]]
        elif name in unit:
            signature[name], constexprs[name] = "constexpr", 1
        else:
            signature[name] = "i32"
            if name.startswith("s_") or name in ("L", "DIM"):
                attrs[(i,)] = [["tt.divisibility", 16]]
    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})


def _tool(name: str) -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def analyse(compiled) -> dict:
    """Registers, spills and the main loop's opcodes of a compiled kernel."""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(compiled.asm["cubin"])
        path = f.name
    try:
        sass = subprocess.run([_tool("nvdisasm"), "-c", path], capture_output=True, text=True, check=True).stdout
        usage = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", path], capture_output=True, text=True,
                               check=True).stdout
    finally:
        os.unlink(path)
    lines = sass.splitlines()
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := re.match(r"\s*(\.L_x_\d+):", line))}
    loops = []  # (start line, end line) of every backward branch
    for i, line in enumerate(lines):
        m = re.search(r"BRA\s+`\((\.L_x_\d+)\)", line)
        if m and labels.get(m.group(1), i + 1) < i:
            loops.append((labels[m.group(1)], i))
    start, end = max(loops, key=lambda se: se[1] - se[0]) if loops else (0, len(lines) - 1)
    body = [line for line in lines[start:end + 1] if re.search(r"/\*[0-9a-f]{4}\*/", line)]
    opcodes = collections.Counter()
    for line in body:
        m = re.search(r"\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", line)
        if m:
            opcodes[m.group(1)] += 1
    regs = re.search(r"REG:(\d+)", usage)
    stack = re.search(r"STACK:(\d+)", usage)
    return {"registers": int(regs.group(1)) if regs else None, "stack_bytes": int(stack.group(1)) if stack else None,
            "loop_instructions": len(body), "opcodes": opcodes, "sass": sass}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernel", choices=("fwd", "bwd"), default="bwd")
    ap.add_argument("--event", action="store_true", help="event mode (time steps and rates)")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="activations' dtype")
    ap.add_argument("--method", choices=sorted(METHOD_CODES), default="mamba", help="discretization")
    ap.add_argument("--block-d", type=int, default=None, help="channels per program (default: the launcher's)")
    ap.add_argument("--warps", type=int, default=None, help="warps per program (default: the launcher's)")
    ap.add_argument("--n1", type=int, default=None, help="states across lanes (default: the launcher's)")
    ap.add_argument("--deterministic", action="store_true",
                    help="backward: per-block slices for the sums over channels instead of atomic adds")
    ap.add_argument("--tl-sum", action="store_true",
                    help="backward: sum B's and C's gradients over channels with tl.sum, not the reduce-scatter")
    ap.add_argument("--no-dts", action="store_true",
                    help="backward, event mode: time steps as data (their gradient not computed, as in training)")
    ap.add_argument("--channels-last", action="store_true",
                    help="activations and their gradients contiguous along channels (the layer's layout)")
    ap.add_argument("--no-states", action="store_true",
                    help="forward: without saving the chunk states (inference; as `bench kernels` times the forward)")
    ap.add_argument("--sass", default=None, help="write the whole disassembly here")
    args = ap.parse_args(argv)

    cfg = launch_config(256, 16, args.kernel)  # the launcher's tile for N = 16 states (any D of 256 or more)
    warps = args.warps or cfg.num_warps
    n1 = args.n1 or cfg.n1
    n2 = cfg.n1 * cfg.n2 // n1
    # The launcher's channels per warp, with the lanes that --n1 moves between states and channels.
    block_d = args.block_d or cfg.block_d // cfg.num_warps * warps * cfg.n1 // n1
    common = dict(T=cfg.T, BLOCK_D=block_d, N1=n1, N2=n2, METHOD=METHOD_CODES[args.method], EVENT=args.event,
                  SOFTPLUS=True, HAS_D=True, HAS_Z=True, HAS_BIAS=True, HAS_LEN=False, CARRY_ONLY=False,
                  NATIVE=True, FAST=True)
    if args.kernel == "fwd":
        fn = kernels.scan_fwd_kernel
        constants = dict(common, HAS_H0=False, SAVE_STATES=not args.no_states, WRITE_FINAL=True)
    else:
        fn = kernels.scan_bwd_kernel
        constants = dict(common, HAS_DHT=False, ATOMIC_SUMS=not args.deterministic,
                         WANT_DTS=not args.no_dts,
                         LANE_SUMS=not args.tl_sum and lane_sums_apply(
                             dataclasses.replace(cfg, block_d=block_d, n1=n1, n2=n2, num_warps=warps), 16))
    result = analyse(compile_sm90(fn, constants, warps, args.dtype, args.channels_last))
    per_thread = n2 * cfg.T
    print(f"{args.kernel} kernel, {'event' if args.event else 'standard'} mode, {args.dtype}, {args.method}, "
          f"BLOCK_D {block_d}, {warps} warp(s), Triton {triton.__version__}, sm_90")
    print(f"registers per thread {result['registers']}, stack {result['stack_bytes']} bytes")
    print(f"main loop: {result['loop_instructions']} instructions per chunk and thread, "
          f"{result['loop_instructions'] / per_thread:.1f} per element ({per_thread} elements)")
    print("opcodes: " + ", ".join(f"{op} {n}" for op, n in result["opcodes"].most_common(16)))
    if args.sass:
        with open(args.sass, "w") as f:
            f.write(result["sass"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
