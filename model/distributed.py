"""Data-parallel training under torchrun: DDP over gloo (CPU) or nccl (CUDA).

Every rank builds the same global batches (same seed) and trains on its slice of each; each
rank's loss is rescaled by its share of the global number of loss terms, so the gradient DDP
averages is the gradient of the single-process loss over the whole global batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import distributed as dist


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world: int = 1
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def init(device: str) -> Context:
    """The torchrun environment (WORLD_SIZE, RANK, LOCAL_RANK) or a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Context(device=device)
    cuda = device.startswith("cuda")
    dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    return Context(dist.get_rank(), world, device)


def shutdown(ctx: Context) -> None:
    if ctx.active and dist.is_initialized():
        dist.destroy_process_group()
