"""genossm benchmark: the metrics against scikit-learn and scipy (ties, weights, bootstrap), and
the command end to end on a VCF that genossm score scored with a tiny model (real 1000 Genomes
calls, their real dbSNP flag as the label), read back independently with pysam; labels from
INFO, from a column, from a joined TSV; groups; unscored alleles by status; bad input; the
output policy."""

from __future__ import annotations

import csv
import json

import numpy as np
import pysam
import pytest
import torch
from scipy.stats import spearmanr
from sklearn.metrics import average_precision_score, roc_auc_score

from genossm.benchmark import (
    BENCHMARK_COLUMNS,
    Ranked,
    auroc,
    average_precision,
    benchmark,
    measure,
    spearman,
)
from genossm.cli import main
from genossm.model import GenoSSM, ModelConfig, save_model
from genossm.plots import PNG_MAGIC, is_genossm_plot
from genossm.score import score_vcf
from helpers import CHR20, DATA, files, one_error_line

VCF4 = DATA / "tabix_4.chr20_1-2000000.vcf"     # 16 real SNVs; INFO DB (dbSNP flag), SRC, BCM.AC
WINDOW = 37

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::scipy.stats.ConstantInputWarning")]


# --- the metrics against scikit-learn and scipy ------------------------------------------------

def random_sets(seed, count=100):
    """Scores with many ties, classes, and numeric targets with ties."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        n = int(rng.integers(2, 80))
        score = rng.integers(0, int(rng.integers(1, 10)), n) * 0.5 - 1
        positive = rng.random(n) < rng.uniform(0.1, 0.9)
        if positive.all() or not positive.any():
            continue
        yield score, positive, rng.integers(0, 5, n).astype(float)


def test_metrics_equal_sklearn_and_scipy_with_ties():
    checked = 0
    for score, positive, target in random_sets(0):
        assert auroc(score, positive) == pytest.approx(roc_auc_score(positive, score), abs=1e-12)
        assert average_precision(score, positive) == pytest.approx(
            average_precision_score(positive, score), abs=1e-12)
        want = spearmanr(score, positive.astype(float)).statistic
        got = Ranked(score, positive).point()[2]
        assert (np.isnan(got) and np.isnan(want)) or got == pytest.approx(want, abs=1e-12)
        want = spearmanr(score, target).statistic
        got = spearman(score, target)
        assert (np.isnan(got) and np.isnan(want)) or got == pytest.approx(want, abs=1e-12)
        checked += 1
    assert checked > 75


def test_metrics_by_hand():
    # positives 2 and 3, negatives 1 and 2: the positive 2 ties a negative (1/2)
    score, positive = np.array([1.0, 2, 2, 3]), np.array([False, True, False, True])
    assert auroc(score, positive) == 3.5 / 4
    # from the top: 3 (1 of 1 positive, recall 1/2), then both 2s (2 of 3, recall 1)
    assert average_precision(score, positive) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_resample_counts_equal_repeated_rows():
    """A bootstrap resample is counts of cells: the metrics equal those of the rows repeated."""
    rng = np.random.default_rng(1)
    for score, positive, target in random_sets(2, 60):
        times = rng.integers(0, 4, len(score))
        if not (positive[times > 0].any() and (~positive[times > 0]).any()):
            continue
        ranked = Ranked(score, positive, target)
        counts = np.bincount(ranked.cell_of, weights=times, minlength=len(ranked.counts))
        got = [m[0] for m in ranked.metrics(counts[None, :])]
        s, y, t = (np.repeat(a, times) for a in (score, positive, target))
        want = [roc_auc_score(y, s), average_precision_score(y, s), spearmanr(s, t).statistic]
        for g, w in zip(got, want, strict=True):
            assert (np.isnan(g) and np.isnan(w)) or g == pytest.approx(w, abs=1e-12)


def test_bootstrap_is_seeded_stratified_and_holds_the_point():
    rng = np.random.default_rng(3)
    score = np.round(rng.normal(size=300), 1)                       # ties
    positive = rng.random(300) < 0.2 + 0.3 * (score > 0)
    ranked = Ranked(score, positive)
    draws = ranked.bootstrap(300, seed=7)
    assert np.array_equal(draws, ranked.bootstrap(300, seed=7))
    assert not np.array_equal(draws, ranked.bootstrap(300, seed=8))
    assert np.isfinite(draws).all()          # every resample holds both classes
    point = ranked.point()
    for column, value in enumerate(point):
        low, high = np.percentile(draws[:, column], [2.5, 97.5])
        assert low < value < high


# --- scored VCFs: made by genossm score, and by hand ---------------------------------------------

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    config = ModelConfig(d_model=16, n_layer=2, d_state=8, headdim=8, chunk_size=16,
                         initializer_range=0.5)
    save_model(GenoSSM(config).eval(), directory)
    return directory


def extra_records(fa) -> list[str]:
    """Records genossm score cannot score wholly, labelled like tabix_4's."""
    def ref(pos, length=1):
        return fa.fetch("20", pos - 1, pos - 1 + length).upper()

    other = {"A": "C", "C": "G", "G": "T", "T": "A", "N": "A"}
    return ["\t".join(fields) for fields in (
        ["20", "1950000", ".", ref(1950000), "<DEL>", "50", "PASS", "DB;SRC=VQSR-ONLY;BCM.AC=12"],
        ["20", "1960000", ".", other[ref(1960000)], "A", "50", "PASS", "SRC=VQSR-ONLY;BCM.AC=3"],
        ["20", "1970000", ".", ref(1970000), f"{other[ref(1970000)]},*", "50", "PASS",
         "DB;SRC=VQSR+2-OF-7"],
        ["21", "5000", ".", "A", "C", "50", "PASS", "SRC=VQSR-ONLY;BCM.AC=1"])]


