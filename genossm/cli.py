"""The ``genossm`` command: one subcommand per stage (docs/design.md, "Options and the workflow").

Bad input and usage errors end in one line on stderr (``genossm: error: FILE: PLACE: WHAT``)
and exit status 2, with no traceback unless ``--debug``; Ctrl-C exits 130, SIGTERM 143 and
SIGHUP 129, after the stages have removed their temporaries.

This is the one place where every command's flags are defined (their defaults live in the
stages; ``cli_help`` shows them in ``--help``): each subcommand has a short ``_add_*`` (its
flags) and ``_cmd_*`` (the call of its stage), so one command reads in one sitting.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import signal
import sys
from pathlib import Path

# Before torch is imported: idle OpenMP workers sleep rather than spin, which keeps the chunked
# CPU scan (many small parallel calls) fast on machines with few or busy cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from genossm import __version__
from genossm.cli_help import TRAIN_OVERRIDES, StageDefaultsHelp
from genossm.errors import InputError

EXIT_INPUT_ERROR = 2
EXIT_INTERRUPTED = 130


# Every option of a stage command defaults to argparse.SUPPRESS: an option the user did not give
# is absent from the parsed namespace, so the stage function's own default applies. The defaults
# live there, once (the function signatures, ReadFilter, TrainConfig); ``--help`` looks them up
# only when it is printed, so that building the parser never imports torch.
_PARSER_KEYS = ("command", "func", "debug")

class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other error (``genossm: error: ...``), exit 2."""

    def error(self, message):
        self.exit(EXIT_INPUT_ERROR, f"genossm: error: {message} (see {self.prog} --help)\n")


