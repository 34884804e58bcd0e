"""The fused GPU layer step against the float64 reference forward, stream by stream (issue 11's table).

For each discretization and (B, L), a ``Mamba(d_model=32, d_state=16)`` in eval mode is stepped one element
at a time on the fast path, in event mode with ``integration_timesteps = rand(B, L) * 0.1`` (distinct per
stream and position), and compared with its float64 copy's forward on the reference path. Prints the
largest absolute error and the relative error (norm of the difference over norm of the reference), and writes
them as JSON with ``--json``. Needs a CUDA GPU.

    python scripts/gpu_step_errors.py --json errors.json
"""

from __future__ import annotations

import argparse
import copy
import json

import torch

from evmamba.kernels import DISCRETIZATIONS
from evmamba.model import Mamba

SIZES = [(1, 64), (2, 64), (32, 64), (32, 2048)]


def errors(disc: str, batch: int, seqlen: int, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    layer = Mamba(32, d_state=16, discretization=disc).cuda().eval()
    ref = copy.deepcopy(layer).double()
    ref.use_fast_path = False
    x = torch.randn(batch, seqlen, 32, device="cuda")
    ts = torch.rand(batch, seqlen, device="cuda") * 0.1
    with torch.no_grad():
        y_ref = ref(x.double(), ts.double())
        cache = layer.allocate_inference_cache(batch, seqlen)
        y = torch.cat([layer.step(x[:, t:t + 1], cache, ts[:, t])[0] for t in range(seqlen)], dim=1).double()
    return {
        "discretization": disc, "batch": batch, "seqlen": seqlen,
        "max_abs_error": float((y - y_ref).abs().max()), "max_abs_y": float(y_ref.abs().max()),
        "relative_error": float((y - y_ref).norm() / y_ref.norm()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="PATH", help="write the rows as JSON")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("error: needs a CUDA GPU")
    rows = [errors(d, b, n) for d in DISCRETIZATIONS for b, n in SIZES]
    print(f"{'discretization':<14} {'B':>3} {'L':>5} {'max |err|':>10} {'max |y|':>8} {'relative':>10}")
    for r in rows:
        print(f"{r['discretization']:<14} {r['batch']:>3} {r['seqlen']:>5} {r['max_abs_error']:>10.2e} "
              f"{r['max_abs_y']:>8.2f} {r['relative_error']:>10.2e}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
