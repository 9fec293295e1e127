"""Variants in from a table, and every call set opened one way (``open_variants``).

A variant table is how saturation-mutagenesis and benchmark sets come: a TSV (plain or gzip)
whose header row names the columns ``chrom``, ``pos`` (1-based), ``ref`` and ``alt``, and
optionally ``id`` (names case-insensitive, a leading ``#`` ignored; ``chr``/``chromosome`` and
``position`` are read as ``chrom`` and ``pos``). Lines before the header that start with ``##``
are comments; blank lines are skipped. Every other column (a label, a consequence, a score of
another tool) is carried through to the scored table, after genossm's columns (score/output.py
``TABLE_COLUMNS``), so that ``genossm benchmark`` can read labels and groups from it. ALT may hold
several alleles separated by commas, as in a VCF. Rows must be sorted like a VCF (each contig in
one block, positions not decreasing).

``open_variants`` tells a VCF/BCF (``##fileformat=VCF`` or the BCF magic, after gunzip) from a
table by content, and first copies an input that cannot be read twice (a pipe, ``-`` for
standard input) to a temporary file: both readers read their input twice (checked whole before
the first record is scored, then scored), and memory stays constant in the input's size.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from genossm.errors import InputError
from genossm.score.output import TABLE_COLUMNS
from genossm.score.variants import Record, VariantSource, check_order, open_text

STDIN = "-"
KEY_COLUMNS = ("chrom", "pos", "ref", "alt")
# what a header may call a column, beyond its own name
ALIASES = {"chr": "chrom", "chromosome": "chrom", "position": "pos"}
_MAX_HEADER_BYTES = 1 << 20
UNREADABLE = (OSError, EOFError, zlib.error)   # gzip.BadGzipFile is an OSError
BCF_MAGIC = b"BCF"
VCF_MAGIC = b"##fileformat=VCF"


class VariantTable:
    """The rows of a variant table (module docstring) as Records, each row's text kept as its
    line and its other columns as ``extra``. ``shown`` names the file in messages."""

    def __init__(self, path, shown=None):
        self.file = Path(path)
        self.path = Path(shown if shown is not None else path)
        try:
            header = self._header_row()
        except UNREADABLE as e:
            raise InputError(self.path, f"cannot read it ({e})") from None
        self._read_columns(header)

    def _header_row(self) -> bytes:
        """The first line that is not a ``##`` comment (their count in ``comment_lines``)."""
        self.comment_lines = 0
        with open_text(self.file) as fh:   # lines read at most so long: not a huge binary one
            for line in iter(lambda: fh.readline(_MAX_HEADER_BYTES), b""):
                if not line.startswith(b"##"):
                    return line
                self.comment_lines += 1
        raise InputError(self.path, "no header row (a variant table names its columns chrom, "
                                    "pos, ref, alt in its first row)")

    def _read_columns(self, header: bytes) -> None:
        """The columns: where chrom, pos, ref, alt (and id) are, and the others."""
        try:
            self.columns = header.rstrip(b"\r\n").decode().split("\t")
        except UnicodeDecodeError:
            raise InputError(self.path, "neither a VCF/BCF (no ##fileformat=VCF line) nor a "
                                        "variant table (its header row is not UTF-8 text)",
                             place=f"line {self.comment_lines + 1}") from None
        names = [ALIASES.get(c.strip().lstrip("#").lower(), c.strip().lstrip("#").lower())
                 for c in self.columns]
        missing = [k for k in KEY_COLUMNS if k not in names]
        if missing:
            raise InputError(self.path, f"neither a VCF/BCF (no ##fileformat=VCF line) nor a "
                                        f"variant table: the header row has no "
                                        f"{', '.join(missing)} column (tab-separated chrom, "
                                        "pos, ref, alt, optional id, any others)",
                             place=f"line {self.comment_lines + 1}")
        twice = next((n for n in set(names) if names.count(n) > 1
                      and n in (*KEY_COLUMNS, "id")), None)
        if twice:
            raise InputError(self.path, f"the header row names the {twice} column twice",
                             place=f"line {self.comment_lines + 1}")
        self.key = {k: names.index(k) for k in (*KEY_COLUMNS, "id") if k in names}
        self.extra = [i for i, n in enumerate(names) if n not in (*KEY_COLUMNS, "id")]
        self.extra_columns = tuple(self.columns[i] for i in self.extra)
        clash = next((c for c in self.extra_columns if c in TABLE_COLUMNS), None)
        if clash:
            raise InputError(self.path, f"has a column {clash!r}, which the scored table has "
                                        "too; rename it", place=f"line {self.comment_lines + 1}")

    def _place(self, line_number: int) -> str:
        return f"line {line_number}"

    def _rows(self) -> Iterator[tuple[int, int, list[str], bytes]]:
        """(record number, line number, fields, line) of every data row, checked."""
        try:
            yield from self._checked_rows()
        except UNREADABLE as e:   # a truncated or corrupt gzip file
            raise InputError(self.path, f"cannot read it ({e})") from None

    def _checked_rows(self) -> Iterator[tuple[int, int, list[str], bytes]]:
        number = 0
        with open_text(self.file) as fh:
            for line_number, line in enumerate(fh, 1):
                if line_number <= self.comment_lines + 1:
                    continue
                line = line.rstrip(b"\r\n")
                if not line.strip():
                    continue
                place = self._place(line_number)
                try:
                    fields = line.decode().split("\t")
                except UnicodeDecodeError:
                    raise InputError(self.path, "not UTF-8 text", place=place) from None
                if len(fields) != len(self.columns):
                    raise InputError(self.path, f"{len(fields)} tab-separated columns, the "
                                                f"header row has {len(self.columns)}",
                                     place=place)
                chrom, pos, ref = (fields[self.key[k]] for k in ("chrom", "pos", "ref"))
                if not pos.isdigit() or int(pos) < 1:
                    raise InputError(self.path, f"pos must be a 1-based position, got {pos!r}",
                                     place=place)
                if not chrom or not ref:
                    raise InputError(self.path, "chrom and ref must not be empty", place=place)
                number += 1
                yield number, line_number, fields, line

    def check(self) -> int:
        """Read every row and check their order (variants.check_order); returns their
        number, and counts their ALT alleles (``alt_alleles``)."""
        line = [0]   # the line of the row being checked: where an error is
        self.alt_alleles = 0

        def sites():
            for number, line[0], fields, _ in self._rows():
                alt = fields[self.key["alt"]]
                self.alt_alleles += 0 if alt in ("", ".") else alt.count(",") + 1
                yield number, fields[self.key["chrom"]], int(fields[self.key["pos"]])
        return check_order(self.path, sites(), lambda n: self._place(line[0]))

    def __iter__(self) -> Iterator[Record]:
        for number, _, fields, line in self._rows():
            alt = fields[self.key["alt"]]
            record_id = fields[self.key["id"]] if "id" in self.key else "."
            yield Record(number, line, fields[self.key["chrom"]], int(fields[self.key["pos"]]),
                         record_id or ".", fields[self.key["ref"]],
                         tuple(alt.split(",")) if alt not in ("", ".") else (),
                         extra=tuple(fields[i] for i in self.extra))


