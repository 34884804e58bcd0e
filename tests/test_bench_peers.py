"""The peer comparison of ``evmamba bench kernels --peers`` and ``evmamba bench layer``, on the CPU.

No peer is installed here and none of their code is imported: the GPU-only timing is not run, but the argument
handling, the plain message when the peers are missing, the import fallback, and the weight copy between our
layer and a module with mamba_ssm's / lrnnx's parameter layout (a stand-in written here from their documented
names and shapes, with its own plain Mamba-1 forward) are.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from evmamba.bench import layer as layer_bench
from evmamba.bench.peers import (
    MAMBA_PARAMETERS,
    Peers,
    agreement,
    copy_parameters,
    import_bypassing_inits,
    load_peers,
    max_rel_diff,
)
from evmamba.cli import main
from evmamba.model import Mamba

no_cuda = pytest.mark.skipif(torch.cuda.is_available(),
                             reason="checks the message printed on a machine with no accelerator")


class StandInMamba(nn.Module):
    """mamba_ssm's ``Mamba`` parameter layout (in_proj, conv1d, x_proj, dt_proj, A_log, D, out_proj) with a plain
    sequential Mamba-1 forward: ``x, z`` are the two halves of ``in_proj``'s output, ``x_proj`` gives
    ``[dt (rank), B (N), C (N)]``, ``delta = softplus(dt_proj(dt))``, ``h = exp(delta A) h + delta B x``,
    ``y = (C . h + D x) * silu(z)``."""

    def __init__(self, d_model, d_state=16, d_conv=4, expand=2):
        super().__init__()
        self.d_inner, self.d_state = expand * d_model, d_state
        self.dt_rank = math.ceil(d_model / 16)
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.rand(self.d_inner, d_state) * 4 + 0.5))
        self.D = nn.Parameter(torch.randn(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def decay_step(self, delta, integration_timesteps):
        return delta

    def forward(self, hidden_states, integration_timesteps=None):
        L = hidden_states.shape[1]
        x, z = self.in_proj(hidden_states).chunk(2, dim=-1)
        x = F.silu(self.conv1d(x.transpose(1, 2))[..., :L]).transpose(1, 2)  # (B, L, Di)
        dt, Bm, Cm = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(self.dt_proj(dt))  # (B, L, Di)
        delta_a = self.decay_step(delta, integration_timesteps)
        A = -torch.exp(self.A_log)
        h = x.new_zeros(x.shape[0], self.d_inner, self.d_state)
        ys = []
        for t in range(L):
            h = torch.exp(delta_a[:, t, :, None] * A) * h + (delta[:, t] * x[:, t])[..., None] * Bm[:, t, None, :]
            ys.append((h * Cm[:, t, None, :]).sum(-1) + self.D * x[:, t])
        return self.out_proj(torch.stack(ys, dim=1) * F.silu(z))


class StandInLrnnx(StandInMamba):
    """lrnnx's layout: mamba_ssm's plus ``dtA_proj`` (a Linear whose bias is the event rate; its weight unused)
    and the event mode, ``dtA = integration_timesteps * softplus(dtA_proj.bias)``."""

    def __init__(self, d_model, d_state=16, d_conv=4, expand=2):
        super().__init__(d_model, d_state, d_conv, expand)
        self.dtA_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)

    def decay_step(self, delta, integration_timesteps):
        if integration_timesteps is None:
            return delta
        return integration_timesteps[..., None] * F.softplus(self.dtA_proj.bias)


def test_copy_parameters_gives_our_layer_the_stand_ins_function():
    torch.manual_seed(0)
    peer = StandInMamba(8).double()
    ours = Mamba(8).double()
    copied = copy_parameters(peer, ours)
    assert copied == list(MAMBA_PARAMETERS)
    x = torch.randn(2, 13, 8, dtype=torch.float64)
    # Not bit-exact: our layer takes A = -exp(A_log) in float32 whatever the activations (a mapping error would
    # differ by order one).
    torch.testing.assert_close(ours(x), peer(x), rtol=1e-6, atol=1e-8)


def test_copy_parameters_into_lrnnx_layout_carries_the_event_rate():
    torch.manual_seed(1)
    ours = Mamba(8).double()
    with torch.no_grad():
        ours.dtA_proj.bias.copy_(torch.linspace(-3.0, 1.0, ours.d_inner))
    peer = StandInLrnnx(8).double()
    copied = copy_parameters(ours, peer, extra=("dtA_proj.bias",))
    assert copied[-1] == "dtA_proj.bias"
    x = torch.randn(2, 11, 8, dtype=torch.float64)
    ts = torch.rand(2, 11, dtype=torch.float64) * 3
    torch.testing.assert_close(ours(x, integration_timesteps=ts), peer(x, integration_timesteps=ts), rtol=1e-6,
                               atol=1e-8)


def test_copy_parameters_names_a_mismatched_or_missing_parameter():
    with pytest.raises(ValueError, match="'in_proj.weight' has shape"):
        copy_parameters(StandInMamba(8), Mamba(16))
    stand_in = StandInMamba(8)
    del stand_in.D
    with pytest.raises(ValueError, match="StandInMamba has no parameter 'D'"):
        copy_parameters(stand_in, Mamba(8))


def test_max_rel_diff_and_agreement():
    b = torch.tensor([1.0, -4.0, 2.0])
    assert max_rel_diff(b + torch.tensor([0.0, 0.02, 0.0]), b) == pytest.approx(0.005)
    assert max_rel_diff(torch.zeros(3), torch.zeros(3)) == 0.0
    assert agreement(1e-4, "float32") == "ok" and agreement(1e-2, "float32") == "DIFFERS"
    assert agreement(1e-2, "bfloat16") == "ok" and agreement(0.2, "bfloat16") == "DIFFERS"


def test_bench_case_compares_and_times_every_pair_on_the_cpu():
    # The timing loop with a stand-in timer (one call, a fixed 2 ms): the rows, agreement and speed-ups.
    calls = []

    def timer(fn, reps):
        calls.append(reps)
        fn()
        return 2.0

    peers = Peers(mamba_layer=StandInMamba, lrnnx_layer=StandInLrnnx)
    case = layer_bench.bench_case(2, 9, 16, "float32", 3, peers, device="cpu", timer=timer)
    assert case["notes"] == []
    assert set(case["times"]) == {"evmamba standard", "evmamba event", "mamba_ssm standard", "lrnnx standard",
                                  "lrnnx event"}
    assert len(calls) == 2 * 5 and set(calls) == {3}
    rows = {(r["ours"], r["peer"]): r for r in case["rows"]}
    assert set(rows) == {("evmamba standard", "mamba_ssm standard"), ("evmamba event", "mamba_ssm standard"),
                         ("evmamba standard", "lrnnx standard"), ("evmamba event", "lrnnx event")}
    for key in [("evmamba standard", "mamba_ssm standard"), ("evmamba standard", "lrnnx standard"),
                ("evmamba event", "lrnnx event")]:
        r = rows[key]
        assert r["agree"] == "ok" and r["y_rel_diff"] < 1e-4 and r["dx_rel_diff"] < 1e-4, r
        assert r["fwd_speedup"] == 1.0 and r["fwd_bwd_speedup"] == 1.0
    assert rows[("evmamba event", "mamba_ssm standard")]["agree"].startswith("n/a")
    # Every side's host time for one forward + backward, measured for real (the stand-in timer does not touch it).
    assert all(t["host_fwd_bwd_ms"] > 0 for t in case["times"].values())
    assert all(r["ours_host_ms"] > 0 and r["peer_host_ms"] > 0 for r in case["rows"])
    text = layer_bench.table([case])
    assert "evmamba event" in text and "host f+b ours / peer" in text


def test_bench_case_says_which_convolution_ran_and_restores_the_opt_in(monkeypatch):
    # conv="torch" keeps PyTorch's conv, conv="triton" (the default) asks for the kernel, for the case only, and
    # the case (and the table) says which ran. Ours against the stand-in mamba_ssm: the Triton conv changes
    # nothing that the check sees.
    monkeypatch.delenv("EVMAMBA_TRITON_CONV", raising=False)
    timer = lambda fn, reps: (fn(), 1.0)[1]  # noqa: E731
    case = layer_bench.bench_case(2, 5, 16, "float32", 1, None, device="cpu", timer=timer, conv="torch")
    assert case["conv"] == "torch" and "torch" in layer_bench.table([case])
    with pytest.raises(ValueError, match="conv must be one of"):
        layer_bench.bench_case(2, 5, 16, "float32", 1, None, device="cpu", timer=timer, conv="cudnn")
    pytest.importorskip("triton")
    from evmamba.kernels import triton_conv

    calls = []
    kernel = triton_conv.causal_conv1d_silu
    monkeypatch.setattr(triton_conv, "causal_conv1d_silu", lambda *a: calls.append(1) or kernel(*a))
    device = "cuda" if torch.cuda.is_available() else "cpu"  # Triton's CPU interpreter without CUDA (conftest)
    case = layer_bench.bench_case(2, 5, 16, "float32", 1, Peers(mamba_layer=StandInMamba), device=device,
                                  timer=timer, conv="triton")
    assert case["conv"] == "triton" and calls
    assert "triton" in layer_bench.table([case])
    (row,) = [r for r in case["rows"] if r["ours"] == "evmamba standard"]
    assert row["agree"] == "ok", row
    assert "EVMAMBA_TRITON_CONV" not in __import__("os").environ


def test_bench_case_reports_a_disagreeing_peer_in_its_row():
    class Wrong(StandInMamba):
        def forward(self, hidden_states, integration_timesteps=None):
            return super().forward(hidden_states) * 1.1

    case = layer_bench.bench_case(2, 5, 16, "float32", 1, Peers(mamba_layer=Wrong), device="cpu",
                                  timer=lambda fn, reps: (fn(), 1.0)[1])
    (row,) = [r for r in case["rows"] if r["peer"] == "mamba_ssm standard" and r["ours"] == "evmamba standard"]
    assert row["agree"] == "DIFFERS" and row["y_rel_diff"] > 0.05


def test_import_bypassing_inits_reaches_a_module_under_a_broken_package(tmp_path, monkeypatch):
    pkg = tmp_path / "brokenpkg_for_peers"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("import a_module_that_does_not_exist\n")
    (pkg / "sub" / "__init__.py").write_text("raise RuntimeError('never run')\n")
    (pkg / "sub" / "leaf.py").write_text("VALUE = 7\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert import_bypassing_inits("brokenpkg_for_peers.sub.leaf").VALUE == 7
    finally:
        for name in [m for m in sys.modules if m.startswith("brokenpkg_for_peers")]:
            del sys.modules[name]


def _compile_named_module(source_dir, out_path, module: str, who: str) -> None:
    """A compiled (pybind11) module ``module`` whose attribute ``who`` is ``who``, built with g++ against torch's
    bundled pybind11 headers."""
    import subprocess
    import sysconfig

    import torch.utils.cpp_extension as cpp

    src = source_dir / f"{who}.cpp"
    src.write_text(f'#include <pybind11/pybind11.h>\nPYBIND11_MODULE({module}, m) {{ m.attr("who") = "{who}"; }}\n')
    includes = [f"-I{p}" for p in cpp.include_paths()[:1] + [sysconfig.get_paths()["include"]]]
    subprocess.run(["g++", "-O0", "-shared", "-fPIC", "-std=c++17", *includes, str(src), "-o", str(out_path)],
                   check=True, capture_output=True, timeout=300)


@pytest.mark.skipif(__import__("shutil").which("g++") is None, reason="needs a C++ compiler")
def test_lrnnx_is_timed_alone_never_beside_mamba_ssm(tmp_path, monkeypatch):
    """mamba_ssm's and lrnnx's compiled scans share the module name ``selective_scan_cuda``; in one process the
    rows labelled mamba_ssm ran lrnnx's code. With stand-in packages (lrnnx's package __init__ importing a missing
    extension, as the real one does): the site with both gives mamba_ssm, calling its own module, and leaves lrnnx
    out with the words scripts/peers/gpu_run.sh looks for; lrnnx's own folder then gives lrnnx, calling its own."""
    import importlib.machinery

    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    site = tmp_path / "site"
    lrnnx_site = site / "lrnnx-site"
    files = {
        site / "mamba_ssm" / "__init__.py": "",
        site / "mamba_ssm" / "ops" / "__init__.py": "",
        site / "mamba_ssm" / "ops" / "selective_scan_interface.py":
            "import selective_scan_cuda\n\ndef selective_scan_fn(*a, **k):\n    return selective_scan_cuda.who\n",
        site / "mamba_ssm" / "modules" / "__init__.py": "",
        site / "mamba_ssm" / "modules" / "mamba_simple.py": "causal_conv1d_fn = None\n\nclass Mamba:\n    pass\n",
        lrnnx_site / "lrnnx" / "__init__.py": "",
        lrnnx_site / "lrnnx" / "ops" / "__init__.py": "",
        lrnnx_site / "lrnnx" / "ops" / "selective_scan.py":
            "import selective_scan_cuda\n\ndef selective_scan_fn(*a, **k):\n    return selective_scan_cuda.who\n",
        lrnnx_site / "lrnnx" / "models" / "__init__.py": "",
        lrnnx_site / "lrnnx" / "models" / "ltv" / "__init__.py": "import simplified_scan_cuda_not_built\n",
        lrnnx_site / "lrnnx" / "models" / "ltv" / "mamba.py": "class Mamba:\n    pass\n",
    }
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    _compile_named_module(tmp_path, site / f"selective_scan_cuda{suffix}", "selective_scan_cuda", "mamba_ssm")
    _compile_named_module(tmp_path, lrnnx_site / f"selective_scan_cuda{suffix}", "selective_scan_cuda", "lrnnx")

    path = list(sys.path)

    def forget():  # as a new process would start: neither package loaded, neither folder on the path
        for name in [m for m in sys.modules if m.split(".")[0] in ("mamba_ssm", "lrnnx", "selective_scan_cuda")]:
            del sys.modules[name]
        monkeypatch.setattr(sys, "path", list(path))

    monkeypatch.setattr(sys, "path", list(path))
    try:
        both = load_peers(str(site))
        assert both.mamba_scan is not None and both.mamba_scan() == "mamba_ssm", both.messages
        assert both.lrnnx_scan is None and "lrnnx" not in sys.modules
        left_out = [m for m in both.messages if m.startswith("lrnnx:")]
        assert len(left_out) == 1 and "not timed in this process" in left_out[0]
        assert str(lrnnx_site) in left_out[0]  # the folder to time it from
    finally:
        forget()
    # A process of its own (within this one the name would keep giving back the module loaded first).
    code = ("import sys; from evmamba.bench.peers import load_peers; p = load_peers(sys.argv[1]); "
            "print(p.mamba_scan is None, p.lrnnx_scan() if p.lrnnx_scan else p.messages, "
            "p.versions.get('lrnnx_extension', '?').startswith(sys.argv[1]))")
    out = subprocess.run([sys.executable, "-c", code, str(lrnnx_site)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)})
    assert out.stdout.split() == ["True", "lrnnx", "True"], out.stdout + out.stderr


