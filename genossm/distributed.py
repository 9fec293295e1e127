"""This process's place in a torchrun job (``Dist``): its device, rank and world, the process
group it joins, and the few collectives training and inference need. Run alone, it is rank 0
of 1 and no process group is made.

With context parallelism (``context`` = R ranks per sequence), consecutive ranks form the
groups that share one sequence, each rank holding a contiguous shard (ops/context_parallel.py):
global ranks kR .. kR + R - 1 are group k, and k is the rank in data parallelism (which windows
it reads) among world / R. Inference (evaluate, embed; ``Dist.setup_inference``) splits one
sequence at a time across every process (R = world): each rank runs the model on its shard and
``gather_shards`` brings the shards' results, in order, to rank 0, which alone writes."""

from __future__ import annotations

import os
from collections.abc import Iterator
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
    joined: bool = False        # setup joined the process group (``close`` leaves it)

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
            joined = not dist.is_initialized()
            if joined:
                dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
            ranks = cls(dev, dist.get_rank(), dist.get_world_size(),
                        int(os.environ.get("LOCAL_RANK", 0)), context, joined=joined)
            if context > 1:   # every rank makes every group, in the same order
                for k in range(world // context):
                    group = dist.new_group(list(range(k * context, (k + 1) * context)))
                    if k == ranks.data_rank:
                        ranks.context_group = group
        if dev.type == "cuda":
            ranks.device = torch.device("cuda", ranks.local_rank)
            torch.cuda.set_device(ranks.device)
        return ranks

    @classmethod
    def setup_inference(cls, device: str | None, context: int = 1) -> Dist:
        """``setup`` for evaluate and embed, which split one sequence at a time across every
        process: ``context`` must be the number of processes (1 without torchrun)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if context != world:
            raise InputError(None, f"--context-parallel {context} must equal the number of "
                                   f"processes ({world}; torchrun --nproc-per-node sets it): "
                                   "evaluate and embed split each sequence across all of them")
        return cls.setup(device, context)

    def close(self) -> None:
        """Leave the process group, when ``setup`` joined it."""
        if self.joined and dist.is_initialized():
            dist.destroy_process_group()
            self.joined = False

    def splits(self, length: int, halo: int) -> bool:
        """Whether a sequence of ``length`` positions is split across the ranks of its group:
        with context parallelism, when every shard (``shard_bounds``) holds at least ``halo``
        positions (the convolution's inputs the next shard reads; at least one). A shorter one
        is read whole by rank 0 alone."""
        bounds = shard_bounds(length, self.context)
        shortest = min(b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True))
        return self.context > 1 and shortest >= max(halo, 1)

    def first(self, fn) -> None:
        """Call ``fn`` on the first rank only (what touches the outputs: claiming them); an
        InputError it raises is raised on every rank, so that none goes on to wait in a
        collective the first will never join."""
        message = None
        if self.main:
            try:
                fn()
            except InputError as e:
                if self.world == 1:
                    raise
                message = str(e)
        if self.world > 1:
            box = [message]
            dist.broadcast_object_list(box, src=0)
            message = box[0]
        if message is not None:
            raise InputError(None, message)

    def gather_shards(self, shard: torch.Tensor, lengths: list[int]) -> Iterator[torch.Tensor]:
        """The per-position results of one sequence split across the group, shard by shard in
        order, on its first rank: its own ``shard``, then each other rank's (``lengths[r]``
        rows, the rest of the shape and the dtype as ``shard``), received one at a time, so it
        never holds more than one; the other ranks send theirs and yield nothing. Every rank
        must read the generator to its end."""
        group = self.context_group
        if self.shard:
            dist.send(shard.contiguous(), dst=dist.get_global_rank(group, 0), group=group)
            return
        yield shard
        for r in range(1, self.context):
            received = shard.new_empty((lengths[r], *shard.shape[1:]))
            dist.recv(received, src=dist.get_global_rank(group, r), group=group)
            yield received

    def mean(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return (t / self.world).tolist()

    def barrier(self):
        if self.world > 1:
            dist.barrier()


def shard_bounds(length: int, parts: int) -> list[int]:
    """The ``parts + 1`` bounds of near-equal contiguous shards of ``length`` positions: shard
    r is [bounds[r], bounds[r + 1])."""
    return [round(k * length / parts) for k in range(parts + 1)]


def shard_span(length: int, ranks: Dist) -> slice:
    """The positions of this rank's shard of a sequence of ``length``: the ranks of a
    sequence hold near-equal contiguous shards, in rank order (all of it without context
    parallelism)."""
    bounds = shard_bounds(length, ranks.context)
    return slice(bounds[ranks.shard], bounds[ranks.shard + 1])


def check_context_parallel(config, context: int) -> None:
    """What context parallelism splits: Mamba-1 and Mamba-2 blocks of a model (``config``, a
    ModelConfig) that is not rc_equivariant; InputError otherwise."""
    if context == 1:
        return
    kinds = {config.layer_mixer(i) for i in range(config.n_layer)}
    if not kinds <= {"mamba1", "mamba2"} or config.rc_equivariant:
        what = "rc_equivariant" if config.rc_equivariant else "/".join(sorted(kinds))
        raise InputError(None, f"--context-parallel splits Mamba-1 and Mamba-2 blocks of "
                               f"models that are not rc_equivariant; this model is {what}")
