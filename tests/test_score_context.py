"""genossm score --left-context: scores against one plain forward pass per haplotype from the
stream's start (both strands; SNVs, MNVs, insertions, deletions, multi-allelic records and
records split across lines at one position), a score that depends on nothing but the variant
and the reference, ``contig`` mode, refusals, and output text identical to windowed mode apart
from the GENOSSM values."""

from __future__ import annotations

import csv
import gzip

import numpy as np
import pysam
import pytest
import torch

from genossm.cli import main
from genossm.errors import InputError
from genossm.score import context, score_vcf
from helpers import CHR20, DATA, one_error_line, tiny_model, write_fasta

VCF4 = DATA / "tabix_4.chr20_1-2000000.vcf"
VCF16 = DATA / "tabix_16.chr20_1-2000000.vcf"
WINDOW = 41                       # right flank 21 on the forward strand, 20 on the reverse
CODES = str.maketrans("ACGTN", "\x00\x01\x02\x03\x04")
COMPLEMENT = str.maketrans("ACGTN", "TGCAN")
HEADER = ("##fileformat=VCFv4.2\n##contig=<ID=small,length={length}>\n"
          "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n")
SCORES = ("llr", "cosine_distance", "l2_distance")

pytestmark = pytest.mark.usefixtures("one_thread")


def long_memory_model(directory, **kw):
    """A random tiny model (helpers.tiny_model) with confident predictions and a long memory
    (small dt and A: one base 100 bases upstream moves a score by about 1e-3, far above the
    tolerance); scan chunks of 16 bases, so that grid lines at multiples of 100 and variants
    fall between chunk boundaries."""
    return tiny_model(directory, dt_min=1e-3, dt_max=1e-2, A_init_max=4.0, **kw)