@pytest.fixture(scope="module")
def scored(model_dir, tmp_path_factory):
    """tabix_4 (16 real SNVs) and four more records, scored by genossm score."""
    directory = tmp_path_factory.mktemp("scored")
    with pysam.FastaFile(str(CHR20)) as fa:
        extra = extra_records(fa)
    lines = VCF4.read_text().splitlines()
    vcf = directory / "calls.vcf"
    vcf.write_text("\n".join(lines + extra) + "\n")
    score_vcf(vcf, fasta=CHR20, model_dir=model_dir, output=directory / "scored.vcf.gz",
              window=WINDOW, progress=False)
    return directory / "scored.vcf.gz"


def read_alleles(path):
    """(record INFO, chrom, pos, ref, alt, status, llr, cos, l2) per ALT, read with pysam."""
    rows = []
    with pysam.VariantFile(str(path)) as vf:
        for record in vf:
            info = record.info
            for i, alt in enumerate(record.alts):
                rows.append((dict(info), record.chrom, record.pos, record.ref, alt,
                             info["GENOSSM_STATUS"][i], info["GENOSSM_LLR"][i],
                             info["GENOSSM_COS"][i], info["GENOSSM_L2"][i]))
    return rows


def want_metrics(rows, is_positive, select=lambda row: True, target=None):
    """sklearn and scipy on the alleles with a score, per score oriented higher = worse."""
    out = {}
    for name, column, sign in (("llr", 6, -1), ("cosine_distance", 7, 1), ("l2_distance", 8, 1)):
        kept = [r for r in rows if select(r) and r[column] is not None]
        y = np.array([is_positive(r) for r in kept])
        s = np.array([sign * r[column] for r in kept])
        t = y.astype(float) if target is None else np.array([target(r) for r in kept])
        out[name] = (len(kept), int(y.sum()), roc_auc_score(y, s), average_precision_score(y, s),
                     spearmanr(s, t).statistic)
    return out


