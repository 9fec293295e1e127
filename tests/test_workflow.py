"""The Snakemake workflow: lint, config validation, and the tokenize targets run for real."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pysam
import pytest
import yaml
import zarr
from Bio import SeqIO

from genossm.store import TokenStore
from helpers import CHR20, ROOT, fasta_records, job_counts

BIN = Path(sys.executable).parent


def snakemake(workdir: Path, *args, check=True):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "-d",
                           str(workdir), *args], capture_output=True, text=True, env=env)
    if check and proc.returncode:
        pytest.fail(f"snakemake {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def workdir(tmp_path):
    shutil.copytree(ROOT / "config", tmp_path / "config")
    return tmp_path


def label_callset_by_tsv(workdir: Path, callset="tabix_5") -> Path:
    """Give `callset` (unlabelled in the shipped sheet) a labels TSV of its own, written here:
    chrom, pos, ref, alt per ALT allele with the homopolymer run length of its record (INFO HP)
    and whether it inserts or deletes bases; positive: a run of 5 or more."""
    vcf = ROOT / f"config/data/{callset}.chr20_1-2000000.vcf"
    rows = ["chrom\tpos\tref\talt\thomopolymer\tkind"]
    with pysam.VariantFile(str(vcf)) as calls:
        for record in calls:
            for alt in record.alts:
                kind = "insertion" if len(alt) > len(record.ref) else "deletion"
                rows.append(f"{record.chrom}\t{record.pos}\t{record.ref}\t{alt}\t"
                            f"{record.info['HP']}\t{kind}")
    labels = workdir / f"config/{callset}_labels.tsv"
    labels.write_text("\n".join(rows) + "\n")
    sheet = workdir / "config/callsets.tsv"
    row = f"{callset}\tchr20\tconfig/data/{callset}.chr20_1-2000000.vcf\t"
    assert row + "\t" * 6 + "\n" in sheet.read_text()
    sheet.write_text(sheet.read_text().replace(
        row + "\t" * 6 + "\n",
        row + f"\t\tconfig/{callset}_labels.tsv\thomopolymer\t>=5\t\tkind\n"))
    return labels


def test_lint_is_clean():
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([str(BIN / "snakemake"), "--lint"], cwd=ROOT, capture_output=True,
                          text=True, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Congratulations, your workflow is in a good condition" in proc.stdout + proc.stderr


def test_tokenize_targets_run_and_rerun_does_nothing(workdir):
    targets = ["results/tokens/chr20.zarr", "results/tokens/ex1_reads.zarr",
               "results/tokens/hg00100_reads.zarr"]
    snakemake(workdir, "--cores", "2", *targets)
    store = TokenStore(workdir / "results/tokens/chr20.zarr")
    expected_md5 = hashlib.md5(pysam.FastaFile(str(CHR20)).fetch("20").upper().encode())
    assert store.contig("20").md5 == expected_md5.hexdigest()
    assert store.contig("20").length == len(fasta_records(CHR20)[0][1])
    reads = TokenStore(workdir / "results/tokens/hg00100_reads.zarr")
    with pysam.AlignmentFile(str(ROOT / "config/data/mpileup.1.bam")) as aln:
        expected = sum(1 for r in aln.fetch(region="17:1-4200") if not r.flag & 0xF00)
    assert reads.n_reads == expected
    for name in ("chr20", "ex1_reads", "hg00100_reads"):
        assert (workdir / f"logs/tokenize/{name}.log").read_text().startswith(
            "genossm tokenize: wrote")
        assert (workdir / f"results/benchmarks/tokenize/{name}.tsv").is_file()
    again = snakemake(workdir, "--cores", "2", *targets)
    assert "Nothing to be done" in again.stdout + again.stderr


def test_dry_run_lists_every_sample(workdir):
    proc = snakemake(workdir, "-n", "--cores", "2")
    out = proc.stdout + proc.stderr
    for name in ("chr20", "lambda", "ex1_reads", "hg00100_reads"):
        assert f"results/tokens/{name}.zarr" in out


def test_benchmark_jobs_for_labelled_callsets_only(workdir):
    """A call set with a label source (tabix_16: INFO AF in the shipped sheet; tabix_5: a labels
    TSV here) is benchmarked for every model that scores it; tabix_4, without, is not."""
    label_callset_by_tsv(workdir)
    config = workdir / "config/config.yaml"
    config.write_text(config.read_text().replace(
        "  small: config/models/cpu.yaml", "  small: config/models/cpu.yaml\n"
        "  small_b: config/models/cpu.yaml"))
    proc = snakemake(workdir, "-n", "-p", "--cores", "2")
    out = proc.stdout + proc.stderr
    assert job_counts(out)["benchmark"] == 4
    commands = [line.removeprefix("Shell command: ") for line in out.splitlines()
                if line.startswith("Shell command: genossm benchmark ")]
    assert len(commands) == 4
    for model in ("small", "small_b"):
        assert (f"genossm benchmark results/score/chr20/{model}/tabix_16.vcf.gz -o "
                f"results/benchmark/chr20/{model}/tabix_16.json --table "
                f"results/benchmark/chr20/{model}/tabix_16.tsv --quiet --bootstrap 1000 "
                "--label-info AF --positive '<0.05' > "
                f"logs/benchmark/chr20/{model}/tabix_16.log 2>&1") in commands
        assert (f"genossm benchmark results/score/chr20/{model}/tabix_5.vcf.gz -o "
                f"results/benchmark/chr20/{model}/tabix_5.json --table "
                f"results/benchmark/chr20/{model}/tabix_5.tsv --quiet --bootstrap 1000 "
                "--labels config/tabix_5_labels.tsv --label-column homopolymer "
                f"--positive '>=5' --group-by kind > logs/benchmark/chr20/{model}/tabix_5.log "
                "2>&1") in commands
    assert "config/tabix_5_labels.tsv" in proc.stdout                   # an input of the job
    assert "results/benchmark/chr20/small/tabix_4" not in out
    unlabelled = snakemake(workdir, "-n", "results/benchmark/chr20/small/tabix_4.json",
                           check=False)
    assert unlabelled.returncode != 0
    assert "config/callsets.tsv: line 3 ('tabix_4'): this call set has no label source" in \
        unlabelled.stdout + unlabelled.stderr


def test_whole_dag_then_nothing_to_do_then_report(workdir, tmp_path):
    """The default DAG (tokenize -> train -> evaluate, score, embed) on the embedded example with
    training cut to a few steps and a short scoring window; a second run does nothing; the
    HTML report holds the plots and renders in headless Chromium."""
    config = workdir / "config/config.yaml"
    tiny = yaml.safe_load((workdir / "config/models/cpu.yaml").read_text())
    tiny["model"].update(n_layer=1, d_model=32)         # the example's model, one thin layer
    (workdir / "config/models/tiny.yaml").write_text(yaml.safe_dump(tiny))
    config.write_text(config.read_text().replace("max_steps: null", "max_steps: 6")
                      .replace("markov_max_order: 10", "markov_max_order: 4")
                      .replace("window: 4096", "window: 256")
                      .replace("small: config/models/cpu.yaml", "small: config/models/tiny.yaml"))
    label_callset_by_tsv(workdir)
    snakemake(workdir, "--cores", "2")
    info = json.loads((workdir / "results/models/chr20/small/config.json").read_text())
    assert info["training"]["steps"] == 6
    assert info["training"]["stores"] == ["results/tokens/chr20.zarr"]
    metrics = json.loads((workdir / "results/evaluate/chr20/small/metrics.json").read_text())
    assert metrics["bases_scored"] == 100_000 - 1           # the held-out last 5 %, less base 1
    assert metrics["training_overlap_bases"] == 0
    assert 0 <= metrics["markov_order"] <= 4
    for png in ("evaluate/chr20/small/training_curves.png",
                "evaluate/chr20/small/bits_by_position.png", "score/chr20/small/tabix_5.png"):
        assert (workdir / "results" / png).read_bytes()[:4] == b"\x89PNG"
    for callset in ("tabix_4", "tabix_5", "tabix_16"):
        vcf = ROOT / f"config/data/{callset}.chr20_1-2000000.vcf"
        out = workdir / f"results/score/chr20/small/{callset}.vcf.gz"
        with pysam.VariantFile(str(vcf)) as a, pysam.VariantFile(str(out)) as b:
            records = list(zip(a, b, strict=True))       # every record, in order
        assert all((x.pos, x.ref, x.alts) == (y.pos, y.ref, y.alts) for x, y in records)
        assert Path(f"{out}.tbi").is_file()
    # benchmarked: tabix_16 by its INFO AF (shipped), tabix_5 by a labels TSV; tabix_4 not
    by_info = json.loads((workdir / "results/benchmark/chr20/small/tabix_16.json").read_text())
    assert by_info["labels"]["source"] == \
        "INFO AF of results/score/chr20/small/tabix_16.vcf.gz"
    assert by_info["alleles"]["positive"] == 10 and by_info["alleles"]["negative"] == 11
    assert by_info["bootstrap"]["resamples"] == 1000
    assert by_info["overall"]["scores"]["llr"]["auroc"] is not None
    by_tsv = json.loads((workdir / "results/benchmark/chr20/small/tabix_5.json").read_text())
    assert by_tsv["labels"]["source"] == "column homopolymer of config/tabix_5_labels.tsv"
    assert set(by_tsv["groups"]) == {"insertion", "deletion"}
    assert by_tsv["alleles"]["unlabelled"] == 0
    assert by_tsv["alleles"]["positive"] + by_tsv["alleles"]["negative"] == \
        by_tsv["alleles"]["alt_alleles"]
    for callset in ("tabix_16", "tabix_5"):
        table = (workdir / f"results/benchmark/chr20/small/{callset}.tsv").read_text()
        assert table.startswith("group\tscore\tn\t")
        for plot in ("roc", "pr", "by_label"):
            png = workdir / f"results/benchmark/chr20/small/{callset}.{plot}.png"
            assert png.read_bytes()[:4] == b"\x89PNG"
    assert not list((workdir / "results/benchmark/chr20/small").glob("tabix_4*"))
    emb = zarr.open_group(workdir / "results/embed/chr20/small/chr20_tiles.zarr", mode="r")
    assert emb["pooled"].shape == (10, 32)                   # tiny.yaml's d_model
    assert list(emb["regions/start"][:]) == list(range(100_000, 2_000_000, 190_000))
    for rule, name in (("train", "chr20/small"), ("evaluate", "chr20/small"),
                       ("score", "chr20/small/tabix_5"), ("embed", "chr20/small/chr20_tiles"),
                       ("benchmark", "chr20/small/tabix_16")):
        assert (workdir / f"logs/{rule}/{name}.log").read_text().strip().splitlines()[-1] \
            .startswith(f"genossm {rule}:")
        assert (workdir / f"results/benchmarks/{rule}/{name}.tsv").is_file()

    again = snakemake(workdir, "--cores", "2")
    assert "Nothing to be done" in again.stdout + again.stderr

    snakemake(workdir, "--report", "report.html")
    html = (workdir / "report.html").read_text()
    for name in ("training_curves.png", "bits_by_position.png", "metrics.json", "tabix_5.png",
                 "tabix_16.roc.png", "tabix_16.pr.png", "tabix_16.by_label.png",
                 "tabix_5.roc.png", "INFO AF; positive: &lt;0.05"):
        assert name in html
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "the report test needs Debian's chromium package (make test installs it)"
    shot = tmp_path / "report.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--window-size=1280,900", f"--user-data-dir={tmp_path / 'chromium'}"]
    subprocess.run([chromium, *flags, f"--screenshot={shot}", (workdir / "report.html").as_uri()],
                   capture_output=True, timeout=120, check=True)
    dom = subprocess.run([chromium, *flags, "--virtual-time-budget=5000", "--dump-dom",
                          (workdir / "report.html").as_uri()],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    for category in ("Evaluation", "Variant scores", "Benchmark"):     # drawn by JS
        assert category in dom
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (900, 1280) and pixels.std() > 10     # not a blank page


def test_three_genomes_two_models_two_callsets_and_region_sets(workdir):
    """N genomes x M models x K call sets / region sets: every combination becomes a job."""
    data = "config/data"
    genomes = {"human": f"{data}/chr20_b37_1-2000000.fa.gz", "phage": f"{data}/lambda_virus.fa.gz",
               "ex1": f"{data}/ex1.fa"}
    sheet = lambda header, rows: "\t".join(header) + "\n" + "".join(  # noqa: E731
        "\t".join(r) + "\n" for r in rows)
    (workdir / "config/samples.tsv").write_text(sheet(
        ["name", "inputs"], [[g, fa] for g, fa in genomes.items()]))
    (workdir / "config/genomes.tsv").write_text(sheet(
        ["name", "fasta", "train"], [[g, fa, g] for g, fa in genomes.items()]))
    (workdir / "config/callsets.tsv").write_text(sheet(
        ["name", "genome", "vcf"], [[f"{g}_calls{k}", g, f"{data}/tabix_{k}.chr20_1-2000000.vcf"]
                                    for g in genomes for k in (4, 5)]))
    (workdir / "config/region_sets.tsv").write_text(sheet(
        ["name", "genome", "bed"], [[f"{g}_regions{k}", g, "config/regions/chr20_tiles.bed"]
                                    for g in genomes for k in (1, 2)]))
    config = workdir / "config/config.yaml"
    config.write_text(config.read_text().replace(
        "  small: config/models/cpu.yaml", "  small: config/models/cpu.yaml\n"
        "  small_b: config/models/cpu.yaml"))
    proc = snakemake(workdir, "-n", "--cores", "2")
    assert job_counts(proc.stdout + proc.stderr) == {
        "tokenize": 3, "train": 6, "evaluate": 6, "score": 12, "embed": 12, "all": 1,
        "total": 40}
    for path in ("results/models/phage/small_b", "results/score/ex1/small/ex1_calls5.vcf.gz",
                 "results/embed/human/small_b/human_regions2.zarr"):
        assert path in proc.stdout


def test_genbank_sample_features_become_a_region_set(workdir):
    """A GenBank sample with a features column writes those features as a BED beside its store
    (rule tokenize_features); a region set that names the BED is embedded on the genome whose
    reference is the GenBank file itself."""
    shutil.copy(ROOT / "tests/data/formats/NC_005816.gb", workdir / "config/data")
    gb = "config/data/NC_005816.gb"
    samples = workdir / "config/samples.tsv"
    lines = samples.read_text().splitlines()
    samples.write_text("\n".join([lines[0] + "\tfeatures", *lines[1:],
                                   f"plasmid\t{gb}\t\t\tCDS"]) + "\n")
    with open(workdir / "config/genomes.tsv", "a") as fh:
        fh.write(f"plasmid\t{gb}\tplasmid\t\t\n")
    with open(workdir / "config/region_sets.tsv", "a") as fh:
        fh.write("plasmid_cds\tplasmid\tresults/tokens/plasmid.features.bed\n")
    out = snakemake(workdir, "-n", "-p", "--cores", "2").stdout
    assert job_counts(out)["tokenize_features"] == 1
    assert (f"genossm tokenize {gb} -o results/tokens/plasmid.zarr --threads 2 --force "
            "--quiet --chunk-size 1048576") in out and "--features CDS >" in out
    assert (f"genossm embed --model results/models/plasmid/small --fasta {gb} --bed "
            "results/tokens/plasmid.features.bed -o results/embed/plasmid/small/"
            "plasmid_cds.zarr") in out
    assert "--features" not in rule_block(out, "tokenize")   # the FASTA and BAM samples

    snakemake(workdir, "--cores", "2", "results/tokens/plasmid.features.bed")
    with open(workdir / "results/tokens/plasmid.features.bed") as fh:
        rows = [line.split("\t") for line in fh if not line.startswith("#")]
    record = SeqIO.read(ROOT / "tests/data/formats/NC_005816.gb", "genbank")
    expected = [(record.id, int(f.location.start), int(f.location.end),
                 "+" if f.location.strand == 1 else "-")
                for f in record.features if f.type == "CDS"]
    assert len(expected) == 10
    assert [(r[0], int(r[1]), int(r[2]), r[5]) for r in rows] == expected
    assert TokenStore(workdir / "results/tokens/plasmid.zarr").contig(record.id).md5 == \
        hashlib.md5(str(record.seq).upper().encode()).hexdigest()


def rule_block(output: str, rule: str) -> str:
    start = output.index(f"rule {rule}:")
    return output[start:output.index("\n\n", start)]


def test_slurm_profile_dry_run(workdir):
    """The SLURM profile (snakemake-executor-plugin-slurm) plans every job with its per-rule
    resources; a training job with 2 GPUs runs under torchrun, one process per GPU."""
    profile = str(ROOT / "profiles" / "slurm")
    out = snakemake(workdir, "--profile", profile, "-n").stdout
    train = rule_block(out, "train")
    assert "gpu=1" in train and "mem_mb=64000" in train and "runtime=1440" in train
    assert "Shell command: genossm train results/tokens/chr20.zarr" in out
    assert "gpu=1" in rule_block(out, "score")
    two = snakemake(workdir, "--profile", profile, "-n", "--set-resources", "train:gpu=2").stdout
    assert "Shell command: torchrun --standalone --nproc-per-node 2 -m genossm train " in two


@pytest.mark.parametrize("edit,message", [
    (("config/config.yaml", "min_mapq: 0", "min_mapq: -3"), "-3 is less than the minimum"),
    (("config/genomes.tsv", "gz\tchr20\t", "gz\tchr21\t"),
     "config/genomes.tsv: line 3 ('chr20'): train: unknown sample(s) ['chr21']"),
    (("config/callsets.tsv", "tabix_5\tchr20", "tabix_5\thg38"),
     "config/callsets.tsv: line 4 ('tabix_5'): genome: unknown genome(s) ['hg38']"),
    (("config/region_sets.tsv", "\tconfig/regions/chr20_tiles.bed", "\t"),
     "config/region_sets.tsv: line 3 ('chr20_tiles')"),
    (("config/callsets.tsv", "tabix_4.chr20_1-2000000.vcf\t", "tabix_4.chr20_1-2000000.vcf\tchr"),
     "'chr' is not one of"),
    (("config/callsets.tsv", "\tAF\t\t\t<0.05", "\tAF\tl.tsv\tclass\t<0.05"),
     "line 11 ('tabix_16'): label_info and label_column: give one label source, not both"),
    (("config/callsets.tsv", "\tAF\t\t\t<0.05", "\t\t\tclass\t<0.05"),
     "line 11 ('tabix_16'): label_column: give labels too"),
    (("config/callsets.tsv", "\tAF\t\t\t<0.05", "\t\tl.tsv\t\t<0.05"),
     "line 11 ('tabix_16'): labels: give label_column too"),
    (("config/callsets.tsv", "\tAF\t\t\t<0.05", "\t\tl.tsv\tclass\t"),
     "line 11 ('tabix_16'): positive: which values of label_column count as positive"),
    (("config/callsets.tsv", "\tAF\t\t\t<0.05\t\t", "\t\t\t\t<0.05\t\tkind"),
     "line 11 ('tabix_16'): positive, group_by: no label source"),
    (("config/callsets.tsv", "\tAF\t", "\tA F\t"), "'A F' does not match"),
    (("config/config.yaml", "  bootstrap: 1000", "  positive: '<0.05'"),
     "config: benchmark: positive: the label source is set per call set"),
    (("config/config.yaml", "  bootstrap: 1000", "  threads: 4"),
     "config: benchmark: threads: `genossm benchmark` runs on one thread without a GPU"),
    (("config/config.yaml", "  bootstrap: 1000", "  bootstrap: -1"),
     "-1 is less than the minimum of 0"),
    (("config/config.yaml", "window: 4096", "window: 1"), "1 is less than the minimum"),
    (("config/config.yaml", "device: auto", "device: tpu"), "'tpu' is not one of"),
    (("config/config.yaml", "samples: config/samples.tsv", "sample: x"), "samples"),
    (("config/samples.tsv", "lambda\t", "lam bda\t"), "line 4 ('lam bda')"),
    (("config/samples.tsv", "lambda\t", "chr20\t"), "line 4 ('chr20'): duplicate sample"),
    (("config/config.yaml", "  min_mapq: 0", "  features: CDS"),
     "config: tokenize: features: set per sample, in the features column of the sample sheet"),
])
def test_config_errors_are_clear(workdir, edit, message):
    path, old, new = edit
    target = workdir / path
    target.write_text(target.read_text().replace(old, new))
    proc = snakemake(workdir, "-n", check=False)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr
