"""Scatter-gather scoring: a call set split into parts that are scored as separate jobs
(``genossm split-calls``, then ``genossm score`` on each part), and the scored parts gathered
into the one VCF and table that a single ``genossm score`` job would have written
(``genossm gather-scores``).

Split: ``split_calls`` reads the call set twice, streaming: once to count and check its
records (sorted, readable: a bad call set fails before a part is written), once to write them.
Twice, because a part's share of the records follows from their total, which is needed before
the first part is written; holding the records instead would take memory in proportion to the
call set, streaming twice takes none. It writes ``PARTS_DIR/I-of-N.vcf.gz`` for I = 1..N:
bgzipped VCF text with the call set's header and the records of part I, in input order, each
line the input's own bytes (for a BCF, htslib's VCF rendering: the text ``genossm score``
writes for a BCF). Parts are runs of consecutive records balanced by record count: part I ends
at the first change of contig or position once it holds its share of the records not yet in a
part (so records at one position are never split, and with no two records at one position the
parts' sizes differ by at most one); a part may span contigs. Parts beyond the last record
(more parts than positions) hold the header only. Each part's header has one more line, just
before ``#CHROM``::

    ##genossm_part=part 3 of 8; first record 2001; records in all 9872; split 5a0c1e...; source
    calls.vcf       (one line)

which ``genossm score`` keeps like any other header line, and by which ``gather_scores`` checks
that the scored parts it is given are the complete set of one split: every part once, with the
records that follow those of the part before it (the number of a part's records is what its
VCF holds: the next part's first record, or the total, says how many it must hold).

Gather: ``gather_scores`` writes the header of the first part without its ``##genossm_part``
line (every part's header must be the same apart from that line: parts scored with other
settings are refused), then every part's records in part order, bgzipped and tabix-indexed; and
the parts' tables (each read from beside its VCF, where ``genossm score`` writes it: PART.tsv
for PART.vcf.gz) as one table with one header line, each row's ``record`` number counted in the
whole call set. The result holds the same bytes as one job's output, apart from scores that the
batching of the records may change in their last digits.

Both commands follow the output policy (fileio.claim_outputs, StagedOutputs): every output is
written whole or not at all, never over an input, replaced only with ``force`` and only where
genossm wrote it.
"""

from __future__ import annotations

import gzip
import os
import re
import uuid
import zlib
from array import array
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import pysam

from genossm.errors import InputError
from genossm.fileio import OutputKind, StagedOutputs, check_distinct, claim_outputs
from genossm.plots import PLOT, plot_score_distributions
from genossm.score.output import (
    SCORE_HEADER,
    SCORE_TABLE,
    SCORED_VCF,
    SCORED_VCF_INDEX,
    TABLE_COLUMNS,
    default_table_path,
    format_summary,
    vcf_header,
)
from genossm.score.variant_table import open_variants
from genossm.score.variants import READ_BY_MODEL, VariantSource, quiet_htslib

PART_HEADER = b"##genossm_part="
MAX_PARTS = 10_000     # more parts than this is more files than a filesystem or a queue wants
_PART_LINE = re.compile(rb"part (\d+) of (\d+); first record (\d+); records in all (\d+); "
                        rb"split ([0-9a-f]+); source (.*)")
_SCORE_SETTINGS = re.compile(r"; model (.+?); window (\d+)")
_UNREADABLE = (OSError, EOFError, zlib.error)   # gzip.BadGzipFile is an OSError
_RECORD = TABLE_COLUMNS.index("record")
_CHROM, _POS, _REF, _ALT, _ALT_INDEX, _LLR, _COS, _STATUS = (
    TABLE_COLUMNS.index(c) for c in ("chrom", "pos", "ref", "alt", "alt_index", "llr",
                                     "cosine_distance", "status"))


