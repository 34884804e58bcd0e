"""Token caches (HDF5) and ``evmamba preprocess``: content, naming, damage detection, resumption, workers."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from evmamba.cli import main as cli_main
from evmamba.core.events import empty_events
from evmamba.datasets.cache import (
    SpreadSubset,
    TokenCache,
    build_cache,
    cache_key,
    cache_path,
    dataset_from_config,
    ensure_cache,
    inspect_cache,
)
from evmamba.datasets.paths import data_root
from evmamba.datasets.synthetic import SyntheticShapes
from evmamba.pipeline.binning import bin_events

SYN = {"name": "synthetic", "n_samples": {"train": 40, "test": 10}, "seed": 1}
BIN = {"downsample": 2, "bin_us": 5000}


def synthetic_factory(section, split):
    opts = {k: v for k, v in section.items() if k != "name"}
    return SyntheticShapes(split, **opts)


def syn_cfg(tmp_path, **binning):
    return {"dataset": dict(SYN), "binning": {**BIN, **binning}, "cache_dir": str(tmp_path)}


def read_all(path):
    """Every dataset and attribute of an HDF5 file, for exact comparisons."""
    with h5py.File(path, "r") as f:
        arrays = {k: f[k][()] for k in f}
        attrs = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in f.attrs.items()}
    return arrays, attrs


def assert_same_file(a, b):
    arrays_a, attrs_a = read_all(a)
    arrays_b, attrs_b = read_all(b)
    assert attrs_a == attrs_b
    assert sorted(arrays_a) == sorted(arrays_b)
    for k in arrays_a:
        np.testing.assert_array_equal(arrays_a[k], arrays_b[k], err_msg=k)


def assert_cache_matches_dataset(path, dataset, binning):
    cache = TokenCache(path)
    assert len(cache) == len(dataset)
    assert cache.sensor_size == tuple(dataset.sensor_size)
    assert list(cache.classes) == [str(c) for c in dataset.classes]
    for i in range(len(dataset)):
        events, label = dataset[i]
        want = bin_events(events, dataset.sensor_size, binning, source=dataset.source(i))
        got, got_label = cache[i]
        assert got_label == label
        assert cache.source(i) == dataset.source(i)
        for field in ("tokens", "counts", "dt", "t"):
            np.testing.assert_array_equal(getattr(got, field), getattr(want, field), err_msg=f"{field} of {i}")
            assert getattr(got, field).dtype == getattr(want, field).dtype
        assert got.tokens.size == 0 or got.tokens.max() < cache.vocab_size


# -- real recordings ---------------------------------------------------------------------------------------

needs_data = pytest.mark.skipif(
    not (data_root() / "nmnist_small").is_dir() or not (data_root() / "poker_dvs").is_dir(),
    reason="real recordings not found (set EVMAMBA_DATA)",
)


@needs_data
@pytest.mark.parametrize(
    "name, binning, split, n",
    [
        ("nmnist_small", {"bin_us": 20000}, "train", 30),
        ("nmnist_small", {"bin_us": 0}, "test", 12),
        ("poker_dvs", {"bin_us": 1000}, "train", 25),
    ],
)
def test_cache_of_real_recordings_equals_binning_each_sample(tmp_path, name, binning, split, n):
    from evmamba.datasets.registry import build_dataset

    cfg = {"dataset": {"name": name, "max_samples": n}, "binning": binning, "cache_dir": str(tmp_path)}
    path = ensure_cache(cfg, split, workers=1, progress=False)
    assert path.name.startswith(f"{name}-{split}-") and path.suffix == ".h5"
    dataset = SpreadSubset(build_dataset({"name": name}, split), n)
    assert_cache_matches_dataset(path, dataset, binning)
    # The same view of the data, from the config section, for code that reads raw events next to the cache.
    assert dataset_from_config(cfg["dataset"], split).indices.tolist() == dataset.indices.tolist()
    info = inspect_cache(path)
    assert info["split"] == split and info["dataset"] == name and info["n_samples"] == n
    assert info["config"]["dataset"] == {"name": name, "max_samples": n}
    labels = TokenCache(path).labels
    assert len(set(labels.tolist())) >= 3  # the subset spans the classes


@needs_data
def test_workers_give_the_same_file_on_real_recordings(tmp_path):
    cfg = {"dataset": {"name": "poker_dvs", "max_samples": 40}, "binning": {"bin_us": 1000}}
    # Small blocks, so that the two workers share several of them.
    one = ensure_cache(cfg, "train", workers=1, progress=False, cache_dir=tmp_path / "w1", block_size=5)
    two = ensure_cache(cfg, "train", workers=2, progress=False, cache_dir=tmp_path / "w2", block_size=5)
    assert one.name == two.name
    assert_same_file(one, two)


@needs_data
@pytest.mark.parametrize("name", ["synthetic", "nmnist_small", "poker_dvs"])
def test_shipped_configs_preprocess(tmp_path, name):
    from evmamba.core.config import load_config

    cfg = load_config(name, ["dataset.max_samples=12"])
    for split in ("train", "test"):
        cache = TokenCache(ensure_cache(cfg, split, progress=False, cache_dir=tmp_path))
        assert len(cache) == 12 and cache.n_empty == 0
        # Sequences of a few hundred to a few thousand tokens, as the configs promise.
        assert 200 < np.median(cache.lengths) < 3500


# -- synthetic data: format, names, resumption -------------------------------------------------------------


def test_synthetic_cache_equals_binning_and_workers_agree(tmp_path):
    cfg = syn_cfg(tmp_path)
    kw = dict(progress=False, make_dataset=synthetic_factory, block_size=6)
    one = ensure_cache(cfg, "train", 1, cache_dir=tmp_path / "w1", **kw)
    two = ensure_cache(cfg, "train", 2, cache_dir=tmp_path / "w2", **kw)
    assert_same_file(one, two)
    assert_cache_matches_dataset(one, synthetic_factory(SYN, "train"), BIN)
    lazy = TokenCache(one, in_memory=False)
    eager = TokenCache(one)
    for i in (0, 17, 39):
        for a, b in zip(lazy[i][0], eager[i][0]):
            np.testing.assert_array_equal(a, b)


def test_file_name_follows_dataset_and_binning_only(tmp_path):
    base = syn_cfg(tmp_path)
    name = cache_path(base, "train").name
    assert name.startswith("synthetic-train-") and name.endswith(".h5")
    assert cache_path(base, "test").name != name
    assert cache_path(syn_cfg(tmp_path, bin_us=1000), "train").name != name
    assert cache_path(syn_cfg(tmp_path, downsample=1), "train").name != name
    other_data = {**base, "dataset": {**SYN, "seed": 2}}
    assert cache_path(other_data, "train").name != name
    # Sections that do not change the tokens do not change the name; nor does spelling out a default.
    assert cache_path({**base, "model": {"d_model": 64}, "train": {"lr": 1e-3}}, "train").name == name
    assert cache_path(syn_cfg(tmp_path, polarity=True, denoise_us=0), "train").name == name
    assert cache_path(base, "train", cache_dir=tmp_path / "x").parent == tmp_path / "x"


def test_changed_binning_builds_a_new_file_never_serves_stale_tokens(tmp_path):
    a = ensure_cache(syn_cfg(tmp_path), "test", progress=False, make_dataset=synthetic_factory)
    b = ensure_cache(syn_cfg(tmp_path, bin_us=0), "test", progress=False, make_dataset=synthetic_factory)
    assert a != b and a.exists() and b.exists()
    assert TokenCache(b).lengths.sum() > TokenCache(a).lengths.sum()
    # The file's own hash is checked against the config that asks for it.
    with pytest.raises(ValueError, match="different config"):
        TokenCache(a, expected_hash=cache_key(syn_cfg(tmp_path, bin_us=0))[0])


def test_existing_cache_is_reused_not_rebuilt(tmp_path):
    reads = []

    def factory(section, split):
        # The dataset is built each time (its fingerprint names the file); its samples are read only to bin.
        rec = Recording(synthetic_factory(section, split))
        reads.append(rec.seen)
        return rec

    cfg = syn_cfg(tmp_path)
    p1 = ensure_cache(cfg, "test", progress=False, make_dataset=factory)
    mtime = p1.stat().st_mtime_ns
    p2 = ensure_cache(cfg, "test", progress=False, make_dataset=factory)
    assert p1 == p2 and p2.stat().st_mtime_ns == mtime
    assert reads[0] == list(range(10)) and reads[1] == []
    ensure_cache(cfg, "test", progress=False, make_dataset=factory, force=True)
    assert reads[2] == list(range(10))


@pytest.fixture()
def good_cache(tmp_path):
    return ensure_cache(syn_cfg(tmp_path), "test", progress=False, make_dataset=synthetic_factory)


def test_truncated_file_gives_clear_error(good_cache, tmp_path):
    bad = tmp_path / "truncated.h5"
    data = good_cache.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"truncated\.h5.*not a readable HDF5 file"):
        TokenCache(bad)


def test_foreign_files_give_clear_errors(tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["data"] = np.arange(10)
    with pytest.raises(ValueError, match=r"other\.h5.*not an evmamba token cache"):
        TokenCache(other)
    text = tmp_path / "notes.h5"
    text.write_text("hello")
    with pytest.raises(ValueError, match=r"notes\.h5.*not a readable HDF5 file"):
        inspect_cache(text)
    with pytest.raises(FileNotFoundError):
        TokenCache(tmp_path / "missing.h5")


def test_incomplete_or_inconsistent_file_gives_clear_error(good_cache, tmp_path):
    import shutil

    incomplete = tmp_path / "incomplete.h5"
    shutil.copy(good_cache, incomplete)
    with h5py.File(incomplete, "r+") as f:
        f.attrs["complete"] = False
    with pytest.raises(ValueError, match=r"incomplete\.h5.*incomplete token cache"):
        TokenCache(incomplete)
    broken = tmp_path / "broken.h5"
    shutil.copy(good_cache, broken)
    with h5py.File(broken, "r+") as f:
        f["tokens"].resize((3,))
    with pytest.raises(ValueError, match=r"broken\.h5.*'tokens'"):
        TokenCache(broken)
    bad_ids = tmp_path / "bad_ids.h5"
    shutil.copy(good_cache, bad_ids)
    with h5py.File(bad_ids, "r+") as f:
        f["tokens"][0] = 1 << 20
    with pytest.raises(ValueError, match=r"bad_ids\.h5.*'tokens' holds ids outside"):
        TokenCache(bad_ids)
    no_attr = tmp_path / "no_attr.h5"
    shutil.copy(good_cache, no_attr)
    with h5py.File(no_attr, "r+") as f:
        del f.attrs["vocab_size"]
    with pytest.raises(ValueError, match=r"no_attr\.h5.*lacks attribute\(s\) \['vocab_size'\]"):
        TokenCache(no_attr)
    # ensure_cache does not hand out a damaged file: it says what is wrong and how to fix it.
    cfg = syn_cfg(tmp_path)
    shutil.copy(broken, cache_path(cfg, "test"))
    with pytest.raises(ValueError, match="--force"):
        ensure_cache(cfg, "test", progress=False, make_dataset=synthetic_factory)
    assert TokenCache(ensure_cache(cfg, "test", progress=False, make_dataset=synthetic_factory, force=True))


class Recording:
    """A dataset wrapper that logs the indices read and can fail at one index (a run that stops)."""

    def __init__(self, base, fail_at=None):
        self.base, self.fail_at, self.seen = base, fail_at, []
        self.sensor_size, self.classes, self.labels = base.sensor_size, base.classes, base.labels

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        if i == self.fail_at:
            raise RuntimeError(f"stopped at {i}")
        self.seen.append(i)
        return self.base[i]

    def source(self, i):
        return self.base.source(i)


def test_interrupted_run_resumes_after_last_complete_block(tmp_path):
    cfg = syn_cfg(tmp_path)
    base = synthetic_factory(SYN, "train")
    path = tmp_path / "resume.h5"
    with pytest.raises(RuntimeError, match="stopped at 23"):
        build_cache(Recording(base, fail_at=23), cfg, path, split="train", block_size=8, progress=False)
    partial = path.with_name(path.name + ".partial")
    assert not path.exists() and partial.exists()
    with h5py.File(partial, "r") as f:
        assert int(f.attrs["n_done"]) == 16 and not f.attrs["complete"]
    with pytest.raises(ValueError, match="incomplete"):
        TokenCache(partial)
    again = Recording(base)
    build_cache(again, cfg, path, split="train", block_size=8, progress=False)
    assert again.seen == list(range(16, 40))  # finished blocks were not redone
    assert not partial.exists()
    fresh = tmp_path / "fresh.h5"
    build_cache(base, cfg, fresh, split="train", block_size=8, progress=False)
    assert_same_file(path, fresh)


KILLED_RUN = """
import os, signal, sys
from evmamba.datasets.cache import build_cache
from evmamba.datasets.synthetic import SyntheticShapes

