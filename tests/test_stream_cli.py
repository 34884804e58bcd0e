"""``evmamba stream`` as a user runs it: a real recording at full speed with a JSON summary, evmamba packets
on stdin (ending inside a packet), and a UDP stream stopped with Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from evmamba.datasets.paths import data_root
from evmamba.model.checkpoint import save_checkpoint
from evmamba.model.classifier import EventClassifier
from evmamba.pipeline.binning import BinningConfig, vocab_size
from evmamba.streaming import protocol

SENSOR = (128, 128, 2)
BINNING = {"downsample": 4, "polarity": True, "bin_us": 10000, "time_unit": "ms", "first_dt": 0.0}
CLASSES = [f"g{i}" for i in range(11)]


def trial(name):
    path = data_root() / "dvsgesture_slayer_bs2" / name
    if not path.exists():
        pytest.skip(f"recording {path} is not available")
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    vocab = vocab_size(SENSOR, BinningConfig(**BINNING))
    model = EventClassifier(vocab, 11, d_model=16, n_layers=2, d_state=8)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint({
        "model": model.state_dict(), "model_type": "event_mamba", "model_config": model.config,
        "data": {"kind": "event_mamba", "n_classes": 11, "classes": CLASSES, "sensor_size": list(SENSOR),
                 "vocab_size": vocab, "grid": [32, 32, 2]},
        "config": {"dataset": {"name": "dvsgesture_samples", "root": None}, "binning": BINNING},
    }, path)
    return path


def evmamba(*args, stdin: bytes | None = None):
    """Run the command line; returns ``(exit status, stdout, stderr)`` as text."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    r = subprocess.run([sys.executable, "-m", "evmamba", *map(str, args)], capture_output=True, env=env,
                       timeout=240, input=stdin)
    return r.returncode, r.stdout.decode(), r.stderr.decode()


def lines(stdout):
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_stream_a_recording_at_full_speed_with_a_json_summary(checkpoint, tmp_path):
    out = tmp_path / "out.json"
    code, stdout, stderr = evmamba("stream", "--checkpoint", checkpoint, "--source", trial("1.bs2"), "--speed", "max",
                                   "--json", out)
    assert code == 0, stderr
    records = lines(stdout)
    kinds = [rec["type"] for rec in records]
    assert kinds[-1] == "summary" and kinds.count("final") == 1 and "prediction" in kinds
    summary = json.loads(out.read_text())
    for key in ("events", "tokens", "real_time_factor", "latency_us_p50", "latency_us_p99", "latency_us_max",
                "events_per_s", "dropped_events", "queue_high_water", "machine"):
        assert key in summary, key
    assert summary["events"] == 63471 and summary["dropped_events"] == 0 and summary["real_time_factor"] > 0
    assert "real-time factor" in stderr


def test_stdin_packets_and_a_stream_cut_off_inside_a_packet(checkpoint):
    from evmamba.pipeline.readers import read_events

    ev, _ = read_events(trial("2.bs2"))
    ev = ev[:20000]
    data = b"".join(protocol.encode_packets(ev[:15000], max_events=1000, end=True))
    data += b"".join(protocol.encode_packets(ev[15000:], max_events=1000, end=False, seq0=15))[:-100]
    code, stdout, stderr = evmamba("stream", "--checkpoint", checkpoint, "--source", "-", "--no-predictions",
                                   stdin=data)
    assert code == 0, stderr
    records = lines(stdout)
    finals = [rec for rec in records if rec["type"] == "final"]
    summary = records[-1]
    assert len(finals) == 2  # the END flag, then the end of the stream
    assert summary["source"]["short"] == 1 and summary["source"]["truncated_bytes"] > 0
    assert summary["events"] == 19000  # the last packet of 1 000 events was cut off: skipped whole
    assert [f["events"] for f in finals] == [15000, 4000]


def test_stdin_header_with_a_corrupt_count_does_not_swallow_the_packets_after_it(checkpoint):
    from evmamba.pipeline.readers import read_events

    ev, _ = read_events(trial("2.bs2"))
    ev = ev[:12000]
    corrupt = protocol.HEADER.pack(protocol.MAGIC, protocol.VERSION, 0, 0, 0, 0x7FFFFFFF)
    data = corrupt + b"".join(protocol.encode_packets(ev, max_events=1000, end=True, seq0=1))
    code, stdout, stderr = evmamba("stream", "--checkpoint", checkpoint, "--source", "-", "--no-predictions",
                                   stdin=data)
    assert code == 0, stderr
    records = lines(stdout)
    summary = records[-1]
    assert summary["source"]["oversized"] == 1 and summary["source"]["garbage"] == 0
    assert summary["events"] == 12000  # every packet after the bad header was classified
    assert [rec["events"] for rec in records if rec["type"] == "final"] == [12000]


