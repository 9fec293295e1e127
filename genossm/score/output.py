"""What ``genossm score`` writes: each record's line with the GENOSSM INFO entries added, the
header lines that describe them, the table rows, and the one-line summary.

Every input record is written out, in order, with its text untouched apart from the added INFO
entries; ALTs that cannot be scored get '.' and a ``GENOSSM_STATUS`` saying why (STATUSES).

Each output has its ``OutputKind`` (fileio.claim_outputs: what ``--force`` may replace): the
scored VCF, by the ``##genossm_score`` line of its header; its tabix index, by the tabix magic
and a scored VCF (or none) beside it; the table, by its header row.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from pathlib import Path

from genossm import __version__
from genossm.fileio import OutputKind, starts_with_row
from genossm.score.variants import SCORED, STATUSES, Record

TABLE_COLUMNS = ("chrom", "pos", "id", "ref", "alt", "record", "alt_index", "llr",
                 "cosine_distance", "l2_distance", "status")
SCORE_HEADER = b"##genossm_score="
TABIX_MAGIC = b"TBI\x01"
_UNREADABLE = (OSError, EOFError, zlib.error)   # gzip.BadGzipFile is an OSError


def vcf_header(path) -> list[bytes] | None:
    """The header lines of a gzip-compressed VCF, up to and including ``#CHROM``, without their
    line ends; None when it cannot be read as one."""
    lines = []
    try:
        with gzip.open(path, "rb") as fh:
            for line in iter(lambda: fh.readline(1 << 24), b""):
                lines.append(line.rstrip(b"\r\n"))
                if line.startswith(b"#CHROM"):
                    return lines
                if not line.startswith(b"##"):
                    return None
    except _UNREADABLE:
        return None
    return None


def is_scored_vcf(path) -> bool:
    """Whether ``path`` is a VCF that genossm score wrote: gzip-compressed, its header holding
    a ``##genossm_score`` line."""
    header = vcf_header(path)
    return header is not None and any(line.startswith(SCORE_HEADER) for line in header)


def is_scored_vcf_index(path) -> bool:
    """Whether ``path`` is the tabix index of a VCF that genossm score wrote: tabix's magic, and
    beside it that VCF (an index with no VCF beside it is not known to be ours; one that a run
    stopped between its renames had moved aside is put back by fileio.recover)."""
    path = Path(path)
    vcf = path.with_name(path.name.removesuffix(".tbi"))
    try:
        with gzip.open(path, "rb") as fh:
            magic = fh.read(len(TABIX_MAGIC))
    except _UNREADABLE:
        return False
    return magic == TABIX_MAGIC and vcf.exists() and is_scored_vcf(vcf)


def is_score_table(path) -> bool:
    """Whether ``path`` is a table that genossm score wrote: its first line is TABLE_COLUMNS,
    then a variant table's own columns, if any (table_header)."""
    return starts_with_row(path, TABLE_COLUMNS, more=True)


def table_header(extra_columns=()) -> str:
    """The table's header row: TABLE_COLUMNS, then the input's other columns when it is a
    variant table (variant_table.py)."""
    return "\t".join((*TABLE_COLUMNS, *extra_columns)) + "\n"


SCORED_VCF = OutputKind("a VCF scored by genossm", is_scored_vcf)
SCORED_VCF_INDEX = OutputKind("the tabix index of a VCF scored by genossm", is_scored_vcf_index)
SCORE_TABLE = OutputKind("a genossm score table", is_score_table)


def default_table_path(output: Path) -> Path:
    """OUT.tsv beside OUT.vcf.gz."""
    name = output.name
    for suffix in (".gz", ".bgz", ".vcf"):
        name = name.removesuffix(suffix)
    return output.with_name(name + ".tsv")


def _format(value: float | None) -> str:
    return "." if value is None else f"{value:.6g}"


def _info_entries(record: Record) -> bytes:
    columns = (("GENOSSM_LLR", record.llr), ("GENOSSM_COS", record.cos),
               ("GENOSSM_L2", record.l2))
    parts = [f"{key}={','.join(_format(v) for v in values)}" for key, values in columns]
    parts.append(f"GENOSSM_STATUS={','.join(record.status)}")
    return ";".join(parts).encode()