def part_name(index: int, parts: int) -> str:
    """``I-of-N.vcf.gz``: the file name of part I (1-based) of N, as Snakemake's scatter names
    its items (``{scatteritem}``)."""
    return f"{index}-of-{parts}.vcf.gz"


def is_call_part(path) -> bool:
    """Whether ``path`` is a part that genossm split-calls wrote, not yet scored: a
    gzip-compressed VCF whose header holds a ``##genossm_part`` line and no ``##genossm_score``
    line. A scored part (genossm score's output, with its index and table beside it) is not one:
    split-calls --force does not replace a score job's work with an unscored part, leaving its
    index and table beside it."""
    header = vcf_header(path)
    return header is not None and any(line.startswith(PART_HEADER) for line in header) and \
        not any(line.startswith(SCORE_HEADER) for line in header)


CALL_PART = OutputKind("a call-set part written by genossm split-calls", is_call_part)


# --------------------------------------------------------------------------- split


def split_calls(vcf, parts_dir, *, parts: int, force: bool = False) -> dict:
    """Split ``vcf`` (VCF, plain or compressed, or BCF) into ``parts`` part VCFs in
    ``parts_dir`` (module docstring); ``force`` replaces parts an earlier split wrote. Returns
    a summary: records, parts, paths, records per part."""
    vcf, parts_dir = Path(vcf), Path(parts_dir)
    if not 1 <= parts <= MAX_PARTS:
        raise InputError(None, f"--parts must be between 1 and {MAX_PARTS:,}, got {parts}")
    paths = [parts_dir / part_name(i, parts) for i in range(1, parts + 1)]
    claim_outputs([(p, CALL_PART) for p in paths], inputs=[vcf], force=force)
    if (parts_dir.exists() or parts_dir.is_symlink()) and not parts_dir.is_dir():
        raise InputError(parts_dir, "exists and is not a directory: give the directory to "
                                    "write the parts in")
    with open_variants(vcf) as source:
        if not isinstance(source, VariantSource):
            raise InputError(vcf, "is a variant table; split-calls splits a VCF/BCF (score a "
                                  "table in one job, or split its rows with split(1))")
        return _split(source, vcf, paths, parts)


def _split(source: VariantSource, vcf: Path, paths: list[Path], parts: int) -> dict:
    """split_calls once the call set is open."""
    if any(line.startswith(PART_HEADER) for line in source.header_lines):
        raise InputError(vcf, "is already a part of a split call set (its header has a "
                              "##genossm_part line); split the original call set")
    split_id = uuid.uuid4().hex[:12].encode()
    source_name = os.fsencode(vcf).replace(b"\n", b" ").replace(b"\r", b" ")
    head, chrom_line = source.header_lines[:-1], source.header_lines[-1]

    def header(index: int, first: int) -> bytes:
        line = (PART_HEADER + b"part %d of %d; first record %d; records in all %d; split %s; "
                b"source %s" % (index, parts, first, total, split_id, source_name))
        return b"\n".join([*head, line, chrom_line]) + b"\n"

    sizes = [0] * parts
    with StagedOutputs() as staged:
        staged_paths = [staged.file(p) for p in paths]   # unwritable: fails before the reads
        total = source.check()
        writer = _PartWriter()
        try:
            part, start, site = 0, 0, None
            writer.open(staged_paths[0], header(1, 1))
            for t, record in enumerate(source):
                here = (record.chrom, record.pos)
                # a new part once this one holds its share of the records left, at a new site
                if (part < parts - 1 and here != site
                        and (t - start) * (parts - part) >= total - start):
                    part, start = part + 1, t
                    writer.open(staged_paths[part], header(part + 1, t + 1))
                site = here
                writer.write(record.line + b"\n")
                sizes[part] += 1
            for index in range(part + 1, parts):    # no records left for these: header only
                writer.open(staged_paths[index], header(index + 1, total + 1))
        finally:
            writer.close()
    return {"records": total, "parts": parts, "sizes": sizes, "paths": [str(p) for p in paths],
            "source": str(vcf)}


