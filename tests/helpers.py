"""Paths and small utilities shared by the tests."""

from __future__ import annotations

import gzip
import io
import os
from pathlib import Path

import pysam

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "config" / "data"
CHR20 = DATA / "chr20_b37_1-2000000.fa.gz"
LAMBDA = DATA / "lambda_virus.fa.gz"
EX1_BAM = DATA / "ex1.bam"
EX1_FA = DATA / "ex1.fa"
MPILEUP_BAM = DATA / "mpileup.1.bam"
MPILEUP_FA = DATA / "mpileup.ref.fa"


def fasta_records(path: Path) -> list[tuple[str, str]]:
    """(name, sequence as written) of every record, read by pysam (independent of genossm)."""
    with pysam.FastxFile(str(path)) as fx:
        return [(r.name, r.sequence) for r in fx]


def write_fasta(path: Path, records, *, width: int = 60, newline: str = "\n",
                compress: str | None = None) -> Path:
    """Write records as FASTA; compress is None, 'gzip' or 'bgzf'."""
    buf = io.StringIO()
    for name, seq in records:
        buf.write(f">{name}{newline}")
        for i in range(0, len(seq), width):
            buf.write(seq[i:i + width] + newline)
    data = buf.getvalue().encode()
    if compress == "gzip":
        path.write_bytes(gzip.compress(data))
    elif compress == "bgzf":
        plain = path.with_suffix(".tmp")
        plain.write_bytes(data)
        pysam.tabix_compress(str(plain), str(path), force=True)
        plain.unlink()
    else:
        path.write_bytes(data)
    return path


def one_error_line(capsys, *parts) -> None:
    """stderr (captured by ``capsys``) is one genossm error line, holding every one of
    ``parts``."""
    err = capsys.readouterr().err
    assert err.startswith("genossm: error: ") and err.count("\n") == 1 and \
        all(part in err for part in parts), err


def unwritable_dir(tmp_path) -> Path:
    """A directory no file can be made in: /sys for root, else a read-only one."""
    path = Path("/sys") if os.geteuid() == 0 else tmp_path / "read_only"
    path.mkdir(mode=0o555, exist_ok=True)
    return path


def files(directory) -> dict:
    """Every file under ``directory`` (relative path -> bytes): outputs and inputs unchanged."""
    return {p.relative_to(directory): p.read_bytes() for p in directory.rglob("*")
            if p.is_file()}


def tiny_model(directory, seed=0, **overrides):
    """A random tiny model with confident predictions (large embedding), saved to directory;
    ``overrides`` are ModelConfig values over the defaults here."""
    import torch

    from genossm.model import GenoSSM, ModelConfig, save_model

    torch.manual_seed(seed)
    config = ModelConfig(**{**dict(d_model=16, n_layer=2, d_state=8, headdim=8, chunk_size=16,
                                   initializer_range=0.5), **overrides})
    model = GenoSSM(config).eval()
    save_model(model, directory)
    return model


def job_counts(output: str) -> dict[str, int]:
    """Snakemake's "Job stats" table of a dry run."""
    lines = output[output.index("Job stats:"):].splitlines()[3:]
    counts = {}
    for line in lines:
        fields = line.split()
        if len(fields) != 2 or not fields[1].isdigit():
            break
        counts[fields[0]] = int(fields[1])
    return counts