def annotated_line(record: Record) -> bytes:
    """The record's line with the GENOSSM INFO entries added; every other byte kept."""
    if not record.alts:
        return record.line
    fields = record.line.split(b"\t")
    info = fields[7]
    fields[7] = _info_entries(record) if info == b"." else info + b";" + _info_entries(record)
    return b"\t".join(fields)


def table_rows(record: Record) -> Iterator[str]:
    """One row per ALT (one ``no_alt`` row for a record without ALT): TABLE_COLUMNS, then a
    variant table's other columns as they were."""
    def number(value):
        return "NA" if value is None else f"{value:.7g}"

    head = [record.chrom, str(record.pos), record.id, record.ref]
    if not record.alts:
        yield "\t".join([*head, ".", str(record.number), "NA", "NA", "NA", "NA", "no_alt",
                         *record.extra])
    for i, alt in enumerate(record.alts):
        yield "\t".join([*head, alt, str(record.number), str(i + 1), number(record.llr[i]),
                         number(record.cos[i]), number(record.l2[i]), record.status[i],
                         *record.extra])


def score_header_lines(model_dir: Path, config, *, window: int, prefix_reuse: bool,
                       rc_average: bool, renaming: str,
                       left_context: int | str | None = None) -> list[bytes]:
    """The ##INFO lines for the scores and a ##genossm_score line with the settings; with
    ``left_context`` (context mode, context.py) they say what context mode sums."""
    model = (f"genossm model {model_dir.resolve().name} ({config.objective}, "
             f"d_model={config.d_model}, n_layer={config.n_layer}, d_state={config.d_state}"
             + (", bidirectional" if config.bidirectional else "")
             + (", rc_equivariant" if config.rc_equivariant else "") + ")")
    strands = ", averaged over both strands" if rc_average else ""
    haplotypes = "the ref and alt haplotypes"
    if left_context is not None:
        from genossm.score.context import describe

        right = window - window // 2
        llr = (f"ln P(alt allele + right flank | upstream) - ln P(ref allele + right flank | "
               f"upstream), right flank {right} bp ({window // 2} bp on the reverse strand), "
               f"upstream: {describe(left_context)}")
        haplotypes = "the ref and alt allele + right flank (given the same upstream)"
    elif config.objective == "clm":
        llr = (f"ln P(alt haplotype) - ln P(ref haplotype) over a {window} bp window centred "
               f"on the variant")
    else:
        llr = (f"sum over the masked REF bases of ln p(alt base) - ln p(ref base) in a "
               f"{window} bp window centred on the variant (SNVs and MNVs)")
    lines = [
        ("GENOSSM_LLR", "Float", f"{llr}{strands}, by {model}"),
        ("GENOSSM_COS", "Float", f"Cosine distance (1 - cos) between the mean final hidden "
                                 f"states over {haplotypes}{strands}, by {model}"),
        ("GENOSSM_L2", "Float", f"Euclidean distance between the mean final hidden states over "
                                f"{haplotypes}{strands}, by {model}"),
        ("GENOSSM_STATUS", "String", "scored, or why the allele has no score: "
                                     + ", ".join(s for s in STATUSES if s != SCORED)),
    ]
    out = [f'##INFO=<ID={i},Number=A,Type={t},Description="{d}">'.encode()
           for i, t, d in lines]
    mode = (f"window {window}; prefix_reuse {str(prefix_reuse).lower()}" if left_context is None
            else f"window {window}; left_context {left_context}")
    out.append(SCORE_HEADER + f"version {__version__}; model {model_dir}; {mode}; "
               f"rc_average {str(rc_average).lower()}; contig names {renaming}".encode())
    return out


def format_summary(summary: dict) -> str:
    """genossm score: N records (M alt alleles): X scored; unscored: reason n, ..."""
    statuses = summary["statuses"]
    unscored = [f"{s} {n:,}" for s, n in sorted(statuses.items(), key=lambda kv: -kv[1])
                if s != SCORED]
    line = (f"genossm score: {summary['records']:,} records ({summary['alt_alleles']:,} alt "
            f"alleles): {statuses.get(SCORED, 0):,} scored")
    if unscored:
        line += "; unscored: " + ", ".join(unscored)
    if summary["hints"]:
        line += " (" + "; ".join(summary["hints"]) + ")"
    return line + f"; wrote {summary['output']} and {summary['table']}"
