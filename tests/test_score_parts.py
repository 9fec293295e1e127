"""Scatter-gather scoring (genossm/score/parts.py): a call set split into parts, each scored as its
own job and gathered, gives what one `genossm score` job gives (same records, order, text and
statuses; the same scores, to float32 noise, and the same bytes when the batches are alike);
the parts are balanced and never split a position; a wrong set of parts is one error line; and
the workflow's job graph with score.parts > 1."""

from __future__ import annotations

import csv
import gzip
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pysam
import pytest

from genossm.cli import main
from genossm.errors import InputError
from genossm.score import score_vcf
from genossm.score.parts import gather_scores, split_calls
from helpers import CHR20, DATA, ROOT, files, job_counts, one_error_line, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

VCF5 = DATA / "tabix_5.chr20_1-2000000.vcf"      # 280 indels, no ##contig lines
VCF16 = DATA / "tabix_16.chr20_1-2000000.vcf"    # indels, multi-allelic, sites only
WINDOW = 37
SCORES = ("GENOSSM_LLR", "GENOSSM_COS", "GENOSSM_L2")
NUMBERS = ("llr", "cosine_distance", "l2_distance")
# Scores are float32 sums over a window; the records batched with a record (their padding) move
# the last bits: within this of one job's scores (and equal when the batches are alike).
TOLERANCE = dict(rel=1e-5, abs=1e-5)
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("causal")
    tiny_model(directory)
    return directory


def records_of(path) -> list[str]:
    return [x for x in Path(path).read_text().splitlines() if not x.startswith("#")]


@pytest.fixture(scope="module")
def calls(tmp_path_factory) -> Path:
    """Real records (tabix_16: indels, multi-allelic) with runs of records at one position
    (each multi-allelic record followed by its alleles one by one), an ALT '.', a symbolic
    allele, and a contig the FASTA does not have: 29 records on 2 contigs."""
    header = [x for x in VCF16.read_text().splitlines() if x.startswith("#")]
    lines = []
    for line in records_of(VCF16):
        fields = line.split("\t")
        lines.append(line)
        alts = fields[4].split(",")
        if len(alts) > 1:
            lines += ["\t".join([*fields[:4], alt, *fields[5:]]) for alt in alts]
    extra = [["20", "1991300", ".", "A", ".", "50", "PASS", "."],
             ["20", "1991300", ".", "A", "<DEL>", "50", "PASS", "SVTYPE=DEL"],
             ["21", "100", "x1", "A", "C", "50", "PASS", "."],
             ["21", "100", "x2", "A", "G,T", "50", "PASS", "."]]
    lines += ["\t".join(f) for f in extra]
    path = tmp_path_factory.mktemp("calls") / "calls.vcf"
    path.write_text("\n".join(header + lines) + "\n")
    return path


def split_score_gather(vcf, model_dir, work: Path, parts: int, *, batch_size=32,
                       **score_options) -> tuple[Path, Path]:
    """The scatter-gather route, through the stage functions: the gathered VCF and table."""
    split = split_calls(vcf, work / "parts", parts=parts)
    assert split["records"] == sum(split["sizes"])
    scored = []
    for path in split["paths"]:
        out = work / "scored" / Path(path).name
        score_vcf(path, fasta=CHR20, model_dir=model_dir, output=out, window=WINDOW,
                  batch_size=batch_size, progress=False, **score_options)
        scored.append(out)
    summary = gather_scores(scored[::-1], work / "gathered.vcf.gz",      # in any order
                            plot=work / "gathered.png")
    assert summary["parts"] == parts
    return work / "gathered.vcf.gz", work / "gathered.tsv"


def one_job(vcf, model_dir, work: Path, *, batch_size=32, **score_options) -> tuple[Path, Path]:
    score_vcf(vcf, fasta=CHR20, model_dir=model_dir, output=work / "one.vcf.gz", window=WINDOW,
              batch_size=batch_size, progress=False, **score_options)
    return work / "one.vcf.gz", work / "one.tsv"


