"""SAM / BAM / CRAM and FASTQ reads into a token store's reads group, read with pysam."""

from __future__ import annotations

import sys
from collections import Counter
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path

from genossm import alphabet
from genossm.errors import InputError
from genossm.store import StoreWriter
from genossm.tokenize.compressed import (
    _DECOMPRESS_ERRORS,
    GZIP_MAGIC,
    _is_gzip,
    _open_decompressed,
    gzip_fault,
    gzip_fault_error,
    progress_bar,
)

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
    summary = ReadsSummary(path=str(path), format=fmt, first_read=store.reads.count,
                           filters=asdict(filt))
    with _htslib_quiet():
        try:
            aln = pysam.AlignmentFile(str(path), mode, threads=max(1, threads),
                                      check_sq=False, **kwargs)
        except (OSError, ValueError) as e:
            raise _open_error(path, fmt, e) from None
        try:
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
            summary = _write_reads(
                path, store, summary, _alignments(it, filt, store.reads.reference_id), OSError,
                lambda e, number: _read_error(path, fmt, aln, e, number + 1), progress)
        except BaseException:
            with suppress(OSError):   # after a failed read, closing fails as well
                aln.close()
            raise
        try:
            aln.close()
        except OSError as e:
            raise InputError(path, f"cannot read {fmt.upper()} to its end ({e})",
                             place="end of file") from None
    return summary


@contextmanager
def _htslib_quiet():
    """htslib's own messages off (restored after): a CRAM read without a .crai prints
    "[E::cram_index_load] ..." on every successful run, a damaged file several lines; genossm
    reports each fault in its one line. So is pysam's report of a file that fails to close
    when the object of a failed open is freed (through sys.excepthook and unraisablehook)."""
    import pysam

    def quiet(report):
        def hook(*args):
            error = args[1] if len(args) > 1 else args[0].exc_value
            if not (isinstance(error, OSError) and "Closing failed" in str(error)):
                report(*args)
        return hook

    saved = pysam.set_verbosity(0), sys.excepthook, sys.unraisablehook
    sys.excepthook, sys.unraisablehook = quiet(saved[1]), quiet(saved[2])
    try:
        yield
    finally:
        pysam.set_verbosity(saved[0])
        sys.excepthook, sys.unraisablehook = saved[1:]


def _open_error(path: Path, fmt: str, error: Exception) -> InputError:
    """The error for a SAM/BAM/CRAM that pysam cannot open: a damaged BGZF block in its
    header, where zlib finds one, else pysam's words."""
    if "EOF marker" in str(error):   # pysam: "no BGZF EOF marker; file may be truncated"
        return InputError(path, "no BGZF end-of-file marker (truncated file?)",
                          place=f"compressed byte {path.stat().st_size:,} (end of file)")
    fault = fmt != "cram" and _is_gzip(path) and gzip_fault(path, text_limit=4 << 20)
    if fault:
        return gzip_fault_error(path, fault, container="BGZF", text_lines=False)
    return InputError(path, f"cannot open as {fmt.upper()} ({error})")


def _read_error(path: Path, fmt: str, aln, error: Exception, number: int) -> InputError:
    """The error for a SAM/BAM/CRAM that fails while reading record ``number``: the BGZF
    block that fails to decompress, where one does (htslib is then at that block), else the
    record (and for SAM its line)."""
    place = f"record {number:,}"
    if fmt != "cram" and _is_gzip(path):
        try:
            block = aln.tell() >> 16
        except (OSError, ValueError):
            block = 0
        with open(path, "rb") as fh:
            fh.seek(block)
            at_block = fh.read(2) == GZIP_MAGIC
        fault = at_block and gzip_fault(path, block, blocks=1)
        if fault:
            return gzip_fault_error(path, fault, container="BGZF", place=place,
                                    text_lines=False)
    if fmt == "sam":
        with suppress(*_DECOMPRESS_ERRORS):
            place += f", line {_sam_header_lines(path) + number:,}"
        return InputError(path, "malformed SAM line", place=place)
    if fmt == "cram":
        return InputError(path, "cannot decode the CRAM record: corrupt or truncated data, or "
                                "a --reference that does not match the file's", place=place)
    return InputError(path, f"corrupt or truncated BAM data ({error})", place=place)


def _sam_header_lines(path: Path) -> int:
    n = 0
    with open(path, "rb") as raw:
        for line in _open_decompressed(raw):
            if line[:1] != b"@":
                break
            n += 1
    return n


