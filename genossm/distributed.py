"""This process's place in a torchrun job (``Dist``): its device, rank and world, the process
group it joins, and the few collectives training needs. Run alone, it is rank 0 of 1 and no
process group is made."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from genossm.runtime import resolve_device


@dataclass
class Dist:
    """This process's device and place in a torchrun job (rank 0 of 1 when run alone)."""
    device: torch.device
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def setup(cls, device: str | None) -> Dist:
        """Resolve the device and join the process group when launched by torchrun
        (WORLD_SIZE set); on CUDA each rank takes the GPU of its local rank."""
        dev = resolve_device(device)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            ranks = cls(dev)
        else:
            if not dist.is_initialized():
                dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
            ranks = cls(dev, dist.get_rank(), dist.get_world_size(),
                        int(os.environ.get("LOCAL_RANK", 0)))
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
