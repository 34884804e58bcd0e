"""``evmamba bench train``: training throughput -- optimizer steps one after another on a config's model and data.

    evmamba bench train [--config dvsgesture] [key.sub=value ...] [--device cpu|cuda] [--amp none|bf16]
                        [--steps 30] [--warmup 5] [--batch-size B] [--workers W] [--recordings 64]
                        [--compare EARLIER.json] [--json PATH]
    torchrun --nproc_per_node 2 -m evmamba bench train ... --compare one_gpu.json   # data parallel: scaling

The data go through the training code itself (:func:`~evmamba.training.data.build_data` and
:func:`~evmamba.training.data.make_loader`: token cache, augmentation and binning on the fly when the config
augments, ``train.max_tokens`` crops, length-bucketed batches, ``train.workers`` loader processes). By
default they are recordings of DVS-Gesture size made by the built-in simulator, so no download is needed:
``--recordings`` samples of :class:`~evmamba.datasets.synthetic.SyntheticShapes` on a 128x128 sensor, 6 s
each, ~300 k events on average (1.5 Hz of background noise per pixel), written once as ``.npy`` files under
``<cache_dir>/bench-train/`` and read as a ``folder`` dataset, as the real recordings would be. ``--data
config`` uses the config's own dataset instead. The items are cycled until they fill ``warmup + steps``
batches (per process), in one epoch of the loader.

Each step is timed in four parts, with the device synchronised around each (so the parts add up to the
step): ``data`` (waiting for the loader's next batch and copying it to the device), ``forward`` (model and
loss, under bf16 autocast with ``--amp bf16``), ``backward`` (under DDP including the gradient all-reduce)
and ``optimizer`` (gradient clipping, the optimizer's step, zeroing). Every batch is one optimizer step
(``train.grad_accum`` is ignored) at a constant learning rate. Reported over the timed steps: samples/s,
tokens/s (tokens of the batch, not padding; also padded tokens/s), each part's mean / median / p90 in ms
and its share of the step, host peak memory (RSS of the main process and the largest loader worker, PSS of
all of them; sampled every 0.2 s) and, on CUDA, the device's peak allocated and reserved memory. Under
``torchrun`` the samples and tokens are summed over processes and the times are rank 0's; ``--batch-size``
is per process, as in training. ``--compare`` divides this run's samples/s and tokens/s by those of an
earlier result (e.g. one GPU's, for the scaling factor of two).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from ..core.output import format_table, write_json

EXAMPLE = "evmamba bench train --device cuda --amp bf16 --steps 30 --json train.json"
DEFAULT_CONFIG = "dvsgesture"
PHASES = ("data", "forward", "backward", "optimizer")
# The simulated recordings: DVS128 sensor, DVS-Gesture length; 1.5 Hz noise brings the mean to ~300 k events.
SIM_SENSOR = (128, 128, 2)
SIM_SECONDS = 6.0
SIM_NOISE_HZ = 1.5


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"config name or YAML path (default {DEFAULT_CONFIG})")
    parser.add_argument(
        "overrides", nargs="*", metavar="key.sub=value", help="config overrides, e.g. train.max_tokens=4096"
    )
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available, else cpu"
    )
    parser.add_argument("--amp", choices=("none", "bf16"), default=None,
                        help="bf16 autocast (CUDA only) or none (default: bf16 on cuda, none on cpu)")
    parser.add_argument("--steps", type=int, default=30, help="timed optimizer steps (default 30)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="samples per step and process (default: train.batch_size)"
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="DataLoader worker processes (default: train.workers)"
    )
    parser.add_argument("--data", choices=("simulated", "config"), default="simulated",
                        help="simulated DVS-Gesture-size recordings (default) or the config's own dataset")
    parser.add_argument("--recordings", type=int, default=64, help="simulated recordings (default 64)")
    parser.add_argument(
        "--sim-dir", default=None, help="where the simulated recordings go (default <cache_dir>/bench-train)"
    )
    parser.add_argument("--compare", metavar="PATH", default=None,
                        help="an earlier result (JSON): print this run's samples/s and tokens/s over its own")
    parser.add_argument("--json", metavar="PATH", default=None, help="write the results as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


# -- simulated recordings ------------------------------------------------------------------------------------


def _simulate_one(job) -> None:
    from ..datasets.synthetic import CLASSES, SyntheticShapes
    from ..pipeline.readers.arrays import write_events

    folder, n, i = job
    ds = SyntheticShapes("train", n_samples=n, sensor_size=SIM_SENSOR, duration_us=int(SIM_SECONDS * 1e6),
                         noise_hz=SIM_NOISE_HZ, seed=0)
    events, label = ds[i]
    out = Path(folder) / "train" / CLASSES[label] / f"{i:05d}.npy"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_events(out, events)


def _settings(n: int) -> dict:
    return {"n": n, "sensor_size": list(SIM_SENSOR), "seconds": SIM_SECONDS, "noise_hz": SIM_NOISE_HZ, "seed": 0}


def simulated_folder(root: Path, n: int) -> Path:
    """Where :func:`simulated_recordings` puts ``n`` recordings under ``root``."""
    return Path(root) / f"sim-{n}x{SIM_SECONDS:g}s-{SIM_SENSOR[0]}x{SIM_SENSOR[1]}"


def simulated_recordings(root: Path, n: int, workers: int, progress: bool) -> Path:
    """A folder of ``n`` simulated DVS-Gesture-size recordings (``train/<class>/<i>.npy``), made once in
    ``workers`` processes: a folder finished earlier with the same settings is reused."""
    import multiprocessing as mp

    from tqdm.auto import tqdm

    folder = simulated_folder(root, n)
    done = folder / "done.json"
    if done.is_file() and json.loads(done.read_text()) == _settings(n):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(str(folder), n, i) for i in range(n)]
    bar = tqdm(total=n, desc="simulating recordings", unit="recording", disable=not progress, leave=False)
    if workers > 1:
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        with mp.get_context(method).Pool(min(workers, n)) as pool:
            for _ in pool.imap_unordered(_simulate_one, jobs):
                bar.update()
    else:
        for job in jobs:
            _simulate_one(job)
            bar.update()
    bar.close()
    done.write_text(json.dumps(_settings(n)))  # last: a folder without it is made again
    return folder


# -- the benchmark --------------------------------------------------------------------------------------------


def _check(args) -> None:
    for name in ("steps", "recordings"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1; got {getattr(args, name)}")
    if args.warmup < 0:
        raise ValueError(f"--warmup must be >= 0; got {args.warmup}")
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1; got {args.batch_size}")
    if args.workers is not None and args.workers < 0:
        raise ValueError(f"--workers must be >= 0; got {args.workers}")
    if args.compare is not None:
        _earlier(args.compare)  # unreadable: say so before the work


def _earlier(path) -> dict:
    """An earlier ``bench train`` result; ``ValueError`` naming the file when it is not one."""
    try:
        earlier = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"--compare {path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"--compare {path}: not a JSON file ({exc})") from None
    if not isinstance(earlier, dict) or earlier.get("benchmark") != "train" or "samples_per_s" not in earlier:
        raise ValueError(f"--compare {path}: not the JSON of `evmamba bench train` (no 'samples_per_s')")
    return earlier


def _config(args, cfg, sim_folder: Path | None):
    """The config as the benchmark runs it: the simulated recordings, no validation hold-out, the options."""
    from omegaconf import OmegaConf

    from ..training.sections import check_config

    if sim_folder is not None:
        cfg.dataset = OmegaConf.create({"name": "folder", "root": str(sim_folder), "sensor_size": list(SIM_SENSOR),
                                        "extensions": [".npy"]})
    # Every recording trains: no validation hold-out.
    cfg.train = OmegaConf.merge(cfg.get("train") or {}, {"val_fraction": 0.0, "val_split": None})
    if args.batch_size is not None:
        cfg.train.batch_size = args.batch_size
    if args.workers is not None:
        cfg.train.workers = args.workers
    check_config(cfg)
    return cfg


def run(args: argparse.Namespace) -> int:
    try:
        _check(args)
        return _run(args)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"evmamba bench train: {exc}", file=sys.stderr)
        return 1


def _run(args) -> int:
    import torch

    from ..datasets.wrappers import IndexedSubset
    from ..training import distributed as ddp
    from ..training.data import build_data, make_loader
    from ..training.models import build_model, forward_loss, to_device
    from ..training.optim import build_optimizer
    from ..training.reproducibility import seed_everything
    from ..training.settings import train_settings
    from .memory import PeakSampler

    device_name = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    amp = args.amp or ("bf16" if device_name == "cuda" else "none")
    if amp == "bf16" and device_name != "cuda":
        raise ValueError("--amp bf16 needs --device cuda (training on the CPU runs in fp32)")
    info = ddp.setup(device_name)
    device, main = info.device, info.is_main
    progress = main and not args.no_progress

    # ---- data: simulated recordings (rank 0 makes them), then the training data path
    import os

    from ..core.config import load_config

    cfg = load_config(args.config, args.overrides)
    sim_folder = None
    if args.data == "simulated":
        root = Path(args.sim_dir) if args.sim_dir else Path(cfg.get("cache_dir") or "cache") / "bench-train"
        if main:
            simulated_recordings(root, args.recordings, max(1, min(os.cpu_count() or 1, 16)), progress)
        ddp.wait_for_main(info)
        sim_folder = simulated_folder(root, args.recordings)
    cfg = _config(args, cfg, sim_folder)
    tc = train_settings(cfg)
    seed_everything(int(tc["seed"]))
    data = build_data(cfg, info, test_split="train", progress=progress)
    batch, world = int(tc["batch_size"]), info.world_size
    n_items = (args.warmup + args.steps) * batch * world
    cycle = np.arange(n_items, dtype=np.int64) % len(data.train)
    loader, batches = make_loader(IndexedSubset(data.train, cycle), data.lengths["train"][cycle], batch, data.collate,
                                  shuffle=True, seed=int(tc["seed"]), info=info, workers=int(tc["workers"]))
    batches.set_epoch(0)
    if hasattr(data.train, "set_epoch"):
        data.train.set_epoch(0)

    model = build_model(cfg, data.info).to(device)
    net = ddp.wrap(model, info)
    optimizer = build_optimizer(model, tc)
    clip = tc["grad_clip"] or math.inf
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    if cuda:
        torch.cuda.reset_peak_memory_stats(device)

    from tqdm.auto import tqdm

    times = {p: [] for p in PHASES}
    samples = tokens = padded = 0
    net.train()
    it = iter(loader)
    bar = tqdm(total=args.warmup + args.steps, desc="bench train", unit="step", disable=not progress, leave=False)
    with PeakSampler() as memory:
        for step in range(args.warmup + args.steps):
            timed = step >= args.warmup
            t0 = time.perf_counter()
            cpu_batch = next(it)
            batch_on = to_device(cpu_batch, device)
            sync()
            t1 = time.perf_counter()
            loss, _, b = forward_loss(net, batch_on, device, amp, tc["label_smoothing"])
            sync()
            t2 = time.perf_counter()
            loss.backward()
            sync()
            t3 = time.perf_counter()
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sync()
            t4 = time.perf_counter()
            if timed:
                for p, dt in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                    times[p].append(dt)
                samples += b
                if "lengths" in cpu_batch:
                    tokens += int(cpu_batch["lengths"].sum())
                    padded += int(cpu_batch["tokens"].numel())
            bar.update()
    bar.close()
    del it, loader

    seconds = sum(sum(v) for v in times.values())
    samples, tokens, padded = ddp.all_reduce_sum([samples, tokens, padded], info)
    device_mem = {}
    if cuda:
        device_mem = {"device_peak_allocated_mb": torch.cuda.max_memory_allocated(device) / 1e6,
                      "device_peak_reserved_mb": torch.cuda.max_memory_reserved(device) / 1e6}
    if main:
        _report(args, cfg, data, model, device, amp, batch, world, int(tc["workers"]), times, seconds,
                samples, tokens, padded, memory.peaks, device_mem)
    ddp.cleanup(info)
    return 0


def _report(args, cfg, data, model, device, amp, batch, world, workers, times, seconds, samples, tokens, padded,
            peaks, device_mem) -> None:
    import torch

    rows, phases = [], {}
    for p in (*PHASES, "step"):
        values = [sum(v) for v in zip(*times.values())] if p == "step" else times[p]
        mean, med = statistics.fmean(values), statistics.median(values)
        p90 = float(np.percentile(values, 90))
        share = sum(values) / seconds if seconds else math.nan
        phases[p] = {"mean_ms": mean * 1e3, "median_ms": med * 1e3, "p90_ms": p90 * 1e3, "share": share}
        rows.append([p, f"{mean * 1e3:.1f}", f"{med * 1e3:.1f}", f"{p90 * 1e3:.1f}", f"{100 * share:.1f} %"])
    n_params = sum(q.numel() for q in model.parameters())
    where = str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
                           f" ({torch.get_num_threads()} threads)")
    dataset = "simulated DVS-Gesture-size recordings" if args.data == "simulated" else f"dataset {cfg.dataset.name}"
    result = {
        "benchmark": "train",
        "config": str(args.config),
        "overrides": list(args.overrides),
        "data": args.data,
        "recordings": args.recordings if args.data == "simulated" else None,
        "device": str(device),
        "amp": amp,
        "world_size": world,
        "batch_size_per_process": batch,
        "loader_workers": workers,
        "max_tokens": cfg.train.get("max_tokens"),
        "augment": bool(cfg.get("augment")),
        "model": type(model).__name__,
        "parameters": n_params,
        "warmup_steps": args.warmup,
        "steps": args.steps,
        "seconds": seconds,
        "samples_per_s": samples / seconds,
        "tokens_per_s": tokens / seconds,
        "padded_tokens_per_s": padded / seconds,
        "tokens_per_sample": tokens / max(samples, 1),
        "loading_share": phases["data"]["share"],
        "phases": phases,
        "per_step_ms": {p: [round(v * 1e3, 3) for v in times[p]] for p in PHASES},
        "host_peak_rss_main_mb": peaks.get("hwm_main", math.nan),
        "host_peak_rss_worker_mb": peaks.get("hwm_children", math.nan),
        "host_peak_pss_total_mb": peaks.get("pss_total", math.nan),
        **device_mem,
    }
    print(f"bench train: {args.config} config, {type(model).__name__} with {n_params:,} parameters on {where}, "
          f"amp {amp}; batch {batch} x {world} process{'es' if world > 1 else ''}, {workers} loader workers; "
          f"{dataset}, {result['tokens_per_sample']:,.0f} tokens per sample; {args.steps} steps after {args.warmup} "
          f"warm-up")
    print(format_table(["part", "mean ms", "median ms", "p90 ms", "share"], rows))
    memory = (f"host peak RSS {result['host_peak_rss_main_mb']:,.0f} MB (main), "
              f"{result['host_peak_rss_worker_mb']:,.0f} MB (largest loader worker), "
              f"PSS {result['host_peak_pss_total_mb']:,.0f} MB (all)")
    if device_mem:
        memory += (f"; device peak {device_mem['device_peak_allocated_mb']:,.0f} MB allocated, "
                   f"{device_mem['device_peak_reserved_mb']:,.0f} MB reserved")
    print(f"{result['samples_per_s']:,.2f} samples/s, {result['tokens_per_s']:,.0f} tokens/s "
          f"({result['padded_tokens_per_s']:,.0f} with padding); loading {100 * result['loading_share']:.1f} % of "
          f"the step; {memory}")
    if args.compare is not None:
        earlier = _earlier(args.compare)
        result["compared"] = {
            "path": str(args.compare),
            "world_size": earlier.get("world_size"),
            "device": earlier.get("device"),
            "samples_per_s_ratio": result["samples_per_s"] / earlier["samples_per_s"],
            "tokens_per_s_ratio": result["tokens_per_s"] / earlier["tokens_per_s"]
            if earlier.get("tokens_per_s")
            else None,
        }
        ratio_tokens = result["compared"]["tokens_per_s_ratio"]
        print(f"against {args.compare} ({earlier.get('world_size', '?')} process(es) on {earlier.get('device', '?')}): "
              f"{result['compared']['samples_per_s_ratio']:.2f}x the samples/s"
              + (f", {ratio_tokens:.2f}x the tokens/s" if ratio_tokens else ""))
    write_json(args.json, result)