def vcf_lines(path) -> list[str]:
    with gzip.open(path, "rt") as fh:
        return fh.read().splitlines()


def table_rows(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def close(a: str, b: str) -> bool:
    if a in (".", "NA") or b in (".", "NA"):
        return a == b
    return float(a) == pytest.approx(float(b), **TOLERANCE)


def assert_same_output(got: tuple[Path, Path], want: tuple[Path, Path]) -> None:
    """Every line and row the same, scores within TOLERANCE, statuses and all else equal."""
    got_lines, want_lines = vcf_lines(got[0]), vcf_lines(want[0])
    assert len(got_lines) == len(want_lines)
    for g, w in zip(got_lines, want_lines, strict=True):
        if g.startswith("#") or g == w:
            assert g == w
            continue
        gf, wf = g.split("\t"), w.split("\t")
        assert gf[:7] + gf[8:] == wf[:7] + wf[8:]
        gi, wi = gf[7].split(";"), wf[7].split(";")
        assert [e.split("=")[0] for e in gi] == [e.split("=")[0] for e in wi]
        for a, b in zip(gi, wi, strict=True):
            if a.split("=")[0] in SCORES:
                values = zip(a.split("=")[1].split(","), b.split("=")[1].split(","), strict=True)
                assert all(close(x, y) for x, y in values), (a, b)
            else:
                assert a == b
    got_rows, want_rows = table_rows(got[1]), table_rows(want[1])
    assert len(got_rows) == len(want_rows)
    for g, w in zip(got_rows, want_rows, strict=True):
        assert {k: v for k, v in g.items() if k not in NUMBERS} == \
            {k: v for k, v in w.items() if k not in NUMBERS}
        assert all(close(g[k], w[k]) for k in NUMBERS), (g, w)
    assert Path(f"{got[0]}.tbi").is_file()
    with pysam.VariantFile(str(got[0])) as vf:   # indexed: a region reads back
        assert [r.pos for r in vf.fetch("20", 1_000_000, 1_100_000)] == \
            [int(r["pos"]) for r in want_rows if r["chrom"] == "20" and
             1_000_000 < int(r["pos"]) <= 1_100_000 and r["alt_index"] in ("1", "NA")]


# --- split + score + gather == one job -------------------------------------------------------

@pytest.mark.parametrize("parts", [3, 8, 33])      # 33: more parts than positions
def test_split_score_gather_equals_one_job(calls, model_dir, tmp_path, parts):
    want = one_job(calls, model_dir, tmp_path)
    got = split_score_gather(calls, model_dir, tmp_path, parts)
    assert_same_output(got, want)
    statuses = {r["status"] for r in table_rows(got[1])}
    assert statuses >= {"scored", "no_alt", "symbolic_allele", "contig_not_in_fasta"}
    assert (tmp_path / "gathered.png").read_bytes()[:4] == b"\x89PNG"


def test_same_bytes_as_one_job_when_batches_are_alike(calls, model_dir, tmp_path):
    """With one record per batch the parts' batches are the one job's: the same bytes."""
    want = one_job(calls, model_dir, tmp_path, batch_size=1)
    got = split_score_gather(calls, model_dir, tmp_path, 7, batch_size=1)
    assert vcf_lines(got[0]) == vcf_lines(want[0])
    assert got[1].read_bytes() == want[1].read_bytes()


def test_real_call_set_and_a_bcf(calls, model_dir, tmp_path):
    """tabix_5 (280 records) in 4 parts; and a BCF, whose parts are htslib's VCF text."""
    assert_same_output(split_score_gather(VCF5, model_dir, tmp_path / "vcf", 4),
                       one_job(VCF5, model_dir, tmp_path / "vcf"))
    text = calls.read_text().replace(
        "\n", "\n##contig=<ID=20,length=2000000>\n##contig=<ID=21,length=1000>\n", 1)
    sites = tmp_path / "sites.vcf"     # BCF needs ##contig lines, and INFO keys in the header
    sites.write_text("".join(x if x.startswith("#") else
                             "\t".join(x.split("\t")[:7] + ["."]) + "\n"
                             for x in text.splitlines(keepends=True)
                             if "<DEL>" not in x))    # htslib's BCF needs its ##INFO
    bcf = tmp_path / "in.bcf"
    with pysam.VariantFile(str(sites)) as vin, \
            pysam.VariantFile(str(bcf), "wb", header=vin.header) as vout:
        for record in vin:
            vout.write(record)
    got = split_score_gather(bcf, model_dir, tmp_path / "bcf", 5, batch_size=1)
    want = one_job(bcf, model_dir, tmp_path / "bcf", batch_size=1)
    assert vcf_lines(got[0]) == vcf_lines(want[0])
    assert got[1].read_bytes() == want[1].read_bytes()
    assert len(vcf_lines(got[0])) > len(records_of(calls))


def test_context_mode_split_equals_one_job(calls, model_dir, tmp_path):
    """--left-context (streams from fixed grid positions): a part's scores are the one job's
    (in 2 parts for "contig", where each part streams its contig from the start: the records
    before 800 kb, and those of the contig the FASTA lacks, to keep the streams short)."""
    near = tmp_path / "near.vcf"
    near.write_text("".join(line + "\n" for line in calls.read_text().splitlines()
                            if line.startswith(("#", "21\t"))
                            or int(line.split("\t")[1]) < 800_000))
    for mode, parts, vcf in (("64", 5, calls), ("contig", 2, near)):
        work = tmp_path / mode
        split = split_calls(vcf, work / "parts", parts=parts)
        for path in [vcf, *split["paths"]]:
            out = work / ("one.vcf.gz" if path == vcf else f"scored/{Path(path).name}")
            assert main(["score", str(path), "--fasta", str(CHR20), "--model", str(model_dir),
                         "-o", str(out), "--window", str(WINDOW), "--left-context", mode,
                         "--quiet"]) == 0
        parts = sorted((work / "scored").glob("*.vcf.gz"))
        assert main(["gather-scores", *map(str, parts), "-o", str(work / "gathered.vcf.gz")]) == 0
        assert_same_output((work / "gathered.vcf.gz", work / "gathered.tsv"),
                           (work / "one.vcf.gz", work / "one.tsv"))


# --- the parts --------------------------------------------------------------------------------

def part_records(paths) -> list[list[str]]:
    return [[x for x in vcf_lines(p) if not x.startswith("#")] for p in paths]


def test_parts_are_balanced_and_keep_each_position_whole(calls, tmp_path):
    lines = records_of(calls)
    header = [x for x in calls.read_text().splitlines() if x.startswith("#")]
    site = [tuple(x.split("\t")[:2]) for x in lines]
    n = len(lines)
    for parts in (1, 2, 3, 4, 5, 6, 7, 9, 11, 13, n - 1, n, n + 3):
        summary = split_calls(calls, tmp_path / str(parts), parts=parts)
        records = part_records(summary["paths"])
        assert [Path(p).name for p in summary["paths"]] == \
            [f"{i}-of-{parts}.vcf.gz" for i in range(1, parts + 1)]
        assert [x for part in records for x in part] == lines          # every record, in order
        assert [len(p) for p in records] == summary["sizes"]
        start = 0
        for i, part in enumerate(records):
            if not part:                                # only after the last record
                assert start == n
                continue
            end = start + len(part)
            if end < n:
                assert site[end - 1] != site[end]       # never cut inside a position
                share = math.ceil((n - start) / (parts - i))
                run = sum(1 for s in site[start:end] if s == site[end - 1])
                assert len(part) - run < share <= len(part), (parts, i)   # its share, no more
            start = end
        for path in summary["paths"]:                   # the header, and the part's line
            part_header = [x for x in vcf_lines(path) if x.startswith("#")]
            assert [x for x in part_header if not x.startswith("##genossm_part=")] == header
            assert part_header[-2].startswith("##genossm_part=part ")
    sizes = split_calls(VCF5, tmp_path / "vcf5", parts=6)["sizes"]   # no shared positions
    assert sum(sizes) == 280 and max(sizes) - min(sizes) <= 1


def synthetic_calls(path: Path, contigs: int, per_contig: int) -> Path:
    names = [str(i) for i in range(1, contigs - 1)] + ["X", "Y"]
    header = ["##fileformat=VCFv4.2",
              *[f"##contig=<ID={c},length=1000000>" for c in names],
              "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO"]
    lines = [f"{c}\t{1000 * (k + 1)}\t.\tA\tC\t50\tPASS\t." for c in names
             for k in range(per_contig)]
    path.write_text("\n".join(header + lines) + "\n")
    return path


def test_24_contigs_in_192_parts_are_8_parts_per_contig(tmp_path):
    vcf = synthetic_calls(tmp_path / "genome24.vcf", 24, 16)
    summary = split_calls(vcf, tmp_path / "parts", parts=192)
    contigs = [{x.split("\t")[0] for x in part} for part in part_records(summary["paths"])]
    assert all(len(c) == 1 for c in contigs)                       # each part in one contig
    per_contig = {}
    for (contig,) in contigs:
        per_contig[contig] = per_contig.get(contig, 0) + 1
    assert len(per_contig) == 24 and set(per_contig.values()) == {8}


# --- errors -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def scored_parts(calls, model_dir, tmp_path_factory):
    """A split of `calls` in 4 parts, scored; and another split's part 2, scored."""
    work = tmp_path_factory.mktemp("scored_parts")
    out = []
    for name in ("a", "b"):
        split = split_calls(calls, work / name / "parts", parts=4)
        scored = []
        for path in split["paths"] if name == "a" else split["paths"][1:2]:
            output = work / name / "scored" / Path(path).name
            score_vcf(path, fasta=CHR20, model_dir=model_dir, output=output, window=WINDOW,
                      progress=False)
            scored.append(output)
        out.append(scored)
    return out


def gather_cli(parts, output, *args) -> int:
    return main(["gather-scores", *map(str, parts), "-o", str(output), *args])


def test_a_wrong_set_of_parts_is_one_error_line(scored_parts, model_dir, tmp_path, capsys):
    parts, (other,) = scored_parts
    out = tmp_path / "out.vcf.gz"
    cases = [
        (parts[:2] + parts[3:], ["incomplete: 1 of 4 missing (part 3 of this split)"]),
        ([*parts, parts[1]], [str(parts[1]), "is part 2 of 4 again"]),
        ([*parts, other], [str(other), "belongs to another split"]),
        ([parts[0], other, *parts[2:]], [str(other), "belongs to another split"]),
        ([*parts[:3], parts[3].parent.parent / "parts" / parts[3].name],
         ["4-of-4.vcf.gz", "has not been scored"]),
        ([*parts, VCF16], [str(VCF16), "not a part scored by genossm score"]),
        ([*parts[:3], tmp_path / "nope.vcf.gz"], ["nope.vcf.gz: no such file"]),
    ]
    for given, message in cases:
        assert gather_cli(given, out) == 2
        one_error_line(capsys, *message)
        assert not out.exists() and not Path(f"{out}.tbi").exists()
    # a part scored with other settings
    other_window = tmp_path / "w" / parts[2].name
    score_vcf(parts[2].parent.parent / "parts" / parts[2].name, fasta=CHR20,
              model_dir=model_dir, output=other_window, window=WINDOW + 2, progress=False)
    assert gather_cli([*parts[:2], other_window, parts[3]], out) == 2
    one_error_line(capsys, str(other_window), "header line", "differs from that of part 1",
                   "scored with other settings")
    assert list(tmp_path.glob("out*")) == []


def test_a_table_that_is_not_its_parts_is_refused(scored_parts, tmp_path, capsys):
    parts, _ = scored_parts
    copies = []
    for part in parts:
        for suffix in (".vcf.gz", ".tsv"):
            name = part.name.removesuffix(".vcf.gz") + suffix
            shutil.copy(part.parent / name, tmp_path / name)
        copies.append(tmp_path / part.name)
    # the tables of parts 1 and 2 swapped
    t1, t2 = tmp_path / "1-of-4.tsv", tmp_path / "2-of-4.tsv"
    t1_text = t1.read_text()
    t1.write_text(t2.read_text())
    t2.write_text(t1_text)
    assert gather_cli(copies, tmp_path / "out.vcf.gz") == 2
    one_error_line(capsys, "1-of-4.tsv", "not the table of")
    t1.unlink()
    assert gather_cli(copies, tmp_path / "out.vcf.gz") == 2
    one_error_line(capsys, "1-of-4.tsv: no such file (the table of")


def test_outputs_follow_the_output_policy(scored_parts, calls, tmp_path, capsys):
    parts, _ = scored_parts
    out = tmp_path / "out.vcf.gz"
    assert gather_cli(parts, out) == 0
    line = capsys.readouterr().out
    assert line.startswith(f"genossm gather-scores: 4 parts, {len(records_of(calls))} "
                           "records (") and str(out) in line
    assert gather_cli(parts, out) == 2                             # exists: --force replaces
    one_error_line(capsys, "output exists; use --force")
    assert gather_cli(parts, out, "--force") == 0
    capsys.readouterr()
    assert gather_cli(parts, parts[0]) == 2                        # never over an input
    one_error_line(capsys, "is an input of this run")
    assert gather_cli(parts, tmp_path / "out.vcf") == 2
    one_error_line(capsys, "name it .vcf.gz")
    # split: its parts, replaced only with --force and only where split-calls wrote them
    split = ["split-calls", str(calls), "-o", str(tmp_path / "p"), "--parts", "2"]
    assert main(split) == 0
    assert capsys.readouterr().out.startswith(
        f"genossm split-calls: {len(records_of(calls))} records of {calls} in 2 parts (")
    assert main(split) == 2
    one_error_line(capsys, "1-of-2.vcf.gz: output exists; use --force")
    assert main([*split, "--force"]) == 0
    capsys.readouterr()
    (tmp_path / "p" / "2-of-2.vcf.gz").write_text("mine\n")
    assert main([*split, "--force"]) == 2
    one_error_line(capsys, "2-of-2.vcf.gz: exists and is a file of 5 bytes, not a call-set "
                           "part written by genossm split-calls")
    assert (tmp_path / "p" / "2-of-2.vcf.gz").read_text() == "mine\n"


def cli_status(argv) -> int:
    """main(argv)'s exit status, usage errors (argparse exits) included."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def test_bad_split_input_is_one_error_line(calls, scored_parts, tmp_path, capsys):
    lines = records_of(calls)
    header = [x for x in calls.read_text().splitlines() if x.startswith("#")]
    unsorted = tmp_path / "unsorted.vcf"
    unsorted.write_text("\n".join(header + [lines[1], lines[0], *lines[2:]]) + "\n")
    part = scored_parts[0][0].parent.parent / "parts" / "1-of-4.vcf.gz"
    out = tmp_path / "parts"
    for args, message in [
        ([str(unsorted), "--parts", "2"], ["unsorted.vcf: record 2 (line", "not sorted"]),
        ([str(part), "--parts", "2"], ["is already a part of a split call set"]),
        ([str(tmp_path / "nope.vcf"), "--parts", "2"], ["nope.vcf: no such file"]),
        ([str(calls), "--parts", "0"], ["--parts", "must be a positive integer"]),
        ([str(calls), "--parts", "10001"], ["--parts must be between 1 and 10,000"]),
    ]:
        assert cli_status(["split-calls", *args, "-o", str(out)]) == 2
        one_error_line(capsys, *message)
        assert not out.exists() or list(out.iterdir()) == []


def test_gather_of_nothing_or_of_a_scored_whole_call_set(calls, model_dir, tmp_path):
    with pytest.raises(InputError, match="give the scored parts"):
        gather_scores([], tmp_path / "o.vcf.gz")
    whole = one_job(calls, model_dir, tmp_path)[0]
    with pytest.raises(InputError, match="needs one ##genossm_part line"):
        gather_scores([whole], tmp_path / "o.vcf.gz")


# --- the workflow -------------------------------------------------------------------------------

def snakemake(workdir: Path, *args) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "-d",
                           str(workdir), *args], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def test_dry_run_of_a_24_contig_call_set_in_8_parts_per_contig(tmp_path):
    shutil.copytree(ROOT / "config", tmp_path / "config")
    synthetic_calls(tmp_path / "config/genome24.vcf", 24, 16)
    with open(tmp_path / "config/callsets.tsv", "a") as fh:
        fh.write("genome24\tchr20\tconfig/genome24.vcf\t\n")
    targets = ["results/score/chr20/small/genome24.vcf.gz",
               "results/score/chr20/small/tabix_5.vcf.gz"]
    one = job_counts(snakemake(tmp_path, "-n", *targets))         # parts: 1, one job each
    assert one == {"tokenize": 1, "train": 1, "score": 2, "total": 4}
    config = tmp_path / "config/config.yaml"
    config.write_text(config.read_text().replace("  parts: 1\n", "  parts: 192\n"))
    out = snakemake(tmp_path, "-n", *targets)
    assert job_counts(out) == {"tokenize": 1, "train": 1, "split_calls": 2, "score": 384,
                               "gather_scores": 2, "total": 390}
    parts = [f"results/score/chr20/small/genome24.parts/{i}-of-192.vcf.gz" for i in (1, 192)]
    assert all(p in out for p in parts)
    assert "results/split/chr20/genome24/192-of-192.vcf.gz" in out
    gathers = [b for b in re.split(r"\n(?=\[)", out) if "rule gather_scores:" in b]
    gather = next(b for b in gathers if "callset=genome24" in b)
    inputs = re.search(r"input: (.*)", gather).group(1).split(", ")
    assert len(inputs) == 2 * 192 and inputs[0].endswith("genome24.parts/1-of-192.vcf.gz")
    # --set-scatter overrides parts; the SLURM profile's score resources reach every part
    slurm = snakemake(tmp_path, "-n", "--profile", str(ROOT / "profiles/slurm"),
                      "--set-scatter", "score=3", "-p", targets[0])
    assert job_counts(slurm)["score"] == 3
    block = slurm[slurm.index("rule score:"):]
    assert "gpu=1" in block[:block.index("\n\n")]
    assert re.search(r"genossm split-calls config/genome24.vcf -o results/split/chr20/genome24 "
                     r"--parts 3 ", slurm)
    assert "genossm gather-scores results/score/chr20/small/genome24.parts/1-of-3.vcf.gz " \
           "results/score/chr20/small/genome24.parts/2-of-3.vcf.gz " \
           "results/score/chr20/small/genome24.parts/3-of-3.vcf.gz " \
           "-o results/score/chr20/small/genome24.vcf.gz" in slurm


# --- the output policy: never over an input, nor one output inside another ----------------------

def test_split_never_writes_over_its_input_or_a_users_files(calls, tmp_path, capsys):
    """PARTS_DIR that is the call set, or that holds it under a part's name (even through a
    link), is refused with or without --force; a PARTS_DIR that is a file is refused before
    the call set is read; a user's files in PARTS_DIR are left alone."""
    given = tmp_path / "given"
    given.mkdir()
    as_part = given / "1-of-2.vcf.gz"
    pysam.tabix_compress(str(calls), str(as_part))
    link = tmp_path / "link.vcf.gz"
    link.symlink_to(as_part)
    a_file = tmp_path / "a_file"
    a_file.write_text("mine\n")
    inputs = {p: p.read_bytes() for p in (calls, as_part, a_file)}
    for vcf, parts_dir, message in [
        (calls, calls, [f"{calls}/1-of-2.vcf.gz", "is an input of this run"]),
        (as_part, given, [str(as_part), "is an input of this run"]),
        (link, given, [str(as_part), f"is an input of this run ({link})"]),
        (calls, a_file, [str(a_file), "exists and is not a directory"]),
    ]:
        assert main(["split-calls", str(vcf), "-o", str(parts_dir), "--parts", "2",
                     "--force"]) == 2
        one_error_line(capsys, *message)
        assert {p: p.read_bytes() for p in inputs} == inputs
        assert sorted(p.name for p in given.iterdir()) == ["1-of-2.vcf.gz"]
    users = tmp_path / "users"
    users.mkdir()
    (users / "notes.txt").write_text("mine\n")
    assert main(["split-calls", str(calls), "-o", str(users), "--parts", "2", "--force"]) == 0
    capsys.readouterr()
    assert (users / "notes.txt").read_text() == "mine\n"
    assert sorted(p.name for p in users.iterdir()) == ["1-of-2.vcf.gz", "2-of-2.vcf.gz",
                                                        "notes.txt"]