def check_entry(entry, want, intervals=True):
    n, n_pos, auc, ap, rho = want
    assert (entry["n"], entry["n_positive"], entry["n_negative"]) == (n, n_pos, n - n_pos)
    assert entry["auroc"] == pytest.approx(auc, abs=1e-9)
    assert entry["auprc"] == pytest.approx(ap, abs=1e-9)
    assert entry["spearman"] == pytest.approx(rho, abs=1e-9)
    for metric in ("auroc", "auprc", "spearman"):
        low, high = entry[f"{metric}_ci"]
        assert low <= high
        if intervals:
            assert low <= entry[metric] <= high


def read_tsv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def test_end_to_end_on_a_scored_vcf_with_an_info_flag(scored, tmp_path, capsys):
    out = tmp_path / "bench" / "db.json"
    assert main(["benchmark", str(scored), "-o", str(out), "--label-info", "DB",
                 "--group-by", "SRC", "--bootstrap", "200", "--seed", "5", "-q"]) == 0
    summary = capsys.readouterr().out
    assert summary.startswith("genossm benchmark: ") and "AUROC -GENOSSM_LLR" in summary
    metrics = json.loads(out.read_text())
    rows = read_alleles(scored)
    assert len(rows) == 21                     # 16 + <DEL> + mismatch + 2 ALTs + contig 21

    def is_db(r):
        return bool(r[0].get("DB"))

    # counts: every allele is labelled (a flag: absent is negative); the unscored by status
    counts = metrics["alleles"]
    statuses = {}
    for r in rows:
        statuses[r[5]] = statuses.get(r[5], 0) + 1
    assert counts["by_status"] == statuses
    assert {"symbolic_allele", "ref_mismatch", "star_allele", "contig_not_in_fasta"} <= \
        set(statuses)
    assert counts["positive"] == sum(map(is_db, rows)) and counts["unlabelled"] == 0
    assert counts["unscored"] == sum(n for s, n in statuses.items() if s != "scored")
    assert metrics["labels"]["spearman_against"].startswith("class")

    want = want_metrics(rows, is_db)
    for name, entry in metrics["overall"]["scores"].items():
        check_entry(entry, want[name])
        assert sum(entry["missing"].values()) == len(rows) - entry["n"]
    assert metrics["overall"]["scores"]["llr"]["missing"] == \
        {s: n for s, n in statuses.items() if s != "scored"}

    # per group: SRC's values; a group with one class has no AUROC and says why
    groups = metrics["groups"]
    assert set(groups) == {r[0]["SRC"] for r in rows}
    for name, group in groups.items():
        members = [r for r in rows if r[0]["SRC"] == name]
        entry = group["scores"]["llr"]
        scored_members = [r for r in members if r[6] is not None]
        classes = {is_db(r) for r in scored_members}
        if len(classes) == 2:
            check_entry(entry, want_metrics(rows, is_db, lambda r, n=name: r[0]["SRC"] == n)
                        ["llr"], intervals=False)
        else:
            assert entry["auroc"] is None and entry["auroc_ci"] is None and entry["note"]
        assert group["n_positive"] + group["n_negative"] == len(members)

    # the table repeats the JSON, a row per (group, score)
    table = read_tsv(tmp_path / "bench" / "db.tsv")
    assert tuple(table[0]) == BENCHMARK_COLUMNS
    assert len(table) == 3 * (1 + len(groups))
    first = table[0]
    assert first["group"] == "all" and first["score"] == "llr"
    assert float(first["auroc"]) == pytest.approx(metrics["overall"]["scores"]["llr"]["auroc"],
                                                  rel=1e-5)
    assert {r["group"] for r in table} == {"all", *(f"SRC={g}" for g in groups)}

    # the plots, beside the metrics
    for kind, name in (("roc", "db.roc.png"), ("precision_recall", "db.pr.png"),
                       ("by_label", "db.by_label.png")):
        path = tmp_path / "bench" / name
        assert metrics["plots"][kind] == str(path)
        assert path.read_bytes().startswith(PNG_MAGIC) and is_genossm_plot(path)

    # the same seed, the same intervals; the scored VCF is untouched
    again = measure(scored, label_info="DB", group_by="SRC", bootstrap=200, seed=5).metrics
    assert again["overall"] == metrics["overall"] and again["groups"] == metrics["groups"]
    other = measure(scored, label_info="DB", bootstrap=200, seed=6).metrics
    assert other["overall"]["scores"]["llr"]["auroc"] == \
        metrics["overall"]["scores"]["llr"]["auroc"]
    assert other["overall"]["scores"]["llr"]["auroc_ci"] != \
        metrics["overall"]["scores"]["llr"]["auroc_ci"]


