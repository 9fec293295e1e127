"""`genossm embed` throughput and memory over the chr20 slice (real human sequence, 2 Mb).

Embeds one region, the whole slice (20:0-2,000,000), through genossm.embed.embed (FASTA read
piece by piece, model streamed, Zarr written), and prints bases/s and peak RSS. The same is run
over the first half of the slice; peak RSS at 1 Mb against 2 Mb is the constant-memory check
(the ratio should be ~1.0). Each run is its own subprocess, so that peak RSS does not mix.

Model: --model DIR, or a random-init ModelConfig(d_model=128, n_layer=4, d_state=16,
headdim=32), causal.
Usage: python benchmarks/embed.py [--model DIR] [--per-base] [--rc-average] [--length N]
       [--chunk-length N] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FASTA = ROOT / "config" / "data" / "chr20_b37_1-2000000.fa.gz"
CONTIG = "20"


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB


def random_model(directory: Path) -> Path:
    import torch

    from genossm.model import GenoSSM, ModelConfig, save_model
    torch.manual_seed(0)
    model = GenoSSM(ModelConfig(d_model=128, n_layer=4, d_state=16, headdim=32))
    return save_model(model, directory)


def part(args) -> None:
    """One run in this process; prints its figures as one JSON line."""
    import torch

    from genossm.embed import embed
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        bed = Path(tmp) / "region.bed"
        bed.write_text(f"{CONTIG}\t0\t{args.part}\n")
        rss0 = peak_rss_gib()
        t0 = time.perf_counter()
        summary = embed(args.model, FASTA, Path(tmp) / "out.zarr", bed=bed,
                        per_base=args.per_base, rc_average=args.rc_average,
                        chunk_length=args.chunk_length, device=args.device, progress=False)
        seconds = time.perf_counter() - t0
        out_bytes = sum(f.stat().st_size for f in (Path(tmp) / "out.zarr").rglob("*")
                        if f.is_file())
    gpu = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    print(json.dumps({"bases": summary["bases"], "seconds": seconds, "peak_rss": peak_rss_gib(),
                      "rss_after_imports": rss0, "gpu_peak": gpu, "out_bytes": out_bytes}))


def run_part(args, length: int) -> dict:
    cmd = [sys.executable, __file__, "--part", str(length), "--model", str(args.model),
           "--chunk-length", str(args.chunk_length)]
    cmd += ["--per-base"] * args.per_base + ["--rc-average"] * args.rc_average
    cmd += ["--device", args.device] if args.device else []
    cmd += ["--workdir", str(args.workdir)] if args.workdir else []
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"embedding {length:,} bases failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="model directory (default: random init)")
    ap.add_argument("--length", type=int, default=2_000_000, help="bases (default: the slice)")
    ap.add_argument("--chunk-length", type=int, default=1 << 16)
    ap.add_argument("--per-base", action="store_true")
    ap.add_argument("--rc-average", action="store_true")
    ap.add_argument("--device", choices=("cpu", "cuda"))
    ap.add_argument("--workdir", type=Path, help="where outputs go (default: system temp)")
    ap.add_argument("--part", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.part:
        return part(args)
    import torch
    with tempfile.TemporaryDirectory() as tmp:
        if args.model is None:
            args.model = random_model(Path(tmp) / "model")
        config = json.loads((args.model / "config.json").read_text())["model"]
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; model "
              f"d_model {config['d_model']}, {config['n_layer']} layers, d_state "
              f"{config['d_state']}, headdim {config['headdim']}; pieces of "
              f"{args.chunk_length:,}; per-base {args.per_base}, rc-average {args.rc_average}")
        runs = {length: run_part(args, length) for length in (args.length // 2, args.length)}
    for length, r in runs.items():
        gpu = "" if r["gpu_peak"] is None else f", GPU peak {r['gpu_peak']:.2f} GiB"
        print(f"embed {length:>10,} bases: {r['seconds']:7.1f} s, "
              f"{r['bases'] / r['seconds'] / 1e3:8.1f} kbases/s; peak RSS {r['peak_rss']:.2f} GiB "
              f"(after imports {r['rss_after_imports']:.2f}){gpu}; output "
              f"{r['out_bytes'] / 2**20:.1f} MiB")
    half, full = runs[args.length // 2], runs[args.length]
    print(f"peak RSS {args.length:,} / {args.length // 2:,} bases: "
          f"{full['peak_rss'] / half['peak_rss']:.3f} (constant memory: ~1.0)")


if __name__ == "__main__":
    main()