def test_load_peers_says_plainly_what_is_missing(tmp_path):
    peers = load_peers(str(tmp_path / "nowhere"))
    text = "\n".join(peers.messages)
    assert not peers.any
    assert "does not exist" in text
    assert "mamba_ssm: not installed" in text and "lrnnx: not installed" in text
    assert "timed alone" in text


@no_cuda
@pytest.mark.parametrize("bench", ["kernels", "layer"])
def test_peers_flag_without_peers_or_gpu_explains_both(bench, tmp_path, capsys):
    assert main(["bench", bench, "--peers", str(tmp_path / "nowhere")]) == 1
    out = capsys.readouterr().out
    assert "peers: none imported" in out and "mamba_ssm: not installed" in out
    assert "needs a CUDA GPU" in out


def test_layer_bench_arguments(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "layer", "--dtypes", "float16"])
    assert "invalid choice" in capsys.readouterr().err
    assert main(["bench", "layer", "--reps", "0"]) == 2
    assert "--reps must be >= 1" in capsys.readouterr().out
    parser = __import__("evmamba.cli", fromlist=["build_parser"]).build_parser(["bench", "layer"])
    args = parser.parse_args(["bench", "layer", "--peers", "--quick"])
    assert args.peers == "" and args.quick and args.dtypes == ["float32", "bfloat16"]
    args = parser.parse_args(["bench", "layer", "--peers", "/x"])
    assert args.peers == "/x" and args.conv == "triton"
    assert parser.parse_args(["bench", "layer", "--conv", "torch"]).conv == "torch"
    with pytest.raises(SystemExit):
        main(["bench", "layer", "--conv", "cudnn"])
    assert "invalid choice" in capsys.readouterr().err
    kparser = __import__("evmamba.cli", fromlist=["build_parser"]).build_parser(["bench", "kernels"])
    kargs = kparser.parse_args(["bench", "kernels", "--peers", "--scan-only"])
    assert kargs.peers == "" and kargs.scan_only


