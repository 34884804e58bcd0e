"""The scan backward compiled for an H100/H200 (sm_90) on this machine, without a GPU: the reduce-scatter of B's and
C's gradients (inline PTX) assembles, and the thread layout it is written for is the one Triton gives its tile.

`_lane_sums_store` relies on Triton's layout of the backward's one-warp tile (lane = channel * 4 + state lane, a
thread's 32 values in order ``n2 * T + t``). A Triton version that laid the tile out differently would make it
add the wrong sums on a GPU; this test reads the layout from the compiler's own output (TTGIR) with the Triton
installed here, so CI sees such a change without a GPU. The compilation runs in a child process: the tests' own
process has Triton in interpreter mode (conftest.py), where kernels are not compiled.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import importlib.util, json, re, sys
spec = importlib.util.spec_from_file_location("sass_counts", sys.argv[1])
sc = importlib.util.module_from_spec(spec); spec.loader.exec_module(sc)
from evmamba.kernels import triton_scan_kernels as kernels
from evmamba.kernels.triton_scan import lane_sums_apply, launch_config
cfg = launch_config(256, 16, "bwd")
out = {"applies": lane_sums_apply(cfg, 16)}
for name, lane_sums, atomic in (("lanes_atomic", True, True), ("lanes_slices", True, False), ("tl_sum", False, True)):
    constants = dict(T=cfg.T, BLOCK_D=cfg.block_d, N1=cfg.n1, N2=cfg.n2, METHOD=1, EVENT=True, SOFTPLUS=True,
                     HAS_D=True, HAS_Z=True, HAS_BIAS=True, HAS_LEN=True, CARRY_ONLY=False, NATIVE=True, FAST=True,
                     HAS_DHT=False, ATOMIC_SUMS=atomic, LANE_SUMS=lane_sums)
    c = sc.compile_sm90(kernels.scan_bwd_kernel, constants, cfg.num_warps, "bf16", channels_last=True)
    ttgir = c.asm["ttgir"]
    names = re.findall(r'elementwise_inline_asm "\{[^"]*shfl[^"]*".*?: tensor<4x8x8x4xf32, #(\w+)>', ttgir)
    layouts = []
    for n in names:
        m = re.search(r"^#" + n + r" = (#ttg\.\w+<\{.*\}>)", ttgir, re.M)
        layouts.append(m.group(1).replace(" ", "") if m else "undefined #" + n)
    out[name] = dict(layouts=layouts, ptx=c.asm["ptx"], cubin=len(c.asm["cubin"]),
                     shfl=sc.analyse(c)["opcodes"]["SHFL"])
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def compiled():
    env = dict(os.environ, TRITON_INTERPRET="0", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(ROOT / "scripts" / "sass_counts.py")], env=env,
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    if proc.returncode != 0 and ("ptxas" in proc.stderr or "nvdisasm" in proc.stderr) and "not found" in proc.stderr:
        pytest.skip("this Triton has no NVIDIA toolchain to compile for sm_90")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if not out["applies"]:
        pytest.skip("the backward's default tile (N = 16) does not use the lane sums")
    return out


@pytest.mark.parametrize("which,op", [("lanes_atomic", "red.global.gpu.relaxed.add.v4.f32"),
                                      ("lanes_slices", "st.global.v4.f32")])
def test_lane_sums_assemble_for_sm90_in_the_layout_they_assume(compiled, which, op):
    got = compiled[which]
    assert len(got["layouts"]) == 2, got["layouts"]  # B's and C's gradients
    for layout in got["layouts"]:
        assert layout.startswith("#ttg.blocked<"), layout
        for want in ("sizePerThread=[1,1,1,1]", "threadsPerWarp=[1,1,8,4]", "warpsPerCTA=[1,1,1,1]",
                     "order=[3,2,1,0]"):
            assert want in layout, f"{want} not in {layout}"
    assert got["ptx"].count(op) >= 2
    assert got["cubin"] > 0  # ptxas accepted the inline assembly


def test_lane_sums_take_fewer_shuffles_than_tl_sum(compiled):
    assert compiled["tl_sum"]["layouts"] == []
    # Per chunk, 2 x (96 -> 28) shuffles; the sums over states keep theirs.
    assert compiled["tl_sum"]["shfl"] - compiled["lanes_atomic"]["shfl"] >= 120, (
        compiled["tl_sum"]["shfl"], compiled["lanes_atomic"]["shfl"])