class _PartWriter:
    """The one part file open for writing (bgzipped)."""

    def __init__(self):
        self._out = None

    def open(self, path: Path, header: bytes) -> None:
        self.close()
        self._out = pysam.BGZFile(str(path), "wb")
        self._out.write(header)

    def write(self, line: bytes) -> None:
        self._out.write(line)

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


def format_split_summary(summary: dict) -> str:
    """genossm split-calls: N records of VCF in K parts (a to b records each): FIRST .. LAST"""
    sizes = summary["sizes"]
    paths = summary["paths"]
    where = paths[0] if len(paths) == 1 else f"{paths[0]} .. {paths[-1]}"
    return (f"genossm split-calls: {summary['records']:,} records of {summary['source']} in "
            f"{summary['parts']:,} part{'s' if summary['parts'] != 1 else ''} ({min(sizes):,} "
            f"to {max(sizes):,} records each): wrote {where}")


# --------------------------------------------------------------------------- gather


@dataclass
class _Part:
    """A scored part: its VCF, its table, its header (without the part line) and what the part
    line says."""
    path: Path
    table: Path
    header: list[bytes]
    index: int
    parts: int
    first: int
    total: int
    split: bytes
    source: str


def _read_part(path: Path) -> _Part:
    if not path.is_file():
        raise InputError(path, "no such file")
    header = vcf_header(path)
    if header is None:
        raise InputError(path, "not a part scored by genossm score (not a gzip-compressed VCF "
                               "with a header)")
    lines = [line for line in header if line.startswith(PART_HEADER)]
    if len(lines) != 1:
        raise InputError(path, "not a part of a split call set: its header needs one "
                               "##genossm_part line (genossm split-calls writes it)")
    match = _PART_LINE.fullmatch(lines[0][len(PART_HEADER):])
    if match is None:
        raise InputError(path, "the ##genossm_part header line is not one genossm "
                               "split-calls writes")
    if not any(line.startswith(SCORE_HEADER) for line in header):
        raise InputError(path, "this part has not been scored: give the VCFs that genossm "
                               "score wrote for the parts")
    table = default_table_path(path)
    if not table.is_file():
        raise InputError(table, f"no such file (the table of {path}, written beside it by "
                                "genossm score)")
    index, parts, first, total = (int(match.group(i)) for i in range(1, 5))
    if not 1 <= index <= parts:
        raise InputError(path, f"the ##genossm_part header line names part {index} of {parts}")
    return _Part(path, table, [line for line in header if not line.startswith(PART_HEADER)],
                 index, parts, first, total, match.group(5),
                 match.group(6).decode("utf-8", "replace"))


def _complete_set(parts: list[_Part]) -> list[_Part]:
    """The parts in part order, checked to be every part of one split, each once, all scored
    with the same header."""
    first = parts[0]
    by_index: dict[int, _Part] = {}
    for part in parts:
        if (part.split, part.parts, part.total) != (first.split, first.parts, first.total):
            raise InputError(part.path, f"belongs to another split of a call set than "
                                        f"{first.path} (split {part.split.decode()}, "
                                        f"{part.parts} parts, not split "
                                        f"{first.split.decode()}, {first.parts} parts)")
        if part.index in by_index:
            raise InputError(part.path, f"is part {part.index} of {part.parts} again (so is "
                                        f"{by_index[part.index].path})")
        by_index[part.index] = part
    missing = [i for i in range(1, first.parts + 1) if i not in by_index]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
        raise InputError(first.path, f"the parts are incomplete: {len(missing)} of "
                                     f"{first.parts} missing (part{'s' if len(missing) > 1 else ''}"
                                     f" {shown} of this split)")
    ordered = [by_index[i] for i in range(1, first.parts + 1)]
    for part in ordered[1:]:
        if part.header != ordered[0].header:
            pairs = zip(part.header, ordered[0].header, strict=False)
            number = next((n for n, (a, b) in enumerate(pairs, 1) if a != b),
                          min(len(part.header), len(ordered[0].header)) + 1)
            raise InputError(part.path, f"header line {number} differs from that of part 1 "
                                        f"({ordered[0].path}): the parts were scored with other "
                                        "settings, models or references; score every part alike")
    return ordered