# ------------------------------------------------------------------ the scan's arguments mapped to the peers'
def _naive_scan(u, delta, A, B, C, D, z, delta_bias, softplus, deltaA=None):
    """A sequential selective scan written here: ``(B, D, L)`` activations, ``(B, N, L)`` B and C; ``deltaA``
    ``(B, D, L)``, when given, is the decay step as is (no bias, no softplus)."""
    delta = delta.double() + (0 if delta_bias is None else delta_bias.double()[:, None])
    delta = F.softplus(delta) if softplus else delta
    decay = delta if deltaA is None else deltaA.double()
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1], dtype=torch.float64)
    ys = []
    for t in range(u.shape[-1]):
        h = torch.exp(decay[..., t, None] * A.double()) * h + (delta[..., t] * u[..., t].double())[..., None] * \
            B[:, None, :, t].double()
        ys.append((h * C[:, None, :, t].double()).sum(-1))
    y = torch.stack(ys, -1) + D.double()[:, None] * u.double()
    return (y * F.silu(z.double())).to(u.dtype)


def fake_mamba_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                    return_last_state=False):  # mamba_ssm's selective_scan_fn signature
    return _naive_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus)


def fake_lrnnx_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, deltaA=None, delta_softplus=False,
                    return_last_state=False, discretization="mamba"):  # lrnnx's selective_scan_fn signature
    assert discretization == "mamba" and not return_last_state
    return _naive_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, deltaA)


