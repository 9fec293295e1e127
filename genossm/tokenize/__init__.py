"""Stage 1: FASTA / FASTQ / SAM / BAM / CRAM -> token store.

The format of each input is sniffed from its content (``fasta.sniff_format``); FASTA records
become contigs (``fasta.py``), reads go into the reads group (``reads.py``), all into one store
written through ``StoreWriter`` (docs/design.md, "Token store").
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from genossm.errors import InputError
from genossm.store import DEFAULT_CHUNK_SIZE, StoreWriter
from genossm.tokenize.fasta import sniff_format, tokenize_fasta
from genossm.tokenize.reads import ReadFilter, parse_flags, tokenize_fastq, tokenize_reads

__all__ = ["ReadFilter", "parse_flags", "sniff_format", "tokenize"]


def tokenize(inputs: list[Path], output: Path, *, force: bool = False,
             chunk_size: int = DEFAULT_CHUNK_SIZE, threads: int = 1,
             read_filter: ReadFilter | None = None, reference: Path | None = None,
             progress: bool = True) -> dict:
    """Tokenize every input into one new store at ``output``; returns a summary dict."""
    import zarr

    read_filter = read_filter or ReadFilter()
    inputs = [Path(p) for p in inputs]
    for p in inputs:
        if not p.is_file():
            raise InputError(p, "no such file")
    formats = [sniff_format(p) for p in inputs]
    if read_filter.region and not any(f in ("sam", "bam", "cram") for f in formats):
        raise InputError(None, "--region applies to SAM/BAM/CRAM inputs, and none was given")
    sources = []
    with zarr.config.set({"threading.max_workers": max(1, threads),
                          "async.concurrency": max(1, 2 * threads)}), \
            StoreWriter(output, inputs=inputs + [reference], force=force,
                        chunk_size=chunk_size, threads=threads) as store:
        for path, fmt in zip(inputs, formats, strict=True):
            if fmt == "fasta":
                summary = tokenize_fasta(path, store, progress=progress)
            elif fmt == "fastq":
                summary = tokenize_fastq(path, store, read_filter, progress=progress)
            else:
                summary = tokenize_reads(path, fmt, store, read_filter, reference=reference,
                                         threads=threads, progress=progress)
            sources.append(asdict(summary))
        store.commit(sources)
    fasta = [s for s in sources if s["format"] == "fasta"]
    reads = [s for s in sources if s["format"] != "fasta"]
    return {"output": str(output), "sources": sources,
            "contigs": sum(s["contigs"] for s in fasta),
            "bases": sum(s["bases"] for s in fasta),
            "n_count": sum(s["n_count"] for s in fasta),
            "iupac_count": sum(s["iupac_count"] for s in fasta),
            "empty_records": sum(len(s["empty_records"]) for s in fasta),
            "reads": sum(s["reads"] for s in reads),
            "read_bases": sum(s["bases"] for s in reads)}
