"""Equal-time comparison of the sequence mixers on CPU: Mamba-2, Mamba-1, S4D and a Mamba-2 +
sliding-window attention hybrid ("mmmA"), each trained for the same wall time on the chr20
slice (real human sequence) and evaluated on its held-out last 5 % (100 kb), against the
best order-k Markov baseline fitted on the rest.

The models are the example configs config/models/{mamba2,mamba1,s4d,hybrid}.yaml: the default
schedule (config/models/small.yaml's: windows of 512, batch 8), sized alike, about 100-130 k
parameters (d_model 64, 4 layers, d_state 16). Each run's max_steps is set from its own step
rate (measured over a short run first), so that every schedule anneals within the budget; the
budget (max_time) stops it otherwise.

Usage: python benchmarks/mixers.py [--minutes 4] [--threads 2] [--models mamba2 mamba1 s4d
       hybrid]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from genossm.cli import main as genossm_main
from genossm.evaluate import evaluate
from genossm.model import ModelDir
from genossm.train import load_train_config, train

ROOT = Path(__file__).resolve().parents[1]
CHR20 = ROOT / "config" / "data" / "chr20_b37_1-2000000.fa.gz"
MODELS = ("mamba2", "mamba1", "s4d", "hybrid")   # config/models/NAME.yaml


def run_config(name: str, **schedule):
    """The example config of model ``name`` with these schedule values."""
    cfg = load_train_config(ROOT / "config" / "models" / f"{name}.yaml")
    return cfg.__class__.from_dict({**cfg.to_dict(), **schedule})


def steps_per_s(store: Path, cfg, tmp: Path, steps: int = 12) -> float:
    """Training steps per second of ``cfg``'s model: the median of the trainer's own rate
    over a short run, the first step (which warms up) left out."""
    short = cfg.__class__.from_dict({**cfg.to_dict(), "max_steps": steps, "eval_every": 0,
                                     "log_every": 1, "checkpoint_every": 10 * steps})
    train([store], tmp / "rate", short, force=True, progress=False)
    rates = [r["tokens_per_s"] for r in ModelDir(tmp / "rate").read_metrics()][1:]
    return statistics.median(rates) / (cfg.batch_size * cfg.seq_len)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = run_config(MODELS[0])
    budget = args.minutes * 60
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = tmp / "chr20.zarr"
        genossm_main(["tokenize", str(CHR20), "-o", str(store), "-q"])
        print(f"equal time: {args.minutes:g} min each, {args.threads} threads, windows "
              f"{base.seq_len}, batch {base.batch_size}; held-out: the last 5 % of the chr20 "
              "slice")
        print("| model | parameters | steps/s | steps | time | tokens | bits/base | Markov | "
              "model - Markov |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for name in args.models:
            rate = steps_per_s(store, run_config(name), tmp)
            steps = max(20, int(rate * budget))
            cfg = run_config(name, max_steps=steps, max_time=budget, checkpoint_every=steps,
                             eval_every=0, warmup_steps=min(base.warmup_steps, steps // 10))
            out = tmp / name
            s = train([store], out, cfg, force=True, progress=False)
            m = evaluate(out, store, tmp / f"{name}.json", plots_dir=tmp / f"{name}_plots",
                         progress=False)
            print(f"| {name} | {s['parameters']:,} | {rate:.2f} | {s['steps']:,} "
                  f"({s['stopped']}) | {s['elapsed_s']:.0f} s | {s['tokens']:,} | "
                  f"{m['model_bits_per_base']:.4f} | "
                  f"{m['markov_bits_per_base']:.4f} (order {m['markov_order']}) | "
                  f"{-m['improvement_bits_per_base']:+.4f} |", flush=True)


if __name__ == "__main__":
    main()
