"""Context parallelism (genossm/ops/context_parallel.py): one sequence's scan split across 2 and
4 processes (gloo, CPU) in two phases (each shard from a zero state, the exchange of final
states and decays, each shard again from its incoming state) equals the scan of the whole
sequence in one process, for the outputs, the final state and every gradient, with uneven and
short shards, both scan forms (Mamba-2's decay per head, Mamba-1's per state) and the reverse
reading order of a bidirectional model's second pass; the reference is the float64 recurrence
(ops/scan_ref.py) over the whole sequence. Then models over shards (Block._mix_shard, with
checkpointed segments) against one whole pass."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from genossm.ops.context_parallel import Shard, halo
from genossm.ops.scan_ref import scan_ref
from genossm.ops.selective_scan import log_decay, selective_scan

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
        # the two phases of a block's mixer: from a zero state (final state, log decay), the
        # exchange, and the shard again from the incoming state
        args = [local[k] for k in ("x", "dt", "A", "B", "C", "D")]
        step = dict(dt_bias=local["dt_bias"], dt_softplus=True)
        _, own = selective_scan(*args, **step, return_final_state=True, chunk_size=4,
                                backend=backend)
        shard = Shard(dist.group.WORLD, reverse)
        incoming = shard.incoming_state(own, log_decay(local["dt"], local["A"], **step))
        y, final = selective_scan(*args, **step, initial_state=incoming, return_final_state=True,
                                  chunk_size=4, backend=backend)
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


def run(tmp_path, *, per_state, sizes, reverse=False):
    mp.spawn(_worker, args=(len(sizes), str(tmp_path / "rendezvous"), per_state, sizes,
                            reverse, "torch"), nprocs=len(sizes), join=True)


def test_four_uneven_short_shards_in_reverse_order(tmp_path):
    run(tmp_path, per_state=False, sizes=[13, 20, 3, 10], reverse=True)


def test_mamba1_scan_across_four_ranks(tmp_path):
    run(tmp_path, per_state=True, sizes=[9, 17, 4, 12])


# --- the model over shards ---------------------------------------------------------------------

MODELS = {
    "mamba2": dict(mixer="mamba2"),
    "mamba1": dict(mixer="mamba1"),
    "bidirectional": dict(mixer="mamba2", bidirectional=True, bidirectional_sharing="mixer",
                          objective="mlm"),
    "bimamba1_projections": dict(mixer="mamba1", bidirectional=True,
                                 bidirectional_sharing="projections", objective="mlm"),
}


def _model_worker(rank, world, rendezvous, kind, sizes):
    from genossm.model import GenoSSM, ModelConfig

    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank,
                            world_size=world)
    try:
        torch.set_num_threads(1)
        torch.manual_seed(0)
        config = ModelConfig(d_model=16, n_layer=2, d_state=8, headdim=8, chunk_size=4,
                             gradient_checkpointing=True, checkpoint_segment_length=4,
                             **MODELS[kind])
        model = GenoSSM(config).double().train()
        tokens = torch.randint(0, 4, (2, sum(sizes)), generator=torch.Generator().manual_seed(3))
        weight = torch.randn(2, sum(sizes), config.vocab_size, dtype=torch.float64,
                             generator=torch.Generator().manual_seed(4))
        (model(tokens) * weight).sum().backward()
        whole_logits = model(tokens).detach()
        whole_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad()
        span = slice(sum(sizes[:rank]), sum(sizes[:rank + 1]))
        logits = model(tokens[:, span], context_group=dist.group.WORLD)
        (logits * weight[:, span]).sum().backward()
        # a float64 model, but RMSNorm computes in float32, where sums in another order (the
        # shard's scan starts from a state) may round otherwise
        assert torch.allclose(logits, whole_logits[:, span], atol=1e-6, rtol=1e-6), \
            (logits - whole_logits[:, span]).abs().max().item()
        for name, p in model.named_parameters():
            grad = p.grad.clone()
            dist.all_reduce(grad)
            want = whole_grads[name]   # float32 rounding of the norms, relative to the largest
            assert (grad - want).abs().max() <= 1e-6 * want.abs().max() + 1e-12, name
    finally:
        dist.destroy_process_group()


def test_models_over_shards_equal_one_pass(tmp_path):
    """Each model kind over 2 and 3 uneven shards (the conv halo crossing every boundary,
    gradient checkpointing in segments of 4 positions, so both phases run several segments):
    logits and every parameter's gradient equal one whole pass."""
    for kind, sizes in (("mamba2", [17, 9]), ("mamba1", [6, 11, 9]),
                        ("bidirectional", [8, 5, 13]), ("bimamba1_projections", [12, 14])):
        directory = tmp_path / kind
        directory.mkdir()
        mp.spawn(_model_worker, args=(len(sizes), str(directory / "rendezvous"), kind, sizes),
                 nprocs=len(sizes), join=True)
