"""Context parallelism (genossm/ops/context_parallel.py): one sequence's scan split across 2 and
4 processes (gloo, CPU) in two phases (each shard from a zero state, the exchange of final
states and decays, each shard again from its incoming state) equals the scan of the whole
sequence in one process, for the outputs, the final state and every gradient, with uneven and
short shards, both scan forms (Mamba-2's decay per head, Mamba-1's per state) and the reverse
reading order of a bidirectional model's second pass; the reference is the float64 recurrence
(ops/scan_ref.py) over the whole sequence. Then models over shards (Block._mix_shard, with
checkpointed segments) against one whole pass. Last, ``genossm evaluate`` and ``embed`` with
--context-parallel 2 against one process."""

from __future__ import annotations

import contextlib
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from genossm.ops.context_parallel import Shard, halo
from genossm.ops.scan_ref import scan_ref
from genossm.ops.selective_scan import log_decay, selective_scan

TOLERANCE = 1e-5


def spawn(worker, directory, world: int, *args):
    """``worker(rank, world, rendezvous, *args)`` in ``world`` processes (rendezvous: a file in
    ``directory`` for ``joined``), forked: they start with what this process has imported."""
    mp.start_processes(worker, args=(world, str(directory / "rendezvous"), *args),
                       nprocs=world, join=True, start_method="fork")


@contextlib.contextmanager
def joined(rank: int, world: int, rendezvous: str):
    """This process in a gloo group of ``world`` (WORLD_SIZE set, as torchrun sets it), one
    torch thread."""
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank,
                            world_size=world)
    os.environ["WORLD_SIZE"] = str(world)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        dist.destroy_process_group()


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
    with joined(rank, world, rendezvous):
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


def run(tmp_path, *, per_state, sizes, reverse=False):
    spawn(_worker, tmp_path, len(sizes), per_state, sizes, reverse, "torch")


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

    with joined(rank, world, rendezvous):
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


def test_models_over_shards_equal_one_pass(tmp_path):
    """Each model kind over 2 and 3 uneven shards (the conv halo crossing every boundary,
    gradient checkpointing in segments of 4 positions, so both phases run several segments):
    logits and every parameter's gradient equal one whole pass."""
    for kind, sizes in (("mamba2", [17, 9]), ("mamba1", [6, 11, 9]),
                        ("bidirectional", [8, 5, 13]), ("bimamba1_projections", [12, 14])):
        directory = tmp_path / kind
        directory.mkdir()
        spawn(_model_worker, directory, len(sizes), kind, sizes)


# --- evaluate and embed over shards ------------------------------------------------------------

# Causal (Mamba-2) and masked bidirectional (Mamba-1) models; regions of 2,003 and 1,200 bases
# (uneven shards: 1,002 + 1,001 bases to embed, 600 + 599 inputs to a causal model, 234 + 233
# of the last masked window), the second on strand - and with N, and one too short to split
# (read by rank 0 alone).
INFERENCE_MODELS = {"causal": {}, "masked": dict(mixer="mamba1", bidirectional=True,
                                                 objective="mlm")}
INFERENCE_BED = "lam\t1000\t3003\ta\t0\t+\n20\t300\t1500\tb\t0\t-\nlam\t4000\t4004\tc\t0\t+\n"


def _inference(directory, context_parallel: int) -> None:
    """genossm evaluate and embed of every model in ``directory`` into ``directory / cp{R}``."""
    from genossm.cli import main

    out = directory / f"cp{context_parallel}"
    common = ["--device", "cpu", "-q", "--context-parallel", str(context_parallel)]
    for name in INFERENCE_MODELS:
        assert main(["evaluate", str(directory / name), str(directory / "genome.zarr"), "-o",
                     str(out / f"{name}.json"), "--regions", str(directory / "regions.bed"),
                     "--plots", str(out / name), "--window", "512", "--max-windows", "3",
                     *common]) == 0
        assert main(["embed", "--model", str(directory / name), "--fasta",
                     str(directory / "genome.fa"), "--bed", str(directory / "regions.bed"), "-o",
                     str(out / f"{name}.zarr"), "--per-base", "--layer", "1", *common,
                     *(["--rc-average"] if name == "causal" else [])]) == 0


