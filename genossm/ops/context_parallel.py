"""One sequence's scan split across processes (context parallelism), exactly.

Each rank of a process group holds a contiguous shard of the sequence, ranks in order of
position (``reverse``: in reverse order, for the reverse pass of a bidirectional model, which
reads the shards last to first). The scan is linear in its state, so it splits in two passes:

1. every rank scans its shard from a zero state: the shard's output ``y_local`` and final
   state ``S_local``, and its total decay ``T`` (exp of the summed dt·A: a value per head, or
   per (channel, state) for Mamba-1);
2. the ranks exchange (S_local, T), which are fixed-size (batch × heads × headdim × d_state),
   never the length; each rank folds those of the shards before it into the state its shard
   starts from, S_in = T_{r-1} (... (T_1 S_0 + S_1) ...) + S_{r-1}, and adds what S_in
   contributes to its outputs: the scan of a zero input from S_in (y = C·h; h decays only).

Pass 2 costs one more scan of a zero input per layer (whichever backend, so both mixers and
every backend are exact alike), and the exchange is one all-gather of the fixed-size states
per layer, whatever the length. The all-gather has a backward (one all-reduce of the same
size) that returns each state's gradient to the rank that made it: gradients are exact too.
Every rank computes the fold redundantly from the gathered states; with R ranks that is R
states, small next to a shard. Every rank takes part in every collective, forward and
backward, in the same order (a rank whose shard reads nothing gathered still joins the
backward all-reduce), so that none waits on another.

``halo`` gives each rank the last positions of the shard before it: the causal convolution's
d_conv - 1 inputs that cross a shard boundary.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


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


def total_decay(dt, A):
    """exp(sum over the shard of dt·A): (b, h) for A (h,), (b, h, n) for A (h, n); dt already
    preprocessed, (b, l, h)."""
    summed = dt.sum(1)
    return torch.exp(summed[..., None] * A if A.dim() == 2 else summed * A)


def incoming_state(final_state, decay, group, *, reverse: bool = False):
    """The state this rank's shard starts from: the fold of every earlier shard's (final state
    from zero, total decay), gathered from their ranks in one collective; zeros on the first
    shard."""
    index, _ = _place(group, reverse)
    decay = _as_state(decay).expand_as(final_state)
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


def scan_shard(fn, x, dt, A, B, C, D, *, group, reverse: bool = False, chunk_size: int,
               return_final_state: bool = False):
    """The scan of this rank's shard as part of the whole sequence (module docstring), by the
    backend ``fn`` (selective_scan's signature, dt preprocessed). Returns (y, final state of
    the whole sequence so far, i.e. at the end of this shard, or None)."""
    y, local = fn(x, dt, A, B, C, D, initial_state=None, return_final_state=True,
                  chunk_size=chunk_size)
    decay = total_decay(dt.to(local.dtype), A.to(local.dtype))
    start = incoming_state(local, decay, group, reverse=reverse)
    carried, final = fn(torch.zeros_like(x), dt, A, B, C, None, initial_state=start,
                        return_final_state=return_final_state, chunk_size=chunk_size)
    y = y + carried
    if return_final_state:
        final = final + local
    return y, final


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
