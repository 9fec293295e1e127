"""The ``genossm`` command: one subcommand per stage (DESIGN.md, "Commands").

Bad input ends in one line on stderr (``genossm: error: FILE: PLACE: WHAT``) and exit status 2,
with no traceback unless ``--debug``; an interrupt exits 130. The stages themselves guarantee
that no partial output is left behind.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

# Before torch is imported: idle OpenMP workers sleep rather than spin, which keeps the chunked
# CPU scan (many small parallel calls) fast on machines with few or busy cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from genossm import __version__
from genossm.errors import InputError

EXIT_INPUT_ERROR = 2
EXIT_INTERRUPTED = 130


def _cmd_tokenize(args) -> int:
    from genossm.tokenize import ReadFilter, parse_flags, tokenize

    try:
        flags = parse_flags(args.exclude_flags)
    except ValueError as e:
        raise InputError(None, f"--exclude-flags: {e}") from None
    filt = ReadFilter(exclude_flags=flags, min_mapq=args.min_mapq,
                      min_length=args.min_length, region=args.region)
    s = tokenize(args.inputs, args.output, force=args.force, chunk_size=args.chunk_size,
                 threads=args.threads, read_filter=filt, reference=args.reference,
                 progress=not args.quiet)
    dropped: dict[str, int] = {}
    for src in s["sources"]:
        for reason, n in src.get("dropped", {}).items():
            dropped[reason] = dropped.get(reason, 0) + n
    extra = ""
    if dropped:
        extra += "; reads filtered out: " + ", ".join(f"{k} {v:,}" for k, v in dropped.items())
    if s["empty_records"]:
        extra += f"; {s['empty_records']} empty FASTA record(s) skipped (see warnings)"
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
    from genossm.runtime import set_threads
    from genossm.train import load_train_config, saved_train_config, train

    set_threads(args.threads)
    # resuming without --config continues with the run's own config
    base = saved_train_config(args.output) if args.resume and args.config is None else None
    cfg = load_train_config(args.config, base=base, seq_len=args.seq_len,
                            batch_size=args.batch_size,
                            max_steps=args.max_steps, max_time=args.max_time, seed=args.seed)
    s = train(args.stores, args.output, cfg, device=args.device, resume=args.resume,
              force=args.force, progress=not args.quiet)
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
    from genossm.runtime import set_threads

    set_threads(args.threads)
    m = evaluate(args.model_dir, args.store, args.output, regions_bed=args.regions,
                 plots_dir=args.plots, device=args.device, chunk_length=args.chunk_length,
                 markov_max_order=args.markov_max_order, max_windows=args.max_windows,
                 progress=not args.quiet)
    print(f"genossm evaluate: model {m['model_bits_per_base']:.3f} bits/base vs Markov order "
          f"{m['markov_order']} {m['markov_bits_per_base']:.3f} bits/base over "
          f"{m['bases_scored']:,} bases ({m['measure']}) -> {args.output}")
    return 0


def _cmd_score(args) -> int:
    from genossm.runtime import set_threads
    from genossm.score import format_summary, score_vcf

    set_threads(args.threads)
    summary = score_vcf(args.vcf, fasta=args.fasta, model_dir=args.model, output=args.output,
                        table=args.table, window=args.window, batch_size=args.batch_size,
                        device=args.device,
                        rename_chroms=args.rename_chroms, chrom_map=args.chrom_map,
                        prefix_reuse=not args.no_prefix_reuse, progress=not args.quiet,
                        plot=args.plot)
    print(format_summary(summary))
    return 0


def _cmd_embed(args) -> int:
    from genossm.embed import embed
    from genossm.runtime import set_threads

    set_threads(args.threads)
    s = embed(args.model, args.fasta, args.output, bed=args.bed, per_base=args.per_base,
              layer=args.layer, rc_average=args.rc_average, chunk_length=args.chunk_length,
              max_length=args.max_length, device=args.device,
              force=args.force, progress=not args.quiet)
    print(f"genossm embed: {s['regions']:,} regions, {s['bases']:,} bases, width {s['width']} "
          f"-> {s['output']}")
    return 0


def _add_runtime_options(p: argparse.ArgumentParser) -> None:
    """--device and --threads, the same for every command that runs a model."""
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: the GPU when there is one (default)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: all cores)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="genossm",
        description="Single-nucleotide selective state-space models for genomes.")
    parser.add_argument("--version", action="version", version=f"genossm {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("tokenize", help="FASTA/SAM/BAM/CRAM -> token store (.zarr)",
                       description="Encode sequences into a Zarr v3 token store. FASTA "
                                   "records become contigs; SAM/BAM/CRAM reads go into the "
                                   "reads group.")
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT",
                   help="FASTA (plain, gzip, BGZF), SAM, BAM or CRAM; format sniffed "
                        "from the content")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="STORE.zarr")
    p.add_argument("--threads", type=int, default=1, help="threads for decompression and "
                                                          "compression (default 1)")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.add_argument("--chunk-size", type=int, default=1 << 20,
                   help="Zarr chunk length in bases (default 1048576)")
    p.add_argument("--reference", type=Path, metavar="FA", help="reference FASTA for CRAM")
    p.add_argument("--region", metavar="R", help="only reads overlapping R (chr:start-end); "
                                                 "needs an indexed BAM/CRAM")
    p.add_argument("--exclude-flags", default="SECONDARY,QCFAIL,DUP,SUPPLEMENTARY",
                   metavar="FLAGS", help="drop reads with any of these SAM flags: an integer "
                                         "or names (UNMAP,SECONDARY,QCFAIL,DUP,SUPPLEMENTARY, "
                                         "...); default %(default)s")
    p.add_argument("--min-mapq", type=int, default=0, help="drop reads below this MAPQ")
    p.add_argument("--min-length", type=int, default=1, help="drop reads shorter than this")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_tokenize)

    p = sub.add_parser("info", help="summarise a token store")
    p.add_argument("store", type=Path, metavar="STORE.zarr")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("train", help="token stores -> model directory",
                       description="Train a selective-SSM language model on token stores. "
                                   "Options given here override the --config file.")
    p.add_argument("stores", nargs="+", type=Path, metavar="STORE.zarr")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="MODEL_DIR")
    p.add_argument("--config", type=Path, metavar="TRAIN.yaml",
                   help="training config: model and split sections, schedule, batch, ...")
    p.add_argument("--seq-len", type=int, metavar="L", help="window length")
    p.add_argument("--batch-size", type=int, help="windows per micro-batch per process")
    p.add_argument("--max-steps", type=int, metavar="N", help="optimizer steps in all")
    p.add_argument("--max-time", type=float, metavar="SECONDS",
                   help="stop with a checkpoint after this long (this invocation)")
    p.add_argument("--seed", type=int)
    _add_runtime_options(p)
    p.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint in MODEL_DIR exactly")
    p.add_argument("--force", action="store_true", help="replace an existing MODEL_DIR")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="bits per base on held-out regions vs a Markov baseline",
                       description="Score a model on a store's held-out regions (the model's "
                                   "validation split, or --regions) in bits per base, against "
                                   "a k-mer Markov baseline fit on its training data; write "
                                   "METRICS.json and plots.")
    p.add_argument("model_dir", type=Path, metavar="MODEL_DIR")
    p.add_argument("store", type=Path, metavar="STORE.zarr")
    p.add_argument("--regions", type=Path, metavar="BED",
                   help="evaluate these regions instead of the model's validation split")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="METRICS.json")
    p.add_argument("--plots", type=Path, metavar="DIR",
                   help="directory for the PNG plots (default: beside METRICS.json)")
    _add_runtime_options(p)
    p.add_argument("--chunk-length", type=int, default=1 << 16, metavar="N",
                   help="bases per streamed piece for causal models (default 65536)")
    p.add_argument("--markov-max-order", type=int, default=10, metavar="K",
                   help="highest Markov order tried (0..12, default 10)")
    p.add_argument("--max-windows", type=int, default=32, metavar="N",
                   help="windows of the training length for bits by position (default 32)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("score", help="VCF/BCF + FASTA -> variant scores (scored VCF + table)",
                       description="Score every alt allele of a VCF/BCF with a model: "
                                   "log-likelihood ratio (causal models) or masked-LM log-ratio "
                                   "(masked models) in nats, and embedding distances, averaged "
                                   "over both strands. Writes a bgzipped, tabix-indexed VCF with "
                                   "GENOSSM_* INFO fields and a table.")
    p.add_argument("vcf", type=Path, metavar="VCF", help="VCF (plain or bgzipped) or BCF")
    p.add_argument("--fasta", required=True, type=Path, metavar="FA",
                   help="reference FASTA, plain or bgzipped, faidx-indexed")
    p.add_argument("--model", required=True, type=Path, metavar="MODEL_DIR")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="OUT.vcf.gz")
    p.add_argument("--table", type=Path, metavar="OUT.tsv",
                   help="one row per (record, alt allele) (default: OUT.tsv beside OUT.vcf.gz)")
    p.add_argument("--plot", type=Path, metavar="OUT.png",
                   help="also draw the distributions of the scores (LLR, cosine distance)")
    p.add_argument("--window", type=int, default=4096, metavar="W",
                   help="haplotype window centred on the variant, in bases (default 4096)")
    p.add_argument("--batch-size", type=int, default=32, metavar="B",
                   help="sequences per model call (default 32)")
    _add_runtime_options(p)
    names = p.add_mutually_exclusive_group()
    names.add_argument("--rename-chroms", choices=["add-chr", "strip-chr"],
                       help="VCF contig names -> FASTA names: add or strip a 'chr' prefix")
    names.add_argument("--chrom-map", type=Path, metavar="TSV",
                       help="two tab-separated columns: VCF contig name, FASTA contig name")
    p.add_argument("--no-prefix-reuse", action="store_true",
                   help="run each haplotype from its start (slower; same scores)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_score)

    p = sub.add_parser("embed", help="regions of a FASTA -> embeddings (.zarr)",
                       description="Embed regions (BED, or every FASTA record) with a model's "
                                   "hidden states: mean-pooled per region, per base on request.")
    p.add_argument("--model", required=True, type=Path, metavar="MODEL_DIR")
    p.add_argument("--fasta", required=True, type=Path, metavar="FA",
                   help="indexed FASTA, plain or bgzipped")
    p.add_argument("--bed", type=Path, metavar="BED",
                   help="regions: chrom, start, end[, name, score, strand]; strand - embeds "
                        "the reverse complement (default: every FASTA record, whole)")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="OUT.zarr")
    p.add_argument("--per-base", action="store_true", help="also store every base's vector")
    p.add_argument("--layer", type=int, default=-1,
                   help="residual stream after this many blocks: 0 = embedding, -1 = final "
                        "normalised output (default -1)")
    p.add_argument("--rc-average", action="store_true",
                   help="average with the other strand, position by position")
    p.add_argument("--chunk-length", type=int, default=1 << 16, metavar="N",
                   help="bases per streamed piece for causal models (default 65536)")
    p.add_argument("--max-length", type=int, default=1 << 20, metavar="N",
                   help="longest region a non-causal model embeds in its one pass "
                        "(default 1048576)")
    _add_runtime_options(p)
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_embed)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="genossm: %(levelname)s: %(message)s")
    logging.getLogger().setLevel(logging.WARNING)
    try:
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
