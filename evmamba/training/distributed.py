"""Multi-process training through ``torchrun``: process-group set-up, model wrapping and reductions.

``torchrun --nproc_per_node N -m evmamba train ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous address; :func:`setup` then joins the group (NCCL on CUDA, gloo on CPU). Without those variables
everything here degrades to a single process and does nothing.

Collectives of the training group give up after PyTorch's default timeout (10 minutes for NCCL). Waiting
for rank 0 to finish host-side work that can take longer -- building the token caches of a large dataset --
goes through :func:`wait_for_main` instead: a barrier on a separate gloo group whose timeout is
:data:`WAIT_TIMEOUT`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

#: How long the other processes wait in :func:`wait_for_main` for rank 0 (e.g. building token caches).
WAIT_TIMEOUT = timedelta(hours=24)

# The gloo group of :func:`wait_for_main` (created by :func:`setup` when running distributed).
_WAIT_GROUP = None


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size`` processes, its ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer; got {value!r}") from None


def setup(device: str = "auto") -> DistInfo:
    """Join the process group when launched by ``torchrun`` and choose this process's device.

    ``device``: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:K"``. Under
    torchrun with CUDA each process takes GPU ``LOCAL_RANK``.
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", 0)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available")
        if world > 1 or dev.index is None:
            dev = torch.device("cuda", local if world > 1 else 0)
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        # Binding the group to this process's GPU tells NCCL which device barriers use (no guessing).
        bound = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", init_method="env://", **bound)
    global _WAIT_GROUP
    if world > 1 and _WAIT_GROUP is None:
        _WAIT_GROUP = dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT)
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def wrap(model: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """``DistributedDataParallel`` around ``model`` when running distributed (every parameter of our models
    receives a gradient, so ``find_unused_parameters`` stays off); the model itself otherwise."""
    if not info.enabled:
        return model
    ids = [info.device.index] if info.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=False)


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    """Sum a few numbers over all processes (identity in a single process)."""
    if not info.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def barrier(info: DistInfo) -> None:
    """All processes meet (the training group: for short waits, within its default timeout)."""
    if info.enabled:
        dist.barrier()


def wait_for_main(info: DistInfo) -> None:
    """All processes meet, waiting up to :data:`WAIT_TIMEOUT`: for rank 0's long host-side work (building
    token caches). A gloo barrier on the CPU, so no GPU collective sits waiting meanwhile."""
    if info.enabled:
        dist.barrier(group=_WAIT_GROUP)


def cleanup(info: DistInfo) -> None:
    global _WAIT_GROUP
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
    _WAIT_GROUP = None
