"""Collation with right padding, length bucketing, and the binned dataset wrapper."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evmamba.datasets.batching import LengthBucketSampler, TokenDataset, collate
from evmamba.datasets.paths import data_root
from evmamba.datasets.wrappers import BinnedDataset
from evmamba.pipeline import AugmentConfig, BinningConfig, TokenSequence, bin_events, make_events, to_event_array


def seq(tokens, counts=None, dt=None):
    n = len(tokens)
    return TokenSequence(
        np.asarray(tokens, np.int32),
        np.asarray(counts if counts is not None else [1] * n, np.int32),
        np.asarray(dt if dt is not None else np.arange(n), np.float32),
        np.arange(n, dtype=np.int64),
    )


def test_collate_pads_on_the_right_with_zeros_and_reports_lengths():
    batch = [(seq([5, 6, 7], [1, 2, 3], [0.0, 0.5, 1.5]), 2), (seq([9]), 0), (seq([4, 4]), np.int64(1))]
    out = collate(batch)
    assert out["tokens"].dtype == torch.int64 and out["tokens"].shape == (3, 3)
    assert out["counts"].dtype == torch.float32 and out["dt"].dtype == torch.float32
    assert out["labels"].tolist() == [2, 0, 1]
    assert out["lengths"].dtype == torch.int64 and out["lengths"].tolist() == [3, 1, 2]
    assert out["tokens"].tolist() == [[5, 6, 7], [9, 0, 0], [4, 4, 0]]
    assert out["counts"].tolist() == [[1, 2, 3], [1, 0, 0], [1, 1, 0]]
    assert out["dt"].tolist() == [[0.0, 0.5, 1.5], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]]


def test_collate_accepts_plain_tuples_and_mappings_and_empty_sequences():
    tup = (np.array([1, 2]), np.array([1, 1]), np.array([0.0, 1.0]))
    mapping = {"tokens": np.array([3]), "counts": np.array([4]), "dt": np.array([0.0])}
    out = collate([(tup, 0), (mapping, 1), (TokenSequence.empty(), 2)])
    assert out["lengths"].tolist() == [2, 1, 0]
    assert out["counts"][1].tolist() == [4.0, 0.0]
    assert collate([(TokenSequence.empty(), 0)])["tokens"].shape == (1, 0)


def test_collate_errors_name_the_item_and_field():
    good = seq([1, 2])
    with pytest.raises(ValueError, match="collate: item 1 field 'dt' has length 1, but 'tokens' has 2"):
        collate([(good, 0), (good._replace(dt=np.zeros(1, np.float32)), 1)])
    with pytest.raises(TypeError, match="collate: item 0 field 'label' must be an integer"):
        collate([(good, "left")])
    with pytest.raises(TypeError, match="collate: item 0 field 'tokens' must hold integers"):
        collate([(good._replace(tokens=np.array([0.5, 1.5])), 0)])
    with pytest.raises(ValueError, match="non-empty list"):
        collate([])


def test_length_buckets_are_deterministic_per_seed_and_epoch_and_cover_every_index():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 5000, 1003)
    sampler = LengthBucketSampler(lengths, 16, seed=3, pool_batches=8)
    a = sampler.batches()
    assert sampler.batches() == a
    assert LengthBucketSampler(lengths, 16, seed=3, pool_batches=8).batches() == a
    sampler.set_epoch(1)
    b = sampler.batches()
    assert b != a
    for batches in (a, b):
        flat = [i for batch in batches for i in batch]
        assert sorted(flat) == list(range(1003))
        assert all(len(batch) == 16 for batch in batches[:-1]) and len(batches[-1]) == 1003 % 16
        assert len(batches) == len(sampler)
    # Buckets waste far less padding than random batches of the same size.
    def padding(batches):
        return sum(len(bt) * lengths[bt].max() - lengths[bt].sum() for bt in batches)

    random_batches = [list(range(i, min(i + 16, 1003))) for i in range(0, 1003, 16)]
    assert padding(a) < 0.2 * padding(random_batches)


def test_length_buckets_drop_last_and_unshuffled_order():
    lengths = [5, 1, 4, 2, 3]
    assert LengthBucketSampler(lengths, 2, shuffle=False).batches() == [[1, 3], [4, 2], [0]]
    sampler = LengthBucketSampler(lengths, 2, drop_last=True, seed=1)
    assert len(sampler) == 2 and all(len(b) == 2 for b in sampler)
    with pytest.raises(ValueError, match="'batch_size' must be an integer >= 1"):
        LengthBucketSampler(lengths, 0)


@pytest.mark.parametrize("shuffle", [True, False])
def test_token_budget_batches_stay_under_the_budget_and_cover_every_index_once(shuffle):
    rng = np.random.default_rng(5)
    lengths = np.concatenate([rng.integers(1, 3000, 700), [9000, 12000]])  # two longer than the budget
    budget, cap = 8000, 24
    sampler = LengthBucketSampler(lengths, cap, shuffle=shuffle, seed=7, pool_batches=6, batch_tokens=budget)
    epochs = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = sampler.batches()
        assert len(sampler) == len(batches)
        flat = [i for batch in batches for i in batch]
        assert sorted(flat) == list(range(lengths.size))  # every sample exactly once
        for batch in batches:
            assert len(batch) <= cap
            longest = int(lengths[batch].max())
            # within the budget, except a sequence longer than the budget, which travels alone
            assert len(batch) * longest <= budget or (len(batch) == 1 and longest > budget)
        epochs.append(batches)
    # deterministic per seed and epoch; shuffled epochs differ
    again = LengthBucketSampler(lengths, cap, shuffle=shuffle, seed=7, pool_batches=6, batch_tokens=budget)
    again.set_epoch(2)
    assert again.batches() == epochs[2]
    assert (epochs[0] != epochs[1]) == shuffle
    # the batches are nearly full: little padding, and not many more batches than the tokens need
    padded = sum(len(batch) * int(lengths[batch].max()) for batch in epochs[0])
    assert padded < 1.1 * lengths.sum() and len(epochs[0]) < 1.3 * lengths.sum() / budget


def test_token_budget_cuts_sorted_lengths_greedily():
    lengths = [100, 10, 30, 60, 10, 500]
    sampler = LengthBucketSampler(lengths, 3, shuffle=False, batch_tokens=120)
    # sorted: 10, 10, 30, 60, 100, 500 -> [10, 10, 30] (3 x 30 = 90; the cap is 3), [60] (2 x 100 > 120), [100], [500]
    assert sampler.batches() == [[1, 4, 2], [3], [0], [5]]
    with pytest.raises(ValueError, match="'batch_tokens' must be an integer >= 1"):
        LengthBucketSampler(lengths, 3, batch_tokens=0)
    with pytest.raises(ValueError, match="drop_last is only available"):
        LengthBucketSampler(lengths, 3, batch_tokens=100, drop_last=True)


def test_length_buckets_feed_a_dataloader():
    items = [(seq(list(range(n))), n % 3) for n in (3, 8, 1, 7, 2, 9)]
    sampler = LengthBucketSampler([s.num_tokens for s, _ in items], 2, seed=0)
    loader = torch.utils.data.DataLoader(items, batch_sampler=sampler, collate_fn=collate)
    batches = list(loader)
    assert sum(int(b["lengths"].numel()) for b in batches) == 6
    for b in batches:
        assert b["tokens"].shape[1] == int(b["lengths"].max())


class RecordingList:
    """A tiny event dataset: real N-MNIST training samples with their labels."""

    def __init__(self, names):
        folder = data_root() / "nmnist_small"
        if not folder.is_dir():
            pytest.skip(f"{folder} is not available")
        tonic = pytest.importorskip("tonic")
        labels = dict(line.split() for line in (folder / "train1K.txt").read_text().splitlines()[1:] if line.strip())
        self.items = []
        for name in names:
            raw = tonic.io.read_mnist_file(str(folder / f"{name}.bs2"), dtype=tonic.datasets.NMNIST.dtype)
            self.items.append((to_event_array(raw, source=name), int(labels[name])))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_binned_dataset_gives_the_binner_output_and_reproducible_augmentation():
    base = RecordingList(["1", "2", "3"])
    cfg = BinningConfig(downsample=2, bin_us=5000)
    plain = BinnedDataset(base, (34, 34, 2), cfg)
    assert isinstance(plain, TokenDataset)
    got, label = plain[0]
    assert label == 5  # the first MNIST training digit
    want = bin_events(base[0][0], (34, 34, 2), cfg)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)

    aug = AugmentConfig(drop_rate=0.2, max_shift=2, hflip_p=0.5)
    ds = BinnedDataset(base, (34, 34, 2), cfg, augment=aug, seed=7)
    first = [ds[i][0].tokens for i in range(3)]
    assert all(np.array_equal(a, ds[i][0].tokens) for i, a in enumerate(first))  # same epoch, same draws
    ds.set_epoch(1)
    assert any(not np.array_equal(a, ds[i][0].tokens) for i, a in enumerate(first))
    assert all(ds[i][0].counts.sum() < base[i][0].size for i in range(3))  # events were dropped


def test_binned_dataset_empty_policy():
    class Empty:
        def __len__(self):
            return 1

        def __getitem__(self, i):
            return make_events([], [], [], []), 4

    with pytest.raises(ValueError, match=r"nmnist\[0\]: the recording gives no tokens"):
        BinnedDataset(Empty(), (34, 34, 2), BinningConfig(), source="nmnist")[0]
    seq_, label = BinnedDataset(Empty(), (34, 34, 2), BinningConfig(), empty="keep")[0]
    assert seq_.num_tokens == 0 and label == 4