def default_signals():
    """In the child: default SIGINT and SIGTERM handling (a background job starts with SIGINT ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def test_sigterm_stops_the_stream_like_ctrl_c_and_writes_the_summary(checkpoint, tmp_path):
    out = tmp_path / "term.json"
    proc = subprocess.Popen([sys.executable, "-m", "evmamba", "stream", "--checkpoint", str(checkpoint), "--source",
                             "-", "--json", str(out), "--quiet"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=default_signals)
    try:
        line = proc.stderr.readline().decode()  # printed once the loop is about to read
        assert "reading stdin" in line, line
        rng = np.random.default_rng(1)
        from evmamba.core.events import make_events

        ev = make_events(rng.integers(0, 128, 2000), rng.integers(0, 128, 2000), np.arange(2000) * 10,
                         rng.integers(0, 2, 2000))
        proc.stdin.write(b"".join(protocol.encode_packets(ev, max_events=100, end=False)))
        proc.stdin.flush()  # stdin stays open: a live pipe
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = stderr.decode()
    assert proc.returncode == 143, stderr
    assert "real-time factor" in stderr
    summary = json.loads(Path(out).read_text())
    assert summary["interrupted"] is True and summary["events"] <= 2000


def test_udp_stream_stopped_with_ctrl_c_prints_the_summary(checkpoint, tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "udp.json"
    proc = subprocess.Popen([sys.executable, "-m", "evmamba", "stream", "--checkpoint", str(checkpoint), "--source",
                             f"udp://127.0.0.1:{port}", "--json", str(out), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=default_signals)
    try:
        line = proc.stderr.readline()  # printed once the socket listens
        assert "reading udp://" in line, line
        rng = np.random.default_rng(0)
        t = np.arange(3000, dtype=np.int64) * 10
        from evmamba.core.events import make_events

        ev = make_events(rng.integers(0, 128, 3000), rng.integers(0, 128, 3000), t, rng.integers(0, 2, 3000))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for pkt in protocol.encode_packets(ev, max_events=100, end=False):
                s.sendto(pkt, ("127.0.0.1", port))
                time.sleep(0.001)
            s.sendto(b"this is not an event packet", ("127.0.0.1", port))
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "real-time factor" in stderr
    summary = json.loads(Path(out).read_text())
    assert summary["interrupted"] is True
    assert summary["events"] == 3000 and summary["source"]["garbage"] == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_one_stream_on_the_gpu_is_served_by_default(checkpoint, tmp_path):
    """On a GPU one stream runs on the resident serving loop by default, with the final decision of the fused
    step launched per token and of the CPU step; ``--gpu-step serve`` refuses several streams."""
    finals = {}
    for device, step in (("cuda", "auto"), ("cuda", "fused"), ("cpu", "auto")):
        out = tmp_path / f"{device}-{step}.json"
        code, stdout, stderr = evmamba("stream", "--checkpoint", checkpoint, "--source", trial("1.bs2"), "--speed",
                                       "max", "--device", device, "--gpu-step", step, "--json", out, "--quiet")
        assert code == 0, stderr
        if device == "cuda":
            assert f"GPU step: {'serve' if step == 'auto' else 'fused'}" in stderr
            assert json.loads(out.read_text())["settings"]["gpu_step"] == ("serve" if step == "auto" else "fused")
        finals[(device, step)] = json.loads(out.read_text())["per_recording"][0]["final"]
    for key in (("cuda", "fused"), ("cpu", "auto")):
        assert finals[key]["class"] == finals[("cuda", "auto")]["class"]
        assert finals[key]["confidence"] == pytest.approx(finals[("cuda", "auto")]["confidence"], rel=1e-4)
    code, _, stderr = evmamba("stream", "--checkpoint", checkpoint, "--source", trial("1.bs2"), "--speed", "max",
                              "--device", "cuda", "--gpu-step", "serve", "--streams", "2", "--quiet")
    assert code == 1 and "the serving loop runs one stream" in stderr