def _alignments(reads, filt: ReadFilter, reference_id):
    """(record number, name, sequence, fields) of each read that passes ``filt``, or (record
    number, reason) for one that does not."""
    for number, read in enumerate(reads, start=1):
        if read.flag & filt.exclude_flags:
            yield number, "flag"
            continue
        if read.mapping_quality < filt.min_mapq:
            yield number, "mapq"
            continue
        seq = read.query_sequence   # decoded only for reads past the flag and MAPQ filters
        if not seq:
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

    layout = None   # read only for records without sequence, which htslib gives no quality

    def has_plus_line(number: int) -> bool:
        nonlocal layout
        layout = layout or _fastq_layout(path)
        rec = _fastq_record(layout, number)
        return rec is None or rec[5] is not None

    def records(fx):
        try:
            for number, rec in enumerate(fx, start=1):
                seq = rec.sequence or ""
                if rec.quality is None and (seq or not has_plus_line(number)):
                    raise _fastq_error(path, number)   # no '+' line: not FASTQ
                if len(seq) < filt.min_length:
                    yield number, "length"
                else:
                    yield number, rec.name, seq, unaligned
        finally:
            if layout is not None:
                layout.close()

    try:
        with _htslib_quiet(), pysam.FastxFile(str(path)) as fx:
            return _write_reads(path, store, summary, records(fx), (OSError, ValueError),
                                lambda e, number: _fastq_error(path, number + 1, e), progress)
    except InputError:
        # corrupt gzip data decodes to text before its checksum is checked: what looks like a
        # malformed record in a gzip input is the compression's fault where zlib finds one
        fault = _is_gzip(path) and gzip_fault(path)
        if fault:
            raise gzip_fault_error(path, fault) from None
        raise


def _fastq_layout(path: Path):
    """(record number, line, header character, name, sequence length, quality length or None
    where there is no '+' line, whether it is the last) of each record of a FASTQ file, read
    the way htslib reads it: sequence lines up to a '+' or header line, then quality lines
    until as long as the sequence (in a damaged record, up to a line that starts with '@').
    For checks and messages only."""
    with open(path, "rb") as raw:
        lines = enumerate((t.rstrip(b"\r\n") for t in _open_decompressed(raw)), start=1)
        number, line = 0, next(lines, None)
        while line is not None:
            at, head = line
            line = next(lines, None)
            if head[:1] not in (b"@", b">"):
                continue
            number += 1
            seq, qual = 0, None
            while line is not None and line[1][:1] not in (b"@", b">", b"+"):
                seq += len(line[1])
                line = next(lines, None)
            if line is not None and line[1][:1] == b"+":
                qual, line = 0, next(lines, None)
                # the first quality line, whatever it starts with, unless it looks like the
                # next record's header
                if line is not None and (line[1][:1] != b"@" or len(line[1]) == seq):
                    qual, line = len(line[1]), next(lines, None)
                while line is not None and qual < seq and line[1][:1] != b"@":
                    qual += len(line[1])
                    line = next(lines, None)
            name = (head[1:].split() or [b""])[0].decode(errors="replace")
            yield number, at, head[:1], name, seq, qual, line is None


def _fastq_record(layout, number: int):
    """Record ``number`` from a ``_fastq_layout`` iterator (advanced past it), or None."""
    return next((rec for rec in layout if rec[0] == number), None)


def _fastq_error(path: Path, number: int, error: Exception | None = None) -> InputError:
    """The error for FASTQ record ``number``, which htslib could not read (``error``) or read
    without a quality string."""
    try:
        rec = _fastq_record(_fastq_layout(path), number)
    except _DECOMPRESS_ERRORS:
        rec = None
    if rec is None:
        return InputError(path, f"malformed or truncated FASTQ ({error})",
                          place=f"record {number:,}")
    _, line, head, name, seq, qual, last = rec
    place = f"read {name!r} (record {number:,}, line {line:,})"
    truncated = " (truncated file?)" if last else ""
    if head == b">":
        what = "a FASTA record ('>' header) in a FASTQ file"
    elif qual is None:
        what = ("no '+' line or quality string after the sequence" if seq else
                "a header line alone: no sequence, '+' line or quality string") + truncated
    elif qual == 0 and seq:
        what = "no quality string after the '+' line" + truncated
    elif qual != seq:
        what = f"quality string has {qual:,} characters, sequence has {seq:,}"
    else:
        what = f"malformed or truncated FASTQ ({error})"
    return InputError(path, what, place=place)


def _write_reads(path: Path, store: StoreWriter, summary: ReadsSummary, reads, errors,
                 describe, progress: bool) -> ReadsSummary:
    """Encode and store what ``reads`` yields: (record number, name, sequence, fields) for a
    kept read, (record number, reason) for a dropped one. An exception of type ``errors``
    while reading is bad input: ``describe(exception, last record number)`` gives its
    InputError."""
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
        raise describe(e, number) from None
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
        self.bar = progress_bar(progress, unit=" reads", desc=path.name)
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
