"""genossm score: scores against plain forward passes computed here, prefix-state scoring against
naive scoring, every allele kind and bad input on the real embedded VCFs, and every record and
field preserved (read back with pysam)."""

from __future__ import annotations

import csv
import gzip
import os
import stat

import numpy as np
import pysam
import pytest
import torch

from genossm.cli import main
from genossm.errors import InputError
from genossm.score import score_vcf
from helpers import (
    CHR20,
    DATA,
    fasta_records,
    one_error_line,
    tiny_model,
    unwritable_dir,
    write_fasta,
)

VCF4 = DATA / "tabix_4.chr20_1-2000000.vcf"      # SNVs, 383 samples, some 8-column lines
VCF5 = DATA / "tabix_5.chr20_1-2000000.vcf"      # 280 indels, VCF 4.0, no ##contig lines
VCF16 = DATA / "tabix_16.chr20_1-2000000.vcf"    # indels, MNV-like, multi-allelic
WINDOW = 37                                      # odd: left flank 18, right flank 19
CODES = str.maketrans("ACGTN", "\x00\x01\x02\x03\x04")
COMPLEMENT = str.maketrans("ACGTN", "TGCAN")
MASK = 5
GENOSSM_KEYS = ("GENOSSM_LLR", "GENOSSM_COS", "GENOSSM_L2", "GENOSSM_STATUS")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def causal(tmp_path_factory):
    directory = tmp_path_factory.mktemp("causal")
    return tiny_model(directory), directory


@pytest.fixture(scope="module")
def fasta():
    with pysam.FastaFile(str(CHR20)) as fa:
        yield fa


# --- independent reference -----------------------------------------------------------------

def haplotype(fa, pos, ref, allele, window=WINDOW) -> str:
    """Left flank + allele + right flank, N outside the contig."""
    left, right = window // 2, window - window // 2
    start, end = pos - 1 - left, pos - 1 + len(ref) + right
    length = fa.get_reference_length("20")
    seq = ("N" * max(0, -start) + fa.fetch("20", max(start, 0), min(end, length)).upper()
           + "N" * max(0, end - length))
    return seq[:left] + allele + seq[left + len(ref):]


def tokens(seq: str) -> torch.Tensor:
    return torch.tensor([list(seq.translate(CODES).encode())])


def rc(seq: str) -> str:
    return seq.translate(COMPLEMENT)[::-1]


@torch.no_grad()
def log_likelihood(model, seq: str) -> float:
    x = tokens(seq)
    logp = torch.log_softmax(model(x)[0, :-1].double(), -1)
    return float(logp.gather(-1, x[0, 1:, None]).sum())


@torch.no_grad()
def mean_hidden(model, seq: str) -> torch.Tensor:
    return model.hidden_states(tokens(seq))[0].double().mean(0)


def distances(model, ref_seq, alt_seq):
    a, b = mean_hidden(model, ref_seq), mean_hidden(model, alt_seq)
    return 1 - float(a @ b / (a.norm() * b.norm())), float((a - b).norm())


def expected_causal(model, fa, pos, ref, alt):
    """(llr, cos, l2) from plain forward passes over both haplotypes and both strands."""
    ref_seq, alt_seq = haplotype(fa, pos, ref, ref), haplotype(fa, pos, ref, alt)
    strands = [(ref_seq, alt_seq), (rc(ref_seq), rc(alt_seq))]
    llr = np.mean([log_likelihood(model, a) - log_likelihood(model, r) for r, a in strands])
    dist = np.mean([distances(model, r, a) for r, a in strands], axis=0)
    return llr, *dist