def _inference_worker(rank, world, rendezvous, directory):
    from genossm.embed import embed
    from genossm.errors import InputError

    with joined(rank, world, rendezvous):
        _inference(directory, world)
        with pytest.raises(InputError, match="splits Mamba-1 and Mamba-2 blocks .* this "
                                             "model is rc_equivariant"):
            embed(directory / "rc", directory / "genome.fa", directory / "rc.zarr",
                  device="cpu", context_parallel=world)


def test_evaluate_and_embed_split_across_two_ranks_equal_one_process(tmp_path):
    """genossm evaluate and embed with --context-parallel 2 (two gloo processes, each region or
    window in one pass split between them, rank 0 writing) write what one process writes: the
    same metrics (bits per base of every region, bits by position, the Markov baseline) and
    the same embeddings, pooled and per base (with the other strand averaged in), to 1e-5; a
    model that does not split is refused on every rank."""
    from genossm.tokenize import tokenize
    from helpers import CHR20, LAMBDA, fasta_records, tiny_model, write_fasta

    (_, lam), = fasta_records(LAMBDA)
    (_, chr20), = fasta_records(CHR20)
    fasta = write_fasta(tmp_path / "genome.fa", [("lam", lam[:6000]),
                                                 ("20", chr20[59_500:62_500])])
    tokenize([fasta], tmp_path / "genome.zarr", progress=False)
    (tmp_path / "regions.bed").write_text(INFERENCE_BED)
    for name, config in INFERENCE_MODELS.items():
        tiny_model(tmp_path / name, **config)
    tiny_model(tmp_path / "rc", rc_equivariant=True, bidirectional=True, objective="mlm")
    _inference(tmp_path, 1)   # first: the processes forked next start with its imports
    spawn(_inference_worker, tmp_path, 2, tmp_path)
    assert sorted(p.name for p in (tmp_path / "cp2").iterdir()) == [
        "causal", "causal.json", "causal.zarr", "masked", "masked.json", "masked.zarr"]
    for name in INFERENCE_MODELS:
        split, whole = (metric_numbers(tmp_path / d / f"{name}.json") for d in ("cp2", "cp1"))
        assert split == pytest.approx(whole, rel=1e-5, nan_ok=True)
        split, whole = (zarr_arrays(tmp_path / d / f"{name}.zarr") for d in ("cp2", "cp1"))
        assert split.keys() == whole.keys()
        for key, value in whole.items():
            np.testing.assert_allclose(split[key], value, rtol=1e-5,
                                       atol=1e-5 * np.abs(value).max())


def metric_numbers(path) -> list[float]:
    """The numbers of an evaluate METRICS.json: bases and bits per base (model, Markov) of the
    whole and of every region, bases and bits of every bin by position (NaN for none)."""
    metrics = json.loads(path.read_text())
    numbers = [metrics[k] for k in ("bases_scored", "model_bits_per_base",
                                    "markov_bits_per_base")]
    for r in metrics["regions"]:
        numbers += [r["bases"], r["model_bits_per_base"], r["markov_bits_per_base"]]
    for b in metrics["bits_by_position"]["bins"]:
        numbers += [b["bases"], b["bits_per_base"]]
    return [math.nan if x is None else x for x in numbers]


def zarr_arrays(path) -> dict:
    import zarr

    group = zarr.open_group(str(path), mode="r")
    return {key: group[key][:] for key in ("pooled", "per_base", "per_base_offsets")}


def test_context_parallel_inference_needs_as_many_processes(tmp_path, capsys):
    """evaluate and embed split each sequence across every process: --context-parallel R with
    another number of processes (here one, no torchrun) is one error line, and writes
    nothing."""
    from genossm.cli import main
    from helpers import LAMBDA, one_error_line, tiny_model

    tiny_model(tmp_path / "m")
    for argv in (["evaluate", str(tmp_path / "m"), str(tmp_path / "none.zarr"), "-o",
                  str(tmp_path / "out.json")],
                 ["embed", "--model", str(tmp_path / "m"), "--fasta", str(LAMBDA), "-o",
                  str(tmp_path / "out.zarr")]):
        assert main([*argv, "--context-parallel", "2"]) == 2
        one_error_line(capsys, "--context-parallel 2 must equal the number of processes (1;")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