@pytest.mark.parametrize("event", [False, True])
def test_peer_scans_map_our_arguments_onto_theirs(event):
    from evmamba.bench.kernels import _time_peer_scan, peer_scans
    from evmamba.kernels.scan_ref import selective_scan_ref

    g = torch.Generator().manual_seed(3)
    b, d, L, n = 2, 5, 7, 4
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    p = dict(u=r(b, d, L), delta=r(b, d, L) * 0.5, A=-(torch.rand(d, n, generator=g) + 0.1), B=r(b, n, L),
             C=r(b, n, L), D=r(d), z=r(b, d, L), delta_bias=r(d) * 0.5 - 1.0,
             dt=torch.rand(b, L, generator=g) * 2 if event else None, rate=r(d) - 1.0 if event else None)
    trainable = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"] + (["rate"] if event else [])
    pg = {k: (v.clone().requires_grad_() if k in trainable else v) for k, v in p.items()}
    dy = r(b, d, L)
    y_ours = selective_scan_ref(**p)
    grads_ours = torch.autograd.grad(selective_scan_ref(**pg), [pg[k] for k in trainable], dy)
    peers = Peers(mamba_scan=fake_mamba_scan, lrnnx_scan=fake_lrnnx_scan)
    scans = peer_scans(peers, event)
    assert [name for name, _ in scans] == (["lrnnx"] if event else ["mamba_ssm", "lrnnx"])
    for name, fn in scans:
        row = _time_peer_scan(name, fn, p, pg, trainable, dy, y_ours, grads_ours, "float32", 2, 1.0, 4.0,
                              timer=lambda f, reps: (f(), 2.0)[1])
        assert "error" not in row, row
        assert row["y_rel_diff"] < 1e-5 and row["grad_rel_diff"] < 1e-4 and row["agree"] == "ok", row
        assert row["fwd_speedup"] == 2.0 and row["fwd_bwd_speedup"] == 0.5
        # The peer's host time for one forward + backward is measured for real (the stand-in timer does not).
        assert row["peer_host_ms"] > 0 and row["ours_host_ms"] is None


