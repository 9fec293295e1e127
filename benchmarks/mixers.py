"""Equal-time comparison of the sequence mixers on CPU: Mamba-2, Mamba-1, S4D and a Mamba-2 +
sliding-window attention hybrid ("mmmA"), each trained for the same wall time on the chr20
slice (real human sequence) and evaluated on its held-out last 5 % (100 kb), against the
best order-k Markov baseline fitted on the rest.

The models are the example configs config/models/{mamba2,mamba1,s4d,hybrid}.yaml: the default
schedule (the built-in CPU default's, config/models/cpu.yaml: windows of 512, batch 8), sized
alike, about 100-130 k parameters (d_model 64, 4 layers, d_state 16). Each run's max_steps is
set from its own step rate (measured over a short run first), so that every schedule anneals
within the budget; the budget (max_time) stops it otherwise.

``--memory``: for each model, in a fresh process each, the peak RSS above its baseline of one
training step (forward + backward, gradient checkpointing in the config's segments) over one
sequence of 2^20 bases, and of streaming 2^20 bases through ``model.stream`` in pieces of
65,536 under no_grad (the attention blocks carry their window of keys and values), with
large allocations through mmap so that RSS follows the live tensors.

Usage: python benchmarks/mixers.py [--minutes 4] [--threads 2] [--models mamba2 mamba1 s4d
       hybrid]
       python benchmarks/mixers.py --memory [--length 1048576]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")   # for the spawned --memory processes

import torch
import torch.nn.functional as F

from genossm.cli import main as genossm_main
from genossm.evaluate import evaluate
from genossm.model import GenoSSM, ModelDir
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


def rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_case(name: str, part: str, length: int, threads: int, results) -> None:
    """One measurement in this (spawned) process: ``part`` "train" or "stream"."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = GenoSSM(dataclasses.replace(run_config(name).model, gradient_checkpointing=True))
    tokens = torch.randint(0, 4, (1, length + 1), generator=torch.Generator().manual_seed(1))
    base = rss_mib()
    start = time.perf_counter()
    if part == "train":
        model.train()
        logits = model(tokens[:, :-1])
        F.cross_entropy(logits.float()[0], tokens[0, 1:]).backward()
    else:
        model.eval()
        with torch.no_grad():
            for _ in model.stream(tokens[:, :length].split(65_536, dim=1)):
                pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results.put((peak - base, time.perf_counter() - start))


def memory(args) -> None:
    """The --memory table (module docstring)."""
    context = torch.multiprocessing.get_context("spawn")
    print(f"peak RSS above baseline, L = {args.length:,}, {args.threads} threads")
    print("| model | training step | wall | streaming, pieces of 65,536 | wall |")
    print("| --- | --- | --- | --- | --- |")
    for name in args.models:
        cells = []
        for part in ("train", "stream"):
            results = context.Queue()
            process = context.Process(target=memory_case,
                                      args=(name, part, args.length, args.threads, results))
            process.start()
            above, wall = results.get()
            process.join()
            cells += [f"{above:,.0f} MiB", f"{wall:.0f} s"]
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--memory", action="store_true")
    ap.add_argument("--length", type=int, default=1 << 20)
    args = ap.parse_args()
    if args.memory:
        memory(args)
        return
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
