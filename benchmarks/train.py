"""Training benchmark on CPU: throughput of the default model, and its quality over time.

1. throughput: tokens/s of `genossm.train.train` with the default model config
   (config/models/small.yaml) against a bare forward + backward + AdamW loop over the same
   model and window size in the same process (ratio = trainer overhead: data, logging).
2. quality (--quality): train the default model for 5 and for 30 minutes (two runs, each with
   max_steps scaled to its time so the learning rate anneals), evaluate both on the held-out
   last 5 % of the chr20 slice, and print model bits/base against the best Markov baseline.

Usage: python benchmarks/train.py [--steps N] [--quality] [--minutes 5 30] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from genossm.cli import main as genossm_main
from genossm.evaluate import evaluate
from genossm.model import GenoSSM
from genossm.train import load_train_config, train

ROOT = Path(__file__).resolve().parents[1]
CHR20 = ROOT / "config" / "data" / "chr20_b37_1-2000000.fa.gz"
DEFAULT = ROOT / "config" / "models" / "small.yaml"


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
    lines = (tmp / "throughput" / "metrics.jsonl").read_text().splitlines()
    rates = [json.loads(x)["tokens_per_s"] for x in lines][1:]  # the first window warms up
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quality", action="store_true")
    ap.add_argument("--minutes", type=float, nargs="+", default=[5, 30])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_train_config(DEFAULT)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = tmp / "chr20.zarr"
        genossm_main(["tokenize", str(CHR20), "-o", str(store), "-q"])
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
