"""Stage 1: FASTA / GenBank / EMBL / 2bit / FASTQ / SAM / BAM / CRAM -> token store.

The format of each input is sniffed from its content (``fasta.sniff_format``); FASTA records
become contigs (``fasta.py``), and so do GenBank, EMBL and 2bit records (``flatfile.py``, with
GenBank/EMBL features optionally written as a BED beside the store), reads go into the reads
group (``reads.py``), all into one store written through ``StoreWriter`` (docs/design.md, "Token
store").
"""

from __future__ import annotations

from contextlib import ExitStack, closing
from dataclasses import asdict
from pathlib import Path

from genossm.errors import InputError
from genossm.fileio import StagedOutputs, check_distinct, claim_outputs
from genossm.store import DEFAULT_CHUNK_SIZE, StoreWriter
from genossm.tokenize.fasta import sniff_format, tokenize_fasta
from genossm.tokenize.flatfile import (
    FEATURES_BED,
    FLAT_FORMATS,
    FeatureBed,
    default_features_bed,
    parse_feature_types,
    tokenize_flat_file,
    tokenize_twobit,
)
from genossm.tokenize.reads import ReadFilter, parse_flags, tokenize_fastq, tokenize_reads

__all__ = ["ReadFilter", "parse_flags", "sniff_format", "tokenize"]


def tokenize(inputs: list[Path], output: Path, *, force: bool = False,
             chunk_size: int = DEFAULT_CHUNK_SIZE, threads: int = 1,
             read_filter: ReadFilter | None = None, reference: Path | None = None,
             features: str | None = None, features_bed: Path | None = None,
             progress: bool = True) -> dict:
    """Tokenize every input into one new store at ``output``; returns a summary dict.
    ``features`` (types, comma-separated: "CDS,gene") writes those features of the GenBank/EMBL
    inputs as a BED at ``features_bed`` (default: beside the store, STORE.features.bed)."""
    read_filter = read_filter or ReadFilter()
    inputs = [Path(p) for p in inputs]
    for p in inputs:
        if not p.is_file():
            raise InputError(p, "no such file")
    formats = [sniff_format(p) for p in inputs]
    if read_filter.region and not any(f in ("sam", "bam", "cram") for f in formats):
        raise InputError(None, "--region applies to SAM/BAM/CRAM inputs, and none was given")
    feature_types = parse_feature_types(features)
    bed_path = _features_bed_path(output, feature_types, features_bed, formats)
    if bed_path is not None:
        check_distinct({"the store (-o)": Path(output),
                        "the features BED (--features-bed)": bed_path})
        claim_outputs([(bed_path, FEATURES_BED)], inputs=inputs + [reference], force=force)
    sources = []
    with ExitStack() as stack:
        side_outputs = stack.enter_context(StagedOutputs())   # renamed after the store
        store = stack.enter_context(StoreWriter(output, inputs=inputs + [reference],
                                                force=force, chunk_size=chunk_size,
                                                threads=threads))
        bed = None
        if bed_path is not None:
            bed = stack.enter_context(closing(FeatureBed(side_outputs.file(bed_path),
                                                         feature_types)))
        for path, fmt in zip(inputs, formats, strict=True):
            if fmt == "fasta":
                summary = tokenize_fasta(path, store, progress=progress)
            elif fmt in FLAT_FORMATS:
                summary = tokenize_flat_file(path, fmt, store, features=bed, progress=progress)
            elif fmt == "twobit":
                summary = tokenize_twobit(path, store, progress=progress)
            elif fmt == "fastq":
                summary = tokenize_fastq(path, store, read_filter, progress=progress)
            else:
                summary = tokenize_reads(path, fmt, store, read_filter, reference=reference,
                                         threads=threads, progress=progress)
            sources.append(asdict(summary))
        if bed is not None:
            bed.check_found(bed_path)
            bed.close()
        store.commit(sources)
    contigs = [s for s in sources if "contigs" in s]
    reads = [s for s in sources if "reads" in s]
    return {"output": str(output), "sources": sources,
            "contigs": sum(s["contigs"] for s in contigs),
            "bases": sum(s["bases"] for s in contigs),
            "n_count": sum(s["n_count"] for s in contigs),
            "iupac_count": sum(s["iupac_count"] for s in contigs),
            "empty_records": sum(len(s["empty_records"]) for s in contigs),
            "reads": sum(s["reads"] for s in reads),
            "read_bases": sum(s["bases"] for s in reads),
            "features_bed": None if bed_path is None else str(bed_path),
            "features": sum(sum(s.get("features", {}).values()) for s in contigs)}


def _features_bed_path(output, types: list[str] | None, features_bed,
                       formats: list[str]) -> Path | None:
    """Where the features BED goes (None: no features asked for); checks the options."""
    if types is None:
        if features_bed is not None:
            raise InputError(None, "--features-bed needs --features TYPES (e.g. CDS,gene)")
        return None
    if not any(f in FLAT_FORMATS for f in formats):
        raise InputError(None, "--features applies to GenBank/EMBL inputs, and none was given")
    return Path(features_bed) if features_bed is not None else default_features_bed(output)
