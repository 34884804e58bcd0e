"""Reading token caches larger than memory: per-sample reads from the file, chosen by size, safe in DataLoader
worker processes, with host memory that does not grow with the file; and caches written from ready tokens."""

from __future__ import annotations

import os
import sys
import tracemalloc

import h5py
import numpy as np
import pytest
import torch

from evmamba.datasets.batching import collate
from evmamba.datasets.cache import BYTES_PER_TOKEN, TokenCache, write_cache
from evmamba.pipeline.binning import TokenSequence
from evmamba.training.data import make_loader

CLASSES = [f"c{i}" for i in range(4)]
SENSOR = (32, 32, 2)  # vocabulary 2 048 at the binning defaults


def random_blocks(n_samples: int, tokens_per_sample: int, seed: int, per_block: int = 16, vocab: int = 2048):
    """Blocks of random samples (lengths around ``tokens_per_sample``) for :func:`write_cache`."""
    rng = np.random.default_rng(seed)
    for start in range(0, n_samples, per_block):
        m = min(per_block, n_samples - start)
        lengths = rng.integers(tokens_per_sample // 2, tokens_per_sample * 3 // 2, m)
        total = int(lengths.sum())
        yield {
            "tokens": rng.integers(0, vocab, total), "counts": rng.integers(1, 4, total),
            "dt": rng.random(total, dtype=np.float32), "t": np.cumsum(rng.integers(0, 50, total)),
            "lengths": lengths, "labels": rng.integers(0, len(CLASSES), m),
        }


def make_cache(path, n_samples: int, tokens_per_sample: int = 500, seed: int = 0):
    return write_cache(path, random_blocks(n_samples, tokens_per_sample, seed), n_samples=n_samples,
                       sensor_size=SENSOR, classes=CLASSES, progress=False)


def assert_same_item(a, b):
    (seq_a, label_a), (seq_b, label_b) = a, b
    assert label_a == label_b
    for field in ("tokens", "counts", "dt", "t"):
        np.testing.assert_array_equal(getattr(seq_a, field), getattr(seq_b, field), err_msg=field)
        assert getattr(seq_a, field).dtype == getattr(seq_b, field).dtype


def test_written_cache_holds_the_given_tokens(tmp_path):
    blocks = list(random_blocks(21, 300, seed=1, per_block=8))
    path = write_cache(tmp_path / "w.h5", iter(blocks), n_samples=21, sensor_size=SENSOR, classes=CLASSES,
                       progress=False)
    assert not path.with_name("w.h5.partial").exists()
    cache = TokenCache(path)
    assert len(cache) == 21 and cache.vocab_size == 2048 and list(cache.classes) == CLASSES
    i = 0
    for block in blocks:
        offsets = np.concatenate([[0], np.cumsum(block["lengths"])])
        for k, label in enumerate(block["labels"]):
            seq, got = cache[i]
            assert got == label and cache.source(i) == f"tokens:train:{i}"
            np.testing.assert_array_equal(seq.tokens, block["tokens"][offsets[k]:offsets[k + 1]])
            np.testing.assert_array_equal(seq.t, block["t"][offsets[k]:offsets[k + 1]])
            i += 1


def test_write_cache_refuses_inconsistent_blocks(tmp_path):
    good = next(random_blocks(4, 10, seed=2))
    kw = {"sensor_size": SENSOR, "classes": CLASSES, "progress": False}
    with pytest.raises(ValueError, match="block 0 field 'tokens' holds ids outside the vocabulary"):
        write_cache(tmp_path / "a.h5", [{**good, "tokens": good["tokens"] + 5000}], n_samples=4, **kw)
    with pytest.raises(ValueError, match="block 0 field 'lengths'"):
        write_cache(tmp_path / "b.h5", [{**good, "lengths": good["lengths"] + 1}], n_samples=4, **kw)
    with pytest.raises(ValueError, match="block 0 field 'labels'"):
        write_cache(tmp_path / "c.h5", [{**good, "labels": good["labels"] + 10}], n_samples=4, **kw)
    with pytest.raises(ValueError, match="block 0 lacks field"):
        write_cache(tmp_path / "d.h5", [{k: v for k, v in good.items() if k != "dt"}], n_samples=4, **kw)
    with pytest.raises(ValueError, match="hold 4 samples; n_samples is 5"):
        write_cache(tmp_path / "e.h5", [good], n_samples=5, **kw)
    assert not (tmp_path / "e.h5").exists()  # never renamed into place


def test_large_caches_are_read_per_sample_and_give_the_same_items(tmp_path):
    path = make_cache(tmp_path / "c.h5", 30)
    whole = TokenCache(path)
    assert whole.in_memory and whole.nbytes == whole.n_tokens * BYTES_PER_TOKEN
    # Larger than the limit: read from the file (the default limit is 1 GiB; here a few bytes).
    lazy = TokenCache(path, memory_limit=whole.nbytes - 1)
    assert not lazy.in_memory and TokenCache(path, memory_limit=whole.nbytes).in_memory
    assert not TokenCache(path, in_memory=False, memory_limit=10**12).in_memory  # an explicit choice wins
    for i in (0, 7, 29, -1):
        assert_same_item(lazy[i], whole[i])
    with pytest.raises(ValueError, match="memory_limit"):
        TokenCache(path, memory_limit=-1)
    with pytest.raises(TypeError, match="in_memory"):
        TokenCache(path, in_memory="yes")


def test_a_damaged_sample_read_from_the_file_names_file_and_sample(tmp_path):
    path = make_cache(tmp_path / "c.h5", 6)
    with h5py.File(path, "r+") as f:
        lo = int(f["offsets"][4])
        f["tokens"][lo] = 99_999
    lazy = TokenCache(path, in_memory=False)  # opening reads the index only
    assert lazy[3][0].tokens.size
    with pytest.raises(ValueError, match=r"c\.h5: dataset 'tokens' of sample 4 holds ids outside 0\.\.2047"):
        lazy[4]
    with pytest.raises(ValueError, match="holds ids outside"):
        TokenCache(path, in_memory=True)  # a loaded file is checked whole at open


class WhoReads:
    """Items of a lazily read cache with the reading process's id and the process its file handle belongs to."""

    def __init__(self, cache):
        self.cache = cache

    def __len__(self):
        return len(self.cache)

    def __getitem__(self, i):
        seq, label = self.cache[i]
        return seq, label, os.getpid(), self.cache._file_pid


def as_is(item):
    return item


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork start method (Linux)")
def test_loader_workers_open_their_own_file_handle_after_the_fork(tmp_path):
    path = make_cache(tmp_path / "c.h5", 24)
    lazy = TokenCache(path, in_memory=False)
    lazy[0]  # the parent holds an open handle when the workers are forked
    parent = os.getpid()
    assert lazy._file_pid == parent
    loader = torch.utils.data.DataLoader(WhoReads(lazy), batch_size=None, shuffle=False, num_workers=2,
                                         collate_fn=as_is, multiprocessing_context="fork")
    whole = TokenCache(path, in_memory=True)
    readers = set()
    for i, (seq, label, pid, handle_pid) in enumerate(loader):
        assert pid != parent and handle_pid == pid  # read in a worker, through a handle it opened itself
        readers.add(pid)
        assert_same_item((seq, label), whole[i])
    assert len(readers) == 2


class FrozenCount:
    """Items report how many objects the garbage collector of the process that made them leaves alone."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i):
        import gc

        one = TokenSequence(np.zeros(1, np.int32), np.ones(1, np.int32), np.zeros(1, np.float32), np.zeros(1, np.int64))
        return one, gc.get_freeze_count()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forked workers")
def test_loader_workers_leave_the_objects_they_inherit_to_the_main_process():
    # A full collection in a forked worker would write to every inherited object, copying the pages it shares
    # with the main process: the workers freeze them first.
    loader, batches = make_loader(FrozenCount(), np.ones(4, np.int64), 2, collate, shuffle=False, seed=0, workers=1)
    batches.set_epoch(0)
    assert all(int(batch["labels"].min()) > 1000 for batch in loader)  # torch, numpy, evmamba ... all frozen


def _peak_traced_bytes(path, in_memory: bool | None = None, batch_size: int = 4) -> tuple[int, int]:
    """``(peak of the Python-traced allocations -- numpy arrays included -- while opening the cache and going
    through an epoch of the training loader, the cache's bytes of tokens)``."""
    tracemalloc.start()
    try:
        cache = TokenCache(path, in_memory=in_memory)
        loader, batches = make_loader(cache, cache.lengths, batch_size, collate, shuffle=True, seed=0)
        batches.set_epoch(0)
        for batch in loader:
            del batch
        return tracemalloc.get_traced_memory()[1], cache.nbytes
    finally:
        tracemalloc.stop()


def test_memory_of_an_epoch_does_not_grow_with_the_cache(tmp_path):
    small = make_cache(tmp_path / "small.h5", 40, 2000, seed=3)
    big = make_cache(tmp_path / "big.h5", 400, 2000, seed=4)
    peak_small, bytes_small = _peak_traced_bytes(small, in_memory=False)
    peak_big, bytes_big = _peak_traced_bytes(big, in_memory=False)
    assert bytes_big > 9 * bytes_small  # 16 MB against 1.6 MB of tokens
    # A few batches' worth, whatever the file's size ...
    assert peak_big < 0.1 * bytes_big
    assert peak_big < 1.5 * peak_small + 200_000
    # ... where loading it whole takes all of it (the measure sees the arrays).
    assert _peak_traced_bytes(big, in_memory=True)[0] > bytes_big


def test_hdf5_metadata_held_per_reading_process_is_bounded_whatever_the_chunks(tmp_path, monkeypatch):
    # The chunk index that HDF5 caches grows with the chunks read; many tiny chunks stand in for a huge file.
    import evmamba.datasets.cache as cache_module

    monkeypatch.setattr(cache_module, "_CHUNK", 8)
    path = make_cache(tmp_path / "many-chunks.h5", 60, 2000, seed=5)  # ~120 k tokens: ~60 k chunks
    whole, lazy = TokenCache(path), TokenCache(path, in_memory=False)
    for i in np.random.default_rng(0).permutation(len(lazy)).tolist():
        assert_same_item(lazy[i], whole[i])
    f = lazy._file.id
    assert f.get_mdc_config().max_size == cache_module.METADATA_CACHE_BYTES  # HDF5 may not grow it
    assert f.get_mdc_size()[2] <= cache_module.METADATA_CACHE_BYTES


def test_training_reads_large_caches_from_the_file_with_workers_and_learns_the_same(tmp_path):
    # Random crops (max_tokens) of samples of 110-230 tokens: read as windows, from memory or from the file.
    import yaml

    from evmamba.cli import main
    from evmamba.training.data import build_data

    cfg = {
        "dataset": {"name": "synthetic", "n_samples": {"train": 30, "test": 10}, "sensor_size": [32, 32, 2],
                    "duration_us": 40000, "seed": 3},
        "binning": {"downsample": 2, "bin_us": 5000},
        "cache_dir": str(tmp_path / "cache"),
        "model": {"d_model": 16, "n_layers": 2, "d_state": 4, "pool_stride": 2, "embedding": "factorised"},
        "train": {"epochs": 1, "batch_size": 8, "preprocess_workers": 1, "val_fraction": 0.2, "max_tokens": 150},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    runs = {}
    for name, extra in (("whole", []), ("file", ["train.cache_memory_gb=0", "train.workers=2"])):
        runs[name] = tmp_path / name
        assert main(["train", "--config", str(path), "--out", str(runs[name]), "--no-progress", "--device", "cpu",
                     *extra]) == 0
    a = torch.load(runs["whole"] / "model.pt", weights_only=True)["model"]
    b = torch.load(runs["file"] / "model.pt", weights_only=True)["model"]
    for key, value in a.items():
        assert torch.equal(value, b[key]), key
    # What the setting chose: every split read from the file with 0, loaded whole by default (1 GB).
    from evmamba.core.config import load_config

    lazy = build_data(load_config(str(path), ["train.cache_memory_gb=0"]), progress=False)
    assert not lazy.test.in_memory and not lazy.val.dataset.in_memory  # val: a part of the train split's cache
    assert build_data(load_config(str(path), []), progress=False).test.in_memory
    assert build_data(load_config(str(path), ["train.cache_memory_gb=null"]), progress=False).test.in_memory


def test_window_reads_a_cut_of_an_item(tmp_path):
    path = make_cache(tmp_path / "c.h5", 5, 400, seed=6)
    for cache in (TokenCache(path, in_memory=True), TokenCache(path, in_memory=False)):
        full, label = cache[2]
        n = full.num_tokens
        for start, stop in ((0, 10), (5, None), (n - 3, n + 50), (n + 5, n + 9), (7, 3)):
            seq, got = cache.window(2, start, stop)
            assert got == label
            want = slice(start, stop if stop is None or stop >= start else start)
            for field in ("tokens", "counts", "dt", "t"):
                np.testing.assert_array_equal(getattr(seq, field), getattr(full, field)[want])
        with pytest.raises(ValueError, match="window start"):
            cache.window(0, -1, 4)


def test_crops_of_long_recordings_read_only_the_crop(tmp_path):
    from evmamba.datasets.wrappers import IndexedSubset, TokenCrop

    path = make_cache(tmp_path / "long.h5", 6, 200_000, seed=7)  # up to 300 000 tokens (6 MB) per sample
    cache = TokenCache(path, in_memory=False)
    subset = IndexedSubset(cache, [5, 0, 3, 1])
    read_whole = TokenCrop(subset, 1000, seed=4)
    read_window = TokenCrop(subset, 1000, seed=4, lengths=cache.lengths[[5, 0, 3, 1]])
    for epoch in (0, 1):
        read_whole.set_epoch(epoch)
        read_window.set_epoch(epoch)
        for i in range(4):
            assert_same_item(read_window[i], read_whole[i])  # the same windows
    tracemalloc.start()
    try:
        read_window[0]
        peak_window = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        read_whole[0]
        peak_whole = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak_window < 100_000  # a 1 000-token crop: 20 kB, not the recording's megabytes
    assert peak_whole > 2_000_000
    with pytest.raises(TypeError, match="window"):
        TokenCrop(list(range(4)), 10, seed=0, lengths=[1, 2, 3, 4])
