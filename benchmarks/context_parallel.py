"""Context parallelism on CPU (gloo): one training step (forward + backward) over one sequence
of L bases split across R processes, against R = 1 (one process, the whole sequence), in the
same run.

Per rank: peak RSS above its baseline (RSS after imports, the model and the tokens; the
activation memory of the step), wall time, and the bytes each rank sends and receives through
the collectives of the step (all-gathers of the scan states and the conv halos forward, the
all-reduces of their gradients backward; counted by wrapping torch.distributed's all_gather and
all_reduce). The model reads real sequence (the chr20 slice), random weights, gradient
checkpointing on (each block recomputed over the whole shard, as context parallelism does).
Every process gets 2 / R threads (at least 1): the machine's 2 cores are shared by the ranks,
so wall time says little on this machine; memory and bytes are the figures.

``--plan``: the memory a rank needs per base of its shard for a d_model 256 x 16-layer model,
from one process at two lengths (checkpoint segments of 4,096, so that the recomputed block's
memory is the same at both and the difference is what grows with the shard: the residual
stream kept at every block input, the logits), and from it the longest context that 8 ranks
of 80 GB hold (float32 activations, as on this CPU; under bf16 autocast less).

Usage: python benchmarks/context_parallel.py [--length 1048576] [--ranks 1 2 4]
       [--d-model 64] [--n-layer 4] [--segment 65536]
       python benchmarks/context_parallel.py --plan [--plan-lengths 32768 65536]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Large blocks through mmap, handed back to the system when freed: RSS then follows the live
# tensors (glibc's heap otherwise keeps what a recomputed segment freed, and peak RSS grows
# with the number of segments, not with what is alive). Read by each spawned rank at start.
os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")

import numpy as np  # noqa: E402
import pysam  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from genossm import alphabet  # noqa: E402
from genossm.model import GenoSSM, ModelConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FASTA = ROOT / "config" / "data" / "chr20_b37_1-2000000.fa.gz"


def rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def tokens_of(length: int) -> torch.Tensor:
    """Real sequence: the chr20 slice from base 60,001 on, repeated to ``length``."""
    with pysam.FastaFile(str(FASTA)) as fa:
        text = fa.fetch("20", 60_000, min(60_000 + length, fa.get_reference_length("20")))
    codes = alphabet.encode(text)
    return torch.from_numpy(np.resize(codes, length).astype(np.int64))[None]


class ByteCounter:
    """Bytes a rank sends and receives in all_gather / all_reduce (ring all-reduce: about
    2 (R-1)/R of the tensor each way; all-gather: its tensor to each of R-1 ranks)."""

    def __init__(self, ranks: int):
        self.ranks, self.bytes = ranks, 0
        self._gather, self._reduce = dist.all_gather, dist.all_reduce

        def all_gather(out, tensor, *args, **kwargs):
            self.bytes += 2 * (self.ranks - 1) * tensor.numel() * tensor.element_size()
            return self._gather(out, tensor, *args, **kwargs)

        def all_reduce(tensor, *args, **kwargs):
            self.bytes += int(4 * (self.ranks - 1) / self.ranks * tensor.numel()
                              * tensor.element_size())
            return self._reduce(tensor, *args, **kwargs)
        dist.all_gather, dist.all_reduce = all_gather, all_reduce


def worker(rank: int, ranks: int, rendezvous: str, args, out_dir: str) -> None:
    torch.set_num_threads(max(1, 2 // ranks))
    group = None
    if ranks > 1:
        dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank,
                                world_size=ranks)
        group = dist.group.WORLD
        counter = ByteCounter(ranks)
    torch.manual_seed(0)
    config = ModelConfig(d_model=args.d_model, n_layer=args.n_layer, d_state=16,
                         headdim=32, chunk_size=64, gradient_checkpointing=True,
                         checkpoint_segment_length=args.segment)
    model = GenoSSM(config).train()
    tokens = tokens_of(args.length + 1)
    bounds = [round(k * args.length / ranks) for k in range(ranks + 1)]
    span = slice(bounds[rank], bounds[rank + 1])
    inputs, targets = tokens[:, :-1][:, span], tokens[:, 1:][:, span]
    with torch.no_grad():   # warm-up on this rank alone, outside the measured step
        model(inputs[:, :256])
    base = rss_mib()
    start = time.perf_counter()
    options = {} if group is None else {"context_group": group}
    logits = model(inputs, **options)
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           reduction="sum") / args.length
    loss.backward()
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"rank": rank, "ranks": ranks, "shard": bounds[rank + 1] - bounds[rank],
              "wall_s": wall, "base_mib": base, "peak_mib": peak, "above_mib": peak - base,
              "loss_part": loss.item(), "bytes": 0 if group is None else counter.bytes}
    Path(out_dir, f"{ranks}-{rank}.json").write_text(json.dumps(result))
    if group is not None:
        dist.destroy_process_group()


def run(args, ranks: int) -> list[dict]:
    """One step over args.length split across ``ranks`` processes: each rank's figures."""
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(worker, args=(ranks, f"{tmp}/rendezvous", args, tmp), nprocs=ranks, join=True)
        return [json.loads(Path(tmp, f"{ranks}-{r}.json").read_text()) for r in range(ranks)]


def plan(args, ranks: int = 8, gpu_gib: float = 80.0) -> None:
    """Bytes per base of a d256 x 16-layer step, and the longest context ``ranks`` GPUs hold."""
    args.d_model, args.n_layer, args.segment = 256, 16, 4096
    peaks = []
    for length in args.plan_lengths:
        args.length = length
        result = run(args, 1)[0]
        peaks.append(result["above_mib"])
        print(f"d256 x 16 layers, L = {length:,}: peak above baseline {result['above_mib']:,.0f} "
              f"MiB, {result['wall_s']:.0f} s", flush=True)
    (short, long), (low, high) = args.plan_lengths, peaks
    per_base = (high - low) * 2**20 / (long - short)
    fixed = low * 2**20 - per_base * short
    longest = ranks * (gpu_gib * 2**30 - fixed) / per_base
    print(f"per base of shard: {per_base / 1024:.1f} KiB; fixed: {fixed / 2**20:,.0f} MiB; "
          f"{ranks} x {gpu_gib:.0f} GB hold {longest / 1e6:.1f} Mb (one sequence, batch 1)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=1 << 20)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--segment", type=int, default=65536,
                        help="gradient checkpointing segment length (ModelConfig's default)")
    parser.add_argument("--plan", action="store_true")
    parser.add_argument("--plan-lengths", type=int, nargs=2, default=[32768, 65536])
    args = parser.parse_args()
    if args.plan:
        plan(args)
        return
    print(f"one training step over L = {args.length:,} bases, d_model {args.d_model}, "
          f"{args.n_layer} layers (Mamba-2), gradient checkpointing; gloo on CPU")
    print("| R | shard | loss (summed over ranks) | wall s (max rank) | peak RSS above baseline "
          "per rank, MiB (max) | ratio to R = 1 | sent + received per rank per step |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    single = None
    for ranks in args.ranks:
        results = run(args, ranks)
        above = max(r["above_mib"] for r in results)
        single = above if ranks == 1 else single
        ratio = f"{above / single:.2f}" if single else "-"
        sent = max(r["bytes"] for r in results)
        print(f"| {ranks} | {results[0]['shard']:,} | {sum(r['loss_part'] for r in results):.6f} "
              f"| {max(r['wall_s'] for r in results):.1f} | {above:,.0f} | {ratio} | "
              f"{sent / 2**20:.2f} MiB |", flush=True)


if __name__ == "__main__":
    main()
