"""The reference genome read by region (docs/design.md, "Reference").

``Reference(path)`` is the one reader of a reference for score and embed. What it reads is
decided by the file's content, not its name:

- FASTA, plain or bgzipped, with a samtools faidx index, through pysam (a plain FASTA gets its
  ``.fai`` built beside it when missing);
- FASTA whose index is missing where genossm may not write it (a read-only directory: one whose
  permissions grant no write, which genossm respects even when run as root), through pyfaidx,
  which builds the index (``.fai``, and ``.gzi`` for BGZF) in a private temporary directory;
- UCSC 2bit, either byte order, through Biopython, read by seeking (never whole);
- GenBank and EMBL flat files, plain or gzip, through Biopython, read once into memory up to
  ``FLAT_FILE_MAX_BASES`` (a larger one is refused with the command that converts it to FASTA).

Sequence comes back as alphabet codes; bases outside a contig, asked for by windows that run
past its ends, are N. 2bit, GenBank and EMBL are sniffed and parsed by ``genossm.seqformats``.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import shutil
import stat
import tempfile
import warnings
import zlib
from pathlib import Path

import numpy as np
import pysam
from isal import igzip, igzip_lib

from genossm import alphabet
from genossm.errors import InputError
from genossm.regions import Region
from genossm.seqformats import (
    FLAT_FILE_FORMATS,
    GZIP_MAGIC,
    TwoBitFile,
    content_head,
    flat_file_conversion,
    flat_file_records,
    sequence_file_format,
)

log = logging.getLogger("genossm.reference")

_BLOCK = 1 << 22
_NOT_SPACE = re.compile(rb"\S")
_UNREADABLE = (OSError, EOFError, zlib.error, gzip.BadGzipFile, igzip_lib.IsalError)

# The most bases of GenBank/EMBL that Reference holds in memory (every bacterial, organellar,
# viral and plasmid genome fits); tokenize streams record by record and has no such limit.
FLAT_FILE_MAX_BASES = 100_000_000


class _HtslibFasta:
    """An indexed FASTA through pysam (htslib builds a missing .fai of a plain FASTA)."""

    def __init__(self, path: Path):
        previous = pysam.set_verbosity(0)  # the error below says it all, in one line
        try:
            self._fasta = pysam.FastaFile(str(path))
        except (OSError, ValueError) as e:
            raise InputError(path, f"cannot open as an indexed FASTA ({e}); it must be plain "
                                   "or bgzipped (bgzip) with a samtools faidx index") from None
        finally:
            pysam.set_verbosity(previous)
        self.name = os.fsdecode(self._fasta.filename)
        self.lengths = dict(zip(self._fasta.references, self._fasta.lengths, strict=True))

    def fetch(self, contig: str, start: int, end: int) -> str:
        return self._fasta.fetch(contig, start, end)

    def close(self) -> None:
        self._fasta.close()


class _PyfaidxFasta:
    """A FASTA (plain or BGZF) without its index files, in a directory genossm may not write:
    pyfaidx builds the index in a private temporary directory, removed on close."""

    def __init__(self, path: Path, compressed: bool):
        import pyfaidx

        self.name = str(path)
        self._directory = tempfile.mkdtemp(prefix="genossm-faidx-")
        # pyfaidx knows BGZF by the name and writes the index beside the name it is given
        link = Path(self._directory) / ("reference.fa.gz" if compressed else "reference.fa")
        link.symlink_to(path.resolve())
        log.info("%s: no index, and its directory is read-only: indexing it in %s", path,
                 self._directory)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                self._fasta = pyfaidx.Fasta(str(link), as_raw=True, strict_bounds=True,
                                            duplicate_action="first")
        except pyfaidx.UnsupportedCompressionFormat:
            shutil.rmtree(self._directory, ignore_errors=True)
            raise InputError(path, "cannot index as a FASTA: compressed, but not with bgzip; "
                                   "it must be plain or bgzipped (bgzip)") from None
        except (pyfaidx.FastaIndexingError, ValueError, OSError, EOFError) as e:
            shutil.rmtree(self._directory, ignore_errors=True)
            what = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InputError(path, f"cannot index as a FASTA ({what})") from None
        except BaseException:
            shutil.rmtree(self._directory, ignore_errors=True)
            raise
        self.lengths = {name: len(record) for name, record in self._fasta.records.items()}

    def fetch(self, contig: str, start: int, end: int) -> str:
        return self._fasta[contig][start:end]

    def close(self) -> None:
        self._fasta.close()
        shutil.rmtree(self._directory, ignore_errors=True)


class _TwoBitSource:
    def __init__(self, path: Path):
        self._file = TwoBitFile(path)
        self.name = str(path)
        self.lengths = self._file.lengths

    def fetch(self, contig: str, start: int, end: int) -> str:
        return self._file.text(contig, start, end)

    def close(self) -> None:
        self._file.close()


class _FlatFileSource:
    """A GenBank or EMBL file read once into memory (at most FLAT_FILE_MAX_BASES bases)."""

    def __init__(self, path: Path, fmt: str):
        self.name = str(path)
        self._sequences: dict[str, str] = {}
        self._places: dict[str, str] = {}
        total = 0
        try:
            for flat in flat_file_records(path, fmt):
                place = flat.place
                if flat.name in self._sequences:
                    raise InputError(path, f"a second record named {flat.name!r} (the first is "
                                           f"at {self._places[flat.name]}): names must be "
                                           "unique", place=place)
                total += len(flat.record.seq)
                if total > FLAT_FILE_MAX_BASES:
                    raise InputError(path, f"more than {FLAT_FILE_MAX_BASES:,} bases, the most "
                                           f"a {FLAT_FILE_FORMATS[fmt]} reference is read into "
                                           "memory; convert it to an indexed FASTA: "
                                           f"{flat_file_conversion(path, fmt)}", place=place)
                self._sequences[flat.name] = str(flat.record.seq)
                self._places[flat.name] = place
        except _UNREADABLE as e:
            raise InputError(path, f"cannot read ({e})") from None
        self.lengths = {name: len(seq) for name, seq in self._sequences.items()}

    def fetch(self, contig: str, start: int, end: int) -> str:
        return self._sequences[contig][start:end]

    def close(self) -> None:
        self._sequences.clear()


def _read_only(directory: Path) -> bool:
    """Whether genossm may not write in ``directory``: the OS says so, or its permissions
    grant no write (which root could override, and genossm does not)."""
    try:
        mode = directory.stat().st_mode
    except OSError:
        return True
    return not os.access(directory, os.W_OK) or not mode & (stat.S_IWUSR | stat.S_IWGRP
                                                            | stat.S_IWOTH)


class Reference:
    """A reference (see the module docstring for the formats): its contig lengths, and codes
    or text of any region."""

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(path, "no such file")
        head, compressed = content_head(self.path)
        self.format = sequence_file_format(head) or "fasta"
        if self.format == "twobit":
            self._source = _TwoBitSource(self.path)
        elif self.format in FLAT_FILE_FORMATS:
            self._source = _FlatFileSource(self.path, self.format)
        else:
            index = [Path(f"{self.path}.fai")] + ([Path(f"{self.path}.gzi")] if compressed
                                                 else [])
            if not all(p.exists() for p in index) and _read_only(self.path.parent):
                self._source = _PyfaidxFasta(self.path, compressed)
            else:
                self._source = _HtslibFasta(self.path)
        self.lengths: dict[str, int] = self._source.lengths

    @property
    def name(self) -> str:
        return self._source.name

    def records(self) -> list[Region]:
        """Every record, whole, as one forward-strand region named after it. A FASTA's
        headers are read once, for what the index hides: htslib leaves records without
        sequence out of it and keeps the first of two records of one name; either, or a
        record listed with length 0 by a foreign .fai, is an error."""
        listed = self._fasta_headers() if self.format == "fasta" else set(self.lengths)
        regions = []
        for name, length in self.lengths.items():
            region = Region(name, 0, length, name, "+", source=self.name,
                            place=f"record {name!r}")
            if length == 0 or name not in listed:
                raise region.error("no sequence" if length == 0 else
                                   f"in the index {self.name}.fai but not in the FASTA; is the "
                                   "index stale? (delete it to have it rebuilt)")
            regions.append(region)
        return regions

    def _fasta_headers(self) -> set[str]:
        """The names of the FASTA's records, each checked: unique, with sequence, indexed."""
        first: dict[str, int] = {}
        for number, (name, has_sequence) in enumerate(self._headers(), 1):
            place = f"record {number} ({name!r})"
            if name in first:
                raise InputError(self.name, f"a second record named {name!r} (record "
                                            f"{first[name]} is the first): names must be "
                                            "unique", place=place)
            first[name] = number
            if not has_sequence:
                raise InputError(self.name, "no sequence", place=place)
            if name not in self.lengths:
                raise InputError(self.name, f"not in the index {self.name}.fai; is it stale? "
                                            "(delete it to have it rebuilt)", place=place)
        return set(first)

    def _headers(self) -> list[tuple[str, bool]]:
        """(name, whether any sequence follows) of every record of the FASTA, in order; the
        name is the header up to its first white space, as htslib reads it."""
        with open(self.path, "rb") as raw:
            compressed = raw.read(2) == GZIP_MAGIC
        headers: list[list] = []
        carry, line_start = b"", True
        try:
            with igzip.open(self.path, "rb") if compressed else open(self.path, "rb") as fh:
                while True:
                    block = fh.read(_BLOCK)
                    data, carry = carry + block, b""
                    at = 0
                    while True:   # at: where the sequence of the last header read goes on
                        if at == 0 and line_start and data.startswith(b">"):
                            header = 0
                        else:
                            header = data.find(b"\n>", at)
                            header = -1 if header < 0 else header + 1
                        stop = len(data) if header < 0 else header
                        if headers and _NOT_SPACE.search(data, at, stop):
                            headers[-1][1] = True
                        if header < 0:
                            break
                        end = data.find(b"\n", header)
                        if end < 0 and block:   # the header line goes on in the next block
                            carry = data[header:]
                            break
                        end = len(data) if end < 0 else end
                        words = data[header + 1:end].split() or [b""]
                        headers.append([words[0].decode("utf-8", "surrogateescape"), False])
                        at = end
                    if not block:
                        break
                    line_start = bool(carry) or data.endswith(b"\n")
        except _UNREADABLE as e:
            raise InputError(self.path, f"cannot read ({e})") from None
        return [(name, has_sequence) for name, has_sequence in headers]

    def text(self, contig: str, start: int, end: int) -> str:
        """The letters of [start, end) as written in the file (inside the contig)."""
        text = self._source.fetch(contig, start, end)
        if len(text) != end - start:
            raise InputError(self.name, f"returned {len(text)} bases for {contig}:{start}-{end}"
                                        f" (is the index stale?)")
        return text

    def encode(self, text: str, contig: str, start: int) -> np.ndarray:
        """Codes of ``text`` read at ``contig``:``start`` (an error names that place)."""
        try:
            return alphabet.encode(text)
        except ValueError as e:
            raise InputError(self.name, str(e),
                             place=f"contig {contig!r} from base {start}") from None

    def inside(self, contig: str, start: int, end: int) -> tuple[int, int]:
        """[start, end) clipped to the contig."""
        return max(start, 0), min(end, self.lengths[contig])

    def codes(self, contig: str, start: int, end: int, text: str | None = None) -> np.ndarray:
        """Codes of [start, end); the part outside the contig (start < 0 or end past its
        length) is N. ``text``: the letters of the part inside (``inside``), when the caller
        has already fetched them."""
        lo, hi = self.inside(contig, start, end)
        if text is None:
            text = self.text(contig, lo, hi) if hi > lo else ""
        if lo == start and hi == end:
            return self.encode(text, contig, lo)
        out = np.full(end - start, alphabet.N, np.uint8)
        if hi > lo:
            out[lo - start:hi - start] = self.encode(text, contig, lo)
        return out

    def close(self) -> None:
        self._source.close()

    def __enter__(self) -> Reference:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
