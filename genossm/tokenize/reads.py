"""SAM / BAM / CRAM and FASTQ reads into a token store's reads group, read with pysam."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from genossm import alphabet
from genossm.errors import InputError
from genossm.store import StoreWriter

FLAG_NAMES = {"PAIRED": 0x1, "PROPER_PAIR": 0x2, "UNMAP": 0x4, "MUNMAP": 0x8, "REVERSE": 0x10,
              "MREVERSE": 0x20, "READ1": 0x40, "READ2": 0x80, "SECONDARY": 0x100,
              "QCFAIL": 0x200, "DUP": 0x400, "SUPPLEMENTARY": 0x800}
DEFAULT_EXCLUDE_FLAGS = 0x100 | 0x200 | 0x400 | 0x800   # SECONDARY, QCFAIL, DUP, SUPPLEMENTARY


def parse_flags(text: str) -> int:
    """samtools-style flags: an integer (decimal or 0x hex) or comma-separated names."""
    text = text.strip()
    try:
        return int(text, 0)
    except ValueError:
        pass
    value = 0
    for name in filter(None, (w.strip().upper() for w in text.split(","))):
        if name not in FLAG_NAMES:
            raise ValueError(f"unknown flag name {name!r}; known: {', '.join(FLAG_NAMES)}")
        value |= FLAG_NAMES[name]
    return value


@dataclass
class ReadFilter:
    exclude_flags: int = DEFAULT_EXCLUDE_FLAGS
    min_mapq: int = 0
    min_length: int = 1
    region: str | None = None


@dataclass
class ReadsSummary:
    path: str
    format: str
    reads: int = 0
    bases: int = 0
    first_read: int = 0
    filters: dict = field(default_factory=dict)
    dropped: dict = field(default_factory=dict)


def tokenize_reads(path: Path, fmt: str, store: StoreWriter, filt: ReadFilter, *,
                   reference: Path | None = None, threads: int = 1,
                   progress: bool = True) -> ReadsSummary:
    """Stream the reads of a SAM/BAM/CRAM file that pass ``filt`` into the store."""
    import pysam

    if fmt == "cram" and reference is None:
        raise InputError(path, "CRAM input needs --reference FASTA")
    mode = {"sam": "r", "bam": "rb", "cram": "rc"}[fmt]
    kwargs = {"reference_filename": str(reference)} if fmt == "cram" else {}
    try:
        aln = pysam.AlignmentFile(str(path), mode, threads=max(1, threads),
                                  check_sq=False, **kwargs)
    except (OSError, ValueError) as e:
        raise InputError(path, f"cannot open as {fmt.upper()} ({e})") from None
    summary = ReadsSummary(path=str(path), format=fmt, first_read=store.reads.count,
                           filters=asdict(filt))
    with aln:
        if filt.region:
            if not aln.has_index():
                raise InputError(path, f"--region {filt.region} needs an index "
                                       "(.bai/.csi/.crai); create one with samtools index")
            try:
                it = aln.fetch(region=filt.region)
            except ValueError as e:
                raise InputError(path, f"bad region {filt.region!r} ({e})") from None
        else:
            it = aln.fetch(until_eof=True)
        return _write_reads(
            path, store, summary, _alignments(it, filt, store.reads.reference_id), OSError,
            lambda e, number: (f"truncated or corrupt {fmt.upper()} ({e})",
                               f"after record {number}"), progress)


def _alignments(reads, filt: ReadFilter, reference_id):
    """(record number, name, sequence, fields) of each read that passes ``filt``, or (record
    number, reason) for one that does not."""
    for number, read in enumerate(reads, start=1):
        seq = read.query_sequence
        if read.flag & filt.exclude_flags:
            yield number, "flag"
        elif read.mapping_quality < filt.min_mapq:
            yield number, "mapq"
        elif not seq:
            yield number, "no_sequence"
        elif len(seq) < filt.min_length:
            yield number, "length"
        else:
            mapped = not read.is_unmapped
            yield number, read.query_name, seq, {
                "flag": read.flag, "mapq": read.mapping_quality,
                "reference_id": reference_id(read.reference_name if read.reference_id >= 0
                                             else None),
                "position": read.reference_start if mapped else -1}


def tokenize_fastq(path: Path, store: StoreWriter, filt: ReadFilter, *,
                   progress: bool = True) -> ReadsSummary:
    """Stream the reads of a FASTQ file (plain or gzip) into the store's reads group, as
    unaligned reads (flag UNMAP, MAPQ 255 = unavailable); only ``min_length`` applies."""
    import pysam

    summary = ReadsSummary(path=str(path), format="fastq", first_read=store.reads.count,
                           filters={"min_length": filt.min_length})
    unaligned = {"flag": 0x4, "mapq": 255, "reference_id": -1, "position": -1}

    def records(fx):
        for number, rec in enumerate(fx, start=1):
            seq = rec.sequence or ""
            if len(seq) < filt.min_length:
                yield number, "length"
            else:
                yield number, rec.name, seq, unaligned

    with pysam.FastxFile(str(path)) as fx:
        return _write_reads(
            path, store, summary, records(fx), (OSError, ValueError),
            lambda e, number: (f"malformed or truncated FASTQ ({e})", f"record {number + 1}"),
            progress)


def _write_reads(path: Path, store: StoreWriter, summary: ReadsSummary, reads, errors,
                 describe, progress: bool) -> ReadsSummary:
    """Encode and store what ``reads`` yields: (record number, name, sequence, fields) for a
    kept read, (record number, reason) for a dropped one. An exception of type ``errors``
    while reading is bad input: ``describe(exception, last record number)`` gives the
    message and the place."""
    writer = store.reads
    dropped: Counter = Counter()
    batch = _ReadBatcher(path, writer, summary, progress)
    number = 0
    try:
        for number, *read in reads:
            if len(read) == 1:
                dropped[read[0]] += 1
            else:
                name, seq, fields = read
                batch.add(number, name, seq, **fields)
    except errors as e:
        message, place = describe(e, number)
        raise InputError(path, message, place=place) from None
    else:
        batch.flush()
    finally:
        batch.close()
    summary.reads = writer.count - summary.first_read
    summary.dropped = dict(dropped)
    return summary


class _ReadBatcher:
    """Encodes reads and hands them to the store's reads writer in batches."""

    SIZE = 16384

    def __init__(self, path: Path, writer, summary: ReadsSummary, progress: bool):
        self.path, self.writer, self.summary = path, writer, summary
        self.bar = tqdm(unit=" reads", desc=path.name, leave=False,
                        disable=None if progress else True)
        self._reset()

    def _reset(self):
        self.codes, self.names = [], []
        self.fields = {"flag": [], "mapq": [], "reference_id": [], "position": []}

    def add(self, number: int, name: str, seq: str, **fields) -> None:
        try:
            codes = alphabet.encode(seq)
        except ValueError as e:
            raise InputError(self.path, str(e),
                             place=f"read {name!r} (record {number})") from None
        self.codes.append(codes)
        self.names.append(name.encode())
        for key, value in fields.items():
            self.fields[key].append(value)
        self.summary.bases += codes.size
        if len(self.codes) == self.SIZE:
            self.flush()

    def flush(self) -> None:
        self.writer.append_batch(self.codes, self.names, self.fields)
        self.bar.update(len(self.codes))
        self._reset()

    def close(self) -> None:
        self.bar.close()