def test_a_failing_peer_scan_is_a_row_with_its_error():
    from evmamba.bench.kernels import _time_peer_scan

    def broken(**_):
        raise RuntimeError("selective_scan_cuda: no kernel image for this device")

    row = _time_peer_scan("mamba_ssm", broken, {}, {}, [], None, None, (), "float32", 1, 1.0, 1.0,
                          timer=lambda f, reps: 1.0)
    assert row["error"].startswith("RuntimeError: selective_scan_cuda: no kernel image")


def test_peer_table_prints_measured_skipped_and_failed_rows(capsys):
    from evmamba.bench.kernels import _peer_line, print_peer_table

    scan = dict(shape=[16, 256, 8192, 16], dtype="float32", mode="standard", fwd_ms=0.5, fwd_bwd_ms=2.0, peers=[
        dict(peer="mamba_ssm", ours_fwd_ms=0.5, ours_fwd_bwd_ms=2.0, peer_fwd_ms=1.0, peer_fwd_bwd_ms=3.0,
             fwd_speedup=2.0, fwd_bwd_speedup=1.5, y_rel_diff=1e-6, grad_rel_diff=2e-5, grad_worst="A", agree="ok",
             ours_host_ms=0.81, peer_host_ms=1.25),
        dict(peer="lrnnx", skipped="lrnnx's CUDA scan takes float32 inputs only", ours_fwd_ms=0.5,
             ours_fwd_bwd_ms=2.0),
        dict(peer="lrnnx", error="RuntimeError: boom", ours_fwd_ms=0.5, ours_fwd_bwd_ms=2.0)])
    print_peer_table([scan])
    out = capsys.readouterr().out
    assert "2.00x" in out and "1.50x" in out and "2.0e-05 (A) ok" in out
    assert "host f+b ours/peer" in out and "0.81/1.25" in out
    assert "skipped: float32 only" in out and "ERROR: RuntimeError: boom" in out
    assert "(2x)" in _peer_line(scan, scan["peers"][0]) and "skipped" in _peer_line(scan, scan["peers"][1])
