"""Context parallelism (genossm/ops/context_parallel.py): one sequence's scan split across 2 and
4 processes (gloo, CPU) equals the scan of the whole sequence in one process, for the outputs,
the final state and every gradient, with uneven and short shards, both scan forms (Mamba-2's
decay per head, Mamba-1's per state) and the reverse reading order of a bidirectional model's
second pass. The reference is the float64 recurrence (ops/scan_ref.py) over the whole
sequence."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from genossm.ops.context_parallel import halo
from genossm.ops.scan_ref import scan_ref
from genossm.ops.selective_scan import selective_scan

TOLERANCE = 1e-5


def inputs(per_state: bool, length: int, seed: int = 0):
    """Scan inputs in float64 (batch 2); raw dt, preprocessed by selective_scan (bias,
    softplus)."""
    g = torch.Generator().manual_seed(seed)
    heads, headdim, groups, dstate = (6, 1, 1, 4) if per_state else (4, 3, 2, 5)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale)
    A = -torch.rand(*((heads, dstate) if per_state else (heads,)), generator=g,
                    dtype=torch.float64) - 0.05
    return dict(x=rand(2, length, heads, headdim), dt=rand(2, length, heads, scale=0.5),
                A=A, B=rand(2, length, groups, dstate), C=rand(2, length, groups, dstate),
                D=rand(heads), dt_bias=rand(heads, scale=0.3))


def _whole(data, weight):
    """Outputs, final state and gradients of the whole sequence in float64 (the recurrence)."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in data.items()}
    dt = torch.nn.functional.softplus(leaves["dt"] + leaves["dt_bias"])
    y, final = scan_ref(leaves["x"], dt, leaves["A"], leaves["B"], leaves["C"], leaves["D"],
                        return_final_state=True)
    ((y * weight).sum() + final.sum()).backward()
    return y.detach(), final.detach(), {k: v.grad for k, v in leaves.items()}


def _worker(rank, world, rendezvous, per_state, sizes, reverse, backend):
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank,
                            world_size=world)
    try:
        torch.set_num_threads(1)
        length = sum(sizes)
        data = inputs(per_state, length)
        weight = torch.randn(2, length, *data["x"].shape[2:], dtype=torch.float64,
                             generator=torch.Generator().manual_seed(1))
        y_whole, final_whole, grads_whole = _whole(data, weight)
        # the shard of this rank: shards in rank order, or in reverse rank order
        order = list(range(world))[::-1] if reverse else list(range(world))
        index = order.index(rank)
        start = sum(sizes[:index])
        span = slice(start, start + sizes[index])
        last = index == world - 1
        local = {k: (v[:, span] if k in ("x", "dt", "B", "C") else v).float().clone()
                 .requires_grad_(True) for k, v in data.items()}
        y, final = selective_scan(local["x"], local["dt"], local["A"], local["B"], local["C"],
                                  local["D"], dt_bias=local["dt_bias"], dt_softplus=True,
                                  return_final_state=True, chunk_size=4, backend=backend,
                                  context_group=dist.group.WORLD, context_reverse=reverse)
        loss = (y * weight[:, span].float()).sum() + (final.sum() if last else 0.0)
        loss.backward()
        assert torch.allclose(y.double(), y_whole[:, span], atol=TOLERANCE, rtol=TOLERANCE)
        if last:
            assert torch.allclose(final.double(), final_whole, atol=TOLERANCE, rtol=TOLERANCE)
        for name, leaf in local.items():
            grad = leaf.grad.double()
            if name in ("x", "dt", "B", "C"):
                want = grads_whole[name][:, span]
            else:   # a parameter every shard uses: its gradient is the sum over the ranks
                dist.all_reduce(grad)
                want = grads_whole[name]
            assert torch.allclose(grad, want, atol=TOLERANCE, rtol=TOLERANCE), \
                (name, rank, (grad - want).abs().max().item())
        # the convolution halo: the previous shard's last 3 positions, zeros on the first
        tail = halo(local["x"], 3, dist.group.WORLD, reverse=reverse)
        want = data["x"][:, start - 3:start].float() if index else torch.zeros_like(tail)
        assert torch.equal(tail, want)
    finally:
        dist.destroy_process_group()


def run(tmp_path, *, per_state, sizes, reverse=False, backend="torch"):
    mp.spawn(_worker, args=(len(sizes), str(tmp_path / "rendezvous"), per_state, sizes,
                            reverse, backend), nprocs=len(sizes), join=True)


def test_two_ranks_equal_one_process(tmp_path):
    run(tmp_path, per_state=False, sizes=[29, 21])


def test_four_uneven_short_shards_in_reverse_order(tmp_path):
    run(tmp_path, per_state=False, sizes=[13, 20, 3, 10], reverse=True)


def test_mamba1_scan_across_four_ranks(tmp_path):
    run(tmp_path, per_state=True, sizes=[9, 17, 4, 12])


def test_mamba1_scan_reverse_with_the_recurrence_backend(tmp_path):
    run(tmp_path, per_state=True, sizes=[11, 6], reverse=True, backend="ref")
