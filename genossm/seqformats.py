"""Sequence files beyond FASTA, read through Biopython: GenBank/EMBL flat files and UCSC 2bit;
the format sniffed from content, not from the file's name (docs/design.md, "Token store").

A contract module: ``tokenize`` (which writes these files into a store) and ``reference``
(which reads them by region for score and embed) both read them through here, since stages
never import each other. It owns the sniffing (``sequence_file_format``, ``content_head``), the
reading (``flat_file_records``, ``TwoBitFile``) and their errors: Biopython's become one
InputError naming the file, the record and the line.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from isal import igzip

from genossm.errors import InputError

log = logging.getLogger("genossm.seqformats")

GZIP_MAGIC = b"\x1f\x8b"
# The 2bit signature 0x1A412743, little- and big-endian.
TWOBIT_SIGNATURES = (b"\x43\x27\x41\x1a", b"\x1a\x41\x27\x43")
FLAT_FILE_FORMATS = {"genbank": "GenBank", "embl": "EMBL"}


def sequence_file_format(head: bytes) -> str | None:
    """'twobit', 'genbank' or 'embl' when ``head`` (a file's first 8 bytes, decompressed)
    starts one of them; None otherwise (FASTA and the read formats are sniffed by their
    readers)."""
    if head[:4] in TWOBIT_SIGNATURES:
        return "twobit"
    if head.startswith(b"LOCUS "):
        return "genbank"
    if head.startswith(b"ID   "):
        return "embl"
    return None


def content_head(path: Path, size: int = 8) -> tuple[bytes, bool]:
    """The first ``size`` bytes of the file's content (gunzipped) and whether it is gzip."""
    try:
        with open(path, "rb") as raw:
            compressed = raw.read(2) == GZIP_MAGIC
            raw.seek(0)
            if not compressed:
                return raw.read(size), False
            return zlib.decompressobj(31).decompress(raw.read(1 << 16), size), True
    except zlib.error:
        return b"", True   # damaged gzip: the FASTA readers say what is wrong
    except OSError as e:
        raise InputError(path, f"cannot read ({e.strerror})") from None


# --------------------------------------------------------------------------- GenBank, EMBL


@dataclass
class FlatRecord:
    """One GenBank/EMBL record as Biopython parsed it: ``record`` (a SeqRecord whose sequence
    is upper-case DNA letters), its name (the record's id, ACCESSION.VERSION) and ``line``, the
    line of the file where it starts (the LOCUS or ID line)."""
    name: str
    line: int
    record: object

    @property
    def topology(self) -> str | None:
        """'circular' or 'linear' as the record states it; None where it does not."""
        topology = self.record.annotations.get("topology")
        return topology if topology in ("circular", "linear") else None

    @property
    def place(self) -> str:
        """Where the record is, for messages: its name and the line where it starts."""
        return _record_place(self.name, self.line)


class _CountedLines:
    """The text stream that Biopython's scanners read (they call only ``readline``, and
    ``read(0)`` to see the mode), counting lines: where a record starts and where parsing
    stopped."""

    def __init__(self, stream, first_word: str):
        self.stream, self.first_word = stream, first_word
        self.line = 0               # of the last line read
        self.at_end = False
        self.record_line = 0        # of the last LOCUS / ID line
        self.record_name = None     # the name on it

    def read(self, size: int = -1) -> str:
        return self.stream.read(size)

    def readline(self) -> str:
        text = self.stream.readline()
        if not text:
            self.at_end = True
            return text
        self.line += 1
        if text.startswith(self.first_word):
            self.record_line = self.line
            words = text[len(self.first_word):].split(None, 1)
            self.record_name = words[0].rstrip(";") if words else None
        return text


@contextmanager
def _open_text(path: Path):
    """``path`` (plain or gzip) as text; bytes that are not UTF-8 become U+FFFD (they are no
    sequence letter, and are reported as such where they matter)."""
    with open(path, "rb") as raw:
        compressed = raw.read(2) == GZIP_MAGIC
        raw.seek(0)
        stream = igzip.IGzipFile(fileobj=raw, mode="rb") if compressed else raw
        with io.TextIOWrapper(stream, encoding="utf-8", errors="replace") as text:
            yield text


def flat_file_records(path, fmt: str) -> Iterator[FlatRecord]:
    """Every record of a GenBank or EMBL file (``fmt`` 'genbank' or 'embl'; plain or gzip) as
    Biopython parses it. A record Biopython cannot parse (cut short, without an end marker, a
    malformed line), without sequence (no ORIGIN / SQ section) or of protein is an InputError
    naming the file, the record and the line; Biopython's warnings are logged with the same
    place. An error of the gzip stream itself is raised as is (zlib's, ISA-L's, OSError), for
    the caller to diagnose."""
    from Bio import BiopythonWarning, SeqIO

    path = Path(path)
    first_word = {"genbank": "LOCUS", "embl": "ID"}[fmt]
    with _open_text(path) as text:
        lines = _CountedLines(text, first_word)
        records = SeqIO.parse(lines, fmt)
        while True:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", BiopythonWarning)
                try:
                    record = next(records)
                except StopIteration:
                    break
                except (ValueError, AssertionError, IndexError, KeyError, AttributeError,
                        TypeError) as e:   # what Biopython's scanners raise on bad input
                    raise _parse_error(path, lines, e) from None
            place = _record_place(lines.record_name, lines.record_line)
            for warning in caught:
                log.warning("%s: %s: %s", path, place, str(warning.message).splitlines()[0])
            flat = FlatRecord(record.id, lines.record_line, record)
            _check_flat_record(path, flat)
            yield flat


def _record_place(name: str | None, line: int) -> str:
    return f"record {name!r} (line {line})" if name else f"line {line}"


def _parse_error(path: Path, lines: _CountedLines, error: Exception) -> InputError:
    """Biopython's error, at the line where its scanner stopped, in the record it was in."""
    what = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    where = [_record_place(lines.record_name, lines.record_line)] if lines.record_line else []
    where.append(f"line {lines.line} (end of file)" if lines.at_end else f"line {lines.line}")
    return InputError(path, f"cannot parse ({what})", place=", ".join(where))


def _check_flat_record(path: Path, flat: FlatRecord) -> None:
    """A record without sequence, or of protein, is an error."""
    record, place = flat.record, flat.place
    molecule = str(record.annotations.get("molecule_type", ""))
    if "protein" in molecule.lower():
        raise InputError(path, "a protein record; genossm reads DNA", place=place)
    if not record.seq.defined or len(record.seq) == 0:
        raise InputError(path, "no sequence (no ORIGIN/SQ section: a CONTIG or WGS master "
                               "record?)", place=place)


def flat_file_conversion(path, fmt: str) -> str:
    """The command that converts a GenBank/EMBL file to an indexed FASTA."""
    fasta = f"{Path(path).name}.fa"
    return (f"python -c \"from Bio import SeqIO; SeqIO.convert('{path}', '{fmt}', "
            f"'{fasta}', 'fasta')\" && samtools faidx {fasta}")


# --------------------------------------------------------------------------- 2bit


class TwoBitFile:
    """A UCSC 2bit file (either byte order) read through Biopython by seeking: its records'
    lengths, and the letters of any span (lower case where soft-masked, N in N blocks)."""

    def __init__(self, path):
        from Bio.SeqIO.TwoBitIO import TwoBitIterator

        self.path = Path(path)
        try:
            self._handle = open(self.path, "rb")
        except OSError as e:
            raise InputError(self.path, f"cannot read ({e.strerror})") from None
        try:
            if self._handle.read(2) == GZIP_MAGIC:
                raise InputError(self.path, "a gzip-compressed 2bit file; 2bit is read by "
                                            f"seeking: decompress it first (gunzip "
                                            f"{self.path})")
            self._check_layout()
            self._handle.seek(0)
            try:
                self._sequences = dict(TwoBitIterator(self._handle).sequences)
            except (ValueError, RuntimeError, OSError) as e:
                raise InputError(self.path, f"not a readable 2bit file: its index is cut short "
                                            f"or corrupt ({e})") from None
            self.lengths = {name: len(seq) for name, seq in self._sequences.items()}
        except BaseException:
            self._handle.close()
            raise

    def _check_layout(self) -> None:
        """Every record's header and packed bases lie inside the file, so that Biopython never
        reads past its end nor sizes its block tables from damaged counts."""
        fh = self._handle
        size = os.fstat(fh.fileno()).st_size
        fh.seek(0)
        header = fh.read(16)
        order = "little" if header[:4] == TWOBIT_SIGNATURES[0] else "big"

        def number(data: bytes) -> int:
            return int.from_bytes(data, order)

        if len(header) >= 16 and number(header[4:8]) == 1:
            fasta = f"{self.path.name.removesuffix('.2bit')}.fa"
            raise InputError(self.path, "a version-1 2bit file (64-bit offsets, for genomes over "
                                        "4 GB), which Biopython cannot read; convert it to FASTA: "
                                        f"twoBitToFa {self.path} {fasta} && bgzip {fasta} && "
                                        f"samtools faidx {fasta}.gz")
        if len(header) < 16 or number(header[4:8]) != 0:
            return   # Biopython says what is wrong
        entries = []
        for index in range(number(header[8:12])):
            length = fh.read(1)
            name = fh.read(length[0]) if length else b""
            offset = fh.read(4)
            if not length or len(name) < length[0] or len(offset) < 4:
                raise InputError(self.path, "cut short inside its index of records",
                                 place=f"index entry {index + 1:,}")
            entries.append((name.decode("ascii", "replace"), number(offset)))
        for name, offset in entries:
            fh.seek(offset)
            head = fh.read(8)
            end = offset + 8
            if len(head) == 8:
                end += 8 * number(head[4:8])
                fh.seek(end)
                masks = fh.read(4)
                end += 4 + (8 * number(masks) if len(masks) == 4 else 0) + 4
                end += (number(head[:4]) + 3) // 4
            if len(head) < 8 or end > size:
                raise InputError(self.path, f"cut short or corrupt: the record runs to byte "
                                            f"{end:,} of a file of {size:,} bytes",
                                 place=f"record {name!r}")

    def text(self, name: str, start: int, end: int) -> str:
        """The letters of [start, end) of record ``name``."""
        try:
            return bytes(self._sequences[name][start:end]).decode("ascii")
        except (ValueError, RuntimeError, OSError) as e:
            bases = f"base {end:,}" if end - start == 1 else f"bases {start + 1:,}-{end:,}"
            raise InputError(self.path, f"cut short or corrupt ({e})",
                             place=f"record {name!r}, {bases}") from None

    def close(self) -> None:
        self._handle.close()

