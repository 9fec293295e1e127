"""genossm score on every input flavour: CRLF line ends, VCF 4.0-4.4, headers without contig or
INFO/FORMAT lines (as htslib reads them), an index beside the input, a pipe or standard input
read as a stream, and a variant table (TSV) scored into a table that keeps its own columns.

The reference for every flavour is the plain VCF's scoring (itself tested against plain forward
passes in test_score.py): each flavour must give the same records, in order, with the same
text and the same scores."""

from __future__ import annotations

import csv
import gzip
import json
import os
import subprocess
import sys
import threading

import pysam
import pytest
from sklearn.metrics import roc_auc_score

from genossm.cli import main
from genossm.score import score_vcf
from genossm.score.output import TABLE_COLUMNS
from genossm.score.variants import quiet_htslib
from helpers import CHR20, DATA, one_error_line, tiny_model

VCF4 = DATA / "tabix_4.chr20_1-2000000.vcf"      # VCF 4.1, genotypes of 383 samples
VCF16 = DATA / "tabix_16.chr20_1-2000000.vcf"    # VCF 4.0, multi-allelic indels
WINDOW = 24
KEYS = ("chrom", "pos", "ref", "alt", "status", "llr", "cosine_distance", "l2_distance")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("causal")
    tiny_model(directory)
    return directory


def score(vcf, model_dir, out, **kw):
    return score_vcf(vcf, fasta=CHR20, model_dir=model_dir, output=out, window=WINDOW,
                     progress=False, **kw)