@torch.no_grad()
def expected_masked(model, fa, pos, ref, alt, rc_average):
    """Masked-LM log-ratio (None for an indel) and distances, by plain forward passes."""
    ref_seq, alt_seq = haplotype(fa, pos, ref, ref), haplotype(fa, pos, ref, alt)
    left = WINDOW // 2
    strands = [(ref_seq, alt_seq, False)] + ([(rc(ref_seq), rc(alt_seq), True)]
                                             if rc_average else [])
    llrs, dists = [], []
    for r, a, reverse in strands:
        dists.append(distances(model, r, a))
        if len(ref) != len(alt):
            continue
        x = tokens(r)
        span = range(len(r) - left - len(ref), len(r) - left) if reverse else \
            range(left, left + len(ref))
        x[0, list(span)] = MASK
        logp = torch.log_softmax(model(x)[0].double(), -1)
        ref_here = r[span.start:span.stop].translate(CODES).encode()
        alt_here = a[span.start:span.stop].translate(CODES).encode()
        llrs.append(sum(float(logp[t, alt_here[i]] - logp[t, ref_here[i]])
                        for i, t in enumerate(span)))
    return (np.mean(llrs) if llrs else None), *np.mean(dists, axis=0)


# --- helpers ---------------------------------------------------------------------------------