class DiesAt(SyntheticShapes):
    def _load(self, i):
        if i == 21:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no exception handlers: as a power cut
        return super()._load(i)

cfg = {"dataset": %r, "binning": %r}
build_cache(DiesAt("train", n_samples=40, seed=1), cfg, sys.argv[1], split="train", block_size=8, progress=False)
"""


def test_killed_run_resumes(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "killed.h5"
    script = tmp_path / "run.py"
    script.write_text(KILLED_RUN % (SYN, BIN))
    proc = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    partial = path.with_name(path.name + ".partial")
    assert not path.exists() and partial.exists()
    base = synthetic_factory(SYN, "train")
    again = Recording(base)
    build_cache(again, syn_cfg(tmp_path), path, split="train", block_size=8, progress=False)
    assert again.seen == list(range(16, 40))
    fresh = build_cache(base, syn_cfg(tmp_path), tmp_path / "fresh.h5", split="train", block_size=8, progress=False)
    assert_same_file(path, fresh)


class LoggedToFile(Recording):
    """:class:`Recording` across processes: each index read is appended to a file, worker processes included."""

    def __init__(self, base, log, fail_at=None):
        super().__init__(base, fail_at)
        self.log = log

    def __getitem__(self, i):
        if i == self.fail_at:
            raise RuntimeError(f"stopped at {i}")
        with open(self.log, "a") as fh:
            fh.write(f"{i}\n")
        return self.base[i]

    def read(self) -> list[int]:
        return [int(v) for v in open(self.log).read().split()]


def test_parallel_run_that_stops_resumes_in_parallel(tmp_path):
    cfg = syn_cfg(tmp_path)
    base = synthetic_factory(SYN, "train")
    path = tmp_path / "parallel.h5"
    with pytest.raises(RuntimeError, match="stopped at 23"):  # raised in a worker, passed on
        build_cache(LoggedToFile(base, tmp_path / "first.log", fail_at=23), cfg, path, split="train", block_size=4,
                    workers=2, progress=False)
    partial = path.with_name(path.name + ".partial")
    with h5py.File(partial, "r") as f:
        assert int(f.attrs["n_done"]) == 20  # every block before the failing one, in order
    again = LoggedToFile(base, tmp_path / "second.log")
    build_cache(again, cfg, path, split="train", block_size=4, workers=2, progress=False)
    assert sorted(again.read()) == list(range(20, 40))  # each missing sample once, no finished one again
    fresh = build_cache(base, cfg, tmp_path / "fresh.h5", split="train", block_size=8, workers=1, progress=False)
    assert_same_file(path, fresh)


def test_a_failing_worker_lets_the_others_finish_and_exit_instead_of_killing_them(tmp_path, monkeypatch):
    """A worker killed while it passes a result back keeps the result queue's lock, and the pool's shutdown then
    waits on that lock forever (it happened: Pool.terminate() after a worker raised). So after an error the
    workers finish what they hold and exit by themselves, and Ctrl-C is left to the parent."""
    import signal

    import evmamba.datasets.cache as cache_module

    pools, in_worker, context = [], [], cache_module._pool_context()

    class Recorded:
        def Pool(self, *args, **kwargs):  # noqa: N802 (the multiprocessing name)
            pools.append(context.Pool(*args, **kwargs))
            in_worker.append(pools[-1].apply(signal.getsignal, (signal.SIGINT,)))
            return pools[-1]

    monkeypatch.setattr(cache_module, "_pool_context", Recorded)
    parent = signal.getsignal(signal.SIGINT)  # ignored already when the tests run as a background job
    with pytest.raises(RuntimeError, match="stopped at 23"):
        build_cache(LoggedToFile(synthetic_factory(SYN, "train"), tmp_path / "first.log", fail_at=23),
                    syn_cfg(tmp_path), tmp_path / "parallel.h5", split="train", block_size=4, workers=2, progress=False)
    workers = [p for pool in pools for p in pool._pool]
    assert workers and all(p.exitcode == 0 for p in workers)  # none terminated (-SIGTERM)
    assert in_worker == [signal.SIG_IGN] and signal.getsignal(signal.SIGINT) == parent  # the parent's unchanged


def test_parallel_workers_stay_a_few_blocks_ahead_of_a_slow_writer(tmp_path, monkeypatch):
    import time

    import evmamba.datasets.cache as cache_module

    base = synthetic_factory(SYN, "train")
    logged = LoggedToFile(base, tmp_path / "reads.log")
    ahead = []
    append = cache_module._append_block

    def slow_append(f, block):  # a slow disk: what is binned meanwhile must wait, not pile up in memory
        time.sleep(0.05)
        n_done = int(f.attrs["n_done"])
        ahead.append(max(logged.read()) + 1 - n_done)  # samples read beyond those written
        append(f, block)

    monkeypatch.setattr(cache_module, "_append_block", slow_append)
    path = build_cache(logged, syn_cfg(tmp_path), tmp_path / "slow.h5", split="train", block_size=2, workers=2,
                       progress=False)
    # Two workers, two blocks each in flight, plus the block being written: at most 5 blocks of 2 samples.
    assert len(ahead) == 20 and max(ahead) <= 10
    assert sorted(logged.read()) == list(range(40))
    monkeypatch.setattr(cache_module, "_append_block", append)
    assert_same_file(path, build_cache(base, syn_cfg(tmp_path), tmp_path / "fresh.h5", split="train", progress=False))


KILLED_PARALLEL_RUN = """
import os, signal, sys
from evmamba.datasets.cache import build_cache
from evmamba.datasets.synthetic import SyntheticShapes

