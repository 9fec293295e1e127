"""This process's place in a torchrun job (``Dist``): its device, rank and world, the process
group it joins, and the few collectives training needs. Run alone, it is rank 0 of 1 and no
process group is made.

With context parallelism (``context`` = R ranks per sequence), consecutive ranks form the
groups that share one sequence, each rank holding a contiguous shard (ops/context_parallel.py):
global ranks kR .. kR + R - 1 are group k, and k is the rank in data parallelism (which windows
it reads) among world / R."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from genossm.errors import InputError
from genossm.runtime import resolve_device


@dataclass
class Dist:
    """This process's device and place in a torchrun job (rank 0 of 1 when run alone)."""
    device: torch.device
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    context: int = 1            # ranks per sequence (context parallelism)
    context_group: object = None   # the process group of this rank's sequence, when context > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def data_rank(self) -> int:
        """This rank's place in data parallelism: the ranks of one sequence share it."""
        return self.rank // self.context

    @property
    def data_world(self) -> int:
        """How many sequences the job trains on at once."""
        return self.world // self.context

    @property
    def shard(self) -> int:
        """Which shard of its sequence this rank holds (0 .. context - 1)."""
        return self.rank % self.context

    @classmethod
    def setup(cls, device: str | None, context: int = 1) -> Dist:
        """Resolve the device and join the process group when launched by torchrun
        (WORLD_SIZE set); on CUDA each rank takes the GPU of its local rank. ``context``:
        ranks per sequence, dividing the world."""
        dev = resolve_device(device)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if context < 1 or world % context:
            raise InputError(None, f"--context-parallel {context} must divide the number of "
                                   f"processes ({world}; torchrun --nproc-per-node sets it)")
        if world == 1:
            ranks = cls(dev)
        else:
            if not dist.is_initialized():
                dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
            ranks = cls(dev, dist.get_rank(), dist.get_world_size(),
                        int(os.environ.get("LOCAL_RANK", 0)), context)
            if context > 1:   # every rank makes every group, in the same order
                for k in range(world // context):
                    group = dist.new_group(list(range(k * context, (k + 1) * context)))
                    if k == ranks.data_rank:
                        ranks.context_group = group
        if dev.type == "cuda":
            ranks.device = torch.device("cuda", ranks.local_rank)
            torch.cuda.set_device(ranks.device)
        return ranks

    def mean(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return (t / self.world).tolist()

    def barrier(self):
        if self.world > 1:
            dist.barrier()
