"""Data parallelism on PyTorch's own engine: torchrun starts the processes, DDP averages gradients.

One process (no torchrun) is the same code path with a world of size 1, so nothing here is
needed to train on one device. The reference's semantics are kept: the global batch is split
evenly across ranks, BatchNorm batch statistics are per rank, and the running statistics are
averaged across ranks before each evaluation.
"""

from __future__ import annotations

import datetime
import gc
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from resbench.errors import ResbenchError


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_world() -> World:
    """The world torchrun describes in the environment (a single process without torchrun)."""
    return World(environment_int("RANK", 0), environment_int("WORLD_SIZE", 1), environment_int("LOCAL_RANK", 0))


def environment_int(name: str, default: int) -> int:
    text = os.environ.get(name, str(default))
    try:
        return int(text)
    except ValueError:
        raise ResbenchError(f"environment variable {name}={text!r} is not an integer; torchrun sets it, "
                            "and a single process needs it unset") from None


def init_world(device: torch.device) -> World:
    """Join the process group torchrun set up: NCCL on CUDA, gloo on CPU."""
    world = launched_world()
    if world.distributed and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return world


def local_device(device: torch.device, world: World) -> torch.device:
    """Each rank of a multi-GPU run uses the GPU of its local rank."""
    if device.type == "cuda" and world.distributed:
        return torch.device("cuda", world.local_rank)
    return device


def wrap(model: nn.Module, device: torch.device, world: World, sync_bn: bool) -> nn.Module:
    """DDP with per-rank BatchNorm statistics (broadcast_buffers=False), or SyncBatchNorm if asked."""
    if not world.distributed:
        return model
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)


def all_reduce_sum(tensor: torch.Tensor, world: World) -> torch.Tensor:
    if world.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def average_bn_statistics(model: nn.Module, world: World) -> None:
    """Average BatchNorm running means and variances over ranks, as the reference does before evaluating."""
    if not world.distributed:
        return
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            for buffer in (module.running_mean, module.running_var):
                dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
                buffer.div_(world.world_size)


def rank_buffers(model: nn.Module, world: World) -> list[dict[str, torch.Tensor]]:
    """Every rank's own buffers (BatchNorm running statistics), gathered on every rank.

    Per-rank BatchNorm statistics differ between evaluations, so a checkpoint written there (on a
    signal) keeps each rank's, and each rank resumes with its own. Empty for one process.
    """
    if not world.distributed:
        return []
    gathered: list[Any] = [None] * world.world_size
    dist.all_gather_object(gathered, {name: buffer.detach().cpu() for name, buffer in model.named_buffers()})
    return gathered


def restore_rank_buffers(model: nn.Module, saved: list[dict[str, torch.Tensor]], world: World) -> None:
    """Give this rank its own saved buffers back (when the run resumes with the same number of ranks)."""
    if len(saved) != world.world_size or not world.distributed:
        return
    own = saved[world.rank]
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            buffer.copy_(own[name])


def shard(length: int, world: World) -> slice:
    """This rank's contiguous share of `length` items (shares differ by at most one)."""
    return slice(world.rank * length // world.world_size, (world.rank + 1) * length // world.world_size)


def any_rank(flag: bool, world: World, device: torch.device) -> bool:
    """True on every rank when it is true on any, so all ranks take the same branch."""
    if not world.distributed:
        return flag
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


# How long the other ranks wait for rank 0 to download and prepare a dataset.
PREPARE_TIMEOUT = datetime.timedelta(hours=3)


def wait_for_rank0(world: World) -> None:
    """Hold every rank until rank 0 is done with a long job (downloading and preparing a dataset).

    The barrier runs on a gloo group of its own with a long timeout: NCCL's collectives give up
    after 10 minutes by default, less than a slow TinyImageNet download.
    """
    if world.distributed:
        group = dist.new_group(backend="gloo", timeout=PREPARE_TIMEOUT)
        dist.barrier(group=group)
        dist.destroy_process_group(group)


def shutdown(world: World) -> None:
    """Destroy the process group, after freeing what still uses it.

    A DistributedDataParallel module lives in reference cycles, so only the garbage collector frees
    it, and with it the last reference to the gloo process group; left to the collection at
    interpreter exit, the group's worker threads are torn down during finalisation, which aborted a
    rank now and then ("terminate called without an active exception", SIGABRT).
    """
    if world.distributed and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
