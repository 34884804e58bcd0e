"""``evmamba bench cache``: host memory over an epoch of the training loader on token caches larger than memory.

    evmamba bench cache [--size-gb 5] [--ratio 10] [--tokens-per-sample 200000] [--batch-size 16]
                        [--max-tokens N] [--workers 2] [--dir /tmp] [--read file|auto] [--keep] [--json PATH]

Two token caches of simulated tokens are written with :func:`~evmamba.datasets.cache.write_cache` into
``--dir``: one of ``--size-gb`` GB of token arrays (20 bytes per token) and one ``--ratio`` times smaller
(sample counts rounded to whole batches, see :func:`sample_counts`),
samples of ``--tokens-per-sample`` tokens on average (random ids of a 128x128 sensor at 4x downsampling,
vocabulary 2 048). Sample lengths are *stratified*, not drawn at random: evenly spaced quantiles of the
uniform distribution within ``--length-spread`` (by default between half and one and a half times the
mean), in a random order (:func:`stratified_lengths`). Both caches thus hold the same distribution with
the same extremes -- the shortest and the longest length -- and the small one about every ``ratio``-th of
the big one's sorted lengths, so that both epochs meet the same longest batch (batch size x the longest
length when padded): a loader worker's peak follows the largest batch it collates, and random lengths
would give the bigger cache more samples near the longest. Each is then read as training reads it
(:class:`~evmamba.datasets.cache.TokenCache`, with ``train.max_tokens`` crops when ``--max-tokens`` is
given, through :func:`~evmamba.training.data.make_loader` with ``--workers`` loader processes and
length-bucketed, shuffled batches) for one epoch -- the small cache for ``ceil(ratio)`` epochs, as many
batches as the big one -- every batch collated and dropped. After every batch the
memory of the main process and its loader workers is read from ``/proc`` (see :mod:`evmamba.bench.memory`):
RSS of the main process, the peak RSS (``VmHWM``) of the largest loader worker, and PSS of all of them
together (shared pages counted once). Reported per cache: samples, GB, seconds to write and to read an
epoch; the shortest and longest sample; the largest batch read (padded tokens / tokens); the main
process's RSS (minimum-maximum); the workers' peak RSS after the first tenth of the
batches and at the end, and the growth in between -- memory that grows with what has been read shows
there, as a peak never comes down; PSS minimum-maximum. And the big cache's figures over the small one's.
PSS is taken at an instant and includes the batches in flight (up to ``2 x workers`` waiting in shared
memory): without crops a batch's size follows its samples' lengths, so it moves from batch to batch.
Writing and reading each run in a fresh process, so both caches are read from the same start.
``--read file`` (default) reads both caches from the file; ``--read auto`` lets
``TokenCache(in_memory=None)`` decide by size (1 GiB), as training does by default. The files are deleted
afterwards unless ``--keep``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

from ..core.output import format_table, write_json

EXAMPLE = "evmamba bench cache --size-gb 5 --dir /tmp --json cache.json"
SENSOR = (128, 128, 2)
BINNING = {"downsample": 4}  # vocabulary 32 x 32 x 2 = 2 048
CLASSES = [f"class{i}" for i in range(11)]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size-gb", type=float, default=5.0, help="token arrays of the big cache, GB (default 5)")
    parser.add_argument(
        "--ratio", type=float, default=10.0, help="the small cache is this many times smaller (default 10)"
    )
    parser.add_argument(
        "--tokens-per-sample", type=int, default=200_000, help="mean tokens per sample (default 200000)"
    )
    parser.add_argument("--length-spread", type=float, default=0.5,
                        help="sample lengths span this fraction around the mean, at evenly spaced quantiles "
                             "(stratified: both caches hold the shortest and the longest); default 0.5, 0: one length")
    parser.add_argument("--batch-size", type=int, default=16, help="samples per batch (default 16)")
    parser.add_argument("--max-tokens", type=int, default=None, help="random crops of this many tokens (default: none)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (default 2)")
    parser.add_argument("--read", choices=("file", "auto"), default="file",
                        help="read every cache per sample from the file (default), or let the size decide")
    parser.add_argument("--dir", default="/tmp", help="where the caches are written (default /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the cache files")
    parser.add_argument("--json", metavar="PATH", default=None, help="write the results as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def stratified_lengths(n_samples: int, mean_tokens: int, spread: float, seed: int) -> np.ndarray:
    """(n_samples,) int64 sample lengths at evenly spaced quantiles of the uniform distribution over
    ``mean_tokens * [1 - spread, 1 + spread]``, in a random order drawn from ``seed``.

    Stratified rather than drawn at random, so that two caches of different sizes hold the same
    distribution with the same extremes: both contain the shortest and the longest length (for two or more
    samples), and a cache ``r`` times smaller holds about every ``r``-th of the bigger one's sorted lengths.
    Drawn at random, the bigger cache would hold more samples near the longest length, and its longest
    batches -- which set a loader worker's peak memory -- would be fuller."""
    low, high = max(round(mean_tokens * (1 - spread)), 1), max(round(mean_tokens * (1 + spread)), 1)
    if n_samples == 1:
        lengths = np.array([max(round(mean_tokens), 1)], dtype=np.int64)
    else:
        lengths = np.round(np.linspace(low, high, n_samples)).astype(np.int64)
    return np.random.default_rng([seed, 7]).permutation(lengths)


