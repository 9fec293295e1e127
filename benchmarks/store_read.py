"""Store reads at training speed: random training windows from a token store with human-sized
contigs, read through genossm's own training data path, against the tokens/s that training a
GPU-sized model consumes.

Reading: the trainer's DataLoader (``genossm.train._train_loader``: ``WindowDataset`` over the
split's training intervals, ``StepBatches``, ``num_workers``), built from the gpu-131k recipe
(genossm/presets/gpu-131k.yaml: N filter, reverse-complement augmentation, 5 % held out) with
the window length, batch and workers of each case. Each case reports windows/s and tokens/s of
the batches after the first (the first batch's latency, which includes starting the workers,
separately), and the bare reads underneath (``TokenStore.codes`` of a random window, no
DataLoader) for comparison.

Training: one step (forward, loss, backward, AdamW) of the gpu-131k model (Mamba-2, d_model 256
x 16 layers) on CPU at --train-length, fp32, batch 1, the median of --train-steps after a
warm-up step. The GPU rate is that CPU rate times --gpu-speedup (an assumption, printed), unless
--gpu-rate gives a GPU rate measured elsewhere. Goal: reads >= 10x the GPU's consumption.

The store: `python benchmarks/tokenize_throughput.py --genome --keep-store STORE` builds a 3.1 Gb
one (25 contigs with the sizes of GRCh38's chromosomes: 24 of 46.7-249 Mb, and chrM).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

# as genossm's command sets it before torch is imported: idle OpenMP threads sleep rather than
# spin (on a busy machine a spinning pool makes each torch.stack of a batch tens of ms)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from genossm.data import SplitConfig, split_regions  # noqa: E402
from genossm.distributed import Dist  # noqa: E402
from genossm.store import TokenStore  # noqa: E402
from genossm.train import _train_loader  # noqa: E402
from genossm.train_config import TrainConfig, preset  # noqa: E402

RECIPE = preset("gpu-131k")   # genossm/presets/gpu-131k.yaml, the built-in GPU config


def recipe() -> dict:
    return yaml.safe_load(RECIPE.read_text())


def train_config(length: int, batch: int, workers: int) -> TrainConfig:
    """The gpu-131k recipe with windows of ``length`` from the first step, ``batch`` windows
    per micro-batch, one micro-batch per step, ``workers`` DataLoader workers."""
    d = recipe()
    d.update(seq_len=length, seq_len_start=0, seq_len_warmup_steps=0, batch_size=batch,
             grad_accum=1, num_workers=workers, max_steps=1_000_000, max_time=None)
    return TrainConfig.from_dict(d)


def read_case(stores, train_iv, length: int, batch: int, workers: int,
              seconds: float, min_batches: int) -> dict:
    """Batches through the trainer's DataLoader for about ``seconds`` (at least
    ``min_batches`` after the first)."""
    cfg = train_config(length, batch, workers)
    loader = _train_loader(stores, train_iv, cfg, 0, Dist(device=torch.device("cpu")))
    start = time.perf_counter()
    it = iter(loader)
    first = next(it)
    assert first["tokens"].shape == (batch, length)
    t0 = time.perf_counter()
    n = 0
    while n < min_batches or time.perf_counter() - t0 < seconds:
        b = next(it)
        n += 1
    elapsed = time.perf_counter() - t0
    del it, b
    return {"first": t0 - start, "batches": n, "windows_s": n * batch / elapsed,
            "tokens_s": n * batch * length / elapsed}


def bare_reads(store: TokenStore, train_iv, length: int, seconds: float) -> float:
    """Tokens/s of ``store.codes`` over random windows of ``length`` (the reader alone)."""
    rng = np.random.default_rng(0)
    spans = [iv for iv in train_iv if iv.length >= length]
    weights = np.array([iv.length - length + 1 for iv in spans], float)
    weights /= weights.sum()
    n, t0 = 0, time.perf_counter()
    while n < 4 or time.perf_counter() - t0 < seconds:
        iv = spans[rng.choice(len(spans), p=weights)]
        start = iv.start + int(rng.integers(iv.length - length + 1))
        store.codes(iv.contig, start, start + length)
        n += 1
    return n * length / (time.perf_counter() - t0)


def training_rate(store: TokenStore, length: int, steps: int) -> tuple[float, int]:
    """(tokens/s, parameters) of training steps of the gpu-131k model on CPU at ``length``."""
    import torch.nn.functional as F

    from genossm.model import GenoSSM, ModelConfig

    torch.manual_seed(0)
    model = GenoSSM(ModelConfig(**recipe()["model"])).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    info = max(store.contigs, key=lambda c: c.length)
    codes = store.codes(info.name, info.length // 2, info.length // 2 + length + 1)
    x = torch.from_numpy(codes.astype(np.int64))[None]
    times = []
    for _ in range(steps + 1):                       # the first step warms up
        t = time.perf_counter()
        logits = model(x[:, :-1])
        F.cross_entropy(logits[0], x[0, 1:]).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    return length / statistics.median(times[1:]), model.num_parameters()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store", type=Path, help="a token store (see the module docstring)")
    ap.add_argument("--lengths", type=int, nargs="+", default=[131_072, 1_048_576])
    ap.add_argument("--batch", type=int, default=8,
                    help="windows per batch (8: a step of the gpu recipes, batch 1 x accum 8)")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--seconds", type=float, default=20.0, help="reading time per case")
    ap.add_argument("--min-batches", type=int, default=5)
    ap.add_argument("--train-length", type=int, default=16_384)
    ap.add_argument("--train-steps", type=int, default=3)
    ap.add_argument("--gpu-speedup", type=float, default=1000.0,
                    help="assumed GPU / this CPU training speed (default 1000)")
    ap.add_argument("--gpu-rate", type=float, help="a measured GPU training rate (tokens/s)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-training", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    store = TokenStore(args.store)
    store.check_files()
    lengths = sorted(c.length for c in store.contigs)
    train_iv, val_iv = split_regions([store], SplitConfig(**recipe().get("split", {})))
    print(f"store {args.store}: {len(lengths)} contigs, {sum(lengths) / 1e9:.2f} Gb "
          f"(largest {lengths[-1] / 1e6:.0f} Mb; {sum(n >= 50e6 for n in lengths)} of "
          f"50 Mb or more); {sum(iv.length for iv in train_iv) / 1e9:.2f} Gb for training; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")

    results = []
    for length in args.lengths:
        bare = bare_reads(store, train_iv, length, min(args.seconds, 10))
        print(f"L = {length:>9,}: bare TokenStore.codes reads {bare / 1e6:8.1f} M tokens/s",
              flush=True)
        for workers in args.workers:
            r = read_case([store], train_iv, length, args.batch, workers, args.seconds,
                          args.min_batches)
            results.append((length, workers, r))
            print(f"L = {length:>9,}, batch {args.batch}, num_workers {workers}: "
                  f"{r['windows_s']:8.1f} windows/s {r['tokens_s'] / 1e6:8.1f} M tokens/s "
                  f"({r['batches']} batches; first batch {r['first']:.2f} s)", flush=True)

    if args.gpu_rate:
        gpu, basis = args.gpu_rate, "measured on a GPU (--gpu-rate)"
    elif args.skip_training:
        return
    else:
        cpu, params = training_rate(store, args.train_length, args.train_steps)
        gpu = cpu * args.gpu_speedup
        basis = (f"ASSUMED: {args.gpu_speedup:,.0f} x the CPU rate; CPU: {cpu:,.0f} tokens/s "
                 f"(gpu-131k model, {params:,} parameters, L = {args.train_length:,}, fp32, "
                 f"{args.threads} threads)")
    print(f"training consumption on a GPU: {gpu / 1e6:.2f} M tokens/s, {basis}")
    for length, workers, r in results:
        ratio = r["tokens_s"] / gpu
        print(f"  L = {length:>9,}, num_workers {workers}: reads / training = {ratio:6.1f}  "
              f"(goal >= 10: {'met' if ratio >= 10 else 'NOT met'}; met for any GPU rate up "
              f"to {r['tokens_s'] / 10 / 1e6:.1f} M tokens/s)")


if __name__ == "__main__":
    main()
