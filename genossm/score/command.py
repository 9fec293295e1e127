"""``genossm score``, the command: options checked, inputs opened, records annotated, scored a
batch at a time (windowed mode, scorer.py) or a pass at a time (context mode, ``left_context``:
context.py) and written in order, then the VCF indexed and, if asked, the scores plotted. A
VCF/BCF is scored into a VCF and a table; a variant table (variant_table.py: ``-o`` named
``.tsv``) into one table that keeps its other columns.

Outputs are claimed first (fileio.claim_outputs: never an input of the run, replaced only with
``force`` and only when genossm wrote them), then staged (fileio.StagedOutputs) and renamed
into place only when all are complete: the table, the plot, the tabix index, and last the VCF,
whose presence marks a finished run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pysam
from tqdm import tqdm

from genossm.errors import InputError
from genossm.fileio import StagedOutputs, check_distinct, claim_outputs
from genossm.plots import PLOT, plot_score_distributions
from genossm.reference import Reference
from genossm.runtime import check_window, open_model
from genossm.score.context import CONTIG, ContextScorer
from genossm.score.haplotypes import Annotator, flank_lengths
from genossm.score.output import (
    SCORE_TABLE,
    SCORED_VCF,
    SCORED_VCF_INDEX,
    annotated_line,
    default_table_path,
    score_header_lines,
    table_header,
    table_rows,
)
from genossm.score.scorer import Scorer, batches
from genossm.score.variant_table import VariantTable, open_variants
from genossm.score.variants import (
    READ_BY_MODEL,
    ContigResolver,
    Record,
    quiet_htslib,
    read_chrom_map,
)

TABLE_SUFFIX = ".tsv"    # -o named so: a variant table in, one scored table out
DEFAULT_WINDOW = 4096
DEFAULT_BATCH_SIZE = 32
# Every window of a batch is held whole (flanks, tokens, and for a non-causal model its hidden
# states): 2^20 bases takes a megabase of context and keeps a batch within reach of memory.
MAX_WINDOW = 1 << 20
RENAMES = ("add-chr", "strip-chr")


def score_vcf(vcf, *, fasta, model_dir, output, table=None, window: int = DEFAULT_WINDOW,
              batch_size: int = DEFAULT_BATCH_SIZE, device="auto",
              rename_chroms: str | None = None, chrom_map=None, prefix_reuse: bool = True,
              progress: bool = True, piece_length: int | None = None, plot=None,
              beyond_trained_length: bool = False, left_context: int | str | None = None,
              force: bool = False) -> dict:
    """Score every record of ``vcf`` (genossm.score; a VCF/BCF, a variant table, ``-`` for
    standard input) and write ``output`` (bgzipped VCF + .tbi) and ``table`` (TSV; default
    beside the output), or for a variant table ``output`` (named .tsv) alone, and with ``plot``
    a PNG of the score distributions; ``force`` replaces outputs an earlier run wrote.
    ``left_context`` (a number of bases, or ``"contig"``; causal models) scores each variant
    given that much upstream sequence (context.py) instead of a window's left flank; None:
    windowed mode. Returns the summary that format_summary prints."""
    output, model_dir = Path(output), Path(model_dir)
    table_only = output.name.endswith(TABLE_SUFFIX)
    if table_only and table is not None:
        raise InputError(None, "--table is for a VCF output; a variant table is scored into "
                               "one table, -o")
    table = output if table_only else Path(table) if table is not None else \
        default_table_path(output)
    _check_options(output, table_only, window, batch_size, rename_chroms, chrom_map)
    left_context = _check_left_context(left_context, prefix_reuse)
    index = None if table_only else Path(f"{output}.tbi")
    check_distinct({"the scored VCF (-o)": None if table_only else output,
                    "its index (-o + .tbi)": index, "the table (--table)": table,
                    "the plot (--plot)": plot})
    claim_outputs(([] if table_only else [(output, SCORED_VCF), (index, SCORED_VCF_INDEX)])
                  + [(table, SCORE_TABLE)] + ([] if plot is None else [(Path(plot), PLOT)]),
                  inputs=[vcf, fasta, model_dir, chrom_map], force=force)
    with open_variants(vcf) as source, Reference(fasta) as reference:
        if isinstance(source, VariantTable) != table_only:
            raise InputError(output, "a VCF/BCF is scored into a VCF: name the output .vcf.gz"
                             if table_only else "a variant table is scored into a table: "
                             f"name the output {TABLE_SUFFIX}")
        resolver = ContigResolver(reference.lengths, rename_chroms,
                                  read_chrom_map(chrom_map) if chrom_map else None)
        n_records = source.check()
        model = open_model(model_dir, device)
        check_window(model, model_dir, window, f"--window {window:,}: a window",
                     beyond_trained_length)
        scorer = Scorer(model, batch_size=batch_size, prefix_reuse=prefix_reuse,
                        piece_length=piece_length)
        if left_context is not None and not (scorer.causal_lm and model.config.causal):
            raise InputError(model_dir, f"--left-context needs a causal model, one that can "
                                        f"stream; this one is {_kind(model.config)} (score it "
                                        "without --left-context)")
        renaming = rename_chroms or (f"mapped by {chrom_map}" if chrom_map else "as in the VCF")
        header = None if table_only else [
            *source.header_lines[:-1],
            *score_header_lines(model_dir, model.config, window=window,
                                prefix_reuse=prefix_reuse, rc_average=scorer.rc_average,
                                renaming=renaming, left_context=left_context),
            source.header_lines[-1]]
        annotate = Annotator(reference, resolver, window=window, causal_lm=scorer.causal_lm)
        with StagedOutputs() as staged:
            staged_table = staged.file(table)
            staged_plot = None if plot is None else staged.file(plot)
            staged_index = None if table_only else staged.file(index)
            staged_vcf = None if table_only else staged.file(output)   # renamed into place last
            records = map(annotate, source)
            if left_context is None:
                scored = _in_batches(records, scorer)
            else:
                scored = ContextScorer(model, reference, resolver, left_context=left_context,
                                       batch_size=batch_size, rc_average=scorer.rc_average,
                                       piece_length=piece_length)(records)
            with tqdm(total=source.alt_alleles, unit=" variants", desc="score",
                      disable=not progress) as bar:
                tally = _write(scored, header, staged_vcf, staged_table,
                               source.extra_columns, bar)
            if not table_only:
                with quiet_htslib():   # not a word about POS 0 (telomere) records
                    pysam.tabix_index(str(staged_vcf), preset="vcf", force=True,
                                      index=str(staged_index))
            if staged_plot is not None:
                how = f"window {window:,}"
                if left_context is not None:
                    context = left_context if left_context == CONTIG else f"{left_context:,}"
                    how = f"left context {context}, right flank {flank_lengths(window)[1]:,}"
                plot_score_distributions(tally.llr, tally.cosine, tally.is_snv,
                                         f"{Path(vcf).name} scored by {model_dir.name} "
                                         f"({how})", staged_plot)

    hints = list(resolver.suggestions.values())
    if resolver.missing:
        hints.append(f"contigs not in {fasta}: {', '.join(resolver.missing)}")
    return {"records": n_records, "alt_alleles": tally.alt_alleles,
            "statuses": dict(tally.statuses), "output": str(output), "table": str(table),
            "hints": hints}


def _check_options(output: Path, table_only: bool, window: int, batch_size: int, rename_chroms,
                   chrom_map):
    if not table_only and not output.name.endswith((".gz", ".bgz")):
        raise InputError(output, "name the output .vcf.gz (a VCF/BCF is scored into a "
                                 f"bgzipped, tabix-indexed VCF) or {TABLE_SUFFIX} (a variant "
                                 "table is scored into a table)")
    if window < 2:
        raise InputError(None, f"--window must be at least 2, got {window}")
    if window > MAX_WINDOW:
        raise InputError(None, f"--window must be at most {MAX_WINDOW:,} (2^20), got "
                               f"{window:,}: the scorer holds every window of a batch whole "
                               "(for more upstream context, use --left-context)")
    if batch_size < 1:
        raise InputError(None, f"--batch-size must be at least 1, got {batch_size}")
    if rename_chroms is not None and rename_chroms not in RENAMES:
        raise InputError(None, f"--rename-chroms must be one of {', '.join(RENAMES)}")
    if rename_chroms and chrom_map:
        raise InputError(None, "give --rename-chroms or --chrom-map, not both")


def _check_left_context(left_context, prefix_reuse: bool) -> int | str | None:
    """``left_context`` as context.py takes it (a number of bases, written as digits on the
    command line, or "contig"), or None for windowed mode."""
    if left_context is None:
        return None
    if isinstance(left_context, str) and left_context.strip().isdigit():
        left_context = int(left_context)
    if left_context != CONTIG and (isinstance(left_context, bool)
                                   or not isinstance(left_context, int) or left_context < 1):
        raise InputError(None, "--left-context must be a positive number of bases or "
                               f"'{CONTIG}', got {left_context!r}")
    if not prefix_reuse:
        raise InputError(None, "--no-prefix-reuse is for windowed mode; --left-context "
                               "streams each contig once and branches every ALT from it")
    return left_context


def _kind(config) -> str:
    """What makes a model unable to stream, in words."""
    kinds = [k for k, on in (("a masked LM", config.objective != "clm"),
                             ("bidirectional", config.bidirectional),
                             ("rc_equivariant", config.rc_equivariant)) if on]
    return " and ".join(kinds) or "not causal"


@dataclass
class _Tally:
    """What the summary and the plot need of the records written."""
    statuses: Counter = field(default_factory=Counter)   # per ALT ("no_alt" per record without)
    alt_alleles: int = 0
    llr: list[float | None] = field(default_factory=list)   # per ALT the model read
    cosine: list[float] = field(default_factory=list)
    is_snv: list[bool] = field(default_factory=list)

    def add(self, record: Record) -> None:
        self.statuses.update(record.status if record.alts else ["no_alt"])
        self.alt_alleles += len(record.alts)
        for i, alt in enumerate(record.alts):
            if record.status[i] in READ_BY_MODEL:
                self.llr.append(record.llr[i])
                self.cosine.append(record.cos[i])
                self.is_snv.append(len(alt) == len(record.ref) == 1)


def _in_batches(records: Iterable[Record], scorer: Scorer) -> Iterator[Record]:
    """Windowed mode: the records scored a batch at a time, in order."""
    for batch in batches(records, scorer.batch_size):
        scorer.score(batch)
        yield from batch


def _write(records: Iterable[Record], header: list[bytes] | None, vcf_path: Path | None,
           table_path: Path, extra_columns, bar: tqdm) -> _Tally:
    """Write every scored record, in order, to the VCF (bgzipped, after ``header``; none for a
    variant table) and the table (with a variant table's ``extra_columns``); the bar counts
    ALT alleles (variants/s)."""
    tally = _Tally()
    with ExitStack() as stack:
        out = None if vcf_path is None else stack.enter_context(pysam.BGZFile(str(vcf_path),
                                                                              "wb"))
        tsv = stack.enter_context(open(table_path, "w", encoding="utf-8"))
        if out is not None:
            out.write(b"\n".join(header) + b"\n")
        tsv.write(table_header(extra_columns))
        for record in records:
            if out is not None:
                out.write(annotated_line(record) + b"\n")
            tsv.writelines(row + "\n" for row in table_rows(record))
            tally.add(record)
            bar.update(len(record.alts))
    return tally