def _blocks(lengths: np.ndarray, seed: int, per_block: int = 32):
    """Random samples of the given ``lengths`` for :func:`~evmamba.datasets.cache.write_cache`, in blocks
    of ``per_block``."""
    rng = np.random.default_rng(seed)
    n_samples = lengths.shape[0]
    for start in range(0, n_samples, per_block):
        block = lengths[start:start + per_block]
        m = block.shape[0]
        total = int(block.sum())
        yield {
            "tokens": rng.integers(0, 2048, total, dtype=np.int32),
            "counts": rng.integers(1, 4, total, dtype=np.int32),
            "dt": rng.random(total, dtype=np.float32),
            "t": np.cumsum(rng.integers(0, 60, total, dtype=np.int64)),
            "lengths": block,
            "labels": rng.integers(0, len(CLASSES), m),
        }


def sample_counts(size_gb: float, ratio: float, tokens_per_sample: int, batch_size: int) -> tuple[int, int]:
    """``(small, big)``: samples of the two caches, whole batches each -- the small one's nearest to
    ``size_gb / ratio`` GB of ``tokens_per_sample``-token samples, the big one ``ratio`` times as many (rounded
    to whole batches as well). Whole batches, because the length-bucketing sampler's one short batch holds
    the longest samples of its pool: a cache of 125 samples in batches of 16 would put its longest ones in a
    batch of 13, one of 1,280 in batches of 16."""
    from ..datasets.cache import BYTES_PER_TOKEN

    per_gb = 1e9 / (tokens_per_sample * BYTES_PER_TOKEN)
    small = max(1, round(size_gb / ratio * per_gb / batch_size)) * batch_size
    big = max(1, round(small * ratio / batch_size)) * batch_size
    return small, big


def _write(path: Path, n: int, args, seed: int) -> tuple[int, float]:
    """Write the cache of ``n`` samples of random tokens; ``(samples, seconds)``."""
    from ..datasets.cache import write_cache

    t0 = time.perf_counter()
    write_cache(
        path,
        _blocks(stratified_lengths(n, args.tokens_per_sample, args.length_spread, seed), seed),
        n_samples=n,
        sensor_size=SENSOR,
        classes=CLASSES,
        binning=BINNING,
        dataset_name="simulated",
        origin={"seed": seed},
        progress=not args.no_progress,
    )
    return n, time.perf_counter() - t0


