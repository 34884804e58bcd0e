"""``evmamba bench cache``: writes two caches, reads each through the training loader, reports memory, cleans up."""

from __future__ import annotations

import json
import sys

import pytest

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
    assert big["samples"] == 100 and small["samples"] == 25  # 4 MB and 1 MB of 2 000-token samples
    assert small["epochs"] == 4 and big["epochs"] == 1
    assert big["batches"] == 25 and small["batches"] == 4 * 7  # about as many batches each
    assert not big["in_memory"] and not small["in_memory"]  # --read file
    assert big["tokens_read"] == 100 * 500  # every sample, cropped (lengths 1 000-3 000)
    for r in (big, small):
        assert r["rss_main_min_mb"] > 10 and r["worker_peak_rss_mb"] >= r["worker_peak_rss_first_tenth_mb"] > 10
        assert len(r["per_batch"]["pss_total_mb"]) == r["batches"]
    assert set(result["big_to_small"]) == {"main_peak_rss_mb", "worker_peak_rss_mb", "pss_total_max_mb"}
    assert not list(tmp_path.glob("*.h5*"))  # deleted (no --keep)


def test_bench_cache_refuses_bad_sizes(capsys):
    assert main(["bench", "cache", "--size-gb", "0"]) == 2
    assert "--size-gb must be > 0" in capsys.readouterr().err