def test_numeric_info_label_with_a_threshold(scored, tmp_path):
    """BCM.AC >= 10 is positive; alleles without BCM.AC are unlabelled; Spearman's rho is
    against BCM.AC itself."""
    metrics = benchmark(scored, tmp_path / "ac.json", label_info="BCM.AC", positive=">=10",
                        bootstrap=50, progress=False, plots_dir=tmp_path / "plots")
    rows = [r for r in read_alleles(scored) if r[0].get("BCM.AC") is not None]
    assert metrics["alleles"]["unlabelled"] == 21 - len(rows)
    assert metrics["labels"]["spearman_against"] == "BCM.AC"
    want = want_metrics(rows, lambda r: r[0]["BCM.AC"] >= 10, target=lambda r: r[0]["BCM.AC"])
    for name, entry in metrics["overall"]["scores"].items():
        check_entry(entry, want[name])
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == \
        ["ac.by_label.png", "ac.pr.png", "ac.roc.png"]


def labels_tsv(path, rows, value, group=None):
    """A labels file: chrom, pos, ref, alt, label[, consequence], one row per allele."""
    header = ["#CHROM", "POS", "REF", "ALT", "function_score"] + (["consequence"] if group else [])
    lines = ["\t".join(header)]
    for r in rows:
        cells = [r[1], str(r[2]), r[3], r[4], value(r)] + ([group(r)] if group else [])
        lines.append("\t".join(cells))
    path.write_text("\n".join(lines) + "\n")
    return path


def function_score(r) -> str:
    """A made-up numeric label with ties, missing for one allele."""
    return "NA" if r[2] == 1960000 else f"{(r[2] // 1000) % 7 - 3:.1f}"


def consequence(r) -> str:
    return "missense" if r[2] % 2 else "synonymous"


@pytest.mark.parametrize("kind", ["vcf", "table"])
def test_labels_tsv_joined_on_chrom_pos_ref_alt(scored, tmp_path, kind):
    """A numeric label below a threshold is positive; rho is against its negation; the scored
    VCF and its table give the same metrics."""
    rows = read_alleles(scored)
    labels = labels_tsv(tmp_path / "labels.tsv", rows + [(None, "20", 5, "A", "G")],
                        function_score, consequence)
    given = scored if kind == "vcf" else scored.with_name("scored.tsv")
    metrics = measure(given, label_column="function_score", labels=labels, positive="<-1",
                      group_by="consequence", bootstrap=50).metrics
    assert metrics["alleles"]["label_rows_matching_no_allele"] == 1
    assert metrics["alleles"]["unlabelled"] == 1
    assert metrics["labels"]["spearman_against"] == "-function_score"
    kept = [r for r in rows if function_score(r) != "NA"]
    want = want_metrics(kept, lambda r: float(function_score(r)) < -1,
                        target=lambda r: -float(function_score(r)))
    for name, entry in metrics["overall"]["scores"].items():
        check_entry(entry, want[name])
    assert set(metrics["groups"]) == {"missense", "synonymous"}