MAIN = os.getpid()

class KillsItsParent(SyntheticShapes):
    def _load(self, i):
        if i == 21 and os.getpid() != MAIN:  # a worker pulls the plug on the process that writes
            os.kill(MAIN, signal.SIGKILL)
        return super()._load(i)

cfg = {"dataset": %r, "binning": %r}
build_cache(KillsItsParent("train", n_samples=40, seed=1), cfg, sys.argv[1], split="train", block_size=4, workers=2,
            progress=False)
"""


def test_killed_parallel_run_resumes_in_parallel(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "killed.h5"
    script = tmp_path / "run.py"
    script.write_text(KILLED_PARALLEL_RUN % (SYN, BIN))
    proc = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == -9, proc.stderr
    partial = path.with_name(path.name + ".partial")
    assert not path.exists() and partial.exists()
    with h5py.File(partial, "r") as f:
        done = int(f.attrs["n_done"])
    assert done % 4 == 0 and done <= 20  # whole blocks only, none past the one being binned
    base = synthetic_factory(SYN, "train")
    again = LoggedToFile(base, tmp_path / "again.log")
    # The killed run's workers exit on their own (their queue closes); they hold no lock that stops this.
    build_cache(again, syn_cfg(tmp_path), path, split="train", block_size=4, workers=2, progress=False)
    assert sorted(again.read()) == list(range(done, 40))
    fresh = build_cache(base, syn_cfg(tmp_path), tmp_path / "fresh.h5", split="train", block_size=4, progress=False)
    assert_same_file(path, fresh)


KILLED_WHILE_WRITING = """
import os, signal, sys
import evmamba.datasets.cache as cache
from evmamba.datasets.synthetic import SyntheticShapes

