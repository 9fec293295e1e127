"""FASTA into a token store, and the sniffing of every input's format.

FASTA is parsed here, block by block (plain, gzip or BGZF; any line width; ``\\r\\n``), as
``compressed._read_blocks`` yields the decompressed text, so memory stays at one contig's worth
of compressed output plus a few blocks.
"""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from genossm import alphabet
from genossm.errors import InputError
from genossm.seqformats import sequence_file_format
from genossm.store import StoreWriter
from genossm.tokenize import compressed
from genossm.tokenize.compressed import (
    _DECOMPRESS_ERRORS,
    GZIP_MAGIC,
    _DecompressError,
    _gzip_head,
    _is_gzip,
    _read_blocks,
    decompress_error,
    gzip_fault,
    gzip_fault_error,
    line_at,
    progress_bar,
)

log = logging.getLogger("genossm.tokenize")

# --------------------------------------------------------------------------- input sniffing


SAM_HEADER_TAGS = (b"@HD\t", b"@SQ\t", b"@RG\t", b"@PG\t", b"@CO\t")
_HEAD_SIZE = 8   # enough for every signature sniffed


def sniff_format(path: Path) -> str:
    """'fasta', 'fastq', 'sam', 'bam', 'cram', 'genbank', 'embl' or 'twobit', from the file's
    first bytes (not its name)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(_HEAD_SIZE)
    except OSError as e:
        raise InputError(path, f"cannot read ({e.strerror})") from None
    if not head:
        raise InputError(path, "empty file")
    if head[:4] == b"CRAM":
        return "cram"
    if head[:2] == GZIP_MAGIC:
        try:
            head = _gzip_head(path, _HEAD_SIZE)
        except _DECOMPRESS_ERRORS as e:
            raise decompress_error(path, e) from None
        if head[:4] == b"BAM\x01":
            return "bam"
        if not head:
            raise InputError(path, "empty file (gzip holds no data)")
    other = sequence_file_format(head)
    if other is not None:
        return other
    if head[:4] in SAM_HEADER_TAGS:
        return "sam"
    if head[:1] == b"@":
        return "fastq"
    return "fasta"


# --------------------------------------------------------------------------- FASTA


@dataclass
class ContigSummary:
    """What one input file of contigs gave the store (its entry in the store's sources): the
    contigs and bases written with their N, IUPAC and soft-masked bases (``ContigCounts.close``
    adds each contig), and the records skipped for having no sequence. FASTA's
    (``FastaSummary``), and GenBank/EMBL/2bit's with the features BED's counts
    (``flatfile.FlatFileSummary``)."""
    path: str
    format: str
    contigs: int = 0
    bases: int = 0
    n_count: int = 0
    iupac_count: int = 0
    softmasked: int = 0
    empty_records: list[str] = field(default_factory=list)


def _count_n(upper: bytes) -> int:
    """How many N ``upper`` holds. Most blocks of a genome hold none, and ``in`` (memchr) finds
    that several times faster than ``count`` counts them."""
    return upper.count(b"N") if b"N" in upper else 0


@dataclass
class ContigCounts:
    """A contig being written into its ContigWriter, piece by piece (``append``), with its
    length and its N, IUPAC and soft-masked bases counted for its attributes and the file's
    summary (``close``). FASTA's records and GenBank/EMBL/2bit's (``flatfile``) alike."""
    writer: object
    length: int = 0
    n_count: int = 0
    iupac_count: int = 0
    softmasked: int = 0

    def append(self, tagged: np.ndarray, top: int, upper: bytes) -> None:
        """One piece: ``tagged``, its letters through ``alphabet.TAGGED_BYTES`` (none invalid),
        ``top`` the largest of them and ``upper`` the letters in upper case."""
        if top < alphabet.SOFTMASK_BIT:  # the common case: upper-case A C G T N only
            self.writer.append(tagged, None)
            self.n_count += _count_n(upper)
        else:
            codes = tagged & (alphabet.SOFTMASK_BIT - 1)
            mask = (tagged & alphabet.SOFTMASK_BIT) != 0
            self.writer.append(codes, mask)
            upper_n = _count_n(upper)
            # without ambiguity letters (no IUPAC_BIT) the N are the upper-case letters' N
            n = upper_n if top < alphabet.IUPAC_BIT else \
                int(np.count_nonzero(codes == alphabet.N))
            self.n_count += n
            self.iupac_count += n - upper_n
            self.softmasked += int(np.count_nonzero(mask))
        self.length += tagged.size

    def close(self, summary: ContigSummary, *, md5: str, source: str, **attrs) -> None:
        """Finish the contig (its counts, ``md5`` of its upper-case letters, ``source`` and
        ``attrs`` as attributes) and add it to ``summary``."""
        self.writer.finish(n_count=self.n_count, iupac_count=self.iupac_count,
                           softmasked=self.softmasked, md5=md5, source=source, **attrs)
        summary.contigs += 1
        summary.bases += self.length
        summary.n_count += self.n_count
        summary.iupac_count += self.iupac_count
        summary.softmasked += self.softmasked


@dataclass(kw_only=True)
class _Record(ContigCounts):
    name: str
    offset: int          # of its header line in the decompressed text
    hasher: ThreadPoolExecutor   # one thread: md5 updates run in order, off the parsing thread
    md5: object = field(default_factory=hashlib.md5)
    pending: list = field(default_factory=list)

    def digest(self, upper: bytes) -> None:
        if len(self.pending) > 2:
            self.pending.pop(0).result()
        self.pending.append(self.hasher.submit(self.md5.update, upper))

    def hexdigest(self) -> str:
        for f in self.pending:
            f.result()
        return self.md5.hexdigest()


class _RecordPlace:
    """'FILE: record NAME (line N)', with N found only if the text is ever needed."""

    def __init__(self, path: Path, name: str, offset: int):
        self.path, self.name, self.offset = path, name, offset

    def __str__(self) -> str:
        return f"{self.path}: record {self.name!r} (line {line_at(self.path, self.offset)})"


@dataclass
class FastaSummary(ContigSummary):
    format: str = "fasta"


class _FastaTokenizer:
    """Consumes blocks of FASTA text and streams each record into the store writer."""

    def __init__(self, path: Path, store: StoreWriter):
        self.path, self.store = path, store
        self.summary = FastaSummary(path=str(path))
        self.record: _Record | None = None
        self.offset = 0             # decompressed bytes before the current block
        self.at_line_start = True
        self.pending_header: bytearray | None = None
        self.pending_header_offset = 0
        self.seen_records = 0
        self.empty: list[tuple[str, int]] = []   # records without sequence, not yet reported
        self.hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="genossm-md5")

    def feed(self, block: bytes) -> None:
        i, n = 0, len(block)
        if self.pending_header is not None:
            j = block.find(b"\n")
            if j < 0:
                self.pending_header += block
                if len(self.pending_header) > (1 << 20):
                    raise InputError(self.path, "header line longer than 1 MiB",
                                     place=f"line {line_at(self.path, self.pending_header_offset)}")
                self.offset += n
                return
            self.pending_header += block[:j]
            self._header(bytes(self.pending_header), self.pending_header_offset)
            self.pending_header = None
            i = j + 1
        while i < n:
            if self.at_line_start and block[i] == 0x3E:  # '>'
                j = block.find(b"\n", i)
                if j < 0:
                    self.pending_header = bytearray(block[i + 1:])
                    self.pending_header_offset = self.offset + i
                    break
                self._header(block[i + 1:j], self.offset + i)
                i = j + 1
                continue
            end = self._next_header(block, i)
            self._sequence(block[i:end], self.offset + i)
            self.at_line_start = block[end - 1] == 0x0A
            i = end
        self.offset += n

    @staticmethod
    def _next_header(block: bytes, i: int) -> int:
        """Start of the next line that begins with '>' after ``i``, or the block's end. A '>'
        inside a line is left in the sequence, where it is reported as invalid."""
        k = block.find(b">", i + 1)  # memchr: much faster than searching for b"\n>"
        while k > 0 and block[k - 1] != 0x0A:
            k = block.find(b">", k + 1)
        return len(block) if k < 0 else k

    def finish(self) -> FastaSummary:
        if self.pending_header is not None:
            self._header(bytes(self.pending_header), self.pending_header_offset)
            self.pending_header = None
        self._close_record()
        if self.seen_records == 0:
            raise InputError(self.path, "no FASTA records (no line starts with '>')")
        if self.summary.contigs == 0:
            n = self.seen_records
            raise InputError(self.path, f"no sequence in any record ({n:,} record"
                                        f"{'s' if n > 1 else ''}, headers only)")
        return self.summary

    def _header(self, text: bytes, offset: int) -> None:
        self._close_record()
        self.at_line_start = True
        self.seen_records += 1
        words = text.rstrip(b"\r").split(None, 1)
        if not words:
            raise InputError(self.path, "header with no name",
                             place=f"line {line_at(self.path, offset)}")
        try:
            name = words[0].decode("ascii")
        except UnicodeDecodeError:
            raise InputError(self.path, "non-ASCII contig name",
                             place=f"line {line_at(self.path, offset)}") from None
        place = _RecordPlace(self.path, name, offset)
        self.record = _Record(name=name, offset=offset, writer=self.store.add_contig(name, place),
                              hasher=self.hasher)

    def _sequence(self, piece: bytes, offset: int) -> None:
        # Line breaks out first: replace() copies whole lines at memcpy speed, several times
        # faster than translate() deleting them; translate() then has no byte to delete.
        letters = piece.replace(b"\n", b"")
        if b"\r" in letters:
            letters = letters.replace(b"\r", b"")
        if not letters:
            return
        tagged = np.frombuffer(letters.translate(alphabet.TAGGED_BYTES), np.uint8)
        if self.record is None:
            first = offset + len(piece) - len(piece.lstrip())
            raise InputError(self.path, "text before the first '>' header",
                             place=f"line {line_at(self.path, first)}")
        top = int(tagged.max())
        if top == alphabet.INVALID:
            self._invalid_character(piece, offset)
        # below SOFTMASK_BIT every letter is an upper-case A C G T or N
        upper = letters if top < alphabet.SOFTMASK_BIT else letters.upper()
        self.record.digest(upper)
        self.record.append(tagged, top, upper)

    def _invalid_character(self, piece: bytes, offset: int) -> None:
        raw = np.frombuffer(piece, dtype=np.uint8)
        bad = (alphabet.ENCODE_TABLE.take(raw) == alphabet.INVALID) & (raw != 10) & (raw != 13)
        pos = int(np.flatnonzero(bad)[0])
        column = pos - piece.rfind(b"\n", 0, pos)
        line = line_at(self.path, offset + pos)
        shown = chr(piece[pos]) if 32 < piece[pos] < 127 else f"\\x{piece[pos]:02x}"
        raise InputError(self.path, f"invalid character '{shown}' in sequence",
                         place=f"record {self.record.name!r}, line {line}, column {column}")

    def _close_record(self) -> None:
        rec, self.record = self.record, None
        if rec is None:
            return
        s = self.summary
        if rec.length == 0:
            self.store.drop_contig(rec.name, rec.writer)
            self.empty.append((rec.name, rec.offset))
        else:
            rec.close(s, md5=rec.hexdigest(), source=str(self.path))
        if s.contigs:   # a file with no sequence at all is an error, not a warning per record
            self._report_empty()

    def _report_empty(self) -> None:
        for name, offset in self.empty:
            line = line_at(self.path, offset)
            log.warning("%s: record %r (line %d) has no sequence; skipped", self.path, name,
                        line)
            self.summary.empty_records.append(f"{name} (line {line})")
        self.empty.clear()


def tokenize_fasta(path: Path, store: StoreWriter, *, progress: bool = True) -> FastaSummary:
    """Stream one FASTA file (plain, gzip or BGZF) into ``store``."""
    tok = _FastaTokenizer(path, store)
    bar = progress_bar(progress, total=path.stat().st_size, unit="B", unit_scale=True,
                       desc=path.name)
    try:
        try:
            with closing(_read_blocks(path, bar)) as blocks:
                for block in blocks:
                    tok.feed(block)
        except _DecompressError as e:
            raise decompress_error(path, e.cause, text_bytes=e.offset) from None
        except InputError:
            # corrupt gzip data decodes to text before its block's checksum is checked: bad
            # text in a gzip input is the compression's fault where zlib finds one up to there
            limit = tok.offset + compressed.BLOCK_SIZE   # read there: tests shrink it
            fault = _is_gzip(path) and gzip_fault(path, text_limit=limit)
            if fault:
                raise gzip_fault_error(path, fault) from None
            raise
        return tok.finish()
    finally:
        tok.hasher.shutdown(cancel_futures=True)   # never leaves its thread behind
        bar.close()

