"""Variant scoring with the whole upstream context (``--left-context``) against windowed mode,
at the same right flank (W/2 = 2,048 with the default window 4,096).

Call sets:
- dense: every SNV at every position of a 10 kb region of the embedded chr20 slice
  (20:1,000,001-1,010,000, no N), 3 ALT alleles per position; ``--layout split`` writes one
  line per ALT (how saturation sets such as CADD's are written), ``multi`` one line per
  position with its 3 ALTs; ``--positions N`` keeps the first N positions;
- sparse: the embedded call sets of config/data (tabix_4 SNVs, tabix_5 indels, tabix_16
  indels and multi-allelic records), whole.

Each run is its own process (``genossm.score.score_vcf`` on the CPU); the modes alternate,
``--repeats`` times; the median is reported. Per run: wall time, variants/s (ALT alleles
scored per second), bases read per ALT allele (every token ``GenoSSM.step`` is given, padding
included, both strands, divided by the ALT alleles scored) and peak RSS. Goals: context mode
>= 3x windowed mode's variants/s on the dense set, and no slower on the sparse ones.

``--memory`` instead scores dense sets of 1,000 and 8,000 positions (3,000 and 24,000 records:
one pass and six) in context mode with a short window (64, so that it takes minutes) and prints
peak RSS of each: memory does not grow with the call set.

Default model: random-init ModelConfig, d_model 64, n_layer 2, d_state 16, headdim 32,
chunk_size 64 (the workflow's CPU model until 2026-12-02; speed does not depend on the weights).

Usage: python benchmarks/score_context.py [--model DIR] [--positions N] [--layout split|multi]
           [--left-context C ...] [--sets dense,tabix_4,tabix_5,tabix_16] [--window W]
           [--batch-size B] [--threads N] [--repeats R] [--memory]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "config" / "data"
FASTA = DATA / "chr20_b37_1-2000000.fa.gz"
SPARSE = {"tabix_4": DATA / "tabix_4.chr20_1-2000000.vcf",
          "tabix_5": DATA / "tabix_5.chr20_1-2000000.vcf",
          "tabix_16": DATA / "tabix_16.chr20_1-2000000.vcf"}
REGION = (1_000_000, 1_010_000)     # 0-based, half-open: 20:1,000,001-1,010,000


def dense_vcf(path: Path, positions: int, layout: str) -> Path:
    """Every SNV at the first ``positions`` positions of REGION."""
    import pysam

    with pysam.FastaFile(str(FASTA)) as fa:
        seq = fa.fetch("20", REGION[0], REGION[0] + positions).upper()
    lines = ["##fileformat=VCFv4.2", "##contig=<ID=20,length=2000000>",
             "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO"]
    for offset, ref in enumerate(seq):
        alts = [b for b in "ACGT" if b != ref]
        pos = str(REGION[0] + offset + 1)
        for alt in (alts if layout == "split" else [",".join(alts)]):
            lines.append("\t".join(["20", pos, ".", ref, alt, ".", "PASS", "."]))
    path.write_text("\n".join(lines) + "\n")
    return path


def child(spec: dict) -> None:
    """One scoring run; prints a JSON line with its measures."""
    import torch

    from genossm.model import GenoSSM
    from genossm.runtime import set_threads
    from genossm.score import score_vcf

    set_threads(spec.pop("threads"))
    tokens = [0]
    step = GenoSSM.step

    def counted(self, x, *args, **kw):
        tokens[0] += x.numel()
        return step(self, x, *args, **kw)

    GenoSSM.step = counted
    start = time.perf_counter()
    summary = score_vcf(spec.pop("vcf"), progress=False, **spec)
    seconds = time.perf_counter() - start
    alleles = summary["statuses"].get("scored", 0)
    print(json.dumps({"seconds": seconds, "alleles": alleles, "records": summary["records"],
                      "tokens": tokens[0], "threads": torch.get_num_threads(),
                      "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def run(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def model_dir(args, tmp: Path) -> Path:
    if args.model is not None:
        return args.model
    import torch

    from genossm.model import GenoSSM, ModelConfig, save_model

    torch.manual_seed(0)
    return save_model(GenoSSM(ModelConfig(d_model=64, n_layer=2, d_state=16, headdim=32,
                                          expand=2, chunk_size=64)), tmp / "model")


def left_context(text: str):
    return text if text == "contig" else int(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, help="model directory (default: random-init model)")
    p.add_argument("--positions", type=int, default=10_000,
                   help="dense set: the first N positions of the 10 kb region")
    p.add_argument("--layout", choices=["split", "multi"], nargs="+", default=["split"])
    p.add_argument("--left-context", type=left_context, nargs="+", default=[2048],
                   help="context mode's C (one or more; default 2048)")
    p.add_argument("--sets", default="dense,tabix_4,tabix_5,tabix_16")
    p.add_argument("--window", type=int, default=4096)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--memory", action="store_true")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(json.loads(args.child))
        return

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        common = dict(fasta=str(FASTA), model_dir=str(model_dir(args, tmp)),
                      batch_size=args.batch_size, device="cpu", threads=args.threads)
        if args.memory:
            for positions in (1_000, 8_000):
                vcf = dense_vcf(tmp / f"dense{positions}.vcf", positions, "split")
                r = run({**common, "vcf": str(vcf), "output": str(tmp / "m.vcf.gz"),
                         "window": 64, "left_context": 2048, "force": True})
                print(f"memory: dense {positions:,} positions ({r['records']:,} records), "
                      f"context 2048, window 64: {r['seconds']:.1f} s, peak RSS "
                      f"{r['rss_mb']:.0f} MiB")
            return
        sets: dict[str, Path] = {}
        for name in args.sets.split(","):
            if name == "dense":
                for layout in args.layout:
                    sets[f"dense {layout}"] = dense_vcf(tmp / f"dense_{layout}.vcf",
                                                        args.positions, layout)
            else:
                sets[name] = SPARSE[name]
        modes = [("windowed", {})] + [(f"context {c}", {"left_context": c})
                                      for c in args.left_context]
        print(f"window {args.window} (right flank {args.window - args.window // 2}), batch "
              f"{args.batch_size}, model {common['model_dir']}, repeats {args.repeats}")
        for name, vcf in sets.items():
            results: dict[str, list[dict]] = {mode: [] for mode, _ in modes}
            for _ in range(args.repeats):
                for mode, extra in modes:
                    results[mode].append(run({**common, **extra, "vcf": str(vcf),
                                              "window": args.window, "force": True,
                                              "output": str(tmp / "out.vcf.gz")}))
            base = statistics.median(r["seconds"] for r in results["windowed"])
            first = results["windowed"][0]
            print(f"{name}: {first['records']:,} records, {first['alleles']:,} ALT alleles "
                  f"scored, {first['threads']} threads")
            for mode, runs in results.items():
                seconds = statistics.median(r["seconds"] for r in runs)
                alleles = runs[0]["alleles"]
                each = ", ".join(f"{r['seconds']:.1f}" for r in runs)
                print(f"  {mode:16s} {seconds:9.1f} s {alleles / seconds:9.2f} variants/s  "
                      f"{runs[0]['tokens'] / alleles:9.0f} bases/ALT  "
                      f"peak {max(r['rss_mb'] for r in runs):5.0f} MiB  "
                      f"x{base / seconds:5.2f} vs windowed  (runs: {each} s)")


if __name__ == "__main__":
    main()
