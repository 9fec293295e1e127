"""The reference genome read by region: the one reader of indexed FASTA for score and embed
(docs/design.md, "Reference").

A reference is a plain or bgzipped FASTA with a samtools faidx index (a plain one gets its
``.fai`` built when missing), read through pysam. Sequence comes back as alphabet codes; bases
outside a contig, asked for by windows that run past its ends, are N.
"""

from __future__ import annotations

import gzip
import os
import re
import zlib
from pathlib import Path

import numpy as np
import pysam
from isal import igzip, igzip_lib

from genossm import alphabet
from genossm.errors import InputError
from genossm.regions import Region

_BLOCK = 1 << 22
_NOT_SPACE = re.compile(rb"\S")
_UNREADABLE = (OSError, EOFError, zlib.error, gzip.BadGzipFile, igzip_lib.IsalError)


class Reference:
    """An indexed FASTA: its contig lengths, and codes or text of any region."""

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(path, "no such file")
        previous = pysam.set_verbosity(0)  # the error below says it all, in one line
        try:
            self._fasta = pysam.FastaFile(str(path))
        except (OSError, ValueError) as e:
            raise InputError(path, f"cannot open as an indexed FASTA ({e}); it must be plain "
                                   "or bgzipped (bgzip) with a samtools faidx index") from None
        finally:
            pysam.set_verbosity(previous)
        self.lengths: dict[str, int] = dict(zip(self._fasta.references, self._fasta.lengths,
                                                strict=True))

    @property
    def name(self) -> str:
        return os.fsdecode(self._fasta.filename)

    def records(self) -> list[Region]:
        """Every record, whole, as one forward-strand region named after it. The FASTA's
        headers are read once, for what the index hides: htslib leaves records without
        sequence out of it and keeps the first of two records of one name; either, or a
        record listed with length 0 by a foreign .fai, is an error."""
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
        regions = []
        for name, length in self.lengths.items():
            region = Region(name, 0, length, name, "+", source=self.name,
                            place=f"record {name!r}")
            if length == 0 or name not in first:
                raise region.error("no sequence" if length == 0 else
                                   f"in the index {self.name}.fai but not in the FASTA; is the "
                                   "index stale? (delete it to have it rebuilt)")
            regions.append(region)
        return regions

    def _headers(self) -> list[tuple[str, bool]]:
        """(name, whether any sequence follows) of every record of the FASTA, in order; the
        name is the header up to its first white space, as htslib reads it."""
        with open(self.path, "rb") as raw:
            compressed = raw.read(2) == b"\x1f\x8b"
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
        """The letters of [start, end) as written in the FASTA (inside the contig)."""
        text = self._fasta.fetch(contig, start, end)
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
        self._fasta.close()

    def __enter__(self) -> Reference:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