def test_a_column_of_the_score_table_and_negative_values(scored, tmp_path):
    """The score table with a column added: --positive / --negative pick the classes, the
    rest is left out and counted."""
    table = read_tsv(scored.with_name("scored.tsv"))
    classes = ["pathogenic", "benign", "uncertain"]
    path = tmp_path / "with_labels.tsv"
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, [*table[0], "clinsig"], delimiter="\t", lineterminator="\n")
        writer.writeheader()
        for i, row in enumerate(table):
            writer.writerow({**row, "clinsig": classes[i % 3]})
    metrics = measure(path, label_column="clinsig", positive="pathogenic", negative="benign",
                      bootstrap=0).metrics
    counts = metrics["alleles"]
    assert (counts["positive"], counts["negative"], counts["in_neither_class"]) == (7, 7, 7)
    entry = metrics["overall"]["scores"]["cosine_distance"]
    assert entry["auroc_ci"] is None and entry["auroc"] is not None      # --bootstrap 0
    kept = [(r, classes[i % 3]) for i, r in enumerate(table)
            if classes[i % 3] != "uncertain" and r["cosine_distance"] != "NA"]
    y = [c == "pathogenic" for _, c in kept]
    s = [float(r["cosine_distance"]) for r, _ in kept]
    assert entry["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-6)


GENOSSM_INFO = [f'##INFO=<ID={key},Number=A,Type={t},Description="test">' for key, t in
                (("GENOSSM_LLR", "Float"), ("GENOSSM_COS", "Float"), ("GENOSSM_L2", "Float"),
                 ("GENOSSM_STATUS", "String"))]


def write_scored(path, records, headers=()):
    """A scored VCF by hand: (pos, alts, [(llr, cos, l2, status) per alt], other INFO)."""
    lines = ["##fileformat=VCFv4.2", *headers, *GENOSSM_INFO,
             "##genossm_score=version test; model test",
             "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO"]
    for pos, alts, scores, info in records:
        columns = list(zip(*scores, strict=True))
        entries = [f"{key}={','.join('.' if v is None else str(v) for v in values)}"
                   for key, values in zip(("GENOSSM_LLR", "GENOSSM_COS", "GENOSSM_L2",
                                           "GENOSSM_STATUS"), columns, strict=True)]
        lines.append("\t".join(["20", str(pos), ".", "A", alts, ".", "PASS",
                                ";".join([*info, *entries])]))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_per_alt_labels_and_scores_missing_by_status(tmp_path):
    """Number=A labels go to their ALT, Number=R ones skip REF; a masked model's indel has
    distances but no LLR: missing for the LLR only, counted by its status."""
    headers = ['##INFO=<ID=LAB,Number=A,Type=String,Description="per alt">',
               '##INFO=<ID=LABR,Number=R,Type=String,Description="per allele">',
               '##INFO=<ID=CSQ,Number=.,Type=String,Description="consequence">']
    masked = "indel_needs_causal_model"
    labels = [("P" if i % 3 else "B", "B" if i % 4 else "P") for i in range(12)]
    records = [(10 + i, "C,G", [(-float(i), 0.1 * i, 1.0 * i, "scored"),
                                (None if i % 2 else 0.5 - i, 0.2 * i, 2.0 * i,
                                 masked if i % 2 else "scored")],
                [f"LAB={labels[i][0]},{labels[i][1]}", f"LABR=X,{labels[i][0]},{labels[i][1]}",
                 f"CSQ={'missense' if i % 2 else 'intron'}"])
               for i in range(12)]
    path = write_scored(tmp_path / "hand.vcf", records, headers)
    a = measure(path, label_info="LAB", positive="P", group_by="CSQ", bootstrap=20).metrics
    r = measure(path, label_info="LABR", positive="P", group_by="CSQ", bootstrap=20).metrics
    assert a["overall"] == r["overall"] and a["groups"] == r["groups"]
    assert a["alleles"]["positive"] == sum(x == "P" for pair in labels for x in pair)
    assert a["alleles"]["by_status"] == {"scored": 18, masked: 6}
    llr = a["overall"]["scores"]["llr"]
    assert llr["missing"] == {masked: 6}
    assert a["overall"]["scores"]["cosine_distance"]["missing"] == {}
    y = [labels[i][0] == "P" for i in range(12)] + \
        [labels[i][1] == "P" for i in range(0, 12, 2)]
    s = [float(i) for i in range(12)] + [i - 0.5 for i in range(0, 12, 2)]    # -LLR
    assert llr["n"] == 18 and llr["n_positive"] == sum(y)
    assert llr["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert llr["auprc"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert set(a["groups"]) == {"missense", "intron"}
    assert a["groups"]["missense"]["scores"]["llr"]["missing"] == {masked: 6}
    assert a["groups"]["intron"]["scores"]["llr"]["missing"] == {}


# --- bad input: one line, exit 2 ----------------------------------------------------------------

@pytest.mark.parametrize("case", ["no_key", "no_positives", "no_column", "info_of_table",
                                  "not_scored", "not_a_number", "number_a", "flag_positive",
                                  "no_labels", "columns_of_vcf", "bad_threshold"])
def test_bad_input_is_one_line(case, scored, tmp_path, capsys):
    table = scored.with_name("scored.tsv")
    out = ["-o", str(tmp_path / "m.json"), "-q", "--bootstrap", "10"]
    hand = write_scored(tmp_path / "hand.vcf", [
        (10, "C,G", [(1.0, 0.1, 1.0, "scored"), (2.0, 0.2, 2.0, "scored")],
         ["LAB=P,B,B", "WORD=abc"])],
        ['##INFO=<ID=LAB,Number=A,Type=String,Description="x">'])
    argv, parts = {
        "no_key": ([str(scored), "--label-info", "CLNSIG", "--positive", "P"],
                   [str(scored), "CLNSIG", "neither the header nor any record"]),
        "no_positives": ([str(scored), "--label-info", "SRC", "--positive", "Pathogenic"],
                         [str(scored), "INFO SRC", "no labelled allele counts as positive",
                          "'VQSR-ONLY'"]),
        "no_column": ([str(table), "--label-column", "clinsig", "--positive", "P"],
                      [str(table), "line 1", "no column 'clinsig'"]),
        "info_of_table": ([str(table), "--label-info", "DB"], [str(table), "no INFO"]),
        "not_scored": ([str(VCF4), "--label-info", "DB"], [str(VCF4), "##genossm_score"]),
        "not_a_number": ([str(hand), "--label-info", "WORD", "--positive", ">1"],
                         [str(hand), "line 9", "'abc' is not a number"]),
        "number_a": ([str(hand), "--label-info", "LAB", "--positive", "P"],
                     [str(hand), "line 9", "Number=A", "3 values for 2 ALT"]),
        "flag_positive": ([str(scored), "--label-info", "DB", "--positive", "x"],
                          [str(scored), "INFO DB is a flag"]),
        "no_labels": ([str(scored), "--positive", "x"], ["--label-info", "--label-column"]),
        "columns_of_vcf": ([str(scored), "--label-column", "x", "--positive", "x"],
                           [str(scored), "--labels TSV"]),
        "bad_threshold": ([str(scored), "--label-info", "BCM.AC", "--positive", "<x"],
                          ["--positive", "'<x' is no threshold"]),
    }[case]
    before = files(tmp_path)
    assert run_cli(["benchmark", *argv, *out]) == 2
    one_error_line(capsys, *parts)
    assert files(tmp_path) == before                       # nothing written


def run_cli(argv) -> int:
    """main's exit status, a usage error (SystemExit from argparse) included."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


# --- the output policy --------------------------------------------------------------------------

def test_never_over_an_input_and_force_only_over_its_own(scored, tmp_path, capsys):
    table = scored.with_name("scored.tsv")
    args = ["--label-info", "DB", "--bootstrap", "10", "-q"]
    # over the input, its index or its table given as input: refused, --force or not
    for target in (scored, f"{scored}.tbi"):
        assert main(["benchmark", str(scored), "-o", str(target), *args, "--force"]) == 2
        one_error_line(capsys, str(target), "is an input of this run")
    assert main(["benchmark", str(table), "-o", str(tmp_path / "t.json"), "--table",
                 str(table), "--label-column", "status", "--positive", "scored",
                 "--force"]) == 2
    one_error_line(capsys, str(table), "is an input of this run")

    out = tmp_path / "m.json"
    assert main(["benchmark", str(scored), "-o", str(out), *args]) == 0
    capsys.readouterr()
    first = files(tmp_path)
    assert main(["benchmark", str(scored), "-o", str(out), *args]) == 2
    one_error_line(capsys, str(out), "output exists; use --force")
    assert files(tmp_path) == first
    assert main(["benchmark", str(scored), "-o", str(out), *args, "--force"]) == 0
    capsys.readouterr()
    assert set(files(tmp_path)) == set(first)

    # with --force, nothing that genossm benchmark did not write is replaced
    for name in ("m.tsv", "m.roc.png", "m.json"):
        foreign = tmp_path / name
        saved = foreign.read_bytes()
        foreign.write_text("a user's file\n")
        before = files(tmp_path)
        assert main(["benchmark", str(scored), "-o", str(out), *args, "--force"]) == 2
        one_error_line(capsys, str(foreign), "--force replaces only what genossm wrote")
        assert files(tmp_path) == before
        foreign.write_bytes(saved)

    # two outputs at one path
    assert main(["benchmark", str(scored), "-o", str(out), "--table", str(out), *args]) == 2
    one_error_line(capsys, str(out), "give each output its own path")


def test_no_output_over_the_scored_input_or_the_labels_nor_inside_another(scored, tmp_path,
                                                                          capsys):
    """The plots directory, and the paths derived from METRICS.json (the default table,
    STEM.roc.png, ...), are claimed like -o: never the scored input or the labels TSV, with or
    without --force; and no output may lie inside another (its rename would delete it)."""
    labels = labels_tsv(tmp_path / "labels.tsv", read_alleles(scored), function_score)
    table = scored.with_name("scored.tsv")
    inputs = {p: p.read_bytes() for p in (scored, table, labels)}
    by_table = ["--label-column", "function_score", "--labels", str(labels), "--positive",
                "<-1", "--bootstrap", "10", "-q", "--force"]
    by_info = ["--label-info", "DB", "--bootstrap", "10", "-q"]
    for argv, message in [
        ([str(scored), "-o", str(tmp_path / "a.json"), "--plots", str(scored), *by_info],
         [f"{scored}/a.roc.png", "is an input of this run"]),
        ([str(table), "-o", str(tmp_path / "b.json"), "--plots", str(labels), *by_table],
         [f"{labels}/b.roc.png", "is an input of this run"]),
        ([str(table), "-o", str(tmp_path / "labels.json"), *by_table],      # its default table
         [str(labels), "is an input of this run"]),
        ([str(scored), "-o", str(tmp_path / "c.json"), "--table", str(tmp_path / "d"),
          "--plots", str(tmp_path / "d"), *by_info],
         ["c.roc.png: the roc plot would lie inside the table (--table)", "its own path"]),
        ([str(scored), "-o", str(tmp_path / "e.json"), "--plots", str(tmp_path / "e.json"),
          *by_info], ["the roc plot would lie inside METRICS.json (-o)"]),
        ([str(scored), "-o", str(tmp_path / "f.json"), "--table",
          str(tmp_path / "f.roc.png" / "t.tsv"), *by_info],
         ["the table (--table) would lie inside the roc plot"]),
    ]:
        before = files(tmp_path)
        assert run_cli(["benchmark", *argv]) == 2
        one_error_line(capsys, *message)
        assert files(tmp_path) == before
        assert {p: p.read_bytes() for p in inputs} == inputs