@dataclass
class _Tally:
    """What the summary and the plot need of the gathered table."""
    statuses: Counter = field(default_factory=Counter)   # per ALT ("no_alt" per record without)
    alt_alleles: int = 0
    llr: array = field(default_factory=lambda: array("d"))   # per ALT the model read (NaN: none)
    cosine: array = field(default_factory=lambda: array("d"))
    is_snv: array = field(default_factory=lambda: array("b"))

    def add(self, fields: list[str]) -> None:
        status = fields[_STATUS]
        self.statuses[status] += 1
        if fields[_ALT_INDEX] != "NA":
            self.alt_alleles += 1
        if status in READ_BY_MODEL:
            self.llr.append(_number(fields[_LLR]))
            self.cosine.append(_number(fields[_COS]))
            self.is_snv.append(len(fields[_REF]) == len(fields[_ALT]) == 1)


def _number(text: str) -> float:
    return float("nan") if text == "NA" else float(text)


def _table_rows(part: _Part):
    """(line number, fields) of each row of the part's table, after its header line."""
    with open(part.table, encoding="utf-8", newline="") as fh:
        if fh.readline().rstrip("\r\n") != "\t".join(TABLE_COLUMNS):
            raise InputError(part.table, "not a genossm score table (its first line is not the "
                                         "table's header)", place="line 1")
        for number, row in enumerate(fh, 2):
            fields = row.rstrip("\r\n").split("\t")
            if len(fields) != len(TABLE_COLUMNS) or not fields[_RECORD].isdigit():
                raise InputError(part.table, f"not a genossm score table: expected "
                                             f"{len(TABLE_COLUMNS)} columns, a record number "
                                             "in the 6th", place=f"line {number}")
            yield number, fields


def _copy_part(part: _Part, out, tsv, offset: int, tally: _Tally) -> int:
    """Write the part's record lines to ``out`` and its table's rows to ``tsv``, each row's
    record number counted in the whole call set (``offset`` records come before the part);
    returns the number of records. The table is read alongside the VCF: each record must have
    its rows, at its contig and position, in order."""
    if part.first != offset + 1:
        raise InputError(part.path, f"starts at record {part.first:,} of the call set, but "
                                    f"the parts before it hold {offset:,} records: not the "
                                    "parts genossm split-calls wrote")
    count = 0
    try:
        with closing(_table_rows(part)) as rows, gzip.open(part.path, "rb") as fh:
            pending = next(rows, None)
            for line in fh:
                if line.startswith(b"#"):
                    continue
                out.write(line if line.endswith(b"\n") else line + b"\n")
                count += 1
                chrom, pos = line.split(b"\t", 2)[:2]
                found = 0
                while pending is not None and int(pending[1][_RECORD]) == count:
                    number, fields = pending
                    if fields[_CHROM].encode() != chrom or fields[_POS] != str(int(pos)):
                        raise InputError(part.table, f"not the table of {part.path}: this row "
                                                     f"is at {fields[_CHROM]}:{fields[_POS]}, "
                                                     f"record {count} of the part at "
                                                     f"{chrom.decode()}:{int(pos)}",
                                         place=f"line {number}")
                    fields[_RECORD] = str(count + offset)
                    tsv.write("\t".join(fields) + "\n")
                    tally.add(fields)
                    pending = next(rows, None)
                    found += 1
                if not found:
                    raise InputError(part.table, f"not the table of {part.path}: no row for "
                                                 f"its record {count} ({chrom.decode()}:"
                                                 f"{int(pos)})")
            if pending is not None:
                raise InputError(part.table, f"not the table of {part.path}: a row for record "
                                             f"{pending[1][_RECORD]}, the part holds {count}",
                                 place=f"line {pending[0]}")
    except _UNREADABLE + (UnicodeDecodeError, ValueError) as e:
        raise InputError(part.path, f"cannot read it or its table ({e})") from None
    return count


