"""Tokenize throughput against the floor of decompressing the same file (`gzip -dc`).

Builds a FASTA.gz of real sequence (the embedded chr20 slice, repeated as several records)
unless given one, then runs `gzip -dc FILE > /dev/null` and `genossm tokenize FILE --threads N`
alternately, REPEAT times each, and prints the medians, their ratio (goal ≤ 2.0), bases/s and
the tokenize process's peak RSS (goal ≤ 2 × largest contig + 300 MB).
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHR20 = ROOT / "config" / "data" / "chr20_b37_1-2000000.fa.gz"


def build_input(path: Path, total_mb: int, largest_mb: int) -> tuple[int, int]:
    """Write records of real chr20 sequence: one of ``largest_mb`` Mb, the rest 2 Mb each."""
    with gzip.open(CHR20, "rt") as fh:
        seq = "".join(line.strip() for line in fh if not line.startswith(">"))
    seq = seq[60_000:]  # skip the telomeric N run
    sizes = [largest_mb * 1_000_000]
    while sum(sizes) < total_mb * 1_000_000:
        sizes.append(2_000_000)
    with gzip.open(path, "wt", compresslevel=6) as out:
        for i, size in enumerate(sizes):
            out.write(f">bench_{i} real chr20 sequence, repeated\n")
            record = (seq * (size // len(seq) + 1))[:size]
            out.write("\n".join(record[j:j + 60] for j in range(0, size, 60)))
            out.write("\n")
    return sum(sizes), max(sizes)


def run(cmd: list[str], stdout=subprocess.DEVNULL) -> tuple[float, int]:
    """Wall time and peak RSS (bytes) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr.read().decode()}")
    return elapsed, usage.ru_maxrss * 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", type=Path, help="a FASTA.gz to use instead of building one")
    ap.add_argument("--total-mb", type=int, default=100)
    ap.add_argument("--largest-mb", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    out_dir = ROOT / "benchmarks" / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.input:
        path, total, largest = args.input, None, None
    else:
        path = out_dir / f"chr20_x{args.total_mb}Mb.fa.gz"
        stamp = path.with_suffix(".sizes")
        if not path.exists() or not stamp.exists():
            total, largest = build_input(path, args.total_mb, args.largest_mb)
            stamp.write_text(f"{total} {largest}")
        total, largest = map(int, stamp.read_text().split())

    genossm = [sys.executable, "-m", "genossm"]
    work = Path(tempfile.mkdtemp(prefix="genossm-bench-"))
    store = work / "bench.zarr"
    gz_times, tok_times, rss = [], [], []
    try:
        for _ in range(args.repeat):
            with open(os.devnull, "wb") as null:
                gz_times.append(run(["gzip", "-dc", str(path)], stdout=null)[0])
            shutil.rmtree(store, ignore_errors=True)  # not part of the timing
            t, r = run([*genossm, "tokenize", str(path), "-o", str(store), "-q",
                        "--threads", str(args.threads)])
            tok_times.append(t)
            rss.append(r)
        info = subprocess.run([*genossm, "info", str(store), "--json"], capture_output=True,
                              text=True, check=True).stdout
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if total is None:
        import json

        contigs = json.loads(info)["contigs"]
        total, largest = sum(c["length"] for c in contigs), max(c["length"] for c in contigs)

    gz, tok, peak = statistics.median(gz_times), statistics.median(tok_times), max(rss)
    rss_goal = 2 * largest + 300e6
    print(f"input: {path.name}, {path.stat().st_size / 1e6:.1f} MB gzip, {total / 1e6:.0f} Mb "
          f"in FASTA records (largest {largest / 1e6:.0f} Mb); threads {args.threads}; "
          f"median of {args.repeat}")
    print(f"gzip -dc            {gz:7.2f} s   {total / gz / 1e6:7.1f} Mb/s")
    print(f"genossm tokenize    {tok:7.2f} s   {total / tok / 1e6:7.1f} Mb/s")
    print(f"ratio tokenize / gzip -dc: {tok / gz:.2f}   (goal <= 2.0)")
    print(f"peak RSS: {peak / 1e6:.0f} MB   (goal <= 2 x largest contig + 300 MB "
          f"= {rss_goal / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()
