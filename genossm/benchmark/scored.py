"""What ``genossm benchmark`` reads: a scored VCF (what ``genossm score`` writes, plain or
bgzipped) or a score table (its TSV: one row per (record, ALT allele); extra columns are
welcome), whose format score/output.py owns (``SCORE_HEADER``, ``TABLE_COLUMNS``), and a labels
TSV joined to it. One ``Allele`` per ALT allele either way, with its scores as written and its
label and group (labels.py says how they are resolved).

The scores (``SCORES``), oriented so that higher means more damaging (more different from the
reference): ``llr`` is -GENOSSM_LLR (ln P(ref) - ln P(alt): an allele the model finds unlikely
scores high), ``cosine_distance`` is GENOSSM_COS and ``l2_distance`` GENOSSM_L2 as they are. An
AUROC below 0.5 means the score ranks the negatives higher.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from genossm.benchmark.labels import (
    FLAG_PRESENT,
    MISSING,
    InfoKey,
    info_header,
    resolve_info,
    value_or_none,
)
from genossm.errors import InputError
from genossm.score.output import SCORE_HEADER, TABLE_COLUMNS

# (name, INFO key, table column, sign that makes higher = more damaging, axis label)
SCORES = (("llr", "GENOSSM_LLR", "llr", -1.0, "LLR, ln P(alt) - ln P(ref)"),
          ("cosine_distance", "GENOSSM_COS", "cosine_distance", 1.0, "cosine distance"),
          ("l2_distance", "GENOSSM_L2", "l2_distance", 1.0, "L2 distance"))
# name -> the score as oriented: -GENOSSM_LLR, GENOSSM_COS, GENOSSM_L2
ORIENTED = {name: ("-" if sign < 0 else "") + key for name, key, _, sign, _ in SCORES}
KEY_COLUMNS = ("chrom", "pos", "ref", "alt")
# the score table's columns that a table given as input must have (others are welcome)
SCORE_COLUMNS = tuple(c for c in TABLE_COLUMNS if c not in ("id", "record", "alt_index"))


@dataclass(slots=True)
class Allele:
    """One row: a (record, ALT allele) of the scored input with its scores, label and group."""
    chrom: str
    pos: int
    ref: str
    alt: str
    status: str
    scores: tuple[float | None, ...]    # SCORES order, as written (not oriented)
    place: str
    label: str | None = None            # None: missing (a flag's: present or absent)
    group: str | None = None
    label_place: str | None = None      # where the label was read (in the label source)


def _open_text(path: Path):
    try:
        with open(path, "rb") as fh:
            magic = fh.read(2)
        if magic == b"\x1f\x8b":
            return gzip.open(path, "rt", encoding="utf-8", errors="replace", newline="")
        return open(path, encoding="utf-8", errors="replace", newline="")
    except OSError as e:
        raise InputError(path, f"cannot read ({e.strerror or e})") from None


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    fh = _open_text(path)
    try:
        with fh:
            for number, line in enumerate(fh, 1):
                yield number, line.rstrip("\r\n")
    except (OSError, EOFError, zlib.error) as e:
        raise InputError(path, f"cannot read ({e})") from None


def _sniff(path: Path) -> str:
    """'vcf' for a scored VCF, 'table' for a score table; else InputError."""
    for number, line in _lines(path):
        if number == 1 and not line.startswith("##"):
            columns = [c.strip() for c in line.split("\t")]
            if set(SCORE_COLUMNS) <= set(columns):
                return "table"
            break
        if line.encode().startswith(SCORE_HEADER):
            return "vcf"
        if not line.startswith("##"):
            break
    raise InputError(path, "is neither a VCF that genossm score wrote (no ##genossm_score "
                           "header line) nor a score table (columns "
                           f"{', '.join(SCORE_COLUMNS)}); run genossm score first")


def _position(text: str, path, place, name: str = "pos") -> int:
    try:
        return int(text)
    except ValueError:
        raise InputError(path, f"{name} {text!r} is not a number", place=place) from None


def _score_value(text: str, path, place) -> float | None:
    if text in MISSING:
        return None
    try:
        return float(text)
    except ValueError:
        raise InputError(path, f"score {text!r} is not a number", place=place) from None


def read_scored_vcf(path: Path, label_key: str | None,
                    group_key: str | None) -> tuple[list[Allele], bool]:
    """Every (record, ALT) of a scored VCF with its label and group INFO values, and whether
    the label key is a flag (then each label is ``present`` or ``absent``)."""
    keys = {k: InfoKey(k) for k in (label_key, group_key) if k}
    alleles: list[Allele] = []
    pending: list[tuple[list[Allele], dict, int]] = []   # resolved once the keys are known
    for number, line in _lines(path):
        if line.startswith("##"):
            fields = info_header(line)
            if fields.get("ID") in keys:
                keys[fields["ID"]].header(fields)
            continue
        if line.startswith("#") or not line:
            continue
        place = f"line {number}"
        cols = line.split("\t")
        if len(cols) < 8:
            raise InputError(path, f"a VCF record has at least 8 tab-separated fields, this "
                                   f"one {len(cols)}", place=place)
        pos = _position(cols[1], path, place, "POS")
        info: dict[str, object] = {}
        for entry in cols[7].split(";"):
            name, sep, value = entry.partition("=")
            info[name] = value if sep else FLAG_PRESENT
        alts = [] if cols[4] == "." else cols[4].split(",")
        record: list[Allele] = []
        if not alts:
            record.append(Allele(cols[0], pos, cols[3], ".", "no_alt", (None,) * len(SCORES),
                                 place))
        else:
            status = info.get("GENOSSM_STATUS")
            if not isinstance(status, str):
                raise InputError(path, "the record has no GENOSSM_STATUS: not written by "
                                       "genossm score", place=place)
            columns = [status.split(",")]
            for _, info_key, *_ in SCORES:
                text = info.get(info_key)
                columns.append(text.split(",") if isinstance(text, str) else ["."] * len(alts))
            for name, values in zip(("GENOSSM_STATUS", *(s[1] for s in SCORES)), columns,
                                    strict=True):
                if len(values) != len(alts):
                    raise InputError(path, f"INFO {name} has {len(values)} values for "
                                           f"{len(alts)} ALT alleles", place=place)
            for i, alt in enumerate(alts):
                record.append(Allele(cols[0], pos, cols[3], alt, columns[0][i],
                                     tuple(_score_value(c[i], path, place) for c in columns[1:]),
                                     place))
        for key in keys.values():
            key.count(info.get(key.name))
        pending.append((record, {k: info.get(k) for k in keys}, len(alts)))
        alleles += record
    return alleles, resolve_info(path, keys, pending, label_key, group_key)


def _tsv(path: Path) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """The header row (names stripped; the first line that is not empty) and the numbered
    rows of a TSV."""
    lines = _lines(path)
    header = None
    for _number, line in lines:
        if line.strip():
            header = [c.strip() for c in line.split("\t")]
            break
    if header is None:
        raise InputError(path, "is empty: expected a header row of tab-separated column names")

    def rows():
        for number, line in lines:
            if not line.strip():
                continue
            cells = line.split("\t")
            if len(cells) != len(header):
                raise InputError(path, f"{len(cells)} tab-separated fields under a header of "
                                       f"{len(header)}", place=f"line {number}")
            yield number, [c.strip() for c in cells]

    return header, rows()


def _column(path, header: list[str], name: str, option: str, *, fold=False) -> int:
    names = [h.lstrip("#").lower() for h in header] if fold else header
    wanted = name.lower() if fold else name
    if wanted not in names:
        raise InputError(path, f"has no column {name!r} ({option}); its columns: "
                               f"{', '.join(header)}", place="line 1")
    return names.index(wanted)


def _label_columns(path, header: list[str], label_column: str | None,
                   group_column: str | None) -> tuple[int | None, int | None]:
    """Where the label and group columns are in ``header`` (None: not asked for)."""
    label_at = None if label_column is None else \
        _column(path, header, label_column, "--label-column")
    group_at = None if group_column is None else _column(path, header, group_column, "--group-by")
    return label_at, group_at


def read_score_table(path: Path, label_column: str | None,
                     group_column: str | None) -> list[Allele]:
    """Every row of a score table, with the label and group of those columns when named."""
    header, rows = _tsv(path)
    at = {c: _column(path, header, c, "the score table") for c in SCORE_COLUMNS}
    label_at, group_at = _label_columns(path, header, label_column, group_column)
    alleles = []
    for number, cells in rows:
        place = f"line {number}"
        pos = _position(cells[at["pos"]], path, place)
        allele = Allele(cells[at["chrom"]], pos, cells[at["ref"]], cells[at["alt"]],
                        cells[at["status"]],
                        tuple(_score_value(cells[at[s[2]]], path, place) for s in SCORES), place)
        if label_at is not None:
            allele.label = value_or_none(cells[label_at])
            allele.label_place = place
        if group_at is not None:
            allele.group = value_or_none(cells[group_at])
        alleles.append(allele)
    return alleles


def join_labels(alleles: list[Allele], path: Path, label_column: str,
                group_column: str | None) -> int:
    """Give each allele the label (and group) of its row in the labels TSV, joined on chrom,
    pos, ref, alt; returns the number of label rows that match no allele."""
    header, rows = _tsv(path)
    keys = [_column(path, header, c, "the labels' key", fold=True) for c in KEY_COLUMNS]
    label_at, group_at = _label_columns(path, header, label_column, group_column)
    table: dict[tuple, tuple[str | None, str | None, int]] = {}
    for number, cells in rows:
        key = (cells[keys[0]], _position(cells[keys[1]], path, f"line {number}"),
               cells[keys[2]].upper(), cells[keys[3]].upper())
        label = value_or_none(cells[label_at])
        group = None if group_at is None else value_or_none(cells[group_at])
        if key in table and table[key][:2] != (label, group):
            raise InputError(path, f"{':'.join(map(str, key))} is labelled twice, differently "
                                   f"(line {table[key][2]} and here)", place=f"line {number}")
        table[key] = (label, group, number)
    used = set()
    for allele in alleles:
        key = (allele.chrom, allele.pos, allele.ref.upper(), allele.alt.upper())
        if key in table:
            allele.label, allele.group, number = table[key]
            allele.label_place = f"line {number}"
            used.add(key)
    return len(table) - len(used)


def read_inputs(scored: Path, label_info, label_column, labels: Path | None, group_by):
    """(kind, alleles with labels and groups, whether the label is an INFO flag, label rows
    that match no allele or None) of the scored input and the labels' TSV."""
    kind = _sniff(scored)
    unmatched = None
    flag = False
    if kind == "vcf":
        if label_column is not None and labels is None:
            raise InputError(scored, "a scored VCF has no columns: give --labels TSV with "
                                     "--label-column, or --label-info KEY")
        alleles, flag = read_scored_vcf(scored, label_info,
                                        group_by if label_info is not None else None)
    else:
        if label_info is not None:
            raise InputError(scored, "is a score table, which has no INFO: give --label-column "
                                     "NAME (a column of it, or of --labels TSV)")
        alleles = read_score_table(scored, *((None, None) if labels else (label_column,
                                                                          group_by)))
    if labels is not None:
        unmatched = join_labels(alleles, labels, label_column, group_by)
    return kind, alleles, flag, unmatched