# score's and embed's reference (genossm.reference.Reference reads each of these)
REFERENCE_HELP = ("reference: FASTA (plain or bgzipped; indexed, or indexed on the fly), UCSC "
                  "2bit, or a GenBank/EMBL flat file (read into memory)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _given(args) -> dict:
    """The options (and positionals) given on the command line, by destination name."""
    return {k: v for k, v in vars(args).items() if k not in _PARSER_KEYS}


def _cmd_convert(args) -> int:
    from genossm.convert import convert

    kw = _given(args)
    output = convert(kw.pop("source"), kw.pop("output"), **kw)
    print(f"genossm convert: wrote {output} from {args.source}")
    return 0


def _cmd_export(args) -> int:
    from genossm.hf import export

    kw = _given(args)
    output = export(kw.pop("model_dir"), kw.pop("output"), **kw)
    print(f"genossm export: wrote {output} (transformers: AutoModelForCausalLM."
          "from_pretrained and AutoTokenizer.from_pretrained read it)")
    return 0


def _given_with_threads(args) -> dict:
    """``_given`` for a command that runs a model: --threads is applied to torch here."""
    from genossm.runtime import set_threads

    kw = _given(args)
    set_threads(kw.pop("threads", None))
    return kw


def _cmd_tokenize(args) -> int:
    from dataclasses import fields

    from genossm.tokenize import ReadFilter, parse_flags, tokenize

    kw = _given(args)
    filt = {f.name: kw.pop(f.name) for f in fields(ReadFilter) if f.name in kw}
    if "exclude_flags" in filt:
        try:
            filt["exclude_flags"] = parse_flags(filt["exclude_flags"])
        except ValueError as e:
            raise InputError(None, f"--exclude-flags: {e}") from None
    s = tokenize(kw.pop("inputs"), kw.pop("output"), read_filter=ReadFilter(**filt), **kw)
    dropped: dict[str, int] = {}
    for src in s["sources"]:
        for reason, n in src.get("dropped", {}).items():
            dropped[reason] = dropped.get(reason, 0) + n
    extra = ""
    if dropped:
        extra += "; reads filtered out: " + ", ".join(f"{k} {v:,}" for k, v in dropped.items())
    if s["empty_records"]:
        extra += f"; {s['empty_records']} empty FASTA record(s) skipped (see warnings)"
    if s.get("features_bed"):
        extra += f"; {s['features']:,} feature parts -> {s['features_bed']}"
    parts = []
    if s["contigs"] or not s["reads"]:
        parts.append(f"{s['contigs']:,} contigs with {s['bases']:,} bases ({s['n_count']:,} N, "
                     f"{s['iupac_count']:,} of them from IUPAC codes)")
    if s["reads"] or s["read_bases"]:
        parts.append(f"{s['reads']:,} reads with {s['read_bases']:,} bases")
    print(f"genossm tokenize: wrote {s['output']}: {'; '.join(parts)}{extra}")
    return 0


def _cmd_info(args) -> int:
    from genossm.info import format_summary, store_summary

    summary = store_summary(args.store)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def _cmd_train(args) -> int:
    from genossm.train import config_path, describe, load_train_config, saved_train_config, train

    kw = _given_with_threads(args)
    stores, output, config = kw.pop("stores"), kw.pop("output"), kw.pop("config", None)
    overrides = {name: kw.pop(name) for name in TRAIN_OVERRIDES if name in kw}
    # resuming without --config continues with the run's own config; a new run without one
    # takes the built-in default of its device (said in its first line)
    base = saved_train_config(output) if kw.get("resume") and config is None else None
    if base is None:
        config, chosen = config_path(config, kw.get("device"))
        if chosen:
            kw["announce"] = f"genossm train: no --config: the built-in default {config.stem}"
    cfg = load_train_config(config, base=base, **overrides)
    if "announce" in kw:
        kw["announce"] += f" ({describe(cfg)})"
    s = train(stores, output, cfg, **kw)
    if s["world_size"] > 1 and int(os.environ.get("RANK", "0")) != 0:
        return 0
    val = "" if s["val_bits_per_base"] is None else \
        f", validation {s['val_bits_per_base']:.4f} bits/base"
    bits = "n/a" if s["bits_per_base"] is None else f"{s['bits_per_base']:.4f}"
    print(f"genossm train: wrote {s['output']}: {s['parameters']:,} parameters, {s['steps']:,} "
          f"steps, {s['tokens']:,} tokens in {s['elapsed_s']:.0f} s (stopped by "
          f"{s['stopped']}); train {bits} bits/base{val}")
    return 0


def _cmd_evaluate(args) -> int:
    from genossm.evaluate import evaluate

    kw = _given_with_threads(args)
    m = evaluate(kw.pop("model_dir"), kw.pop("store"), kw.pop("output"), **kw)
    if m is None:   # a rank but the first of a context-parallel run
        return 0
    print(f"genossm evaluate: model {m['model_bits_per_base']:.3f} bits/base vs Markov order "
          f"{m['markov_order']} {m['markov_bits_per_base']:.3f} bits/base over "
          f"{m['bases_scored']:,} bases ({m['measure']}) -> {args.output}")
    return 0


def _cmd_score(args) -> int:
    from genossm.score import format_summary, score_vcf

    kw = _given_with_threads(args)
    print(format_summary(score_vcf(kw.pop("vcf"), **kw)))
    return 0


def _cmd_split_calls(args) -> int:
    from genossm.score.parts import format_split_summary, split_calls

    kw = _given(args)
    print(format_split_summary(split_calls(kw.pop("vcf"), kw.pop("output"), **kw)))
    return 0


def _cmd_gather_scores(args) -> int:
    from genossm.score.parts import format_gather_summary, gather_scores

    kw = _given(args)
    print(format_gather_summary(gather_scores(kw.pop("parts"), kw.pop("output"), **kw)))
    return 0


def _cmd_benchmark(args) -> int:
    from genossm.benchmark import benchmark, format_summary

    kw = _given(args)
    print(format_summary(benchmark(kw.pop("scored"), kw.pop("output"), **kw), args.output))
    return 0


def _cmd_embed(args) -> int:
    from genossm.embed import embed

    kw = _given_with_threads(args)
    s = embed(kw.pop("model_dir"), kw.pop("fasta"), kw.pop("output"), **kw)
    if s is None:   # a rank but the first of a context-parallel run
        return 0
    print(f"genossm embed: {s['regions']:,} regions, {s['bases']:,} bases, width {s['width']} "
          f"-> {s['output']}")
    return 0


def _stage_parser(sub, command: str, **kwargs) -> argparse.ArgumentParser:
    """A subcommand whose options default to SUPPRESS (given options only reach the stage)."""
    return sub.add_parser(command, argument_default=argparse.SUPPRESS,
                          formatter_class=functools.partial(StageDefaultsHelp,
                                                            command=command), **kwargs)


def _add_runtime_options(p: argparse.ArgumentParser) -> None:
    """--device and --threads, the same for every command that runs a model."""
    p.add_argument("--device", choices=["auto", "cpu", "cuda"],
                   help="auto: the GPU when there is one, else the CPU")
    p.add_argument("--threads", type=_positive_int,
                   help="CPU threads for torch (not given: torch's default, all cores)")


def _add_chunk_length(p: argparse.ArgumentParser) -> None:
    """--chunk-length, the same for every command that streams a causal model over regions."""
    p.add_argument("--chunk-length", type=int, metavar="N",
                   help="bases per streamed piece for causal models")


def _add_context_parallel(p: argparse.ArgumentParser) -> None:
    """--context-parallel, the same for train, evaluate and embed."""
    p.add_argument("--context-parallel", type=_positive_int, metavar="R",
                   help="under torchrun: split each sequence across R processes, each "
                        "holding a contiguous shard, the scan's state crossing between them "
                        "exactly, so a sequence R times longer fits (train: R divides the "
                        "processes, consecutive ranks sharing each window; evaluate, embed: R "
                        "is the number of processes, one region or window at a time, rank 0 "
                        "writing the outputs)")


def _add_force(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true",
                   help="replace an existing output that genossm wrote (never an input of the "
                        "run, never anything genossm did not write)")


def _add_beyond_trained_length(p: argparse.ArgumentParser) -> None:
    p.add_argument("--beyond-trained-length", action="store_true",
                   help="let a model that reads a window whole (bidirectional, "
                        "rc_equivariant) read windows longer than it was trained on")


def _add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", dest="progress", action="store_false",
                   help="no progress bar")


