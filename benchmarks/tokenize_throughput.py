"""Tokenize throughput against the floor of decompressing the same file (`gzip -dc`), and at
whole-genome scale.

Default: a FASTA.gz the size of human chromosome 20 (one record of 63,025,520 bases, b37's
chr20) made of real sequence (the embedded chr20 slice, repeated), gzip level 6; then
`gzip -dc FILE > /dev/null` and `genossm tokenize FILE --threads N` run alternately, REPEAT
times each, and the script prints the medians, their ratio (goal <= 1.5; also the ratio of CPU
time, the steadier figure on a shared machine), bases/s and the tokenize process's peak RSS
(goal <= 1 GB). `--total-mb/--largest-mb` build several records instead (one of LARGEST Mb,
the rest 2 Mb each); `--input` takes a FASTA.gz as it is.

`--genome`: a 3.1 Gb FASTA.gz of the same real sequence in 25 records with the sizes of GRCh38's
chromosomes (chr1 249 Mb ... chrM), compressed with ISA-L (level 3: building it with zlib would
take longer than tokenizing it), tokenized once (REPEAT times with --repeat), after `gzip -dc`:
time, throughput, CPU, peak RSS (goal <= 1 GB whatever the genome's size) and the store's size
on disk. `--keep-store PATH` keeps the store (benchmarks/store_read.py reads one). `--also DIR`
times another genossm package (say, the last commit's) in the same alternation.

`--scaffolds N`: a draft assembly instead, N records of `--scaffold-kb` (5) kb each of the same
real sequence (gzip level 6): what it costs per contig.

`--twobit` (with `--genome`, or alone for the chr20-sized record): the same records as a UCSC
2bit file (version 0, 4 bases a byte, the size of hg38.2bit) with N blocks and soft-mask blocks
of hg38's density (a masked run of about 300 bases every 600), read by Biopython: time,
throughput, peak RSS and store size (no floor command: nothing else decodes 2bit here).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CHR20 = ROOT / "config" / "data" / "chr20_b37_1-2000000.fa.gz"
CHR20_LENGTH = 63_025_520   # GRCh37 chromosome 20
# GRCh38 primary assembly: chr1..22, X, Y, M (3,088,286,401 bases)
GRCH38 = {
    "chr1": 248_956_422, "chr2": 242_193_529, "chr3": 198_295_559, "chr4": 190_214_555,
    "chr5": 181_538_259, "chr6": 170_805_979, "chr7": 159_345_973, "chr8": 145_138_636,
    "chr9": 138_394_717, "chr10": 133_797_422, "chr11": 135_086_622, "chr12": 133_275_309,
    "chr13": 114_364_328, "chr14": 107_043_718, "chr15": 101_991_189, "chr16": 90_338_345,
    "chr17": 83_257_441, "chr18": 80_373_285, "chr19": 58_617_616, "chr20": 64_444_167,
    "chr21": 46_709_983, "chr22": 50_818_468, "chrX": 156_040_895, "chrY": 57_227_415,
    "chrM": 16_569,
}
WIDTH = 60


def real_sequence() -> bytes:
    """The embedded chr20 slice after its telomeric N run (1.94 Mb of real sequence)."""
    with gzip.open(CHR20, "rb") as fh:
        seq = b"".join(line.strip() for line in fh if not line.startswith(b">"))
    return seq[60_000:]


def wrapped(seq: bytes, size: int, piece_lines: int = 100_000):
    """``size`` bases of ``seq`` repeated, as FASTA lines of WIDTH, in pieces of text."""
    period = np.frombuffer(seq, np.uint8)
    done = 0
    while done < size:
        n = min(size - done, piece_lines * WIDTH)
        idx = (np.arange(done, done + n) % period.size)
        letters = period[idx]
        full = n // WIDTH
        lines = np.empty((full, WIDTH + 1), np.uint8)
        lines[:, :WIDTH] = letters[:full * WIDTH].reshape(full, WIDTH)
        lines[:, WIDTH] = ord("\n")
        text = lines.tobytes()
        if n % WIDTH:
            text += letters[full * WIDTH:].tobytes() + b"\n"
        yield text
        done += n


def build_input(path: Path, records: dict[str, int], *, fast: bool = False) -> None:
    """Write ``records`` (name -> bases) of real sequence as FASTA.gz (``fast``: ISA-L
    level 3, else zlib level 6), under a temporary name renamed when complete."""
    seq = real_sequence()
    tmp = path.with_name(path.name + ".tmp")
    if fast:
        from isal import igzip

        out = igzip.open(tmp, "wb", compresslevel=3)
    else:
        out = gzip.open(tmp, "wb", compresslevel=6)
    with out:
        for name, size in records.items():
            out.write(f">{name} real chr20 sequence, repeated\n".encode())
            for text in wrapped(seq, size):
                out.write(text)
    tmp.rename(path)


def _blocks(rng, length: int, mean_gap: float, mean_size: float) -> tuple[np.ndarray, ...]:
    """Random (starts, sizes) of non-overlapping blocks within ``length`` (2bit's uint32)."""
    count = int(length / (mean_gap + mean_size) * 1.2) + 16
    gaps = rng.exponential(mean_gap, count).astype(np.int64) + 1
    sizes = rng.exponential(mean_size, count).astype(np.int64) + 1
    starts = np.cumsum(gaps) + np.concatenate([[0], np.cumsum(sizes)[:-1]])
    keep = starts + sizes < length
    return starts[keep].astype(np.uint32), sizes[keep].astype(np.uint32)


def build_twobit(path: Path, records: dict[str, int]) -> None:
    """Write ``records`` (name -> bases) of real sequence as a little-endian version-0 2bit
    file with N blocks (one of ~50 kb per 5 Mb) and soft-mask blocks (~300 bases every ~600),
    under a temporary name renamed when complete. Packing: T C A G = 0 1 2 3, 4 bases a byte,
    the first in the high bits (UCSC's format; Biopython reads it back)."""
    period = np.frombuffer(real_sequence().upper(), np.uint8)
    pack = np.zeros(256, np.uint8)
    pack[np.frombuffer(b"TCAG", np.uint8)] = np.arange(4, dtype=np.uint8)
    rng = np.random.default_rng(0)
    tmp = path.with_name(path.name + ".tmp")
    index_size = sum(1 + len(name) + 4 for name in records)
    offsets = []
    with open(tmp, "wb") as out:
        out.write(struct.pack("<IIII", 0x1A412743, 0, len(records), 0))
        out.seek(16 + index_size)
        for length in records.values():
            offsets.append(out.tell())
            n_starts, n_sizes = _blocks(rng, length, 5e6, 5e4)
            mask_starts, mask_sizes = _blocks(rng, length, 300, 300)
            out.write(struct.pack("<II", length, n_starts.size))
            out.write(n_starts.tobytes() + n_sizes.tobytes())
            out.write(struct.pack("<I", mask_starts.size))
            out.write(mask_starts.tobytes() + mask_sizes.tobytes())
            out.write(struct.pack("<I", 0))
            for start in range(0, length, 1 << 24):   # a multiple of 4 bases a piece
                codes = pack[period[np.arange(start, min(length, start + (1 << 24)))
                                    % period.size]]
                codes = np.pad(codes, (0, -codes.size % 4)).reshape(-1, 4)
                out.write((codes[:, 0] << 6 | codes[:, 1] << 4 | codes[:, 2] << 2
                           | codes[:, 3]).astype(np.uint8).tobytes())
        out.seek(16)
        for name, offset in zip(records, offsets, strict=True):
            out.write(bytes([len(name)]) + name.encode() + struct.pack("<I", offset))
    tmp.rename(path)


def run(cmd: list[str], stdout=subprocess.DEVNULL, env=None, cwd=None
        ) -> tuple[float, float, int]:
    """Wall time, CPU time (user + system) and peak RSS (bytes) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.PIPE, env=env, cwd=cwd)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr.read().decode()}")
    return elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024


def disk_usage(path: Path) -> tuple[int, int]:
    """(bytes allocated on disk, files) under ``path``."""
    total = files = 0
    for root, _, names in os.walk(path):
        for name in names:
            total += os.stat(os.path.join(root, name)).st_blocks * 512
            files += 1
    return total, files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", type=Path, help="a FASTA.gz to use instead of building one")
    ap.add_argument("--genome", action="store_true",
                    help="3.1 Gb in 25 records with GRCh38's chromosome sizes, tokenized once")
    ap.add_argument("--twobit", action="store_true",
                    help="a 2bit file of the same records instead of FASTA.gz (no floor)")
    ap.add_argument("--scaffolds", type=int, help="a draft assembly: this many records...")
    ap.add_argument("--scaffold-kb", type=int, default=5, help="...of this many kb each")
    ap.add_argument("--total-mb", type=int, help="several records: this many Mb in all")
    ap.add_argument("--largest-mb", type=int, default=40, help="...the largest this long")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, help="runs of each command (default 5; 1 with "
                                                "--genome)")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "out",
                    help="where built inputs are kept (default benchmarks/out)")
    ap.add_argument("--keep-store", type=Path, help="write the store here and keep it")
    ap.add_argument("--also", type=Path, metavar="DIR",
                    help="also time the genossm package in DIR (e.g. `git archive HEAD genossm "
                         "| tar -x -C DIR`), in the same alternation")
    args = ap.parse_args()
    repeat = args.repeat or (1 if args.genome else 5)
    if args.also:
        args.also = args.also.resolve()

    if args.keep_store and args.keep_store.exists():   # it is replaced before every run
        sys.exit(f"{args.keep_store}: exists; --keep-store takes a new path")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.input:
        path, fast = args.input.resolve(), False
    else:
        if args.genome:
            records, name, fast = GRCH38, "genome_grch38_sizes.fa.gz", True
        elif args.scaffolds:
            records = {f"scaffold_{i}": args.scaffold_kb * 1000 for i in range(args.scaffolds)}
            name, fast = f"scaffolds_{args.scaffolds}x{args.scaffold_kb}kb.fa.gz", False
        elif args.total_mb:
            sizes = [args.largest_mb * 1_000_000]
            while sum(sizes) < args.total_mb * 1_000_000:
                sizes.append(2_000_000)
            records = {f"bench_{i}": s for i, s in enumerate(sizes)}
            name, fast = f"chr20_x{args.total_mb}Mb.fa.gz", False
        else:
            records, name, fast = {"chr20": CHR20_LENGTH}, "chr20_size.fa.gz", False
        if args.twobit:
            name = name.replace(".fa.gz", ".2bit")
        path = args.out_dir.resolve() / name
        if not path.exists():
            print(f"building {path} ...", flush=True)
            if args.twobit:
                build_twobit(path, records)
            else:
                build_input(path, records, fast=fast)

    genossm = [sys.executable, "-m", "genossm"]
    # Bytecode first, as an installed package has it: where PYTHONDONTWRITEBYTECODE is set (as
    # in this project's sandbox) every run would otherwise compile genossm's modules again.
    import genossm as package

    for folder in (Path(package.__file__).parent, args.also and args.also / "genossm"):
        if folder:
            subprocess.run([sys.executable, "-m", "compileall", "-q", str(folder)], check=True)
    work = Path(tempfile.mkdtemp(prefix="genossm-bench-", dir=args.out_dir)).resolve()
    store = args.keep_store.resolve() if args.keep_store else work / "bench.zarr"
    gz, tok, also = [], [], []
    tokenize = [*genossm, "tokenize", str(path), "-o", str(store), "-q",
                "--threads", str(args.threads)]
    try:
        for _ in range(repeat):
            if not args.twobit:
                with open(os.devnull, "wb") as null:
                    gz.append(run(["gzip", "-dc", str(path)], stdout=null))
            if args.also:
                shutil.rmtree(store, ignore_errors=True)
                # run from DIR: `python -m` puts the working directory first on sys.path
                also.append(run(tokenize, env={**os.environ, "PYTHONPATH": str(args.also)},
                                cwd=args.also))
            shutil.rmtree(store, ignore_errors=True)  # not part of the timing
            tok.append(run(tokenize))
        contigs = json.loads(subprocess.run([*genossm, "info", str(store), "--json"],
                                            capture_output=True, text=True,
                                            check=True).stdout)["contigs"]
        store_bytes, store_files = disk_usage(store)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    total, largest = sum(c["length"] for c in contigs), max(c["length"] for c in contigs)

    def median(runs, i):
        return statistics.median(r[i] for r in runs)

    peak = max(r[2] for r in tok)
    print(f"input: {path.name}, {path.stat().st_size / 1e6:,.1f} MB "
          f"{'2bit' if args.twobit else 'gzip'}, "
          f"{total / 1e6:,.1f} Mb in {len(contigs)} records (largest "
          f"{largest / 1e6:.1f} Mb); threads {args.threads}; median of {repeat} alternating "
          f"run{'s' if repeat > 1 else ''}")
    if gz:
        print(f"gzip -dc            {median(gz, 0):7.2f} s   "
              f"{total / median(gz, 0) / 1e6:7.1f} Mb/s   CPU {median(gz, 1):.2f} s")
    t = median(tok, 0)
    print(f"genossm tokenize    {t:7.2f} s   {total / t / 1e6:7.1f} Mb/s   "
          f"CPU {median(tok, 1):.2f} s   (runs: {', '.join(f'{r[0]:.2f}' for r in tok)})")
    if also:
        a = median(also, 0)
        ratio = f"   ratio to gzip -dc {a / median(gz, 0):.2f}" if gz else ""
        print(f"genossm in {args.also}: {a:7.2f} s   {total / a / 1e6:7.1f} Mb/s   "
              f"CPU {median(also, 1):.2f} s{ratio}   "
              f"peak RSS {max(r[2] for r in also) / 1e6:.0f} MB")
    if gz:
        ratios = [r[0] / g[0] for r, g in zip(tok, gz, strict=True)]
        print(f"ratio tokenize / gzip -dc: {t / median(gz, 0):.2f} (of the medians; per pair: "
              f"{', '.join(f'{x:.2f}' for x in ratios)}; of CPU time "
              f"{median(tok, 1) / median(gz, 1):.2f})   (goal <= 1.5)")
    print(f"peak RSS: {peak / 1e6:.0f} MB   (goal <= 1 GB)")
    print(f"store: {store_bytes / 1e6:,.1f} MB on disk in {store_files:,} files, "
          f"{store_bytes / total:.3f} bytes/base")
    if load := getattr(os, "getloadavg", None):
        print(f"load average at the end: {' '.join(f'{x:.1f}' for x in load())}")


if __name__ == "__main__":
    main()