def test_gather_never_writes_over_a_part_its_table_or_index(scored_parts, tmp_path, capsys):
    """Every output of gather-scores, given or derived (the table beside -o), is refused where
    it is a part, a part's table or its index, with --force too; and no output may lie inside
    another (the later rename would delete it, after a summary that says it was written)."""
    parts, _ = scored_parts
    part = parts[0]
    part_table = part.with_name("1-of-4.tsv")
    index = Path(f"{part}.tbi")
    inputs = {p: p.read_bytes() for p in (part, part_table, index)}
    out = tmp_path / "out.vcf.gz"
    for args, message in [
        (["-o", str(out), "--table", str(part_table)], [str(part_table), "is an input"]),
        (["-o", str(out), "--plot", str(index)], [str(index), "is an input"]),
        (["-o", str(part.with_name("1-of-4.vcf.bgz"))], [str(part_table), "is an input"]),
        (["-o", str(out), "--table", f"{out}/t.tsv"],
         ["the table (--table) would lie inside the gathered VCF (-o)"]),
        (["-o", str(out), "--table", str(tmp_path / "t"), "--plot", str(tmp_path / "t" / "p.png")],
         ["the plot (--plot) would lie inside the table (--table)"]),
    ]:
        before = files(tmp_path)
        assert main(["gather-scores", *map(str, parts), *args, "--force"]) == 2
        one_error_line(capsys, *message)
        assert files(tmp_path) == before and not out.exists()
        assert {p: p.read_bytes() for p in inputs} == inputs


def test_split_gather_and_benchmark_start_without_torch():
    """The scatter-gather and benchmark commands import no torch (genossm.score's names are
    imported on first use)."""
    code = ("import sys, genossm.score.parts, genossm.benchmark, genossm.score; "
            "assert 'torch' not in sys.modules, 'torch'; "
            "from genossm.score import score_vcf; assert 'torch' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_split_force_does_not_replace_a_scored_part(calls, scored_parts, tmp_path, capsys):
    """A scored part (a score job's work, with its index and table beside it) is not a part
    that split-calls wrote: --force leaves it, and its index and table, as they were."""
    scored = tmp_path / "scored"
    shutil.copytree(scored_parts[0][0].parent, scored)
    before = files(scored)
    assert main(["split-calls", str(calls), "-o", str(scored), "--parts", "4", "--force"]) == 2
    one_error_line(capsys, "1-of-4.vcf.gz: exists and is a file of", "not a call-set part")
    assert files(scored) == before