append, calls = cache._append_block, []

def dies_half_way(f, block):  # the third block is half written (sources and array sizes) when the power goes
    calls.append(1)
    if len(calls) == 3:
        n0, m = int(f.attrs["n_done"]), block["labels"].shape[0]
        f["source"].resize((n0 + m,))
        f["source"][n0:] = block["source"]
        for k in cache._ARRAYS:
            f[k].resize((f[k].shape[0] + block[k].shape[0],))
        os.kill(os.getpid(), signal.SIGKILL)
    append(f, block)

cache._append_block = dies_half_way
cfg = {"dataset": %r, "binning": %r}
cache.build_cache(SyntheticShapes("train", n_samples=40, seed=1), cfg, sys.argv[1], split="train", block_size=4,
                  progress=False)
"""


def test_run_killed_while_writing_a_block_resumes(tmp_path):
    # HDF5 is not safe against a crash inside a write: continuing to write into such a file failed ("bad heap
    # index") although its finished samples read fine. The finished samples are copied into a new file.
    import subprocess
    import sys

    path = tmp_path / "half.h5"
    script = tmp_path / "run.py"
    script.write_text(KILLED_WHILE_WRITING % (SYN, BIN))
    proc = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == -9, proc.stderr
    base = synthetic_factory(SYN, "train")
    again = LoggedToFile(base, tmp_path / "again.log")
    build_cache(again, syn_cfg(tmp_path), path, split="train", block_size=4, workers=2, progress=False)
    assert sorted(again.read()) == list(range(8, 40))  # two blocks were finished
    assert not path.with_name(path.name + ".partial").exists() and not list(tmp_path.glob("*.copy"))
    fresh = build_cache(base, syn_cfg(tmp_path), tmp_path / "fresh.h5", split="train", block_size=4, progress=False)
    assert_same_file(path, fresh)


def test_unreadable_or_foreign_partial_file_is_started_over(tmp_path):
    cfg = syn_cfg(tmp_path)
    base = synthetic_factory(SYN, "test")
    path = tmp_path / "x.h5"
    path.with_name("x.h5.partial").write_bytes(b"\x89HDF\r\n\x1a\n garbage")
    rec = Recording(base)
    build_cache(rec, cfg, path, split="test", block_size=4, progress=False)
    assert rec.seen == list(range(10))
    # A partial file of another config is not continued either.
    with pytest.raises(RuntimeError):
        build_cache(
            Recording(base, fail_at=6), syn_cfg(tmp_path, bin_us=0), path, split="test", block_size=4, progress=False
        )
    rec = Recording(base)
    build_cache(rec, cfg, path, split="test", block_size=4, progress=False)
    assert rec.seen == list(range(10))
    assert_cache_matches_dataset(path, base, BIN)


class WithEmpty(Recording):
    def __getitem__(self, i):
        events, label = self.base[i]
        return (empty_events() if i % 4 == 1 else events), label


def test_empty_samples_are_kept_with_length_zero(tmp_path):
    base = synthetic_factory(SYN, "test")
    path = build_cache(WithEmpty(base), syn_cfg(tmp_path), tmp_path / "e.h5", split="test", progress=False)
    cache = TokenCache(path)
    assert len(cache) == 10 and cache.n_empty == 3
    seq, label = cache[1]
    assert seq.num_tokens == 0 and label == base[1][1] and cache.source(1) == base.source(1)
    dense = TokenCache(path, drop_empty=True)
    assert len(dense) == 7 and (dense.lengths > 0).all()
    assert dense.indices.tolist() == [0, 2, 3, 4, 6, 7, 8]
    assert dense[1][1] == base[2][1] and dense.source(1) == base.source(2)


class ListDataset:
    sensor_size, classes = (4, 4, 2), ("a", "b", "c", "d", "e")

    def __init__(self, labels):
        self.labels = labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return empty_events(), self.labels[i]

    def source(self, i):
        return f"item{i}"


@pytest.mark.parametrize("order", ["cyclic", "sorted"])
def test_spread_subset_keeps_every_class(order):
    labels = [i % 5 for i in range(100)] if order == "cyclic" else [i // 20 for i in range(100)]
    base = ListDataset(labels)
    sub = SpreadSubset(base, 20)
    assert len(sub) == 20 and len(set(sub.indices.tolist())) == 20
    assert sorted({sub[i][1] for i in range(20)}) == [0, 1, 2, 3, 4]
    assert sub.source(3) == base.source(int(sub.indices[3]))
    np.testing.assert_array_equal(SpreadSubset(base, 20).indices, sub.indices)  # always the same subset
    assert len(SpreadSubset(base, 1000)) == 100
    with pytest.raises(ValueError):
        SpreadSubset(base, 0)


def test_bad_config_sections_raise_with_names(tmp_path):
    with pytest.raises(ValueError, match="dataset"):
        cache_key({"binning": {}})
    with pytest.raises(ValueError, match="dataset.name"):
        cache_key({"dataset": {"name": "../x"}})
    with pytest.raises(ValueError, match="bin_us"):
        cache_key({"dataset": {"name": "synthetic"}, "binning": {"bin_us": -1}})
    with pytest.raises(TypeError, match="lacks"):
        build_cache([1, 2], syn_cfg(tmp_path), tmp_path / "l.h5", split="test")
    with pytest.raises(ValueError, match="workers"):
        build_cache(synthetic_factory(SYN, "test"), syn_cfg(tmp_path), tmp_path / "w.h5", split="test", workers=0)


# -- the command -------------------------------------------------------------------------------------------


def test_preprocess_command_writes_one_file_per_split(tmp_path, capsys):
    cfg_file = tmp_path / "syn.yaml"
    cfg_file.write_text(json.dumps(syn_cfg(tmp_path / "unused")))  # JSON is YAML
    out = tmp_path / "caches"
    argv = ["preprocess", "--config", str(cfg_file), "binning.bin_us=2000", "--cache-dir", str(out), "--no-progress"]
    assert cli_main([*argv, "--workers", "2"]) == 0
    files = sorted(p.name for p in out.glob("*.h5"))
    assert len(files) == 2 and files[0].startswith("synthetic-test-") and files[1].startswith("synthetic-train-")
    info = inspect_cache(out / files[1])
    assert info["config"]["binning"]["bin_us"] == 2000 and info["n_samples"] == 40
    assert "written" in capsys.readouterr().out
    assert cli_main([*argv, "--splits", "test"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert cli_main(["preprocess", "--config", str(cfg_file), "binning.bin_us=-5", "--cache-dir", str(out)]) == 1
    assert "bin_us" in capsys.readouterr().err


# -- the cache key covers the data (issue 12) ------------------------------------------------------------------


def write_labelled_folder(root, labels):
    """Tiny ``.npy`` recordings ``r<k>.npy`` (8x8 sensor) and a ``labels.csv`` listing them with ``labels``."""
    from evmamba.core.events import make_events
    from evmamba.pipeline.readers import write_events

    root.mkdir(parents=True, exist_ok=True)
    rows = ["file,label"]
    for k, label in enumerate(labels):
        rng = np.random.default_rng(k)
        t = np.sort(rng.integers(0, 20_000, 50))
        write_events(root / f"r{k}.npy", make_events(rng.integers(0, 8, 50), rng.integers(0, 8, 50), t,
                                                     rng.integers(0, 2, 50)))
        rows.append(f"r{k}.npy,{label}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")


def folder_cfg(root, cache):
    return {"dataset": {"name": "folder", "root": str(root), "labels_csv": "labels.csv", "sensor_size": [8, 8, 2]},
            "binning": {"bin_us": 1000}, "cache_dir": str(cache)}


def test_relabelled_dropped_or_replaced_recordings_never_serve_the_old_cache(tmp_path):
    data, cache = tmp_path / "data", tmp_path / "cache"
    write_labelled_folder(data, ["a", "b", "a", "c"])
    cfg = folder_cfg(data, cache)
    first = TokenCache(ensure_cache(cfg, "all", progress=False))
    assert list(first.classes) == ["a", "b", "c"] and first.labels.tolist() == [0, 1, 0, 2]

    # Relabel one row: new labels, not the old cache.
    (data / "labels.csv").write_text("file,label\nr0.npy,a\nr1.npy,b\nr2.npy,b\nr3.npy,c\n")
    relabelled = TokenCache(ensure_cache(cfg, "all", progress=False))
    assert relabelled.path != first.path and relabelled.labels.tolist() == [0, 1, 1, 2]

    # Drop class c and delete its recording.
    (data / "r3.npy").unlink()
    (data / "labels.csv").write_text("file,label\nr0.npy,a\nr1.npy,b\nr2.npy,b\n")
    dropped = TokenCache(ensure_cache(cfg, "all", progress=False))
    assert len(dropped) == 3 and list(dropped.classes) == ["a", "b"]

    # Replace a recording with other events: the tokens follow the file.
    from evmamba.pipeline.readers import read_events, write_events

    events, _ = read_events(data / "r1.npy")
    write_events(data / "r1.npy", events[:10])
    replaced = TokenCache(ensure_cache(cfg, "all", progress=False))
    assert replaced.path != dropped.path and replaced[1][0].counts.sum() == 10
    assert replaced.info["config"]["data"]["n_samples"] == 3  # what the key covered is in the file


def test_preprocess_rebuilds_after_relabelling_and_train_takes_force(tmp_path, capsys):
    data = tmp_path / "data"
    write_labelled_folder(data, ["a", "b", "a", "b"])
    cfg_file = tmp_path / "folder.yaml"
    cfg_file.write_text(json.dumps(folder_cfg(data, tmp_path / "cache")))
    argv = ["preprocess", "--config", str(cfg_file), "--splits", "all", "--no-progress", "--workers", "1"]
    assert cli_main(argv) == 0 and "written" in capsys.readouterr().out
    assert cli_main(argv) == 0 and "up to date" in capsys.readouterr().out
    (data / "labels.csv").write_text("file,label\nr0.npy,b\nr1.npy,b\nr2.npy,a\nr3.npy,b\n")
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert "written" in out and "up to date" not in out
    # The error text about a damaged cache names --force, and `evmamba train` has it.
    from evmamba.cli import build_parser

    args = build_parser(["train"]).parse_args(["train", "--force"])
    assert args.force is True
