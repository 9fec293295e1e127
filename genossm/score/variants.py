"""Variants in: the VCF/BCF's records with their text lines, each ALT allele's status, and the
VCF contig name -> FASTA contig name resolution.

A ``Record`` carries one input record from reading to writing: its text line (written back
untouched apart from the added INFO entries), its alleles, and per ALT the status and scores the
scorer fills in. Every ALT starts ``scored`` or with the reason it is not a sequence the model
can read (``allele_status``); the annotator (haplotypes.py) may then set another reason.
"""

from __future__ import annotations

import gzip
import itertools
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pysam

from genossm import alphabet
from genossm.errors import InputError

INFO_IDS = ("GENOSSM_LLR", "GENOSSM_COS", "GENOSSM_L2", "GENOSSM_STATUS")

SCORED = "scored"
INDEL_NEEDS_CAUSAL = "indel_needs_causal_model"
STATUSES = (SCORED, "ref_mismatch", "contig_not_in_fasta", "chrom_name_mismatch",
            "symbolic_allele", "breakend", "star_allele", "invalid_allele", "no_alt",
            INDEL_NEEDS_CAUSAL)
READ_BY_MODEL = (SCORED, INDEL_NEEDS_CAUSAL)   # statuses whose haplotypes the model reads


@dataclass
class Record:
    """One VCF record on its way through: its text line, its alleles and, per ALT, the status
    and scores (None = not scored)."""

    number: int                 # 1-based, in file order
    line: bytes                 # the record's text, without the line end
    chrom: str
    pos: int                    # 1-based, as in the VCF
    id: str
    ref: str
    alts: tuple[str, ...]
    status: list[str] = field(default_factory=list)         # per ALT
    llr: list[float | None] = field(default_factory=list)   # per ALT
    cos: list[float | None] = field(default_factory=list)   # per ALT
    l2: list[float | None] = field(default_factory=list)    # per ALT
    left_flank: np.ndarray | None = None    # codes around REF, set when an ALT is to be scored
    right_flank: np.ndarray | None = None
    extra: tuple[str, ...] = ()             # a variant table's other columns (variant_table.py)

    def alts_to_score(self) -> list[int]:
        """Indices (into ``alts``) of the ALT alleles whose haplotypes the model reads."""
        return [i for i, s in enumerate(self.status) if s in READ_BY_MODEL]

    def haplotype_alleles(self) -> list[int]:
        """The alleles of the haplotypes the model reads, numbered as in a VCF genotype: 0 for
        REF, then 1 + i for each ALT i to score."""
        return [0, *[i + 1 for i in self.alts_to_score()]]

    def allele_codes(self, allele: int) -> np.ndarray:
        """Codes of allele 0 (REF) or allele i (ALT i - 1)."""
        return alphabet.encode(self.ref if allele == 0 else self.alts[allele - 1])


def allele_status(alt: str) -> str | None:
    """Why an ALT allele cannot be scored, or None when it is a sequence."""
    if alt == "*":
        return "star_allele"
    if alt == ".":
        return "no_alt"
    if alt.startswith("<"):
        return "symbolic_allele"
    if "[" in alt or "]" in alt or alt.startswith(".") or alt.endswith("."):
        return "breakend"
    if (alphabet.ENCODE_TABLE[np.frombuffer(alt.encode("latin-1"), np.uint8)]
            == alphabet.INVALID).any():
        return "invalid_allele"
    return None


# --------------------------------------------------------------------------- contig names