def _read(path: Path, args, epochs: int) -> dict:
    """``epochs`` epochs of the training loader over the cache ``path``, with the memory after every batch."""
    import multiprocessing as mp

    # This process was spawned, which made "spawn" its default start method; the loader's workers are
    # forked as in a training run started from the command line (on platforms that fork).
    if "fork" in mp.get_all_start_methods():
        mp.set_start_method("fork", force=True)
    from ..datasets.batching import collate
    from ..datasets.cache import TokenCache
    from ..datasets.wrappers import IndexedSubset, TokenCrop
    from ..training.data import make_loader
    from .memory import sample

    cache = TokenCache(path, in_memory=False if args.read == "file" else None)
    items, lengths = IndexedSubset(cache, np.arange(len(cache))), cache.lengths
    if args.max_tokens:
        items = TokenCrop(items, args.max_tokens, seed=0, lengths=cache.lengths)
        lengths = np.minimum(lengths, args.max_tokens)
    loader, batches = make_loader(items, lengths, args.batch_size, collate, shuffle=True, seed=0, workers=args.workers)
    from tqdm.auto import tqdm

    series = []
    largest = (0, 0)  # the batch of the most padded tokens: (batch size x longest, tokens read)
    t0 = time.perf_counter()
    tokens = 0
    for epoch in range(epochs):
        batches.set_epoch(epoch)
        if hasattr(items, "set_epoch"):
            items.set_epoch(epoch)
        for batch in tqdm(loader, desc=f"{path.name} epoch {epoch + 1}/{epochs}", unit="batch",
                          disable=args.no_progress, leave=False):
            read_now = int(batch["lengths"].sum())
            tokens += read_now
            padded = int(batch["tokens"].numel())
            if padded > largest[0]:
                largest = (padded, read_now)
            del batch
            series.append(sample(pss=True))
    read = (time.perf_counter() - t0) / epochs
    del loader
    return {"samples": len(cache), "tokens": cache.n_tokens, "gb": cache.nbytes / 1e9, "in_memory": cache.in_memory,
            "epochs": epochs, "tokens_read": tokens, "epoch_s": read, "series": series,
            "longest_sample": int(cache.lengths.max()) if len(cache) else 0,
            "shortest_sample": int(cache.lengths.min()) if len(cache) else 0,
            "largest_batch_padded_tokens": largest[0], "largest_batch_tokens": largest[1]}


