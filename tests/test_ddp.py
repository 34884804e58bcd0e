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


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo needed")
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