def _add_tokenize(sub) -> None:

    p = _stage_parser(sub, "tokenize", help="FASTA/GenBank/EMBL/2bit/SAM/BAM/CRAM -> token "
                                            "store (.zarr)",
                      description="Encode sequences into a Zarr v3 token store. FASTA, "
                                  "GenBank, EMBL and 2bit records become contigs; FASTQ and "
                                  "SAM/BAM/CRAM reads go into the reads group.")
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT",
                   help="FASTA, GenBank or EMBL (plain, gzip, BGZF), 2bit, FASTQ, SAM, BAM or "
                        "CRAM; format sniffed from the content")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="STORE.zarr")
    p.add_argument("--threads", type=_positive_int,
                   help="threads for decompression and compression")
    _add_force(p)
    p.add_argument("--chunk-size", type=int, help="Zarr chunk length in bases")
    p.add_argument("--reference", type=Path, metavar="FA", help="reference FASTA for CRAM")
    p.add_argument("--region", metavar="R", help="only reads overlapping R (chr:start-end); "
                                                 "needs an indexed BAM/CRAM")
    p.add_argument("--exclude-flags", metavar="FLAGS",
                   help="drop reads with any of these SAM flags: an integer or names "
                        "(UNMAP,SECONDARY,QCFAIL,DUP,SUPPLEMENTARY, ...)")
    p.add_argument("--min-mapq", type=int, help="drop reads below this MAPQ")
    p.add_argument("--min-length", type=int, help="drop reads shorter than this")
    p.add_argument("--features", metavar="TYPES",
                   help="write these GenBank/EMBL feature types (comma-separated, e.g. "
                        "CDS,gene) as a BED, one line per location part")
    p.add_argument("--features-bed", type=Path, metavar="BED",
                   help="where --features writes (not given: STORE.features.bed beside the "
                        "store)")
    _add_quiet(p)
    p.set_defaults(func=_cmd_tokenize)


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="summarise a token store")
    p.add_argument("store", type=Path, metavar="STORE.zarr")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_info)


