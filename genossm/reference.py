"""The reference genome read by region: the one reader of indexed FASTA for score and embed
(docs/design.md, "Reference").

A reference is a plain or bgzipped FASTA with a samtools faidx index (a plain one gets its
``.fai`` built when missing), read through pysam. Sequence comes back as alphabet codes; bases
outside a contig, asked for by windows that run past its ends, are N.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pysam

from genossm import alphabet
from genossm.errors import InputError
from genossm.regions import Region


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
        """Every record, whole, as one forward-strand region named after it. (htslib leaves
        records without sequence out of the index; one listed with length 0 by a foreign .fai
        is an error.)"""
        regions = []
        for name, length in self.lengths.items():
            region = Region(name, 0, length, name, "+", source=self.name,
                            place=f"record {name!r}")
            if length == 0:
                raise region.error("no sequence")
            regions.append(region)
        return regions

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

    def codes(self, contig: str, start: int, end: int) -> np.ndarray:
        """Codes of [start, end); the part outside the contig (start < 0 or end past its
        length) is N."""
        lo, hi = max(start, 0), min(end, self.lengths[contig])
        if lo == start and hi == end:
            return self.encode(self.text(contig, lo, hi), contig, lo)
        out = np.full(end - start, alphabet.N, np.uint8)
        if hi > lo:
            out[lo - start:hi - start] = self.encode(self.text(contig, lo, hi), contig, lo)
        return out

    def close(self) -> None:
        self._fasta.close()

    def __enter__(self) -> Reference:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
