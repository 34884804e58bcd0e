"""``evmamba bench layer``: the whole ``Mamba`` layer (in_proj, causal conv, scan, gate, out_proj), forward and
forward + backward, ours beside the peers' layers in one run (CUDA device required).

Shapes (batch x L, d_model; the scan inside sees ``D = 2 * d_model``): 16 x 8192 at 128 (D = 256), 8 x 2048 at
768 (D = 1536), 64 x 2048 at 128 (D = 256); ``d_state`` 16, ``d_conv`` 4, ``expand`` 2. float32, and bfloat16 as
mixed precision: parameters stay float32 and each side runs under ``torch.autocast("cuda", torch.bfloat16)``
(how a model trains; both sides the same).

Ours runs in standard mode and in event mode (``integration_timesteps`` ``(B, L)`` given). With ``--peers
[FOLDER]`` (see :mod:`evmamba.bench.peers`): mamba_ssm's ``Mamba`` (its fused ``mamba_inner_fn`` path when
causal_conv1d imports) in standard mode -- it has no event mode, so our event mode is set beside its standard
mode, the nearest it offers -- and lrnnx's ``Mamba`` in both modes. Every side gets the same weights (copied from
one seeded layer, :func:`~evmamba.bench.peers.copy_parameters`) and the same input, and before anything is timed
the outputs and input gradients are compared (our standard mode with mamba_ssm's and lrnnx's standard mode, our
event mode with lrnnx's event mode; cuDNN's TF32 convolution off for the check only): the max relative difference
is printed, a disagreement is reported in the row. Times are medians of ``--reps`` runs (CUDA events) after
warm-up; forward under ``torch.no_grad``; forward + backward takes the gradients of the input and every parameter.
Each side's *host* time for one forward + backward is measured too (issued with the GPU idle, :func:`host_ms`):
where it reaches the forward + backward time, that side is bound by its host (Python, PyTorch's dispatch, the
launches), which is so for both sides in bfloat16 on an H200 machine (docs/benchmarks.md).
lrnnx's CUDA scan takes float32 inputs only, so it sits out bfloat16.

``--conv`` chooses our layer's causal convolution + SiLU: ``triton`` (default, the layer's own default on a GPU:
the kernel of :mod:`evmamba.kernels.triton_conv`) or ``torch`` (PyTorch's ``conv1d`` and ``silu``), by setting
``EVMAMBA_TRITON_CONV`` to 1 or 0 for each case (restored after). The table and the JSON say which one ran
(``conv``, per case as chosen by :func:`~evmamba.kernels.backends.conv_backend` for the case's tensors).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

from ..core.output import format_table, write_json
from .common import HOST_REPS, host_ms

# (batch, L, d_model)
LAYER_SHAPES = [(16, 8192, 128), (8, 2048, 768), (64, 2048, 128)]
DTYPES = ("float32", "bfloat16")
D_STATE, D_CONV, EXPAND = 16, 4, 2
CONVS = ("torch", "triton")
EXAMPLE = "evmamba bench layer --peers /tmp/peers-site --json layer.json   # on a CUDA GPU"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", metavar="PATH", default=None, help="write all numbers to this JSON file")
    parser.add_argument("--reps", type=int, default=30, help="timed runs per measurement (median; default 30)")
    parser.add_argument("--quick", action="store_true", help="first shape only")
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES),
                        help="activation precisions to time (default: both)")
    parser.add_argument("--conv", choices=CONVS, default="triton",
                        help="our layer's causal conv + SiLU: the Triton kernel (default, as the layer on a GPU) or "
                        "PyTorch's conv1d and silu (EVMAMBA_TRITON_CONV=0 for the run)")
    parser.add_argument("--peers", nargs="?", const="", default=None, metavar="FOLDER",
                        help="also time mamba_ssm's and lrnnx's Mamba layers, imported from FOLDER (as built by "
                        "scripts/peers/build.sh; default $EVMAMBA_PEERS_SITE or /tmp/peers-site)")


def _autocast(dtype_name: str, device_type: str):
    import torch

    if dtype_name == "float32":
        return nullcontext()
    return torch.autocast(device_type, dtype=getattr(torch, dtype_name))


def layer_variants(ours, mamba_layer=None, lrnnx_layer=None) -> list[tuple[str, str, Any]]:
    """``(side, mode, module)`` for every layer run: ours in both modes, mamba_ssm standard, lrnnx both."""
    out = [("evmamba", "standard", ours), ("evmamba", "event", ours)]
    if mamba_layer is not None:
        out.append(("mamba_ssm", "standard", mamba_layer))
    if lrnnx_layer is not None:
        out += [("lrnnx", "standard", lrnnx_layer), ("lrnnx", "event", lrnnx_layer)]
    return out


def _call(module, side: str, mode: str, x, dt):
    if mode == "event":
        return module(x, integration_timesteps=dt)
    return module(x)


class _NoTF32:
    """cuDNN's TF32 convolutions off inside (restored after): the float32 agreement check compares the
    implementations, not TF32's 10-bit rounding of our ``nn.Conv1d`` against causal_conv1d's exact float32."""

    def __enter__(self):
        import torch

        self.saved = None
        try:
            self.saved = torch.backends.cudnn.allow_tf32
            torch.backends.cudnn.allow_tf32 = False
        except Exception:  # noqa: BLE001 - a torch without the switch: compare as it is
            self.saved = None
        return self

    def __exit__(self, *exc):
        import torch

        if self.saved is not None:
            try:
                torch.backends.cudnn.allow_tf32 = self.saved
            except Exception:  # noqa: BLE001
                pass
        return False


def compare_outputs(ref_module, ref_side, ref_mode, other_module, other_side, other_mode, x, dt, dy,
                    dtype_name: str) -> dict[str, Any]:
    """Run both layers on ``x`` (under the dtype's autocast) and compare the outputs and the input gradients:
    ``{"y_rel_diff", "dx_rel_diff", "agree"}`` (relative to ``other``), or ``{"error"}``."""
    import torch

    from .peers import agreement, max_rel_diff

    try:
        xs = []
        outs = []
        for module, side, mode in ((ref_module, ref_side, ref_mode), (other_module, other_side, other_mode)):
            xi = x.detach().clone().requires_grad_()
            with _NoTF32(), _autocast(dtype_name, x.device.type):
                y = _call(module, side, mode, xi, dt)
                (dx,) = torch.autograd.grad(y, [xi], dy.to(y.dtype))
            xs.append(dx)
            outs.append(y.detach())
        res = {"y_rel_diff": max_rel_diff(outs[0], outs[1]), "dx_rel_diff": max_rel_diff(xs[0], xs[1])}
        res["agree"] = agreement(max(res["y_rel_diff"], res["dx_rel_diff"]), dtype_name)
        return res
    except Exception as exc:  # noqa: BLE001 - reported in the row
        return {"error": f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]}


def time_variant(module, side: str, mode: str, x, dt, dy, dtype_name: str, reps: int,
                 timer: Callable[[Callable[[], Any], int], float]) -> dict[str, Any]:
    """Forward (no grad) and forward + backward (gradients of ``x`` and every parameter) times in ms, and the
    host time of one forward + backward (:func:`host_ms`), or ``{"error"}``."""
    import torch

    try:
        xg = x.detach().clone().requires_grad_()
        leaves = [xg] + [p for p in module.parameters() if p.requires_grad]

        def fwd():
            with torch.no_grad(), _autocast(dtype_name, x.device.type):
                return _call(module, side, mode, x, dt)

        def fwd_bwd():
            with _autocast(dtype_name, x.device.type):
                y = _call(module, side, mode, xg, dt)
            torch.autograd.grad(y, leaves, dy.to(y.dtype), allow_unused=True)

        out = {"fwd_ms": timer(fwd, reps), "fwd_bwd_ms": timer(fwd_bwd, reps)}
        out["host_fwd_bwd_ms"] = host_ms(fwd_bwd, min(reps, HOST_REPS))
        return out
    except Exception as exc:  # noqa: BLE001 - reported in the row
        return {"error": f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]}


def build_layers(d_model: int, device, peers=None, seed: int = 0):
    """Our layer and, when ``peers`` has them, mamba_ssm's and lrnnx's, all float32 on ``device`` with the same
    weights (mamba_ssm's seeded initialisation copied into ours, ours into lrnnx's, event rate included).
    Returns ``(ours, mamba_layer_or_None, lrnnx_layer_or_None, notes)``."""
    import torch

    from evmamba.model import Mamba

    from .peers import copy_parameters

    notes = []
    kw = dict(d_state=D_STATE, d_conv=D_CONV, expand=EXPAND)
    torch.manual_seed(seed)
    ours = Mamba(d_model, **kw).to(device)
    mamba_layer = lrnnx_layer = None
    if peers is not None and peers.mamba_layer is not None:
        try:
            torch.manual_seed(seed)
            mamba_layer = peers.mamba_layer(d_model, **kw).to(device)
            copy_parameters(mamba_layer, ours)
        except Exception as exc:  # noqa: BLE001
            notes.append(f"mamba_ssm Mamba({d_model}) not built: {type(exc).__name__}: {exc}")
            mamba_layer = None
    if peers is not None and peers.lrnnx_layer is not None:
        try:
            lrnnx_layer = peers.lrnnx_layer(d_model, **kw).to(device)
            copy_parameters(ours, lrnnx_layer, extra=("dtA_proj.bias",))
        except Exception as exc:  # noqa: BLE001
            notes.append(f"lrnnx Mamba({d_model}) not built: {type(exc).__name__}: {exc}")
            lrnnx_layer = None
    return ours, mamba_layer, lrnnx_layer, notes


#: The rows of the table: (our mode, peer side, peer mode, whether the outputs compute the same thing).
PAIRS = [("standard", "mamba_ssm", "standard", True), ("event", "mamba_ssm", "standard", False),
         ("standard", "lrnnx", "standard", True), ("event", "lrnnx", "event", True)]


def bench_case(batch: int, L: int, d_model: int, dtype_name: str, reps: int, peers, device="cuda",
               timer=None, conv: str = "triton") -> dict[str, Any]:
    """Every variant at one shape and precision: agreement first, then times. ``timer(fn, reps) -> ms``.
    ``conv``: our layer's convolution, ``"triton"`` or ``"torch"`` (``EVMAMBA_TRITON_CONV`` 1 or 0 for this case
    only; the case's ``conv`` says which ran)."""
    from evmamba.kernels.backends import triton_conv_opt_in

    if conv not in CONVS:
        raise ValueError(f"bench_case: conv must be one of {CONVS}; got {conv!r}")
    with triton_conv_opt_in(conv == "triton"):
        return _bench_case(batch, L, d_model, dtype_name, reps, peers, device, timer)


def _bench_case(batch, L, d_model, dtype_name, reps, peers, device, timer) -> dict[str, Any]:
    import torch

    from evmamba.kernels import conv_backend

    if timer is None:
        from .kernels import _median_ms as timer
    ours, mamba_layer, lrnnx_layer, notes = build_layers(d_model, device, peers)
    if lrnnx_layer is not None and dtype_name != "float32":
        # Its C++ refuses non-float32 inputs (the autocast activations would be bfloat16).
        notes.append(f"lrnnx not timed in {dtype_name}: its CUDA scan takes float32 inputs only")
        lrnnx_layer = None
    g = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(batch, L, d_model, device=device, generator=g)
    dt = torch.rand(batch, L, device=device, generator=g) * 2.0  # gaps in the units of the layer's time constants
    dy = torch.randn(batch, L, d_model, device=device, generator=g)
    modules = {"evmamba": ours, "mamba_ssm": mamba_layer, "lrnnx": lrnnx_layer}
    # What our layer's forward will choose for its convolution input (B, Di, L) in the activations' dtype.
    probe = torch.empty(batch, EXPAND * d_model, L, device=device, dtype=getattr(torch, dtype_name))
    conv = conv_backend(probe, ours.backend, D_CONV)
    case: dict[str, Any] = dict(batch=batch, L=L, d_model=d_model, d_inner=EXPAND * d_model, dtype=dtype_name,
                                conv=conv, notes=notes, agreement={}, times={})
    for our_mode, side, peer_mode, same in PAIRS:
        if same and modules[side] is not None:
            key = f"evmamba {our_mode} vs {side} {peer_mode}"
            case["agreement"][key] = compare_outputs(ours, "evmamba", our_mode, modules[side], side, peer_mode,
                                                     x, dt, dy, dtype_name)
    for side, mode, module in layer_variants(ours, mamba_layer, lrnnx_layer):
        case["times"][f"{side} {mode}"] = time_variant(module, side, mode, x, dt, dy, dtype_name, reps, timer)
    case["rows"] = _rows(case, modules)
    return case


def _rows(case: dict[str, Any], modules: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for our_mode, side, peer_mode, same in PAIRS:
        if modules[side] is None:
            continue
        ours_t = case["times"].get(f"evmamba {our_mode}", {})
        row: dict[str, Any] = dict(ours=f"evmamba {our_mode}", peer=f"{side} {peer_mode}",
                                   ours_fwd_ms=ours_t.get("fwd_ms"), ours_fwd_bwd_ms=ours_t.get("fwd_bwd_ms"))
        peer_t = case["times"].get(f"{side} {peer_mode}", {})
        row["peer_fwd_ms"], row["peer_fwd_bwd_ms"] = peer_t.get("fwd_ms"), peer_t.get("fwd_bwd_ms")
        row["ours_host_ms"], row["peer_host_ms"] = ours_t.get("host_fwd_bwd_ms"), peer_t.get("host_fwd_bwd_ms")
        for k in ("fwd", "fwd_bwd"):
            o, p = row[f"ours_{k}_ms"], row[f"peer_{k}_ms"]
            row[f"{k}_speedup"] = p / o if o and p else None
        errors = [t["error"] for t in (ours_t, peer_t) if "error" in t]
        if same:
            agr = case["agreement"].get(f"evmamba {our_mode} vs {side} {peer_mode}", {})
            if "error" in agr:
                errors.append("comparison: " + agr["error"])
            row.update({k: agr[k] for k in ("y_rel_diff", "dx_rel_diff", "agree") if k in agr})
        else:
            row["agree"] = "n/a (different modes)"
        if errors:
            row["error"] = "; ".join(errors)
        rows.append(row)
    return rows


def _fmt(v, spec: str) -> str:
    return "" if v is None else format(v, spec)


def table(cases: list[dict[str, Any]]) -> str:
    rows = []
    for c in cases:
        shape = f"{c['batch']}x{c['L']} d{c['d_model']}"
        ours_only = not c["rows"]
        if ours_only:
            for mode in ("standard", "event"):
                t = c["times"].get(f"evmamba {mode}", {})
                rows.append([shape, c["dtype"], c.get("conv", ""), f"evmamba {mode}", "-",
                             _fmt(t.get("fwd_ms"), ".4g"), "", "", _fmt(t.get("fwd_bwd_ms"), ".4g"), "", "",
                             _fmt(t.get("host_fwd_bwd_ms"), ".3g"), "", t.get("error", "")[:60]])
        for r in c["rows"]:
            diff = "" if "y_rel_diff" not in r else f"y {r['y_rel_diff']:.1e} dx {r['dx_rel_diff']:.1e}"
            rows.append([shape, c["dtype"], c.get("conv", ""), r["ours"], r["peer"], _fmt(r["ours_fwd_ms"], ".4g"),
                         _fmt(r.get("peer_fwd_ms"), ".4g"), _fmt(r.get("fwd_speedup"), ".2f") + "x",
                         _fmt(r["ours_fwd_bwd_ms"], ".4g"), _fmt(r.get("peer_fwd_bwd_ms"), ".4g"),
                         _fmt(r.get("fwd_bwd_speedup"), ".2f") + "x",
                         f"{_fmt(r.get('ours_host_ms'), '.3g')} / {_fmt(r.get('peer_host_ms'), '.3g')}", diff,
                         r.get("agree", "") + ("" if "error" not in r else " ERROR: " + r["error"][:60])])
    return format_table(["batch x L, d_model", "dtype", "our conv", "ours", "peer", "ours fwd", "peer fwd", "speed-up",
                         "ours f+b", "peer f+b", "speed-up", "host f+b ours / peer", "rel diff", "agree"], rows)


_CONV_WORDS = {"torch": "PyTorch conv1d + silu (EVMAMBA_TRITON_CONV=0)",
               "triton": "Triton kernel, evmamba.kernels.triton_conv (the default on a GPU)"}


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    if args.reps < 1:
        print(f"evmamba bench layer: --reps must be >= 1; got {args.reps}")
        return 2
    peers = None
    record: dict[str, Any] = {"benchmark": "layer", "reps": args.reps, "bf16": "torch.autocast, float32 parameters",
                              "d_state": D_STATE, "d_conv": D_CONV, "expand": EXPAND, "conv": args.conv}
    if args.peers is not None:
        from .kernels import report_peers
        from .peers import default_site, load_peers

        peers = load_peers(args.peers or default_site())
        report_peers(peers)
        record["peers"] = peers.summary()
        if peers.lrnnx_layer is None:
            print("  lrnnx's Mamba (the peer with an event mode) is not timed")
    if not torch.cuda.is_available():
        print("evmamba bench layer: needs a CUDA GPU (none visible); nothing measured")
        return 1
    if args.conv == "triton":
        from evmamba.kernels.backends import triton_available

        if not triton_available():
            print("evmamba bench layer: --conv triton needs Triton (it does not import); nothing measured")
            return 2
    print(f"our causal conv + SiLU: {_CONV_WORDS[args.conv]}")
    from evmamba.model import mamba as mamba_module

    # The training path of our layer (docs/mamba.md): one autograd node needs the Triton convolution.
    one_node = mamba_module.INNER_IN_ONE_NODE and args.conv == "triton"
    record["training_path"] = "one autograd node (mamba_inner)" if one_node else "separate autograd nodes"
    print(f"our layer's training forward: {record['training_path']}")
    if args.reps < 20:
        print(f"note: --reps {args.reps} is below the 20 runs the numbers are meant to be a median of")
    shapes = LAYER_SHAPES[:1] if args.quick else LAYER_SHAPES
    cases = []
    for (batch, L, d_model), dtype_name in tqdm([(s, d) for s in shapes for d in args.dtypes], desc="layer",
                                                unit="case"):
        case = bench_case(batch, L, d_model, dtype_name, args.reps, peers, conv=args.conv)
        cases.append(case)
        if case["conv"] != args.conv:
            print(f"  {batch}x{L} d{d_model} {dtype_name}: our layer ran the {case['conv']} convolution, not "
                  f"{args.conv}", flush=True)
        for note in case["notes"]:
            print(f"  {note}", flush=True)
        for key, agr in case["agreement"].items():
            what = agr.get("error") or (f"y {agr['y_rel_diff']:.2g}, dx {agr['dx_rel_diff']:.2g}: {agr['agree']}")
            print(f"  {batch}x{L} d{d_model} {dtype_name} {key}: rel diff {what}", flush=True)
        for key, t in case["times"].items():
            what = t.get("error") or (f"fwd {t['fwd_ms']:.4g} ms, fwd+bwd {t['fwd_bwd_ms']:.4g} ms (host "
                                      f"{t['host_fwd_bwd_ms']:.3g} ms)")
            print(f"  {batch}x{L} d{d_model} {dtype_name} {key}: {what}", flush=True)
        record["cases"] = cases
        write_json(args.json, record)  # what is measured so far survives a time limit
        torch.cuda.empty_cache()
    print("\nMamba layer, ours vs peers on the same weights and inputs (median ms; speed-up = peer / ours; bf16 ="
          " autocast over float32 parameters; mamba_ssm has no event mode: our event mode is set beside its"
          f" standard mode; our conv: {_CONV_WORDS[args.conv]})")
    print(table(cases))
    print("host f+b: the host's time to issue one forward + backward with the GPU idle (median of "
          f"{HOST_REPS}); where it is near or above f+b, that side is bound by its host, not its kernels")
    write_json(args.json, record)
    return 0
