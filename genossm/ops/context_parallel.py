"""One sequence split across processes (context parallelism), exactly: what crosses between
the ranks.

Each rank of a process group holds a contiguous shard of the sequence, ranks in order of
position (``reverse``: in reverse order, for the reverse pass of a bidirectional model, which
reads the shards last to first). A mixer's scan is linear in its state, so a block splits in
two phases (model/mamba2.py ``Block``):

1. every rank runs its shard from a zero SSM state, keeping only the final state ``S_r`` and
   the log of the total decay ``log T_r`` (sum of dt·A: a value per head, or per (channel,
   state) for Mamba-1; selective_scan.log_decay);
2. the ranks exchange (S_r, T_r), which are fixed-size (batch × heads × headdim × d_state),
   never the length; each rank folds those of the shards before it into the state its shard
   starts from, S_in = T_{r-1} (... (T_1 S_0 + S_1) ...) + S_{r-1} (``incoming_state``), and
   runs its shard again from S_in: the outputs of the whole sequence at its positions.

The causal convolution's d_conv - 1 inputs before a shard come from the rank before it
(``halo``). Both phases run in checkpointed segments, like a block on one device, so memory per
rank is that of its shard. The exchange is one all-gather of R fixed-size states per layer
whatever the length; it has a backward (one all-reduce of the same size) that returns each
state's gradient to the rank that made it, so gradients are exact too. Every rank computes
the fold redundantly, and takes part in every collective, forward and backward, in the same
order (a rank whose shard reads nothing gathered still joins the backward all-reduce), so that
none waits on another.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Shard:
    """This rank's place in a sequence split across the ranks of ``group``: its inputs are a
    contiguous shard, the shards in rank order (``reverse``: read last to first, as the
    reverse pass of a bidirectional model reads them)."""
    group: object
    reverse: bool = False

    def reversed(self) -> Shard:
        """The same shard as the reverse pass reads it (flipped)."""
        return Shard(self.group, not self.reverse)

    def halo(self, x, width: int):
        """The ``width`` positions before this shard (zeros before the first): halo()."""
        return halo(x, width, self.group, reverse=self.reverse)

    def incoming_state(self, final_state, log_decay):
        """The state this shard starts from: incoming_state()."""
        return incoming_state(final_state, log_decay, self.group, reverse=self.reverse)


def _place(group, reverse: bool) -> tuple[int, int]:
    """(this rank's shard index in reading order, number of ranks)."""
    rank, ranks = dist.get_rank(group), dist.get_world_size(group)
    return (ranks - 1 - rank if reverse else rank), ranks


class _AllGather(torch.autograd.Function):
    """Every rank's tensor, stacked in rank order (r, ...); backward: the sum over the ranks of
    the gradients of this rank's tensor (one all-reduce)."""

    @staticmethod
    def forward(ctx, tensor, group):
        ctx.group = group
        ctx.rank = dist.get_rank(group)
        gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
        dist.all_gather(gathered, tensor.contiguous(), group=group)
        return torch.stack(gathered)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad[ctx.rank], None


def gather_in_reading_order(tensor, group, *, reverse: bool = False):
    """Every rank's ``tensor`` stacked in the order the shards are read (autograd's gradients
    go back to the rank that made each)."""
    gathered = _AllGather.apply(tensor, group)
    return gathered.flip(0) if reverse else gathered


def incoming_state(final_state, log_decay, group, *, reverse: bool = False):
    """The state this rank's shard starts from: the fold of every earlier shard's final state
    from a zero state and log total decay (selective_scan.log_decay), gathered from their ranks
    in one collective; zeros on the first shard."""
    index, _ = _place(group, reverse)
    decay = _as_state(torch.exp(log_decay)).expand_as(final_state)
    gathered = gather_in_reading_order(torch.stack([final_state, decay]), group,
                                       reverse=reverse)
    state = torch.zeros_like(final_state)
    for q in range(index):
        state = state * gathered[q, 1] + gathered[q, 0]
    # every rank takes part in the backward all-reduce, the first shard's too
    return state + 0.0 * gathered.sum()


def _as_state(decay):
    """A total decay (b, h) or (b, h, n) shaped like a state (b, h, p, n)."""
    return decay[..., None, None] if decay.dim() == 2 else decay[:, :, None, :]


def halo(x, width: int, group, *, reverse: bool = False):
    """The last ``width`` positions (dim 1) of the shard read before this rank's (zeros on the
    first shard): what a causal convolution of ``width + 1`` taps needs across the boundary.
    Shards shorter than ``width`` are refused."""
    if x.shape[1] < width:
        raise ValueError(f"a shard of {x.shape[1]} positions is shorter than the convolution's "
                         f"halo of {width}; use fewer ranks or longer sequences")
    index, _ = _place(group, reverse)
    tails = gather_in_reading_order(x[:, x.shape[1] - width:], group, reverse=reverse)
    previous = tails[max(index - 1, 0)]
    return (previous if index else torch.zeros_like(previous)) + 0.0 * tails.sum()