def is_vcf(path: Path) -> bool:
    """Whether the file holds a VCF or BCF (gunzipped first), by its first bytes."""
    with open_text(path) as fh:
        head = fh.read(len(VCF_MAGIC))
    return head.startswith(BCF_MAGIC) or head == VCF_MAGIC


@contextmanager
def _readable_twice(shown: Path) -> Iterator[Path]:
    """``shown`` itself when it is a regular file, else (``-``, a pipe, a device) a temporary
    copy of what it holds, removed on exit."""
    if str(shown) != STDIN:
        if not (shown.exists() or shown.is_symlink()):
            raise InputError(shown, "no such file")
        if shown.is_dir():
            raise InputError(shown, "is a directory, not a VCF/BCF or variant table")
        if shown.is_file():
            yield shown
            return
    with tempfile.NamedTemporaryFile(prefix="genossm-input-") as copy:
        try:
            if str(shown) == STDIN:
                shutil.copyfileobj(sys.stdin.buffer, copy, 1 << 20)
            else:
                with open(shown, "rb") as fh:
                    shutil.copyfileobj(fh, copy, 1 << 20)
            copy.flush()
        except OSError as e:
            raise InputError(shown, f"cannot read it ({e})") from None
        yield Path(copy.name)


@contextmanager
def open_variants(path) -> Iterator[VariantSource | VariantTable]:
    """The call set at ``path`` (a file, a pipe, or ``-`` for standard input): a VariantSource
    for a VCF/BCF (plain, gzip or BGZF), else a VariantTable; messages name ``path``."""
    shown = Path(path)
    with _readable_twice(shown) as readable:
        try:
            vcf = is_vcf(readable)
        except UNREADABLE as e:
            raise InputError(shown, f"cannot read it ({e})") from None
        yield VariantSource(readable, shown) if vcf else VariantTable(readable, shown)