def _plot_title(part: _Part) -> str:
    source = Path(part.source).name
    settings = next((line for line in part.header if line.startswith(SCORE_HEADER)), b"")
    match = _SCORE_SETTINGS.search(settings.decode("utf-8", "replace"))
    if match is None:
        return f"{source} scored by genossm"
    return f"{source} scored by {Path(match.group(1)).name} (window {int(match.group(2)):,})"


def gather_scores(parts, output, *, table=None, plot=None, force: bool = False) -> dict:
    """Gather the scored parts of a split call set (given in any order) into ``output``
    (bgzipped VCF + .tbi) and ``table`` (default beside the output), and with ``plot`` a PNG of
    the score distributions, as ``genossm score`` would have written them for the whole call
    set (module docstring); ``force`` replaces outputs genossm wrote. Returns the summary that
    format_gather_summary prints."""
    output = Path(output)
    table = Path(table) if table is not None else default_table_path(output)
    paths = [Path(p) for p in parts]
    if not paths:
        raise InputError(None, "give the scored parts to gather")
    if not output.name.endswith((".gz", ".bgz")):
        raise InputError(output, "the output is bgzipped and tabix-indexed: name it .vcf.gz")
    index = Path(f"{output}.tbi")
    check_distinct({"the gathered VCF (-o)": output, "its index (-o + .tbi)": index,
                    "the table (--table)": table, "the plot (--plot)": plot})
    tables = [default_table_path(p) for p in paths]
    claim_outputs([(output, SCORED_VCF), (index, SCORED_VCF_INDEX), (table, SCORE_TABLE)]
                  + ([] if plot is None else [(Path(plot), PLOT)]),
                  inputs=[*paths, *tables], force=force)
    ordered = _complete_set([_read_part(p) for p in paths])
    tally = _Tally()
    with StagedOutputs() as staged:
        staged_table = staged.file(table)
        staged_plot = None if plot is None else staged.file(plot)
        staged_index = staged.file(index)
        staged_vcf = staged.file(output)   # last: renamed into place last
        written = 0
        with pysam.BGZFile(str(staged_vcf), "wb") as out, \
                open(staged_table, "w", encoding="utf-8") as tsv:
            out.write(b"\n".join(ordered[0].header) + b"\n")
            tsv.write("\t".join(TABLE_COLUMNS) + "\n")
            for part in ordered:
                written += _copy_part(part, out, tsv, written, tally)
        if written != ordered[0].total:
            raise InputError(ordered[-1].path, f"the parts hold {written:,} records, the call "
                                               f"set {ordered[0].total:,}: not the parts "
                                               "genossm split-calls wrote")
        with quiet_htslib():   # not a word about POS 0 (telomere) records
            pysam.tabix_index(str(staged_vcf), preset="vcf", force=True,
                              index=str(staged_index))
        if staged_plot is not None:
            plot_score_distributions(tally.llr, tally.cosine, tally.is_snv,
                                     _plot_title(ordered[0]), staged_plot)
    return {"parts": len(ordered), "records": written, "alt_alleles": tally.alt_alleles,
            "statuses": dict(tally.statuses), "output": str(output), "table": str(table),
            "hints": []}


def format_gather_summary(summary: dict) -> str:
    """genossm gather-scores: K parts, N records (M alt alleles): X scored; ...; wrote ..."""
    line = format_summary(summary)
    return line.replace("genossm score:", f"genossm gather-scores: {summary['parts']:,} "
                                          f"part{'s' if summary['parts'] != 1 else ''},", 1)
