"""Variant scoring throughput on CPU: prefix-state reuse against naive scoring.

Scores the same records with ``genossm.score.score_vcf``, running the shared left flank once per
record and branching its state into REF and ALT (the default), and running every haplotype from
its start (``prefix_reuse=False``), alternately ``--repeats`` times each; prints the median
variants/s of both and the ratio (goal: reuse >= 1.8x faster at window 4,096), next to the ratio
of bases the model reads, which bounds it when time is proportional to bases. A short warm-up
run comes first so that one-time costs count in neither.

Default model: random-init ModelConfig(d_model=128, n_layer=4, d_state=16, headdim=32) (speed
does not depend on the weights). Default input: the embedded real indel calls (tabix_5, VCF 4.0)
on the embedded chr20 slice.

Usage: python benchmarks/score.py [--model DIR] [--vcf VCF] [--fasta FA] [--limit N]
                                  [--window W] [--batch-size B] [--threads N] [--device cpu]
                                  [--repeats R]
"""

from __future__ import annotations

import argparse
import gzip
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pysam  # noqa: E402
import torch  # noqa: E402

from genossm.model import GenoSSM, ModelConfig, save_model  # noqa: E402
from genossm.runtime import set_threads
from genossm.score import score_vcf  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "config" / "data"


def first_records(vcf: Path, limit: int | None, directory: Path) -> Path:
    """The VCF itself, or a VCF of its header and first ``limit`` records."""
    if limit is None:
        return vcf
    out = directory / "subset.vcf"
    with pysam.VariantFile(str(vcf)) as vf:
        if vf.format == "BCF":
            with pysam.VariantFile(str(out), "w", header=vf.header) as w:
                for i, record in enumerate(vf):
                    if i == limit:
                        break
                    w.write(record)
            return out
    with open(vcf, "rb") as fh:
        compressed = fh.read(2) == b"\x1f\x8b"
    with (gzip.open(vcf, "rt") if compressed else open(vcf)) as src, open(out, "w") as dst:
        n = 0
        for line in src:
            if not line.startswith("#"):
                n += 1
                if n > limit:
                    break
            dst.write(line)
    return out


def token_ratio(table: Path, window: int) -> float:
    """Bases the model reads without reuse / with it, both strands: per record with alleles
    b (REF and each scored ALT), naive runs every haplotype whole (sum of 2 (W + |b|)), reuse
    runs each strand's prefix once and the branches (W + sum of (W + 2 |b|))."""
    records: dict[str, list[int]] = {}
    with open(table) as fh:
        next(fh)
        for line in fh:
            f = line.rstrip("\n").split("\t")
            if f[-1] == "scored":
                records.setdefault(f[5], [len(f[3])]).append(len(f[4]))
    naive = sum(2 * (window + n) for alleles in records.values() for n in alleles)
    reuse = sum(window + sum(window + 2 * n for n in alleles) for alleles in records.values())
    return naive / reuse


def timed(vcf, directory: Path, name: str, **kw) -> tuple[float, dict]:
    start = time.perf_counter()
    summary = score_vcf(vcf, output=directory / f"{name}.vcf.gz", progress=False, **kw)
    return time.perf_counter() - start, summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, help="model directory (default: random-init model)")
    p.add_argument("--vcf", type=Path, default=DATA / "tabix_5.chr20_1-2000000.vcf")
    p.add_argument("--fasta", type=Path, default=DATA / "chr20_b37_1-2000000.fa.gz")
    p.add_argument("--limit", type=int, default=100, help="first N records (default 100; "
                                                           "0 = all)")
    p.add_argument("--window", type=int, default=4096)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3, help="alternating runs of each; the "
                                                         "median is reported (default 3)")
    args = p.parse_args()
    set_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = args.model
        if model_dir is None:
            torch.manual_seed(0)
            model_dir = save_model(GenoSSM(ModelConfig(d_model=128, n_layer=4, d_state=16,
                                                       headdim=32)), tmp / "model")
        vcf = first_records(args.vcf, args.limit or None, tmp)
        common = dict(fasta=args.fasta, model_dir=model_dir, window=args.window,
                      batch_size=args.batch_size, device=args.device)
        warm = tmp / "warm"
        warm.mkdir()
        timed(first_records(args.vcf, 4, warm), warm, "warm", **common)
        reuse, naive = [], []
        for _ in range(args.repeats):   # alternating, so that a busy machine hits both alike
            seconds, summary = timed(vcf, tmp, "reuse", **common)
            reuse.append(seconds)
            naive.append(timed(vcf, tmp, "naive", prefix_reuse=False, **common)[0])
        t_reuse, t_naive = statistics.median(reuse), statistics.median(naive)
        bound = token_ratio(tmp / "reuse.tsv", args.window)

    alleles = summary["statuses"].get("scored", 0)
    print(f"{summary['records']} records, {alleles} scored alt alleles, window {args.window}, "
          f"batch {args.batch_size}, {torch.get_num_threads()} threads, device {args.device}")
    for name, seconds, runs in (("prefix reuse", t_reuse, reuse), ("naive", t_naive, naive)):
        print(f"  {name:13s} {seconds:8.2f} s  {summary['records'] / seconds:8.2f} variants/s  "
              f"{alleles / seconds:8.2f} alleles/s  (runs: "
              f"{', '.join(f'{t:.2f}' for t in runs)} s)")
    print(f"ratio reuse / naive (speed-up): {t_naive / t_reuse:.2f}x (goal >= 1.8x); "
          f"bases run naive / with reuse for these records: {bound:.2f}")


if __name__ == "__main__":
    main()
