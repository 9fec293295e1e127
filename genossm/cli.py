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
