"""Many processes, one run: torch.distributed under `torchrun` or `accelerate launch` (both set RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT), gloo on CPU and nccl on CUDA.

The config's batch size is the global batch. It is split into `optim.micro_batches` equal shards ("auto", the
default: one per process, or the smallest multiple of the process count that divides the batch); shard s of step k
draws its randomness (timesteps, noise, condition dropout, masks) from its own generator, seeded by (seed, k, s),
and rank r computes shards r, r + W, ... of them. The gradient is the mean over all shards, summed across ranks by
an all-reduce, so the same config trains the same weights on 1 process (gradient accumulation over the shards) as on
any W that divides micro_batches, up to float summation order; resume is exact across process counts.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The rank that writes checkpoints, samples and logs."""
        return self.rank == 0


def launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_world(device: torch.device, timeout_s: float = 120.0) -> World:
    """The launched world (one process: rank 0 of 1, nothing initialised). A peer that dies makes the others' next
    collective fail within timeout_s instead of hanging."""
    if not launched():
        return World()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def local_device(device: str | None, world: World) -> str | None:
    """cuda:LOCAL_RANK for a launched CUDA run, else the device asked for."""
    if world.size > 1 and (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda"):
        return f"cuda:{world.local_rank}"
    return device


def resolve_shards(micro_batches: int | str, batch_size: int, processes: int) -> int:
    """optim.micro_batches as a number: "auto" is the process count, or its smallest multiple dividing the batch."""
    if micro_batches != "auto":
        return micro_batches
    for shards in range(processes, batch_size + 1, processes):
        if batch_size % shards == 0:
            return shards
    raise ValueError(f"optim.batch_size: {batch_size} cannot be split over {processes} processes; make it a multiple "
                     f"of {processes}, or launch a process count that divides it")


def shard_slices(batch_size: int, shards: int) -> list[slice]:
    """The global batch's equal shards, in order."""
    if shards < 1 or batch_size % shards:
        raise ValueError(f"optim.micro_batches: must divide the batch size {batch_size}, got {shards}")
    n = batch_size // shards
    return [slice(i * n, (i + 1) * n) for i in range(shards)]


def my_shards(world: World, shards: int) -> list[int]:
    if shards % world.size:
        raise ValueError(f"optim.micro_batches: {shards} shards cannot be split over {world.size} processes "
                         f"(make it a multiple of the process count)")
    return list(range(world.rank, shards, world.size))


def shard_generator(seed: int, step: int, shard: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1_009 + shard)


def all_reduce_(tensors: list[torch.Tensor], world: World) -> None:
    """Sum in place across ranks (one flat buffer, one collective)."""
    if world.size == 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    i = 0
    for t in tensors:
        t.copy_(flat[i:i + t.numel()].view_as(t))
        i += t.numel()


def agree_on_stop(signum: int, world: World, device: torch.device) -> int:
    """The signal any rank noted during this step (0: none), the same on every rank, so all stop at one boundary."""
    if world.size == 1:
        return signum
    flag = torch.tensor([signum], dtype=torch.int64, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()


def close(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()