def read_table(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def number(text):
    return None if text == "NA" else float(text)


def run(vcf, model_dir, out_dir, **kw):
    out_dir.mkdir(exist_ok=True)
    summary = score_vcf(vcf, fasta=kw.pop("fasta", CHR20), model_dir=model_dir,
                        output=out_dir / "scored.vcf.gz", window=kw.pop("window", WINDOW),
                        progress=False, **kw)
    return summary, read_table(out_dir / "scored.tsv")


def vcf_text(header_from, lines) -> str:
    header = [h for h in header_from.read_text().splitlines() if h.startswith("#")]
    return "\n".join(header + lines) + "\n"


def body(path) -> list[str]:
    return [x for x in path.read_text().splitlines() if not x.startswith("#")]


def site(fa, pos, ref_length, alt, chrom="20", info=".") -> str:
    """A sites-only record with the FASTA's REF at pos."""
    ref = fa.fetch("20", pos - 1, pos - 1 + ref_length).upper()
    return "\t".join([chrom, str(pos), ".", ref, alt(ref) if callable(alt) else alt, "50",
                      "PASS", info])


def other_base(base):
    return {"A": "C", "C": "G", "G": "T", "T": "A", "N": "A"}[base]


def assert_close(got, want, tol=2e-4):
    assert (got is None) == (want is None)
    if want is not None:
        assert got == pytest.approx(want, rel=tol, abs=tol)


# --- scores equal plain forward passes -------------------------------------------------------

def test_causal_scores_equal_plain_forward_passes(causal, fasta, tmp_path):
    model, model_dir = causal
    extra = [site(fasta, 3, 1, "A"),                                    # in the N padding
             site(fasta, 1_999_990, 2, lambda r: other_base(r[0]) + other_base(r[1])),  # MNV
             site(fasta, 1_999_999, 2, lambda r: r[0])]                 # deletion at the end
    vcf = tmp_path / "in.vcf"
    vcf.write_text(vcf_text(VCF16, body(VCF16) + extra[1:]).replace(
        "\n20\t458502", "\n" + extra[0] + "\n20\t458502", 1))
    summary, rows = run(vcf, model_dir, tmp_path / "out")
    assert summary["records"] == 14 and summary["statuses"] == {"scored": 24}
    llrs = []
    for row in rows:
        assert row["status"] == "scored"
        want = expected_causal(model, fasta, int(row["pos"]), row["ref"], row["alt"])
        got = [number(row[k]) for k in ("llr", "cosine_distance", "l2_distance")]
        for g, w in zip(got, want, strict=True):
            assert_close(g, w)
        llrs.append(got[0])
    assert np.std(llrs) > 1  # a model that predicts something, not all zeros


def test_prefix_reuse_equals_naive_scoring_and_streaming(causal, tmp_path):
    _, model_dir = causal
    kw = dict(window=301, batch_size=5)
    _, reuse = run(VCF16, model_dir, tmp_path / "reuse", **kw)
    _, naive = run(VCF16, model_dir, tmp_path / "naive", prefix_reuse=False, **kw)
    _, pieces = run(VCF16, model_dir, tmp_path / "pieces", piece_length=23, **kw)
    assert len(reuse) == 21
    for a, b, c in zip(reuse, naive, pieces, strict=True):
        for key in ("llr", "cosine_distance", "l2_distance"):
            assert_close(number(b[key]), number(a[key]))
            assert_close(number(c[key]), number(a[key]))


@pytest.mark.parametrize("kind", ["bidirectional", "rc_equivariant"])
def test_masked_lm_scores_equal_plain_forward_passes(kind, fasta, tmp_path):
    model = tiny_model(tmp_path / "model", seed=3, objective="mlm", bidirectional=True,
                       rc_equivariant=kind == "rc_equivariant")
    snvs, indels = body(VCF4), body(VCF16)    # 766143 C>A,CATCTGGTA; 997076 CTG>C
    lines = [*snvs[:3], indels[3], snvs[3], indels[4],
             site(fasta, 1_000_000, 3, lambda r: "".join(map(other_base, r)))]  # MNV
    vcf = tmp_path / "in.vcf"
    vcf.write_text(vcf_text(VCF4, lines))
    summary, rows = run(vcf, tmp_path / "model", tmp_path / "out")
    assert summary["statuses"] == {"scored": 6, "indel_needs_causal_model": 2}
    for row in rows:
        want = expected_masked(model, fasta, int(row["pos"]), row["ref"], row["alt"],
                               rc_average=kind == "bidirectional")
        assert row["status"] == ("scored" if len(row["ref"]) == len(row["alt"])
                                 else "indel_needs_causal_model")
        for key, w in zip(("llr", "cosine_distance", "l2_distance"), want, strict=True):
            assert_close(number(row[key]), w)


# --- allele kinds, statuses, preserved records --------------------------------------------------

def test_every_allele_kind_gets_its_status(causal, fasta, tmp_path):
    _, model_dir = causal
    mismatch = site(fasta, 700_000, 1, "A").split("\t")
    mismatch[3] = other_base(mismatch[3])
    lines = [site(fasta, 100_000, 1, lambda r: f"{other_base(r)},*,<NON_REF>"),
             site(fasta, 200_000, 1, "<DEL>"),
             site(fasta, 300_000, 1, lambda r: f"{r}]20:1000],.{r}"),
             site(fasta, 400_000, 1, "."),
             site(fasta, 500_000, 1, "A-C"),
             site(fasta, 600_000, 3, lambda r: r[0]),
             "\t".join(mismatch),
             site(fasta, 100, 1, "A", chrom="21")]
    vcf = tmp_path / "in.vcf"
    vcf.write_text(vcf_text(VCF16, lines))
    summary, rows = run(vcf, model_dir, tmp_path / "out")
    statuses = [(r["record"], r["alt_index"], r["status"]) for r in rows]
    assert statuses == [
        ("1", "1", "scored"), ("1", "2", "star_allele"), ("1", "3", "symbolic_allele"),
        ("2", "1", "symbolic_allele"), ("3", "1", "breakend"), ("3", "2", "breakend"),
        ("4", "NA", "no_alt"), ("5", "1", "invalid_allele"), ("6", "1", "scored"),
        ("7", "1", "ref_mismatch"), ("8", "1", "contig_not_in_fasta")]
    for row in rows:
        assert (row["llr"] != "NA") == (row["status"] == "scored")
    assert summary["records"] == 8 and summary["alt_alleles"] == 10
    assert "contigs not in" in summary["hints"][0] and "21" in summary["hints"][0]

    with pysam.VariantFile(str(tmp_path / "out" / "scored.vcf.gz")) as vf:
        records = list(vf)
    assert records[0].info["GENOSSM_STATUS"] == ("scored", "star_allele", "symbolic_allele")
    llr = records[0].info["GENOSSM_LLR"]
    assert llr[0] == pytest.approx(float(rows[0]["llr"]), rel=1e-5) and llr[1:] == (None, None)
    assert "GENOSSM_LLR" not in records[3].info       # no ALT: nothing to add
    assert records[6].info["GENOSSM_STATUS"] == ("ref_mismatch",)


@pytest.mark.parametrize("vcf", [VCF4, VCF5, VCF16], ids=lambda p: p.name.split(".")[0])
def test_every_record_and_field_is_preserved(vcf, causal, tmp_path):
    _, model_dir = causal
    run(vcf, model_dir, tmp_path, window=16, batch_size=64)
    out = tmp_path / "scored.vcf.gz"
    assert (tmp_path / "scored.vcf.gz.tbi").exists()
    # text: the input header lines in order, then the added ones; each record's line is the
    # input's with GENOSSM entries appended to INFO
    out_lines = gzip.decompress(out.read_bytes()).decode().splitlines()
    in_lines = vcf.read_text().splitlines()
    out_header = [x for x in out_lines if x.startswith("#")]
    assert [x for x in out_header if "GENOSSM" not in x and "genossm" not in x] == \
        [x for x in in_lines if x.startswith("#")]
    assert sum("##INFO=<ID=GENOSSM_" in x for x in out_header) == 4
    for a, b in zip(body(vcf), [x for x in out_lines if not x.startswith("#")], strict=True):
        fields = b.split("\t")
        info = [e for e in fields[7].split(";") if not e.startswith("GENOSSM_")]
        fields[7] = ";".join(info) or "."
        assert "\t".join(fields) == a
    # pysam: every record and every field, samples included
    with pysam.VariantFile(str(vcf)) as vin, pysam.VariantFile(str(out)) as vout:
        pairs = list(zip(vin, vout, strict=True))
    assert len(pairs) == len(body(vcf))
    for a, b in pairs:
        assert (a.chrom, a.pos, a.id, a.ref, a.alts, a.qual) == \
            (b.chrom, b.pos, b.id, b.ref, b.alts, b.qual)
        assert list(a.filter) == list(b.filter)
        assert {k: v for k, v in a.info.items()} == \
            {k: v for k, v in b.info.items() if k not in GENOSSM_KEYS}
        assert len(b.info["GENOSSM_STATUS"]) == len(a.alts)
        assert list(a.format) == list(b.format)
        assert [dict(s) for s in a.samples.values()] == [dict(s) for s in b.samples.values()]


def test_bgzipped_vcf_and_bcf_score_like_plain_vcf(causal, tmp_path):
    _, model_dir = causal
    _, plain = run(VCF5, model_dir, tmp_path / "plain", batch_size=64)
    bgzipped = tmp_path / "in.vcf.gz"
    pysam.tabix_compress(str(VCF5), str(bgzipped))
    _, from_gz = run(bgzipped, model_dir, tmp_path / "gz", batch_size=64)
    with_contig = tmp_path / "contig.vcf"   # BCF needs ##contig lines
    text = VCF5.read_text()
    with_contig.write_text(text.replace("\n", "\n##contig=<ID=20,length=2000000>\n", 1))
    bcf = tmp_path / "in.bcf"
    with pysam.VariantFile(str(with_contig)) as vin, \
            pysam.VariantFile(str(bcf), "wb", header=vin.header) as vout:
        for record in vin:
            vout.write(record)
    _, from_bcf = run(bcf, model_dir, tmp_path / "bcf", batch_size=64)
    assert from_gz == plain
    assert [r["llr"] for r in from_bcf] == [r["llr"] for r in plain]
    with pysam.VariantFile(str(tmp_path / "bcf" / "scored.vcf.gz")) as vf:
        assert [r.pos for r in vf] == [int(r["pos"]) for r in plain if r["alt_index"] == "1"]


def test_outputs_are_renamed_into_place_with_normal_permissions(causal, tmp_path):
    _, model_dir = causal
    out = tmp_path / "out"
    run(VCF4, model_dir, out, plot=out / "scores.png")
    run(VCF16, model_dir, out, plot=out / "scores.png", force=True)   # replaces a run's own
    assert sorted(p.name for p in out.iterdir()) == \
        ["scored.tsv", "scored.vcf.gz", "scored.vcf.gz.tbi", "scores.png"]  # no temporaries
    umask = os.umask(0)
    os.umask(umask)
    for path in out.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path.name
    with pysam.VariantFile(str(out / "scored.vcf.gz")) as vf:
        assert len(list(vf)) == 11


def contents(directory) -> dict:
    return {p.name: p.read_bytes() for p in directory.iterdir()}


def test_error_while_scoring_leaves_old_outputs_and_no_temporaries(causal, tmp_path,
                                                                   monkeypatch):
    _, model_dir = causal
    seq = list("ACGT" * 250)
    seq[600] = "-"                                   # not a sequence letter
    fa = write_fasta(tmp_path / "bad.fa", [("20", "".join(seq))])
    vcf = tmp_path / "in.vcf"
    vcf.write_text(vcf_text(VCF16, [f"20\t100\t.\t{seq[99]}\tA,C\t50\tPASS\t.",
                                    f"20\t590\t.\t{seq[589]}\tA\t50\tPASS\t."]))
    out = tmp_path / "out"
    run(VCF4, model_dir, out, plot=out / "scores.png")
    old = contents(out)
    assert len(old) == 4
    with pytest.raises(InputError, match=r"bad.fa.*invalid sequence character"):
        run(vcf, model_dir, out, fasta=fa, batch_size=2, plot=out / "scores.png", force=True)
    assert contents(out) == old

    # a failure at any later point (the second batch, the index, the plot): the same
    from genossm.score import command
    real_score = command.Scorer.score
    calls = []

    def fail_second_batch(self, batch):
        calls.append(len(batch))
        if len(calls) == 2:
            raise RuntimeError("failed half way")
        real_score(self, batch)

    def fail(*args, **kw):
        calls.append(args)
        raise RuntimeError("failed half way")

    for target, name, replacement in ((command.Scorer, "score", fail_second_batch),
                                      (command.pysam, "tabix_index", fail),
                                      (command, "plot_score_distributions", fail)):
        calls.clear()
        with monkeypatch.context() as m:
            m.setattr(target, name, replacement)
            with pytest.raises(RuntimeError, match="failed half way"):
                run(VCF16, model_dir, out, plot=out / "scores.png", force=True, batch_size=4)
        assert calls, name
        assert contents(out) == old, name


def test_output_that_cannot_be_written_is_an_input_error(causal, tmp_path):
    _, model_dir = causal
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match=r"file/s.vcf.gz(.tbi)?: cannot write"):
        score_vcf(VCF4, fasta=CHR20, model_dir=model_dir, output=tmp_path / "file" / "s.vcf.gz",
                  table=tmp_path / "s.tsv", window=WINDOW, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


# --- contig names --------------------------------------------------------------------------------

def test_chr_naming_mismatch_is_reported_and_resolved_by_option(causal, tmp_path):
    _, model_dir = causal
    _, original = run(VCF4, model_dir, tmp_path / "original")
    chr_vcf = tmp_path / "chr.vcf"
    chr_vcf.write_text(VCF4.read_text().replace("\n20\t", "\nchr20\t"))

    summary, rows = run(chr_vcf, model_dir, tmp_path / "mismatch")
    assert summary["statuses"] == {"chrom_name_mismatch": 16}
    assert summary["hints"] == ["--rename-chroms strip-chr would find chr20 as 20"]

    _, stripped = run(chr_vcf, model_dir, tmp_path / "strip", rename_chroms="strip-chr")
    chrom_map = tmp_path / "map.tsv"
    chrom_map.write_text("# VCF\tFASTA\nchr20\t20\n")
    _, mapped = run(chr_vcf, model_dir, tmp_path / "map", chrom_map=chrom_map)
    for result in (stripped, mapped):
        assert [r["llr"] for r in result] == [r["llr"] for r in original]
        assert {r["chrom"] for r in result} == {"chr20"}   # the VCF's name is kept

    chr_fasta = write_fasta(tmp_path / "chr.fa.gz",
                            [("chr" + n, s[:700_000]) for n, s in fasta_records(CHR20)],
                            compress="bgzf")
    pysam.faidx(str(chr_fasta))
    vcf = tmp_path / "early.vcf"
    vcf.write_text(vcf_text(VCF4, body(VCF4)[:3]))
    summary, _ = run(vcf, model_dir, tmp_path / "nochr", fasta=chr_fasta)
    assert summary["hints"] == ["--rename-chroms add-chr would find 20 as chr20"]
    _, added = run(vcf, model_dir, tmp_path / "add", fasta=chr_fasta, rename_chroms="add-chr")
    assert [r["llr"] for r in added] == [r["llr"] for r in original[:3]]


# --- bad input ---------------------------------------------------------------------------------

def bad_inputs(tmp_path, fasta):
    lines = body(VCF4)
    unsorted = tmp_path / "unsorted.vcf"
    unsorted.write_text(vcf_text(VCF4, [lines[1], lines[0], *lines[2:]]))
    regrouped = tmp_path / "regrouped.vcf"
    regrouped.write_text(vcf_text(VCF16, [site(fasta, 100, 1, "A"),
                                          site(fasta, 100, 1, "A", chrom="21"),
                                          site(fasta, 200, 1, "A")]))
    malformed = tmp_path / "malformed.vcf"
    malformed.write_text(vcf_text(VCF4, [lines[0], lines[1].replace("249843", "abc", 1)]))
    scored = tmp_path / "scored_before.vcf"
    scored.write_text(vcf_text(VCF16, [site(fasta, 100, 1, "A")]).replace(
        "#CHROM", '##INFO=<ID=GENOSSM_LLR,Number=A,Type=Float,Description="x">\n#CHROM'))
    gzip_fasta = write_fasta(tmp_path / "plain_gzip.fa.gz", [("20", "ACGT" * 100)],
                             compress="gzip")
    bad_map = tmp_path / "bad_map.tsv"
    bad_map.write_text("20 20\n")
    return [  # (what, kwargs, message pattern)
        ("unsorted", dict(vcf=unsorted), r"record 2 \(line \d+\).*not sorted"),
        ("contig twice", dict(vcf=regrouped), r"record 3.*contig 20 appears again"),
        ("malformed", dict(vcf=malformed), r"line \d+\): POS must be a number, got 'abc'"),
        ("not a VCF", dict(vcf=CHR20), r"neither a VCF/BCF .* nor a variant table"),
        ("missing VCF", dict(vcf=tmp_path / "nope.vcf"), r"no such file"),
        ("scored before", dict(vcf=scored), r"already has GENOSSM_LLR"),
        ("gzip FASTA", dict(fasta=gzip_fasta), r"plain_gzip.fa.gz: cannot open as an indexed"),
        ("no model", dict(model_dir=tmp_path / "no_model"), r"not a model directory"),
        ("chrom map", dict(chrom_map=bad_map), r"bad_map.tsv: line 1: expected two"),
        ("window", dict(window=1), r"--window"),
    ]


def test_bad_input_is_one_error_and_leaves_no_output(causal, fasta, tmp_path):
    _, model_dir = causal
    for what, kw, pattern in bad_inputs(tmp_path, fasta):
        out = tmp_path / f"out_{what.replace(' ', '_')}"
        out.mkdir()
        args = dict(vcf=VCF4, fasta=CHR20, model_dir=model_dir, output=out / "s.vcf.gz",
                    window=WINDOW, progress=False)
        args.update(kw)
        with pytest.raises(InputError, match=pattern):
            score_vcf(args.pop("vcf"), **args)
        assert list(out.iterdir()) == [], what


def test_cli_prints_summary_and_exits_2_on_bad_input(causal, tmp_path, capsys):
    _, model_dir = causal
    out = tmp_path / "cli.vcf.gz"
    argv = ["score", str(VCF16), "--fasta", str(CHR20), "--model", str(model_dir), "-o",
            str(out), "--window", "32", "-q", "--threads", "1", "--device", "cpu"]
    assert main([*argv, "--plot", str(tmp_path / "scores.png")]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed.startswith("genossm score: 11 records (21 alt alleles): 21 scored")
    assert (tmp_path / "cli.tsv").exists() and (tmp_path / "cli.vcf.gz.tbi").exists()
    assert (tmp_path / "scores.png").read_bytes()[:4] == b"\x89PNG"

    assert main([*argv, "--batch-size", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("genossm: error:") and "--batch-size" in err and "\n" not in err


def test_plain_gzip_vcf_scores_like_the_bgzipped_copy(causal, tmp_path):
    _, model_dir = causal
    bgzipped, plain_gzip = tmp_path / "bgzf.vcf.gz", tmp_path / "gzip.vcf.gz"
    pysam.tabix_compress(str(VCF16), str(bgzipped))
    plain_gzip.write_bytes(gzip.compress(VCF16.read_bytes()))
    _, from_bgzf = run(bgzipped, model_dir, tmp_path / "bgzf")
    _, from_gzip = run(plain_gzip, model_dir, tmp_path / "gzip")
    assert from_gzip == from_bgzf and len(from_gzip) == 21
    with pysam.VariantFile(str(tmp_path / "bgzf" / "scored.vcf.gz")) as a, \
            pysam.VariantFile(str(tmp_path / "gzip" / "scored.vcf.gz")) as b:
        assert [str(r) for r in a] == [str(r) for r in b]


# --- the output policy, and bad input through the command line ---------------------------------

def score_cli(model_dir, vcf, *args) -> int:
    return main(["score", str(vcf), "--fasta", str(CHR20), "--model", str(model_dir),
                 "--window", "32", "-q", "--threads", "1", "--device", "cpu", *map(str, args)])


def test_an_input_is_never_an_output_even_with_force(causal, tmp_path, capsys):
    _, model_dir = causal
    vcf = tmp_path / "in.vcf.gz"
    pysam.tabix_compress(str(VCF16), str(vcf))
    pysam.tabix_index(str(vcf), preset="vcf")
    chrom_map = tmp_path / "chroms.tsv"        # the default table of -o chroms.vcf.gz
    chrom_map.write_text("20\t20\n")
    before = contents(tmp_path)
    config = model_dir / "config.json"
    model_files = contents(model_dir)
    out = tmp_path / "s.vcf.gz"
    for args in (["-o", vcf], ["-o", out, "--table", vcf], ["-o", out, "--table", f"{vcf}.tbi"],
                 ["-o", tmp_path / "chroms.vcf.gz", "--chrom-map", chrom_map],
                 ["-o", out, "--plot", config], ["-o", model_dir / "s.vcf.gz"]):
        for force in ([], ["--force"]):
            assert score_cli(model_dir, vcf, *args, *force) == 2
            one_error_line(capsys, "is an input of this run")
    assert contents(tmp_path) == before and contents(model_dir) == model_files


def test_force_replaces_only_what_score_wrote(causal, tmp_path, capsys):
    _, model_dir = causal
    out = tmp_path / "s.vcf.gz"
    args = ["-o", out, "--plot", tmp_path / "s.png"]
    assert score_cli(model_dir, VCF16, *args) == 0
    capsys.readouterr()
    ours = contents(tmp_path)
    assert sorted(ours) == ["s.png", "s.tsv", "s.vcf.gz", "s.vcf.gz.tbi"]
    assert score_cli(model_dir, VCF16, *args) == 2
    one_error_line(capsys, "output exists; use --force to replace it")

    other = tmp_path / "other.vcf.gz"             # a bgzipped VCF genossm did not write
    pysam.tabix_compress(str(VCF16), str(other))
    foreign = {"s.vcf.gz": other.read_bytes(), "s.vcf.gz.tbi": gzip.compress(b"TBI\x02"),
               "s.tsv": b"chrom\tpos\n", "s.png": ours["s.png"].replace(b"genossm", b"someone")}
    for name, data in foreign.items():
        (tmp_path / name).write_bytes(data)
        assert score_cli(model_dir, VCF16, *args, "--force") == 2
        one_error_line(capsys, f"{name}: exists and is a file of", "genossm wrote")
        assert (tmp_path / name).read_bytes() == data
        (tmp_path / name).write_bytes(ours[name])
    (tmp_path / "s.tsv").unlink()
    (tmp_path / "s.tsv").mkdir()
    assert score_cli(model_dir, VCF16, *args, "--force") == 2
    one_error_line(capsys, "s.tsv: exists and is a directory of 0 entries")
    (tmp_path / "s.tsv").rmdir()
    assert score_cli(model_dir, VCF4, *args, "--force") == 0
    assert sorted(contents(tmp_path)) == sorted([*ours, "other.vcf.gz"])
    assert len(read_table(tmp_path / "s.tsv")) == 16            # VCF4's, in place of VCF16's


def test_bad_input_through_the_command_line_is_one_line(causal, tmp_path, capsys):
    _, model_dir = causal
    lines = body(VCF16)
    cases = []
    for pos, shown in (("12x3", "'12x3'"), ("", "''")):
        fields = lines[2].split("\t")
        fields[1] = pos
        vcf = tmp_path / f"pos_{pos or 'empty'}.vcf"
        vcf.write_text(vcf_text(VCF16, [*lines[:2], "\t".join(fields), *lines[3:]]))
        line = VCF16.read_text().count("\n#") + 1 + 3        # after the header lines
        cases.append(([vcf], f"{vcf}: record 3 (line {line}): POS must be a number, got {shown}"))
    cases.append(([VCF16, "--window", 1_000_000_000],
                  "--window must be at most 1,048,576 (2^20), got 1,000,000,000"))
    cases.append(([VCF16, "--table", tmp_path / "s.vcf.gz"], "is both the scored VCF (-o)"))
    for args, message in cases:
        assert score_cli(model_dir, *args, "-o", tmp_path / "s.vcf.gz") == 2
        one_error_line(capsys, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pos_12x3.vcf", "pos_empty.vcf"]


@pytest.mark.parametrize("option", ["-o", "--table", "--plot"])
@pytest.mark.parametrize("place", ["unwritable", "under a file", "missing in unwritable"])
def test_an_output_that_cannot_be_written_is_one_line(causal, tmp_path, capsys, option, place):
    _, model_dir = causal
    (tmp_path / "file").write_text("")
    directory = {"unwritable": unwritable_dir(tmp_path), "under a file": tmp_path / "file",
                 "missing in unwritable": unwritable_dir(tmp_path) / "missing"}[place]
    name = {"-o": "s.vcf.gz", "--table": "s.tsv", "--plot": "s.png"}[option]
    args = {"-o": tmp_path / "s.vcf.gz", "--table": tmp_path / "s.tsv"}
    args[option] = directory / name
    assert score_cli(model_dir, VCF16, *[x for kv in args.items() for x in kv]) == 2
    one_error_line(capsys, f"{directory / name}", "cannot write")
    assert sorted(p.name for p in tmp_path.iterdir()) in (["file"], ["file", "read_only"])