def _add_train(sub) -> None:
    p = _stage_parser(sub, "train", help="token stores -> model directory",
                      description="Train a selective-SSM language model on token stores. "
                                  "Options given here override the --config file.")
    p.add_argument("stores", nargs="+", type=Path, metavar="STORE.zarr")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="MODEL_DIR")
    p.add_argument("--config", type=Path, metavar="TRAIN.yaml",
                   help="training config: model and split sections, schedule, batch, ...; "
                        "or a built-in one by name: cpu, gpu-131k, gpu-1m (not given: cpu, "
                        "or gpu-131k on a GPU)")
    for name, (type_, metavar, help_) in TRAIN_OVERRIDES.items():
        p.add_argument("--" + name.replace("_", "-"), type=type_, metavar=metavar, help=help_)
    _add_runtime_options(p)
    p.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint in MODEL_DIR exactly")
    _add_context_parallel(p)
    _add_force(p)
    _add_quiet(p)
    p.set_defaults(func=_cmd_train)


def _add_evaluate(sub) -> None:
    p = _stage_parser(sub, "evaluate",
                      help="bits per base on held-out regions vs a Markov baseline",
                      description="Score a model on a store's held-out regions (the model's "
                                  "validation split, or --regions) in bits per base, against "
                                  "a k-mer Markov baseline fit on its training data; write "
                                  "METRICS.json and plots.")
    p.add_argument("model_dir", type=Path, metavar="MODEL_DIR",
                   help="a genossm model directory, or a checkpoint directory that genossm "
                        "convert reads (converted in memory; needs --regions)")
    p.add_argument("store", type=Path, metavar="STORE.zarr")
    p.add_argument("--regions", dest="regions_bed", type=Path, metavar="BED",
                   help="evaluate these regions instead of the model's validation split")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="METRICS.json")
    p.add_argument("--plots", dest="plots_dir", type=Path, metavar="DIR",
                   help="directory for the PNG plots (not given: beside METRICS.json)")
    _add_runtime_options(p)
    _add_context_parallel(p)
    _add_chunk_length(p)
    p.add_argument("--markov-max-order", type=int, metavar="K",
                   help="highest Markov order tried (0..12)")
    p.add_argument("--max-windows", type=int, metavar="N",
                   help="windows of the training length for bits by position")
    p.add_argument("--window", type=int, metavar="W",
                   help="length of a masked model's windows and of the bits-by-position "
                        "windows (not given: the length the model was trained on)")
    _add_force(p)
    _add_quiet(p)
    p.set_defaults(func=_cmd_evaluate)