def _one(path: Path, n: int, args, seed: int, epochs: int = 1) -> dict:
    """Write, then read, each in a fresh interpreter: the reading process (and the loader workers it forks)
    starts from the same state for every cache, never having held the tokens that were written."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    # (Not multiprocessing.Pool: its processes may not start the loader's workers.)
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        _, written = pool.submit(_write, path, n, args, seed).result()
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        out = pool.submit(_read, path, args, epochs).result()
    series = out.pop("series")
    rss = [s["rss_main"] for s in series]
    pss = [s["pss_total"] for s in series]
    hwm = [s["hwm_children"] for s in series]
    tenth = max(1, math.ceil(len(series) / 10))
    early, peak = max(hwm[:tenth]), max(hwm)
    return {
        "path": str(path),
        **out,
        "write_s": written,
        "batches": len(series),
        "rss_main_min_mb": min(rss),
        "rss_main_max_mb": max(rss),
        "main_peak_rss_mb": max(s["hwm_main"] for s in series),
        "worker_peak_rss_first_tenth_mb": early,
        "worker_peak_rss_mb": peak,
        "worker_growth": peak / early - 1,
        "pss_total_min_mb": min(pss),
        "pss_total_max_mb": max(pss),
        "per_batch": {"rss_main_mb": rss, "worker_peak_rss_mb": hwm, "pss_total_mb": pss},
    }


def run(args: argparse.Namespace) -> int:
    for name in ("size_gb", "ratio", "tokens_per_sample", "batch_size"):
        if getattr(args, name) <= 0:
            print(
                f"evmamba bench cache: --{name.replace('_', '-')} must be > 0; got {getattr(args, name)}",
                file=sys.stderr,
            )
            return 2
    if not 0 <= args.length_spread < 1:
        print(f"evmamba bench cache: --length-spread must lie in [0, 1); got {args.length_spread}", file=sys.stderr)
        return 2
    if args.workers < 0 or (args.max_tokens is not None and args.max_tokens < 1):
        print("evmamba bench cache: --workers must be >= 0 and --max-tokens >= 1", file=sys.stderr)
        return 2
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    sizes = dict(zip(("small", "big"), sample_counts(args.size_gb, args.ratio, args.tokens_per_sample,
                                                     args.batch_size)))
    results = {}
    try:
        for seed, (name, n) in enumerate(sizes.items()):
            path = folder / f"evmamba-bench-cache-{name}.h5"
            # The small cache is read for as many batches as the big one (epochs), so that both reach the
            # loader's steady state and meet as many long batches.
            epochs = math.ceil(args.ratio) if name == "small" else 1
            try:
                results[name] = _one(path, n, args, seed, epochs)
            finally:
                if not args.keep:
                    for p in (path, path.with_name(path.name + ".partial")):
                        p.unlink(missing_ok=True)
    except (ValueError, OSError) as exc:
        print(f"evmamba bench cache: {exc}", file=sys.stderr)
        return 1
    rows = []
    for name, r in results.items():
        rows.append(
            [
                name,
                f"{r['gb']:.2f}",
                f"{r['samples']:,}",
                r["epochs"],
                "memory" if r["in_memory"] else "file",
                f"{r['write_s']:.1f}",
                f"{r['epoch_s']:.1f}",
                f"{r['shortest_sample']:,}-{r['longest_sample']:,}",
                f"{r['largest_batch_padded_tokens']:,} / {r['largest_batch_tokens']:,}",
                f"{r['rss_main_min_mb']:,.0f}-{r['rss_main_max_mb']:,.0f}",
                f"{r['worker_peak_rss_first_tenth_mb']:,.0f}",
                f"{r['worker_peak_rss_mb']:,.0f}",
                f"{100 * r['worker_growth']:+.1f} %",
                f"{r['pss_total_min_mb']:,.0f}-{r['pss_total_max_mb']:,.0f}",
            ]
        )
    big, small = results["big"], results["small"]
    ratios = {k: big[k] / small[k] for k in ("main_peak_rss_mb", "worker_peak_rss_mb", "pss_total_max_mb")}
    print(
        f"bench cache: the training loader over token caches read from {args.read}, batch {args.batch_size}, "
        f"{args.workers} workers, "
        f"{'crops of ' + str(args.max_tokens) + ' tokens' if args.max_tokens else 'whole samples'}"
        f"; ~{args.tokens_per_sample:,} tokens per sample, lengths at evenly spaced quantiles of "
        f"{args.tokens_per_sample:,} x [{1 - args.length_spread:g}, {1 + args.length_spread:g}] (stratified: both "
        "caches hold the shortest and the longest length); the largest batch read, as padded tokens "
        "(batch x longest) / tokens. Host memory in MB, read after every batch: RSS of the "
        "main process; peak RSS of the largest loader worker after the first tenth of the batches and at the "
        "end, and its growth in between; PSS of all processes together, batches in flight included"
    )
    print(format_table(["cache", "GB", "samples", "epochs", "read from", "write s", "epoch s", "sample tokens",
                        "largest batch", "RSS main",
                        "worker peak 1/10", "end", "growth", "PSS all"], rows))
    print(f"big / small: main peak RSS {ratios['main_peak_rss_mb']:.3f}, worker peak RSS "
          f"{ratios['worker_peak_rss_mb']:.3f}, peak PSS {ratios['pss_total_max_mb']:.3f}")
    write_json(
        args.json,
        {
            "benchmark": "cache",
            "batch_size": args.batch_size,
            "workers": args.workers,
            "length_spread": args.length_spread,
            "max_tokens": args.max_tokens,
            "read": args.read,
            "tokens_per_sample": args.tokens_per_sample,
            "results": results,
            "big_to_small": ratios,
        },
    )
    return 0