def rows(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def scores(path) -> list[tuple]:
    return [tuple(row[k] for k in KEYS) for row in rows(path)]


def vcf_lines(path) -> list[str]:
    return gzip.decompress(path.read_bytes()).decode().splitlines()


@pytest.fixture(scope="module")
def plain(model_dir, tmp_path_factory):
    """VCF4 and VCF16 scored from the embedded plain files: the reference for every flavour."""
    out = tmp_path_factory.mktemp("plain")
    for vcf in (VCF4, VCF16):
        score(vcf, model_dir, out / f"{vcf.stem}.vcf.gz")
    return {vcf: (out / f"{vcf.stem}.tsv", out / f"{vcf.stem}.vcf.gz") for vcf in (VCF4, VCF16)}


def assert_same_as_plain(plain, vcf, out):
    table, scored = plain[vcf]
    assert scores(out.with_name(out.name.replace(".vcf.gz", ".tsv"))) == scores(table)
    assert vcf_lines(out) == vcf_lines(scored)


# --- VCF flavours ------------------------------------------------------------------------------

def test_crlf_line_ends_score_like_lf(model_dir, plain, tmp_path):
    crlf = tmp_path / "crlf.vcf"
    crlf.write_bytes(VCF16.read_bytes().replace(b"\n", b"\r\n"))
    score(crlf, model_dir, tmp_path / "crlf.vcf.gz")
    assert_same_as_plain(plain, VCF16, tmp_path / "crlf.vcf.gz")


@pytest.mark.parametrize("version", ["4.0", "4.2", "4.3", "4.4"])
def test_every_vcf_version_scores_alike(version, model_dir, plain, tmp_path):
    text = VCF4.read_text()
    assert text.startswith("##fileformat=VCFv4.1\n")
    vcf = tmp_path / f"v{version}.vcf"
    vcf.write_text(text.replace("VCFv4.1", f"VCFv{version}", 1))
    score(vcf, model_dir, tmp_path / "out.vcf.gz")
    table, _ = plain[VCF4]
    assert scores(tmp_path / "out.tsv") == scores(table)
    out = vcf_lines(tmp_path / "out.vcf.gz")
    assert out[0] == f"##fileformat=VCFv{version}"
    assert out[1:] == vcf_lines(plain[VCF4][1])[1:]


def test_header_without_contig_info_or_format_lines(model_dir, plain, tmp_path):
    """htslib reads such records (their INFO and FORMAT keys undefined): every record kept, its
    text untouched apart from the GENOSSM entries, read back by pysam."""
    lines = VCF4.read_text().splitlines()
    bare_lines = [x for x in lines if not x.startswith(("##INFO", "##FORMAT", "##contig"))]
    assert len(bare_lines) <= len(lines) - 5   # every INFO and FORMAT definition
    bare = tmp_path / "bare.vcf"
    bare.write_text("\n".join(bare_lines) + "\n")
    score(bare, model_dir, tmp_path / "bare.vcf.gz")
    table, _ = plain[VCF4]
    assert scores(tmp_path / "bare.tsv") == scores(table)
    out = [x for x in vcf_lines(tmp_path / "bare.vcf.gz") if not x.startswith("#")]
    reference = [x for x in vcf_lines(plain[VCF4][1]) if not x.startswith("#")]
    assert out == reference
    with quiet_htslib(), pysam.VariantFile(str(tmp_path / "bare.vcf.gz")) as vf:
        assert sum(1 for _ in vf) == len(reference)


@pytest.mark.parametrize("index", ["tbi", "csi"])
def test_indexed_input_scores_alike_and_its_index_is_untouched(index, model_dir, plain,
                                                               tmp_path):
    bgzipped = tmp_path / "in.vcf.gz"
    pysam.tabix_compress(str(VCF16), str(bgzipped))
    pysam.tabix_index(str(bgzipped), preset="vcf", csi=index == "csi")
    index_path = tmp_path / f"in.vcf.gz.{index}"
    before = index_path.read_bytes()
    score(bgzipped, model_dir, tmp_path / "out.vcf.gz")
    assert_same_as_plain(plain, VCF16, tmp_path / "out.vcf.gz")
    assert index_path.read_bytes() == before


# --- streams -----------------------------------------------------------------------------------

def test_standard_input_is_read_as_a_stream(model_dir, plain, tmp_path):
    """`genossm score -` with a plain-gzip VCF piped in: the same records and scores."""
    out = tmp_path / "stdin.vcf.gz"
    command = [sys.executable, "-m", "genossm", "score", "-", "--fasta", str(CHR20),
               "--model", str(model_dir), "-o", str(out), "--window", str(WINDOW), "-q",
               "--threads", "1", "--device", "cpu"]
    done = subprocess.run(command, input=gzip.compress(VCF16.read_bytes()),
                          capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    assert_same_as_plain(plain, VCF16, out)
    assert not list(tmp_path.glob("genossm-input-*"))


def test_a_named_pipe_is_read_as_a_stream(model_dir, plain, tmp_path):
    fifo = tmp_path / "calls.fifo"
    os.mkfifo(fifo)

    def feed():
        with open(fifo, "wb") as fh:
            fh.write(VCF16.read_bytes())
    writer = threading.Thread(target=feed)
    writer.start()
    score(fifo, model_dir, tmp_path / "fifo.vcf.gz")
    writer.join(timeout=60)
    assert_same_as_plain(plain, VCF16, tmp_path / "fifo.vcf.gz")


# --- variant tables ----------------------------------------------------------------------------

def table_from_vcf(vcf, path, *, header="chrom\tpos\tid\tref\talt\tlabel\tconsequence"):
    """A variant table with VCF's sites, a label and a consequence column per row."""
    lines = [header]
    with quiet_htslib(), pysam.VariantFile(str(vcf)) as vf:
        for n, r in enumerate(vf):
            lines.append("\t".join([r.chrom, str(r.pos), r.id or ".", r.ref, ",".join(r.alts),
                                    "pathogenic" if n % 2 else "benign", f"kind{n % 3}"]))
    path.write_text("\n".join(lines) + "\n")
    return lines[1:]


def test_variant_table_scores_like_the_vcf_and_keeps_its_columns(model_dir, plain, tmp_path):
    table = tmp_path / "variants.tsv"
    data = table_from_vcf(VCF16, table)
    summary = score(table, model_dir, tmp_path / "scored.tsv")
    assert summary["records"] == len(data) and not (tmp_path / "scored.tsv.tbi").exists()
    got = rows(tmp_path / "scored.tsv")
    assert list(got[0]) == [*TABLE_COLUMNS, "label", "consequence"]
    reference = rows(plain[VCF16][0])
    assert [tuple(r[k] for k in KEYS) for r in got] == \
        [tuple(r[k] for k in KEYS) for r in reference]
    assert [r["record"] for r in got] == [r["record"] for r in reference]
    # every row of the table keeps its label and consequence (one row per ALT allele)
    by_record = {n: line.split("\t")[5:] for n, line in enumerate(data, 1)}
    assert all([r["label"], r["consequence"]] == by_record[int(r["record"])] for r in got)


def test_gzip_table_from_standard_input_with_aliases_and_comments(model_dir, plain, tmp_path):
    """A gzip table on standard input whose header says #CHROM/POSITION, after ## comments and
    with blank and CRLF lines, and without an id column."""
    table = tmp_path / "t.tsv"
    data = table_from_vcf(VCF16, table, header="#CHROM\tPOSITION\tid\tREF\tALT\tlabel\tkind")
    text = "##made for a test\n" + "\n".join(
        ["#CHROM\tPOSITION\tREF\tALT\tlabel"]
        + ["\t".join([*line.split("\t")[:2], *line.split("\t")[3:6]]) for line in data]) + "\n\n"
    out = tmp_path / "scored.tsv"
    command = [sys.executable, "-m", "genossm", "score", "-", "--fasta", str(CHR20),
               "--model", str(model_dir), "-o", str(out), "--window", str(WINDOW), "-q",
               "--threads", "1", "--device", "cpu"]
    done = subprocess.run(command, input=gzip.compress(text.replace("\n", "\r\n").encode()),
                          capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    got = rows(out)
    assert list(got[0]) == [*TABLE_COLUMNS, "label"]
    assert [tuple(r[k] for k in KEYS) for r in got] == \
        [tuple(r[k] for k in KEYS) for r in rows(plain[VCF16][0])]
    assert {r["id"] for r in got} == {"."}


def test_scored_table_is_benchmarked_by_its_label_column(model_dir, tmp_path, capsys):
    table = tmp_path / "variants.tsv"
    table_from_vcf(VCF4, table)
    score(table, model_dir, tmp_path / "scored.tsv")
    assert main(["benchmark", str(tmp_path / "scored.tsv"), "-o", str(tmp_path / "m.json"),
                 "--label-column", "label", "--positive", "pathogenic", "--bootstrap", "20",
                 "-q"]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())["overall"]["scores"]["llr"]
    scored = [r for r in rows(tmp_path / "scored.tsv") if r["status"] == "scored"]
    positive = [r["label"] == "pathogenic" for r in scored]
    assert metrics["n_positive"] == sum(positive) and metrics["n"] == len(scored)
    assert metrics["auroc"] == pytest.approx(
        roc_auc_score(positive, [-float(r["llr"]) for r in scored]))


def test_bad_variant_tables_are_one_line_and_write_nothing(model_dir, tmp_path, capsys):
    good = "chrom\tpos\tref\talt\n20\t60001\tA\tC\n20\t60010\tA\tG\n"
    cases = {
        "no_alt.tsv": ("chrom\tpos\tref\tallele\n20\t60001\tA\tC\n",
                       "line 1: neither a VCF/BCF (no ##fileformat=VCF line) nor a variant "
                       "table: the header row has no alt column"),
        "short.tsv": (good + "20\t60020\tA\n", "line 4: 3 tab-separated columns, the header "
                                               "row has 4"),
        "pos.tsv": (good + "20\tx1\tA\tC\n", "line 4: pos must be a 1-based position, got 'x1'"),
        "unsorted.tsv": (good + "20\t60005\tA\tC\n", "line 4: not sorted: 20:60005 comes after "
                                                     "20:60010"),
        "clash.tsv": ("chrom\tpos\tref\talt\tstatus\n20\t60001\tA\tC\tx\n",
                      "line 1: has a column 'status', which the scored table has too"),
    }
    truncated = gzip.compress((good * 50).encode())[:-30]
    cases["truncated.tsv.gz"] = (truncated, "cannot read it")
    for name, (text, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
        argv = ["score", str(tmp_path / name), "--fasta", str(CHR20), "--model",
                str(model_dir), "-o", str(tmp_path / "out.tsv"), "-q", "--device", "cpu"]
        assert main(argv) == 2
        one_error_line(capsys, f"{tmp_path / name}: {message}")
    # a table is scored into a table, a VCF into a VCF
    (tmp_path / "good.tsv").write_text(good)
    for given, output, message in (
            (tmp_path / "good.tsv", "out.vcf.gz", "a variant table is scored into a table"),
            (VCF16, "out.tsv", "a VCF/BCF is scored into a VCF")):
        assert main(["score", str(given), "--fasta", str(CHR20), "--model", str(model_dir),
                     "-o", str(tmp_path / output), "-q", "--device", "cpu"]) == 2
        one_error_line(capsys, message)
    assert main(["split-calls", str(tmp_path / "good.tsv"), "-o", str(tmp_path / "parts"),
                 "--parts", "2"]) == 2
    one_error_line(capsys, "is a variant table; split-calls splits a VCF/BCF")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*cases, "good.tsv"])


def test_variant_table_in_context_mode_scores_like_the_vcf(model_dir, tmp_path):
    table = tmp_path / "variants.tsv"
    table_from_vcf(VCF16, table)
    score(table, model_dir, tmp_path / "table.tsv", left_context=500)
    score(VCF16, model_dir, tmp_path / "vcf.vcf.gz", left_context=500)
    assert scores(tmp_path / "table.tsv") == scores(tmp_path / "vcf.tsv")
    assert any(r["status"] == "scored" for r in rows(tmp_path / "table.tsv"))