def _add_score(sub) -> None:
    p = _stage_parser(sub, "score",
                      help="VCF/BCF + FASTA -> variant scores (scored VCF + table)",
                      description="Score every alt allele of a VCF/BCF with a model: "
                                  "log-likelihood ratio (causal models) or masked-LM log-ratio "
                                  "(masked models) in nats, and embedding distances, averaged "
                                  "over both strands. Writes a bgzipped, tabix-indexed VCF "
                                  "with GENOSSM_* INFO fields and a table; a variant table "
                                  "(TSV: chrom, pos, ref, alt, other columns kept) is scored "
                                  "into a table (-o OUT.tsv).")
    p.add_argument("vcf", type=Path, metavar="VCF",
                   help="VCF (plain, gzip or bgzip) or BCF, or a variant table (TSV); - reads "
                        "standard input")
    p.add_argument("--fasta", required=True, type=Path, metavar="FA",
                   help=REFERENCE_HELP)
    p.add_argument("--model", dest="model_dir", required=True, type=Path, metavar="MODEL_DIR",
                   help="a genossm model directory, or a checkpoint directory that genossm "
                        "convert reads (converted in memory)")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="OUT.vcf.gz",
                   help="the scored VCF, or for a variant table the scored table (OUT.tsv)")
    p.add_argument("--table", type=Path, metavar="OUT.tsv",
                   help="one row per (record, alt allele) (not given: OUT.tsv beside "
                        "OUT.vcf.gz)")
    p.add_argument("--plot", type=Path, metavar="OUT.png",
                   help="also draw the distributions of the scores (LLR, cosine distance)")
    p.add_argument("--window", type=int, metavar="W",
                   help="haplotype window centred on the variant, in bases")
    p.add_argument("--left-context", metavar="C",
                   help="causal models: score each variant given the upstream sequence a "
                        "stream has read, C to 2C bases (streams start at multiples of C), or "
                        "'contig' for everything upstream; the right flank stays W/2 (not "
                        "given: windowed mode, the window's left flank)")
    p.add_argument("--batch-size", type=int, metavar="B", help="sequences per model call")
    _add_runtime_options(p)
    names = p.add_mutually_exclusive_group()
    names.add_argument("--rename-chroms", choices=["add-chr", "strip-chr"],
                       help="VCF contig names -> FASTA names: add or strip a 'chr' prefix")
    names.add_argument("--chrom-map", type=Path, metavar="TSV",
                       help="two tab-separated columns: VCF contig name, FASTA contig name")
    p.add_argument("--no-prefix-reuse", dest="prefix_reuse", action="store_false",
                   help="run each haplotype from its start (slower; same scores)")
    _add_beyond_trained_length(p)
    _add_force(p)
    _add_quiet(p)
    p.set_defaults(func=_cmd_score)


def _add_split_calls(sub) -> None:
    p = _stage_parser(sub, "split-calls",
                      help="VCF/BCF -> N part VCFs to score as separate jobs",
                      description="Split a call set into N parts balanced by record count, "
                                  "cut only between contigs or positions (records at one "
                                  "position stay together), for `genossm score` to score "
                                  "each part as its own job and `genossm gather-scores` to "
                                  "gather them into what one job would have written. Writes "
                                  "PARTS_DIR/1-of-N.vcf.gz .. N-of-N.vcf.gz: bgzipped VCF "
                                  "with the call set's header (and a ##genossm_part line) and "
                                  "the part's records, in input order, as their text (a BCF's "
                                  "records as htslib writes them in VCF); parts beyond the "
                                  "last record hold the header only.")
    p.add_argument("vcf", type=Path, metavar="VCF", help="VCF (plain or compressed) or BCF, "
                                                         "sorted")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="PARTS_DIR",
                   help="directory for the parts")
    p.add_argument("--parts", required=True, type=_positive_int, metavar="N",
                   help="number of parts (the parts of a call set in all, not per contig)")
    _add_force(p)
    p.set_defaults(func=_cmd_split_calls)


def _add_gather_scores(sub) -> None:
    p = _stage_parser(sub, "gather-scores",
                      help="scored parts -> one scored VCF + table",
                      description="Gather the parts of a call set that `genossm split-calls` "
                                  "wrote and `genossm score` scored into one bgzipped, "
                                  "tabix-indexed VCF and one table: the records and rows in "
                                  "the call set's order, as one `genossm score` job would "
                                  "have written them. Each part's table is read from beside "
                                  "its VCF (PART.tsv for PART.vcf.gz). Every part of the split "
                                  "must be given, once, in any order, all scored alike.")
    p.add_argument("parts", nargs="+", type=Path, metavar="PART.vcf.gz",
                   help="the scored parts (genossm score's outputs for the parts)")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="OUT.vcf.gz")
    p.add_argument("--table", type=Path, metavar="OUT.tsv",
                   help="the gathered table (not given: OUT.tsv beside OUT.vcf.gz)")
    p.add_argument("--plot", type=Path, metavar="OUT.png",
                   help="also draw the distributions of the scores (LLR, cosine distance)")
    _add_force(p)
    p.set_defaults(func=_cmd_gather_scores)


