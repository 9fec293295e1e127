"""Training benchmark on CPU: throughput of the default model, and its quality over time.

1. throughput: tokens/s of `genossm.train.train` with the default model config
   (config/models/cpu.yaml) against a bare forward + backward + AdamW loop over the same
   model and window size in the same process (ratio = trainer overhead: data, logging).
2. quality (--quality): train the default model for 5 and for 30 minutes (two runs, each with
   max_steps scaled to its time so the learning rate anneals), evaluate both on the held-out
   last 5 % of the chr20 slice, and print model bits/base against the best Markov baseline.
3. long context (--long, for a GPU): training steps of a d_model 256 x 16-layer model on one
   window of real chr20 sequence per length (default 2^17 and 2^20), bf16 autocast and
   gradient checkpointing on CUDA: tokens/s and peak GPU memory, and the ratio of tokens/s
   at the longest length to the shortest (1.0 = time linear in length).

Usage: python benchmarks/train.py [--steps N] [--quality] [--minutes 5 30] [--threads 2]
       python benchmarks/train.py --long [--device cuda] [--lengths 131072 1048576]
                                  [--d-model 256] [--n-layer 16]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from genossm.cli import main as genossm_main
from genossm.evaluate import evaluate
from genossm.model import GenoSSM, ModelDir
from genossm.train import load_train_config, train

ROOT = Path(__file__).resolve().parents[1]
CHR20 = ROOT / "config" / "data" / "chr20_b37_1-2000000.fa.gz"
DEFAULT = ROOT / "config" / "models" / "cpu.yaml"


def bare_loop_tokens_per_s(cfg, steps: int) -> float:
    """Forward + backward + AdamW on random tokens: the floor the trainer is measured against."""
    torch.manual_seed(0)
    model = GenoSSM(cfg.model).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 4, (cfg.batch_size, cfg.seq_len))
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        logits = model(x[:, :-1])
        F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1)).backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t)
    return cfg.batch_size * cfg.seq_len / statistics.median(times[2:])


def trainer_tokens_per_s(store: Path, cfg, steps: int, tmp: Path) -> float:
    cfg = cfg.__class__.from_dict({**cfg.to_dict(), "max_steps": steps, "log_every": 5,
                                   "eval_every": 0, "checkpoint_every": 10 * steps})
    train([store], tmp / "throughput", cfg, force=True, progress=False)
    records = ModelDir(tmp / "throughput").read_metrics()
    rates = [r["tokens_per_s"] for r in records][1:]  # the first window warms up
    return statistics.median(rates)


def quality(store: Path, cfg, minutes: list[float], tmp: Path, steps_per_s: float) -> None:
    print("\nquality on the held-out last 5 % of the chr20 slice (100 kb)")
    for m in minutes:
        steps = max(10, int(m * 60 * steps_per_s))
        run = cfg.__class__.from_dict({**cfg.to_dict(), "max_steps": steps,
                                       "max_time": m * 60, "checkpoint_every": steps})
        out = tmp / f"model_{m:g}min"
        s = train([store], out, run, force=True, progress=False)
        metrics = evaluate(out, store, tmp / f"metrics_{m:g}min.json", progress=False)
        print(f"{m:g} min: {s['steps']} steps ({s['stopped']}), {s['tokens']:,} tokens; "
              f"model {metrics['model_bits_per_base']:.4f} bits/base, Markov order "
              f"{metrics['markov_order']} {metrics['markov_bits_per_base']:.4f}; "
              f"model - Markov = {-metrics['improvement_bits_per_base']:+.4f}")


def long_context(store: Path, device: str, lengths: list[int], d_model: int,
                 n_layer: int, steps: int) -> None:
    """Tokens/s and peak memory of full training steps at each length (module docstring)."""
    from genossm.model import ModelConfig
    from genossm.store import TokenStore

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    config = ModelConfig(d_model=d_model, n_layer=n_layer, gradient_checkpointing=True)
    torch.manual_seed(0)
    model = GenoSSM(config).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)
    codes = TokenStore(store).codes("20", 60_000, 60_000 + max(lengths) + 1)
    print(f"long context: d_model {d_model} x {n_layer} layers "
          f"({model.num_parameters():,} parameters), {dev}, bf16 autocast {cuda}")
    rates = {}
    for length in lengths:
        x = torch.from_numpy(codes[:length + 1].astype("int64"))[None].to(dev)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(steps + 1):                      # the first step compiles / warms up
            t = time.perf_counter()
            with torch.autocast(dev.type, torch.bfloat16, enabled=cuda):
                logits = model(x[:, :-1])
                loss = F.cross_entropy(logits.float()[0], x[0, 1:])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        rates[length] = length / statistics.median(times[1:])
        memory = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
        print(f"L = {length:>9,}: {rates[length]:>10,.0f} tokens/s, peak GPU memory "
              f"{memory:.2f} GiB")
    print(f"tokens/s at L = {max(lengths):,} / at L = {min(lengths):,}: "
          f"{rates[max(lengths)] / rates[min(lengths)]:.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quality", action="store_true")
    ap.add_argument("--minutes", type=float, nargs="+", default=[5, 30])
    ap.add_argument("--long", action="store_true", help="long-context steps (for a GPU)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--lengths", type=int, nargs="+", default=[1 << 17, 1 << 20])
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--n-layer", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_train_config(DEFAULT)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = tmp / "chr20.zarr"
        genossm_main(["tokenize", str(CHR20), "-o", str(store), "-q"])
        if args.long:
            long_context(store, args.device, args.lengths, args.d_model, args.n_layer,
                         max(1, args.steps // 10))
            return
        bare = bare_loop_tokens_per_s(cfg, max(6, args.steps // 4))
        trainer = trainer_tokens_per_s(store, cfg, args.steps, tmp)
        print(f"default model ({DEFAULT.name}): d_model {cfg.model.d_model}, "
              f"{cfg.model.n_layer} layers, L {cfg.seq_len}, batch {cfg.batch_size}, "
              f"{args.threads} threads")
        print(f"bare fwd+bwd+AdamW loop: {bare:,.0f} tokens/s")
        print(f"genossm train:           {trainer:,.0f} tokens/s "
              f"(ratio trainer/bare {trainer / bare:.2f})")
        if args.quality:
            quality(store, cfg, args.minutes, tmp, trainer / (cfg.batch_size * cfg.seq_len))


if __name__ == "__main__":
    main()
