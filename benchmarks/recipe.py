"""The training recipe against the Markov baseline, genome by genome, as a new user runs it:
`genossm tokenize`, `genossm train STORE -o DIR --max-time T` (no --config: the built-in
default for this machine, genossm/presets/), then `genossm evaluate` on the held-out last 5 %
(the model's validation split), whose order-k Markov baseline is fitted on the rest.

Genomes (all in the repository): lambda phage (48.5 kb, config/data/lambda_virus.fa.gz), the
Arabidopsis thaliana chloroplast (154 kb, GenBank, tests/data/formats/NC_000932.gb) and the
human chr20 slice (2 Mb, config/data/chr20_b37_1-2000000.fa.gz).

``--sweep``: the same on the genomes given, for the built-in CPU default and each of its
variants in VARIANTS (one setting changed at a time, at equal time), to choose the default.

Usage: python benchmarks/recipe.py [--minutes 4] [--genomes lambda chloroplast human]
       python benchmarks/recipe.py --sweep [--variants NAME ...] [--genomes ...] [--minutes 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
GENOMES = {"lambda": ROOT / "config" / "data" / "lambda_virus.fa.gz",
           "chloroplast": ROOT / "tests" / "data" / "formats" / "NC_000932.gb",
           "human": ROOT / "config" / "data" / "chr20_b37_1-2000000.fa.gz"}
CPU_DEFAULT = ROOT / "genossm" / "presets" / "cpu.yaml"
# one change each from the CPU default (train config keys; "model" merges into its section)
VARIANTS = {
    "default": {},
    "lr 1.5e-3": {"lr": 1.5e-3, "min_lr": 1.5e-4},
    "lr 6e-3": {"lr": 6e-3, "min_lr": 6e-4},
    "warmup 200": {"warmup_steps": 200},
    "windows 256": {"seq_len": 256, "batch_size": 16},
    "windows 1024": {"seq_len": 1024, "batch_size": 4},
    "windows 128 -> 1024": {"seq_len": 1024, "batch_size": 4, "seq_len_start": 128,
                            "seq_len_warmup_steps": 400},
    "batch 16": {"batch_size": 16},
    "d_model 96 x 2": {"model": {"d_model": 96, "n_layer": 2}},
    "d_model 48 x 6": {"model": {"d_model": 48, "n_layer": 6, "headdim": 24}},
    "d_state 64": {"model": {"d_state": 64}},
    "weight decay 0": {"weight_decay": 0.0},
    "s4d": {"model": {"mixer": "s4d"}},
    "passes 10": {"max_epochs": 10},
    "passes 40": {"max_epochs": 40},
    "passes unlimited": {"max_epochs": None},
}


def genossm(*args: str, log: Path) -> float:
    """Run `genossm ARGS` (this interpreter), output appended to ``log``; its wall seconds."""
    began = time.monotonic()
    with open(log, "a") as fh:
        fh.write(f"$ genossm {' '.join(args)}\n")
        fh.flush()
        subprocess.run([sys.executable, "-m", "genossm", *args, "-q"], check=True,
                       stdout=fh, stderr=subprocess.STDOUT)
    return time.monotonic() - began


def variant_config(overrides: dict, path: Path) -> Path:
    """The CPU default with ``overrides`` written to ``path``."""
    cfg = yaml.safe_load(CPU_DEFAULT.read_text())
    cfg["model"] = {**cfg["model"], **overrides.get("model", {})}
    cfg.update({k: v for k, v in overrides.items() if k != "model"})
    path.write_text(yaml.safe_dump(cfg))
    return path


def run(genome: str, store: Path, tmp: Path, seconds: float, threads: int,
        config: Path | None, log: Path) -> dict:
    """Train and evaluate one model; its row of the table."""
    model, metrics = tmp / "model", tmp / "metrics.json"
    extra = [] if config is None else ["--config", str(config)]
    train_s = genossm("train", str(store), "-o", str(model), *extra, "--max-time",
                      str(seconds), "--threads", str(threads), "--device", "cpu", "--force",
                      log=log)
    genossm("evaluate", str(model), str(store), "-o", str(metrics), "--threads", str(threads),
            "--device", "cpu", "--force", log=log)
    m = json.loads(metrics.read_text())
    training = json.loads((model / "config.json").read_text()).get("training", {}) \
        if (model / "config.json").is_file() else {}
    return {"genome": genome, "train_s": train_s, "steps": training.get("steps"),
            "stopped": training.get("stopped"), "model": m["model_bits_per_base"],
            "markov": m["markov_bits_per_base"], "order": m["markov_order"],
            "bases": m["bases_scored"]}


def row(name: str, r: dict) -> str:
    gain = 1 - r["model"] / r["markov"]
    return (f"| {name} | {r['genome']} | {r['steps']} ({r['stopped']}) | {r['train_s']:.0f} s | "
            f"{r['model']:.4f} | {r['markov']:.4f} (order {r['order']}) | "
            f"{r['model'] - r['markov']:+.4f} | {100 * gain:+.1f} % |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--genomes", nargs="+", default=list(GENOMES), choices=GENOMES)
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    args = ap.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    print("| config | genome | steps | train wall | model bits/base | Markov | model − Markov "
          "| gain |\n| --- | --- | --- | --- | --- | --- | --- | --- |", flush=True)
    with tempfile.TemporaryDirectory(prefix="genossm-recipe-") as tmp_name:
        tmp = Path(tmp_name)
        log = tmp / "log.txt"
        for genome in args.genomes:
            store = tmp / f"{genome}.zarr"
            genossm("tokenize", str(GENOMES[genome]), "-o", str(store), log=log)
            names = args.variants if args.sweep else [None]
            for name in names:
                config = None if name is None else \
                    variant_config(VARIANTS[name], tmp / "variant.yaml")
                try:
                    r = run(genome, store, tmp, 60 * args.minutes, args.threads, config, log)
                except subprocess.CalledProcessError:
                    sys.exit(f"failed; the log:\n{log.read_text()[-3000:]}")
                print(row(name or "built-in default", r), flush=True)


if __name__ == "__main__":
    main()