def _add_benchmark(sub) -> None:
    p = _stage_parser(sub, "benchmark", help="scored variants + labels -> AUROC, AUPRC, "
                                             "Spearman (metrics JSON + table + plots)",
                      description="Measure how well each score of `genossm score` (-LLR, so "
                                  "that higher means more damaging; cosine and L2 distance) "
                                  "separates labelled variants: AUROC, AUPRC (average "
                                  "precision) and Spearman's rho with bootstrap 95% "
                                  "confidence intervals, overall and per group, and the "
                                  "labelled alleles without a score, by status. Writes "
                                  "METRICS.json, a table and ROC, precision-recall and "
                                  "score-by-label PNGs.")
    p.add_argument("scored", type=Path, metavar="SCORED",
                   help="a scored VCF (genossm score's OUT.vcf.gz) or its table (OUT.tsv, "
                        "extra columns welcome)")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="METRICS.json")
    p.add_argument("--table", type=Path, metavar="METRICS.tsv",
                   help="one row per (group, score) (not given: METRICS.tsv beside "
                        "METRICS.json)")
    p.add_argument("--plots", dest="plots_dir", type=Path, metavar="DIR",
                   help="directory for the PNGs METRICS.roc.png, .pr.png, .by_label.png (not "
                        "given: beside METRICS.json)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--label-info", metavar="KEY",
                        help="labels from this INFO key of the scored VCF (a Flag: present "
                             "is positive)")
    source.add_argument("--label-column", metavar="NAME",
                        help="labels from this column of --labels TSV, else of the score "
                             "table given as SCORED")
    p.add_argument("--labels", type=Path, metavar="TSV",
                   help="labels joined to the scored alleles on its chrom, pos, ref, alt "
                        "columns")
    p.add_argument("--positive", metavar="VALUES",
                   help="comma-separated label values that count as positive, or thresholds "
                        "on numeric labels ('<-1.3', '>=0.5')")
    p.add_argument("--negative", metavar="VALUES",
                   help="only these count as negative, the rest are left out (not given: "
                        "every label that is not positive)")
    p.add_argument("--group-by", metavar="FIELD",
                   help="also per value of this INFO key (with --label-info) or column (of "
                        "the labels' TSV), e.g. a consequence")
    p.add_argument("--bootstrap", type=int, metavar="N",
                   help="bootstrap resamples for the confidence intervals (0: none)")
    p.add_argument("--seed", type=int, help="seed of the bootstrap resamples")
    _add_force(p)
    _add_quiet(p)
    p.set_defaults(func=_cmd_benchmark)


def _add_embed(sub) -> None:
    p = _stage_parser(sub, "embed", help="regions of a FASTA -> embeddings (.zarr)",
                      description="Embed regions (BED, or every FASTA record) with a model's "
                                  "hidden states: mean-pooled per region, per base on request.")
    p.add_argument("--model", dest="model_dir", required=True, type=Path, metavar="MODEL_DIR",
                   help="a genossm model directory, or a checkpoint directory that genossm "
                        "convert reads (converted in memory)")
    p.add_argument("--fasta", required=True, type=Path, metavar="FA",
                   help=REFERENCE_HELP)
    p.add_argument("--bed", type=Path, metavar="BED",
                   help="regions: chrom, start, end[, name, score, strand]; strand - embeds "
                        "the reverse complement (not given: every FASTA record, whole)")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="OUT.zarr")
    p.add_argument("--per-base", action="store_true", help="also store every base's vector")
    p.add_argument("--layer", type=int,
                   help="residual stream after this many blocks: 0 = embedding, -1 = final "
                        "normalised output")
    p.add_argument("--rc-average", action="store_true",
                   help="average with the other strand, position by position")
    _add_chunk_length(p)
    p.add_argument("--max-length", type=int, metavar="N",
                   help="longest region a non-causal model embeds in its one pass")
    p.add_argument("--strand-halves", action="store_true",
                   help="an rc_equivariant model's raw 2*d_model hidden states (forward "
                        "half, channel-flipped reverse half) instead of their average")
    _add_beyond_trained_length(p)
    _add_runtime_options(p)
    _add_context_parallel(p)
    _add_force(p)
    _add_quiet(p)
    p.set_defaults(func=_cmd_embed)


