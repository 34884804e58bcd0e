"""``evmamba bench cache``: writes two caches, reads each through the training loader, reports memory, cleans up."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from evmamba.bench.cache import sample_counts, stratified_lengths
from evmamba.cli import main


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="memory is read from /proc")
def test_bench_cache_reads_both_caches_and_deletes_them(tmp_path, capsys):
    out = tmp_path / "cache.json"
    argv = ["bench", "cache", "--size-gb", "0.004", "--ratio", "4", "--tokens-per-sample", "2000", "--batch-size", "4",
            "--workers", "1", "--max-tokens", "500", "--dir", str(tmp_path), "--json", str(out), "--no-progress"]
    assert main(argv) == 0
    assert "big / small" in capsys.readouterr().out
    result = json.loads(out.read_text())
    big, small = result["results"]["big"], result["results"]["small"]
    # 4 MB and 1 MB of 2 000-token samples, in whole batches of 4 (96 and 24 samples)
    assert big["samples"] == 96 and small["samples"] == 24
    assert small["epochs"] == 4 and big["epochs"] == 1
    assert big["batches"] == 24 and small["batches"] == 4 * 6  # as many batches each
    assert not big["in_memory"] and not small["in_memory"]  # --read file
    assert big["tokens_read"] == 96 * 500  # every sample, cropped (lengths 1 000-3 000)
    for r in (big, small):  # stratified lengths: both hold the extremes; the largest batch is full
        assert (r["shortest_sample"], r["longest_sample"]) == (1000, 3000)
        assert r["largest_batch_padded_tokens"] == 4 * 500
    for r in (big, small):
        assert r["rss_main_min_mb"] > 10 and r["worker_peak_rss_mb"] >= r["worker_peak_rss_first_tenth_mb"] > 10
        assert len(r["per_batch"]["pss_total_mb"]) == r["batches"]
    assert set(result["big_to_small"]) == {"main_peak_rss_mb", "worker_peak_rss_mb", "pss_total_max_mb"}
    assert not list(tmp_path.glob("*.h5*"))  # deleted (no --keep)


def test_bench_cache_refuses_bad_sizes(capsys):
    assert main(["bench", "cache", "--size-gb", "0"]) == 2
    assert "--size-gb must be > 0" in capsys.readouterr().err


def test_stratified_lengths_give_both_caches_the_same_extremes_and_quantiles():
    big = stratified_lengths(1280, 200_000, 0.5, seed=1)
    small = stratified_lengths(128, 200_000, 0.5, seed=0)
    for lengths, n in ((big, 1280), (small, 128)):
        assert lengths.shape == (n,) and lengths.min() == 100_000 and lengths.max() == 300_000
    # Evenly spaced: consecutive sorted lengths differ by (300 000 - 100 000) / (n - 1), rounded.
    assert np.abs(np.diff(np.sort(small)) - 200_000 / 127).max() <= 1
    # The small cache's sorted lengths are about every 10th of the big one's (within one big step).
    picked = np.sort(big)[np.round(np.linspace(0, 1279, 128)).astype(int)]
    assert np.abs(np.sort(small) - picked).max() <= 200_000 / 1279
    assert not np.array_equal(big[:20], np.sort(big)[:20])  # in a random order ...
    assert np.array_equal(big, stratified_lengths(1280, 200_000, 0.5, seed=1))  # ... fixed by the seed
    assert set(stratified_lengths(5, 1000, 0.0, seed=0).tolist()) == {1000}  # --length-spread 0
    assert stratified_lengths(1, 1000, 0.5, seed=0).tolist() == [1000]


def test_sample_counts_are_whole_batches_in_the_ratio():
    # 5 GB of 200 000-token samples (20 bytes a token) is 1 250; in batches of 16: 128 and 1 280.
    assert sample_counts(5.0, 10.0, 200_000, 16) == (128, 1280)
    small, big = sample_counts(1.0, 3.0, 10_000, 7)
    assert small % 7 == 0 and big % 7 == 0 and abs(big / small - 3) < 0.05
    assert sample_counts(1e-9, 10.0, 200_000, 16) == (16, 160)  # at least one batch