@pytest.fixture(scope="module")
def causal(tmp_path_factory):
    directory = tmp_path_factory.mktemp("causal")
    return long_memory_model(directory), directory


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A 2,500-base contig of real sequence (chr20), as its own FASTA."""
    with pysam.FastaFile(str(CHR20)) as fa:
        seq = fa.fetch("20", 1_000_000, 1_002_500).upper()
    path = write_fasta(tmp_path_factory.mktemp("small") / "small.fa", [("small", seq)])
    pysam.faidx(str(path))
    return path, seq


# --- the explicit computation ------------------------------------------------------------------

def rc(seq: str) -> str:
    return seq.translate(COMPLEMENT)[::-1]


def padded(seq: str, start: int, end: int) -> str:
    """seq[start:end], N outside it."""
    return ("N" * max(0, -start) + seq[max(start, 0):min(end, len(seq))]
            + "N" * max(0, end - len(seq)))


def upstream(strand_seq: str, start: int, left_context) -> str:
    """What the variant's stream reads before it: from the grid position (start // C - 1) * C,
    or from the strand's start with one N before it."""
    g = 0 if left_context == "contig" else (start // left_context - 1) * left_context
    return "N" + strand_seq[:start] if g <= 0 else strand_seq[g:start]


@torch.no_grad()
def summed(model, before: str, after: str) -> tuple[float, torch.Tensor]:
    """One plain forward pass over before + after: the sum of ln p(token | all before it) and
    the mean final hidden state over ``after``."""
    x = torch.tensor([list((before + after).translate(CODES).encode())])
    logp = torch.log_softmax(model(x)[0].double(), -1)
    targets = range(len(before), x.shape[1])
    total = sum(float(logp[t - 1, x[0, t]]) for t in targets)
    return total, model.hidden_states(x)[0, len(before):].double().mean(0)


def expected(model, seq: str, pos: int, ref: str, alt: str, left_context):
    """(llr, cosine distance, L2 distance) of one ALT, averaged over both strands."""
    p, r, length = pos - 1, len(ref), len(seq)
    right, left = WINDOW - WINDOW // 2, WINDOW // 2
    strands = [(seq, p, ref, alt, padded(seq, p + r, p + r + right)),
               (rc(seq), length - p - r, rc(ref), rc(alt), rc(padded(seq, p - left, p)))]
    llr, cos, l2 = [], [], []
    for strand_seq, start, ref_allele, alt_allele, flank in strands:
        context_ = upstream(strand_seq, start, left_context)
        ref_logp, ref_mean = summed(model, context_, ref_allele + flank)
        alt_logp, alt_mean = summed(model, context_, alt_allele + flank)
        llr.append(alt_logp - ref_logp)
        cos.append(1 - float(ref_mean @ alt_mean / (ref_mean.norm() * alt_mean.norm())))
        l2.append(float((ref_mean - alt_mean).norm()))
    return np.mean(llr), np.mean(cos), np.mean(l2)


# --- helpers -------------------------------------------------------------------------------------

def read_table(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def run(vcf, model_dir, out_dir, fasta, **kw):
    out_dir.mkdir(exist_ok=True)
    summary = score_vcf(vcf, fasta=fasta, model_dir=model_dir, output=out_dir / "s.vcf.gz",
                        window=kw.pop("window", WINDOW), progress=False, **kw)
    return summary, read_table(out_dir / "s.tsv")


def record(seq: str, pos: int, ref_length: int, alts) -> str:
    ref = seq[pos - 1:pos - 1 + ref_length]
    alt = ",".join(a(ref) if callable(a) else a for a in alts)
    return "\t".join(["small", str(pos), ".", ref, alt, "50", "PASS", "."])


def other(base: str) -> str:
    return {"A": "C", "C": "G", "G": "T", "T": "A"}[base]


def snv(ref: str) -> str:
    return other(ref[0]) + ref[1:]


def kinds_vcf(seq: str, path):
    """Every kind of record on the small contig, from its first base to its last."""
    lines = [record(seq, 1, 1, [snv]),                                   # the first base
             record(seq, 57, 1, [snv]),                                  # within 2C of it
             record(seq, 250, 1, [snv]),                                 # split across lines
             record(seq, 250, 1, [lambda r: other(other(r)), "*"]),
             record(seq, 250, 3, [lambda r: r[0]]),                      # ... another REF
             record(seq, 251, 2, [lambda r: other(r[0]) + other(r[1])]),  # MNV
             record(seq, 300, 1, [lambda r: r + "ACGTT"]),               # insertion
             record(seq, 333, 4, [lambda r: r[0]]),                      # deletion
             record(seq, 1000, 2, [lambda r: r[0], lambda r: r + "T", snv]),  # multi-allelic
             record(seq, 1601, 1, [snv]),                                # on a grid line
             record(seq, 2490, 5, [lambda r: r[0]]),                     # flank past the end
             record(seq, 2500, 1, [snv, lambda r: r + "GG"])]            # the last base
    path.write_text(HEADER.format(length=len(seq)) + "\n".join(lines) + "\n")
    return path


# --- scores equal the explicit computation -------------------------------------------------------

@pytest.mark.parametrize("left_context", [100, "contig"])
def test_scores_equal_one_forward_pass_from_the_stream_start(causal, small, tmp_path,
                                                             monkeypatch, left_context):
    model, model_dir = causal
    fasta, seq = small
    monkeypatch.setattr(context, "RECORDS_PER_PASS", 3)      # passes, checkpoints, pruning
    monkeypatch.setattr(context, "CHECKPOINT_SPACING", 64)
    vcf = kinds_vcf(seq, tmp_path / "in.vcf")
    summary, rows = run(vcf, model_dir, tmp_path / "out", fasta, left_context=left_context,
                        batch_size=3)
    assert summary["statuses"] == {"scored": 15, "star_allele": 1}
    llrs = []
    for row in rows:
        if row["status"] != "scored":
            assert row["llr"] == "NA"
            continue
        want = expected(model, seq, int(row["pos"]), row["ref"], row["alt"], left_context)
        for key, w in zip(SCORES, want, strict=True):
            assert float(row[key]) == pytest.approx(w, rel=2e-5, abs=2e-5), (row, key)
        llrs.append(float(row["llr"]))
    assert np.std(llrs) > 1     # a model that predicts something


def test_context_changes_the_score_as_defined(causal, small, tmp_path):
    """Upstream context matters: the grid's C changes the scores, and contig mode equals a C
    longer than the contig."""
    _, model_dir = causal
    fasta, seq = small
    vcf = kinds_vcf(seq, tmp_path / "in.vcf")
    _, c100 = run(vcf, model_dir, tmp_path / "c100", fasta, left_context=100)
    _, c500 = run(vcf, model_dir, tmp_path / "c500", fasta, left_context=500)
    _, whole = run(vcf, model_dir, tmp_path / "contig", fasta, left_context="contig")
    _, huge = run(vcf, model_dir, tmp_path / "huge", fasta, left_context=10_000)
    assert [r["llr"] for r in huge] == [r["llr"] for r in whole]
    far = [i for i, r in enumerate(c100) if r["llr"] != "NA" and 1000 <= int(r["pos"]) < 2400]
    assert far and all(c100[i]["llr"] != c500[i]["llr"] for i in far)


# --- a score depends on the variant and the reference only ---------------------------------------

def dense_records(seq: str, rng) -> list[str]:
    """SNVs, indels and multi-allelic records at sorted random positions, some shared."""
    positions = sorted(rng.choice(np.arange(1, len(seq) - 10), 40, replace=False).tolist())
    positions += [positions[5], positions[20]]     # split across lines
    lines = []
    for i, pos in enumerate(sorted(positions)):
        kind = i % 4
        if kind == 0:
            lines.append(record(seq, pos, 1, [snv]))
        elif kind == 1:
            lines.append(record(seq, pos, 3, [lambda r: r[0]]))
        elif kind == 2:
            lines.append(record(seq, pos, 1, [lambda r: r + "TA", snv]))
        else:
            lines.append(record(seq, pos, 2, [lambda r: other(r[0]) + other(r[1])]))
    return lines


@pytest.mark.parametrize("left_context", [64, "contig"])
def test_score_does_not_depend_on_other_records_or_file_splits(causal, small, tmp_path,
                                                               monkeypatch, left_context):
    _, model_dir = causal
    fasta, seq = small
    rng = np.random.default_rng(7)
    lines = dense_records(seq, rng)
    extra = dense_records(seq, rng)
    header = HEADER.format(length=len(seq))

    def scores(name, chosen, **kw):
        vcf = tmp_path / f"{name}.vcf"
        vcf.write_text(header + "\n".join(chosen) + "\n")
        _, rows = run(vcf, model_dir, tmp_path / name, fasta, left_context=left_context, **kw)
        return {(r["pos"], r["ref"], r["alt"]): [float(r[k]) for k in SCORES] for r in rows}

    everything = scores("all", lines, batch_size=32)
    subset = scores("subset", lines[::3], batch_size=2)
    merged = sorted(lines + extra, key=lambda line: int(line.split("\t")[1]))
    more = scores("more", merged, batch_size=5)
    with monkeypatch.context() as m:
        m.setattr(context, "RECORDS_PER_PASS", 4)
        m.setattr(context, "CHECKPOINT_SPACING", 48)
        passes = scores("passes", lines, batch_size=3)
    halves = {**scores("first", lines[:len(lines) // 2]),
              **scores("second", lines[len(lines) // 2:])}
    assert len(everything) > 40
    # equal but for float32 rounding of single terms, where the CPU's matrix kernels round a
    # row differently in a batch of another shape (and the table's last digit with it)
    for other_run in (subset, more, passes, halves):
        for key, values in other_run.items():
            if key in everything:
                assert values == pytest.approx(everything[key], rel=1e-6, abs=1e-6), key
    assert set(halves) == set(everything) and set(subset) < set(everything)


# --- output text, header, order ------------------------------------------------------------------

def info_without_scores(line: str) -> str:
    fields = line.split("\t")
    fields[7] = ";".join(e.split("=")[0] if e.startswith("GENOSSM_") and
                         not e.startswith("GENOSSM_STATUS") else e
                         for e in fields[7].split(";"))
    return "\t".join(fields)


@pytest.mark.parametrize("vcf", [VCF4, VCF16], ids=lambda p: p.name.split(".")[0])
def test_output_is_windowed_modes_but_for_the_scores(causal, vcf, tmp_path):
    _, model_dir = causal
    _, windowed = run(vcf, model_dir, tmp_path / "windowed", CHR20)
    _, streamed = run(vcf, model_dir, tmp_path / "context", CHR20, left_context=200)
    assert len(windowed) == len(streamed) > 10
    for a, b in zip(windowed, streamed, strict=True):
        assert {k: v for k, v in a.items() if k not in SCORES} == \
            {k: v for k, v in b.items() if k not in SCORES}
        assert (a["llr"] == "NA") == (b["llr"] == "NA")
    texts = [gzip.decompress((tmp_path / d / "s.vcf.gz").read_bytes()).decode().splitlines()
             for d in ("windowed", "context")]
    bodies = [[info_without_scores(x) for x in t if not x.startswith("#")] for t in texts]
    assert bodies[0] == bodies[1]
    headers = [[x for x in t if x.startswith("#")] for t in texts]
    assert [x for x in headers[0] if "GENOSSM" not in x and "genossm" not in x] == \
        [x for x in headers[1] if "GENOSSM" not in x and "genossm" not in x]
    context_header = "\n".join(headers[1])
    assert "upstream: 200 to 399 upstream bases" in context_header
    assert "right flank 21 bp" in context_header and "left_context 200" in context_header
    assert "left_context" not in "\n".join(headers[0])


def test_every_status_as_in_windowed_mode(causal, small, tmp_path):
    _, model_dir = causal
    fasta, seq = small
    mismatch = record(seq, 700, 1, [snv]).split("\t")
    mismatch[3] = other(mismatch[3])
    lines = [record(seq, 100, 1, [lambda r: f"{snv(r)},*,<NON_REF>"]),
             record(seq, 200, 1, ["<DEL>"]),
             record(seq, 300, 1, [lambda r: f"{r}]small:1000]"]),
             record(seq, 400, 1, ["."]),
             record(seq, 500, 1, ["A-C"]),
             "\t".join(mismatch),
             f"small\t2500\t.\t{seq[-1]}A\tC\t50\tPASS\t.",              # REF past the end
             record(seq, 100, 1, [snv]).replace("small", "other")]
    vcf = tmp_path / "in.vcf"
    vcf.write_text(HEADER.format(length=len(seq)) + "\n".join(lines) + "\n")
    windowed_summary, windowed = run(vcf, model_dir, tmp_path / "w", fasta)
    summary, streamed = run(vcf, model_dir, tmp_path / "c", fasta, left_context="contig")
    assert summary == {**windowed_summary, "output": summary["output"],
                       "table": summary["table"]}
    assert [r["status"] for r in streamed] == [r["status"] for r in windowed]
    assert summary["statuses"]["scored"] == 1 and summary["statuses"]["ref_mismatch"] == 2


# --- refusals -----------------------------------------------------------------------------------

def test_a_model_that_cannot_stream_is_refused(small, tmp_path):
    fasta, seq = small
    long_memory_model(tmp_path / "masked", objective="mlm", bidirectional=True)
    vcf = kinds_vcf(seq, tmp_path / "in.vcf")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InputError, match="--left-context needs a causal model.*a masked LM "
                                         "and bidirectional"):
        score_vcf(vcf, fasta=fasta, model_dir=tmp_path / "masked", output=out / "s.vcf.gz",
                  left_context=100, progress=False)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("value", [0, -5, "whole", 2.5, True, ""])
def test_a_bad_left_context_is_refused(causal, small, tmp_path, value):
    _, model_dir = causal
    fasta, seq = small
    with pytest.raises(InputError, match="--left-context must be a positive number of bases"):
        score_vcf(kinds_vcf(seq, tmp_path / "in.vcf"), fasta=fasta, model_dir=model_dir,
                  output=tmp_path / "s.vcf.gz", left_context=value, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.vcf"]


def test_command_line(causal, small, tmp_path, capsys):
    _, model_dir = causal
    fasta, seq = small
    vcf = kinds_vcf(seq, tmp_path / "in.vcf")
    argv = ["score", str(vcf), "--fasta", str(fasta), "--model", str(model_dir), "--window",
            str(WINDOW), "-q", "--threads", "1", "--device", "cpu"]
    assert main([*argv, "-o", str(tmp_path / "a.vcf.gz"), "--left-context", "100"]) == 0
    assert "15 scored" in capsys.readouterr().out
    _, rows = run(vcf, model_dir, tmp_path / "api", fasta, left_context=100)
    assert read_table(tmp_path / "a.tsv") == rows
    assert main([*argv, "-o", str(tmp_path / "b.vcf.gz"), "--left-context", "contig"]) == 0
    capsys.readouterr()
    for bad in ("abc", "0"):
        assert main([*argv, "-o", str(tmp_path / "c.vcf.gz"), "--left-context", bad]) == 2
        one_error_line(capsys, "--left-context must be a positive number of bases")
    assert main([*argv, "-o", str(tmp_path / "c.vcf.gz"), "--left-context", "100",
                 "--no-prefix-reuse"]) == 2
    one_error_line(capsys, "--no-prefix-reuse is for windowed mode")
    assert not (tmp_path / "c.vcf.gz").exists()