def _add_convert(sub) -> None:
    from genossm.convert import FORMATS

    p = _stage_parser(sub, "convert", help="a published checkpoint -> model directory",
                      description="Read a checkpoint directory as users download it (config.json "
                                  "with model.safetensors, or pytorch_model.bin read weights-"
                                  "only): Caduceus and PlantCaduceus, the official mamba_ssm "
                                  "LMs (Mamba-1 or Mamba-2 layers), and Hugging Face "
                                  "Transformers Mamba / Mamba-2 LMs; write a genossm model "
                                  "directory with the same logits.")
    p.add_argument("source", type=Path, metavar="SRC", help="the checkpoint directory")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="MODEL_DIR")
    p.add_argument("--from", dest="source_format", choices=FORMATS,
                   help="the checkpoint's format (default: told by its config.json)")
    p.add_argument("--vocab", metavar="MAP",
                   help="source token ids of genossm's symbols, e.g. "
                        "A=7,C=8,G=9,T=10,N=11,MASK=3 (default: the format's published "
                        "tokenizer)")
    p.add_argument("--trained-length", type=int, metavar="N",
                   help="the sequence length the model was trained on (e.g. 131072 for a "
                        "131k Caduceus), recorded so that score and embed refuse longer "
                        "windows for it")
    _add_force(p)
    p.set_defaults(func=_cmd_convert)


def _add_export(sub) -> None:
    p = _stage_parser(sub, "export", help="model directory -> Hugging Face Transformers",
                      description="Write a causal genossm model (Mamba-1 or Mamba-2 with one "
                                  "group) as a Hugging Face Transformers directory: "
                                  "MambaForCausalLM / Mamba2ForCausalLM weights and config, and "
                                  "a character-level tokenizer with genossm's ids.")
    p.add_argument("model_dir", type=Path, metavar="MODEL_DIR")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="HF_DIR")
    _add_force(p)
    p.set_defaults(func=_cmd_export)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="genossm",
        description="Single-nucleotide selective state-space models for genomes.")
    parser.add_argument("--version", action="version", version=f"genossm {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_tokenize(sub)
    _add_info(sub)
    _add_train(sub)
    _add_evaluate(sub)
    _add_score(sub)
    _add_split_calls(sub)
    _add_gather_scores(sub)
    _add_benchmark(sub)
    _add_embed(sub)
    _add_convert(sub)
    _add_export(sub)
    for command in sub.choices.values():   # --debug is accepted after the subcommand too
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show full tracebacks on errors")
    return parser


def command_options(command: str) -> dict[str, argparse.Action]:
    """The options of one subcommand by option string (``--window`` -> its action): what the
    workflow checks its config sections against."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices[command]._option_string_actions)


class Terminated(BaseException):
    """SIGTERM or SIGHUP (``kill``, Snakemake, SLURM, a closed terminal): unwinds like Ctrl-C,
    so that every staged output is removed before the process ends."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _terminate(signum, frame):
    raise Terminated(signum)


@contextlib.contextmanager
def _signals_unwind():
    """SIGTERM and SIGHUP raise Terminated while a command runs (main thread only; training
    sets its own SIGTERM handler, which stops with a checkpoint)."""
    previous = {}
    for signum in (signal.SIGTERM, signal.SIGHUP):
        try:
            previous[signum] = signal.signal(signum, _terminate)
        except ValueError:   # not the main thread: signals cannot reach this call anyway
            break
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="genossm: %(levelname)s: %(message)s")
    logging.getLogger().setLevel(logging.WARNING)
    try:
        with _signals_unwind():
            return args.func(args)
    except InputError as e:
        if args.debug:
            raise
        print(f"genossm: error: {e}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("genossm: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated as e:
        if args.debug:
            raise
        name = signal.Signals(e.signum).name
        print(f"genossm: terminated by {name}", file=sys.stderr)
        return 128 + e.signum
