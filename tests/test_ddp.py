"""Data-parallel training: two CPU processes (gloo) take one step on half a batch each and end up with the
same weights as each other and as one process on the whole batch."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from evmamba.model.classifier import EventClassifier
from evmamba.training import distributed as ddp
from evmamba.training.models import forward_loss

WORLD = 2


def make_model() -> EventClassifier:
    torch.manual_seed(0)
    return EventClassifier(40, 3, d_model=8, n_layers=2, d_state=4, pool_stride=2, dropout=0.0)


def make_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor([9, 4, 7, 9])
    return {
        "tokens": torch.randint(0, 40, (4, 9), generator=g),
        "dt": torch.rand(4, 9, generator=g),
        "counts": torch.ones(4, 9),
        "lengths": lengths,
        "labels": torch.tensor([0, 1, 2, 1]),
    }


def one_step(net, model, batch) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    loss, _, _ = forward_loss(net, batch, torch.device("cpu"))
    loss.backward()
    opt.step()


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    info = ddp.setup("cpu")
    model = make_model()
    if rank == 1:  # a different start on purpose: DDP must broadcast rank 0's weights
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
    net = ddp.wrap(model, info)
    batch = {k: v[rank::WORLD] for k, v in make_batch().items()}  # each process sees half of the batch
    one_step(net, model, batch)
    flat = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    gathered = [torch.zeros_like(flat) for _ in range(WORLD)]
    dist.all_gather(gathered, flat)
    if rank == 0:
        torch.save(gathered, out)
    ddp.cleanup(info)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo needed"
)
def test_two_processes_agree_after_a_step(tmp_path):
    out = str(tmp_path / "params.pt")
    mp.spawn(_worker, args=(free_port(), out), nprocs=WORLD, join=True)
    rank0, rank1 = torch.load(out, weights_only=True)
    assert torch.equal(rank0, rank1)
    # One process on the whole batch takes the same step (equal halves: the mean of means is the mean).
    model = make_model()
    before = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    one_step(model, model, make_batch())
    single = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    assert not torch.equal(single, before)
    torch.testing.assert_close(rank0, single, rtol=1e-5, atol=1e-6)


# -- the sampler: global batches split over processes ------------------------------------------------------


class FixedBatches:
    """A stand-in sampler with given global batches."""

    def __init__(self, batches):
        self._batches, self.epoch = batches, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def batches(self):
        return [list(b) for b in self._batches]


def test_shards_of_each_global_batch_make_it_up_exactly():
    from evmamba.datasets.batching import ShardedBatches

    glob = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10], [11]]
    for world in (1, 2, 3):
        for even in (True, False):
            shards = [ShardedBatches(FixedBatches(glob), r, world, even) for r in range(world)]
            kept = [b for b in glob if len(b) >= world] if even else glob
            for j, batch in enumerate(kept):
                parts = [list(s)[j] for s in shards if j < len(s)]
                assert sorted(i for p in parts for i in p) == batch
                # Shares weight each process's mean so that the average over processes is the global mean.
                sizes = [len(p) for p in parts]
                weights = [s.shares()[j] for s in shards if j < len(s)]
                assert weights == [n * world / len(batch) for n in sizes]
            if even:  # every process steps through the same number of batches (DDP syncs each step)
                assert len({len(s) for s in shards}) == 1
                assert all(len(s) == len(list(s)) == len(s.shares()) for s in shards)
            else:  # evaluation: every sample once
                assert sorted(i for s in shards for b in s for i in b) == list(range(12))
    with pytest.raises(ValueError, match="rank"):
        ShardedBatches(FixedBatches(glob), 2, 2)


def test_processes_step_through_the_global_batches_of_one_process():
    import numpy as np

    from evmamba.training.data import make_loader
    from evmamba.training.distributed import DistInfo

    lengths = np.random.default_rng(5).integers(1, 100, 37)
    data = list(range(37))
    one, sampler = make_loader(data, lengths, 8, list, shuffle=True, seed=3)
    sampler.set_epoch(1)
    parts = []
    for rank in range(WORLD):
        loader, s = make_loader(data, lengths, 4, list, shuffle=True, seed=3,
                                info=DistInfo(rank=rank, world_size=WORLD))
        s.set_epoch(1)
        parts.append(list(loader))
    glob = list(one)
    assert len(parts[0]) == len(parts[1]) == len(glob)  # 37 = 4 x 8 + 5: the short batch splits 3 + 2
    for j, batch in enumerate(glob):
        assert sorted(parts[0][j] + parts[1][j]) == sorted(batch)


# -- a whole training run: two processes at batch B against one at 2B --------------------------------------


def _train_worker(rank: int, port: int, cfg: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from evmamba.cli import main

    code = main(["train", "--config", cfg, "--out", out, "--no-progress", "--device", "cpu"])
    if code != 0:
        raise RuntimeError(f"rank {rank}: evmamba train returned {code}")


def _rows(run, kind: str) -> list[dict]:
    import json

    return [row for line in open(run / "metrics.jsonl") if (row := json.loads(line))["kind"] == kind]


@pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo needed"
)
def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path):
    import yaml

    from evmamba.cli import main

    def config(batch: int, name: str):
        cfg = {
            # 41 samples: 10 held out for validation, 31 train in global batches of 8, 8, 8 and 7 (the last
            # split 4 + 3 over two processes).
            "dataset": {"name": "synthetic", "n_samples": {"train": 41, "test": 10}, "sensor_size": [32, 32, 2],
                        "duration_us": 40000, "seed": 3},
            "binning": {"downsample": 2, "bin_us": 5000},
            "cache_dir": str(tmp_path / "cache"),
            "model": {"d_model": 16, "n_layers": 2, "d_state": 4, "pool_stride": 2, "input_pool": 2,
                      "embedding": "factorised", "dropout": 0.0},
            "train": {"epochs": 2, "batch_size": batch, "lr": 0.003, "log_every": 1, "preprocess_workers": 1,
                      "val_fraction": 0.2},
        }
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return str(path)

    single, double = tmp_path / "one", tmp_path / "two"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each of the two processes
    try:
        assert (
            main(["train", "--config", config(8, "one"), "--out", str(single), "--no-progress", "--device", "cpu"]) == 0
        )
    finally:
        torch.set_num_threads(threads)
    mp.spawn(_train_worker, args=(free_port(), config(4, "two"), str(double)), nprocs=WORLD, join=True)

    losses_one, losses_two = _rows(single, "step"), _rows(double, "step")
    assert len(losses_one) == len(losses_two) == 8  # 4 steps per epoch (the last global batch of 7 is split)
    # Same samples, same mean gradient: the curves agree to float rounding (weighting the uneven split of the
    # last global batch by the shares matters: without it the weights differ by ~4e-4 after two epochs).
    torch.testing.assert_close(torch.tensor([r["loss"] for r in losses_two], dtype=torch.float64),
                               torch.tensor([r["loss"] for r in losses_one], dtype=torch.float64), rtol=1e-5, atol=1e-6)
    for a, b in zip(_rows(single, "epoch"), _rows(double, "epoch"), strict=True):  # summed over processes
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_loss", "test_accuracy"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), key
    w_one = torch.load(single / "model.pt", weights_only=True)["model"]
    w_two = torch.load(double / "model.pt", weights_only=True)["model"]
    for name, value in w_one.items():
        torch.testing.assert_close(w_two[name], value, rtol=1e-4, atol=2e-6, msg=name)
    # Only rank 0 wrote the run folder: one set of files, no leftovers of a second writer.
    assert sorted(p.name for p in double.iterdir()) == sorted(p.name for p in single.iterdir())