def read_chrom_map(path) -> dict[str, str]:
    """Two tab-separated columns per line: VCF contig name, FASTA contig name."""
    mapping: dict[str, str] = {}
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(path, f"cannot read ({e})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.rstrip("\r").split("\t")
        if len(fields) != 2 or not all(fields):
            raise InputError(path, "expected two tab-separated names (VCF contig, FASTA contig)",
                             place=f"line {number}")
        if fields[0] in mapping:
            raise InputError(path, f"contig {fields[0]!r} is mapped twice", place=f"line {number}")
        mapping[fields[0]] = fields[1]
    return mapping


class ContigResolver:
    """VCF contig name -> (FASTA contig or None, status), with the renaming the user asked for;
    remembers which renaming would have found a missing contig (for the summary)."""

    def __init__(self, lengths: dict[str, int], rename: str | None, chrom_map: dict | None):
        self.lengths = lengths      # FASTA contig -> length
        self.rename = rename
        self.chrom_map = chrom_map or {}
        self.cache: dict[str, tuple[str | None, str]] = {}
        self.suggestions: dict[str, str] = {}   # VCF contig -> option that would find it
        self.missing: list[str] = []

    def __call__(self, chrom: str) -> tuple[str | None, str]:
        if chrom not in self.cache:
            self.cache[chrom] = self._resolve(chrom)
        return self.cache[chrom]

    def _resolve(self, chrom: str) -> tuple[str | None, str]:
        name = self.chrom_map.get(chrom, chrom)
        if self.rename == "add-chr" and not name.startswith("chr"):
            name = "chr" + name
        elif self.rename == "strip-chr" and name.startswith("chr"):
            name = name[3:]
        if name in self.lengths:
            return name, SCORED
        if chrom.startswith("chr") and chrom[3:] in self.lengths:
            self.suggestions[chrom] = f"--rename-chroms strip-chr would find {chrom} as {chrom[3:]}"
            return None, "chrom_name_mismatch"
        if "chr" + chrom in self.lengths:
            self.suggestions[chrom] = f"--rename-chroms add-chr would find {chrom} as chr{chrom}"
            return None, "chrom_name_mismatch"
        self.missing.append(chrom)
        return None, "contig_not_in_fasta"


# --------------------------------------------------------------------------- the VCF/BCF


def open_text(path: Path):
    """The file's bytes, gunzipped when it is gzip (plain or BGZF) compressed."""
    with open(path, "rb") as fh:
        compressed = fh.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if compressed else open(path, "rb")


@contextmanager
def quiet_htslib():
    """htslib warns on stderr about VCFs without ##contig lines (and tabix about POS 0
    records); problems are reported here."""
    previous = pysam.set_verbosity(0)
    try:
        yield
    finally:
        pysam.set_verbosity(previous)


def _open_variants(path: Path, shown: Path) -> pysam.VariantFile:
    """The VCF/BCF opened as a stream: htslib reads plain, gzip and BGZF compressed files
    alike that way (opened by name, a plain-gzip VCF fails on the offset pysam asks for)."""
    if not path.is_file():
        raise InputError(shown, "no such file")
    try:
        with open(path, "rb") as fh:
            return pysam.VariantFile(fh)   # htslib reads a copy of the descriptor
    except (OSError, ValueError) as e:
        raise InputError(shown, f"not a readable VCF or BCF ({e})") from None


class _Site(NamedTuple):
    """What genossm reads of a record htslib parsed."""
    chrom: str
    pos: int
    id: str
    ref: str
    alts: tuple[str, ...]


def _site(record: pysam.VariantRecord) -> _Site | None:
    """The record's fields as Python values; None when they are not UTF-8 text."""
    try:
        return _Site(record.chrom, record.pos, record.id or ".", record.ref or "",
                     tuple(record.alts or ()))
    except UnicodeDecodeError:
        return None


def _same_site(line: bytes, site: _Site) -> bool:
    """Whether the text line holds the record's CHROM and POS."""
    fields = line.split(b"\t", 2)
    return (len(fields) == 3 and fields[0] == site.chrom.encode() and fields[1].isdigit()
            and int(fields[1]) == site.pos)


def _malformed(line: bytes | None) -> str | None:
    """What is wrong with a record's text line that htslib could not parse, where a check
    here can say (htslib's own reason goes to its log, not to pysam's exception)."""
    if line is None:
        return None
    fields = line.split(b"\t")
    if len(fields) < 8:
        return f"a record needs at least 8 tab-separated columns, this line has {len(fields)}"
    if not fields[1].isdigit():
        return f"POS must be a number, got {fields[1].decode('latin-1')!r}"
    return None


def check_order(path, sites: Iterable[tuple[int, str, int]], place) -> int:
    """Check that (number, chrom, pos) of every record come in the order tabix needs (each
    contig in one block, positions not decreasing); ``place(number)`` says where a record is.
    Returns the number of records."""
    seen: set[str] = set()
    chrom, pos, number = None, 0, 0
    for number, here, at in sites:
        if here != chrom:
            if here in seen:
                raise InputError(path, f"not sorted: contig {here} appears again after "
                                       f"{chrom}; sort it (bcftools sort, or sort -k1,1 "
                                       "-k2,2n for a table)", place=place(number))
            seen.add(here)
            chrom, pos = here, 0
        elif at < pos:
            raise InputError(path, f"not sorted: {chrom}:{at} comes after {chrom}:{pos}; sort "
                                   "it (bcftools sort, or sort -k1,1 -k2,2n for a table)",
                             place=place(number))
        pos = at
    return number


class VariantSource:
    """The VCF/BCF's header text and its records, each paired with its text line: the input's
    own bytes for VCF (plain or compressed), htslib's rendering for BCF. ``path`` is read
    (twice: variant_table.open_variants makes a stream a file first); ``shown`` names it in
    messages (default: ``path``)."""

    extra_columns: tuple[str, ...] = ()   # a VCF's records have no columns beyond the table's

    def __init__(self, path, shown=None):
        self.file = Path(path)
        self.path = Path(shown if shown is not None else path)
        with quiet_htslib():
            vf = _open_variants(self.file, self.path)
        try:
            self.is_bcf = vf.format == "BCF"
            if self.is_bcf:
                self.header_lines = str(vf.header).encode().splitlines()
            else:
                self.header_lines = []
                with self._text() as fh:
                    for line in fh:
                        self.header_lines.append(line.rstrip(b"\r\n"))
                        if line.startswith(b"#CHROM"):
                            break
            info = {r.get("ID") for r in vf.header.records if r.key == "INFO"}
        except UnicodeDecodeError:
            raise InputError(self.path, "the header is not UTF-8 text") from None
        finally:
            vf.close()
        if not self.header_lines or not self.header_lines[-1].startswith(b"#CHROM"):
            raise InputError(self.path, "no #CHROM header line")
        clash = [i for i in INFO_IDS if i in info]
        if clash:
            raise InputError(self.path, f"already has {clash[0]} in its header; score the "
                                        "original VCF")

    def _text(self):
        return open_text(self.file)

    def _place(self, number: int) -> str:
        if self.is_bcf:
            return f"record {number}"
        return f"record {number} (line {len(self.header_lines) + number})"

    def _records(self) -> Iterator[tuple[int, _Site, bytes]]:
        """(number, the record's fields, its text line) of every record, the text read alongside
        the records; a record htslib cannot parse, or whose line is not the one htslib read,
        is an InputError naming its place."""
        lines = iter(()) if self.is_bcf else self._text_body()
        with quiet_htslib():
            vf = _open_variants(self.file, self.path)
            try:
                records = iter(vf)
                for number in itertools.count(1):
                    line = None if self.is_bcf else next(lines, b"")
                    try:
                        record = next(records)
                    except StopIteration:
                        break
                    except (OSError, ValueError) as e:
                        raise InputError(self.path, _malformed(line) or f"malformed record ({e})",
                                         place=self._place(number)) from None
                    site = _site(record)
                    if site is None:
                        raise InputError(self.path, "CHROM, ID, REF or ALT is not UTF-8 text",
                                         place=self._place(number))
                    if self.is_bcf:
                        line = str(record).encode().rstrip(b"\n")
                    elif not _same_site(line, site):
                        raise InputError(self.path, _malformed(line) or
                                         "the text line does not match the record htslib read "
                                         "(blank or stray lines?)", place=self._place(number))
                    yield number, site, line
            finally:
                vf.close()

    def check(self) -> int:
        """Parse every record and check their order (check_order); returns their number, and
        counts their ALT alleles (``alt_alleles``)."""
        self.alt_alleles = 0

        def sites():
            for n, site, _ in self._records():
                self.alt_alleles += len(site.alts)
                yield n, site.chrom, site.pos
        return check_order(self.path, sites(), self._place)

    def __iter__(self) -> Iterator[Record]:
        for number, site, line in self._records():
            yield Record(number, line, *site)

    def _text_body(self) -> Iterator[bytes]:
        with self._text() as fh:
            for _ in self.header_lines:
                next(fh)
            for line in fh:
                yield line.rstrip(b"\r\n")
