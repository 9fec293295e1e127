"""The Snakemake workflow: lint, config validation, and the tokenize targets run for real."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pysam
import pytest
import zarr

from genossm.store import TokenStore
from helpers import CHR20, ROOT, fasta_records

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


def test_model_targets(workdir):
    """tokenize -> train -> evaluate, score and embed on the embedded example, with training
    shortened to a few steps and a short scoring window."""
    config = workdir / "config/config.yaml"
    config.write_text(config.read_text().replace("max_steps: null", "max_steps: 6")
                      .replace("markov_max_order: 10", "markov_max_order: 4")
                      .replace("window: 4096", "window: 256"))
    snakemake(workdir, "--cores", "2", "results/evaluate/small/metrics.json",
              "results/score/small/tabix_5.vcf.gz", "results/embed/small/chr20_tiles.zarr")
    info = json.loads((workdir / "results/models/small/config.json").read_text())
    assert info["training"]["steps"] == 6
    assert info["training"]["stores"] == ["results/tokens/chr20.zarr"]
    metrics = json.loads((workdir / "results/evaluate/small/metrics.json").read_text())
    assert metrics["bases_scored"] == 100_000 - 1           # the held-out last 5 %, less base 1
    assert metrics["training_overlap_bases"] == 0
    assert 0 <= metrics["markov_order"] <= 4
    for png in ("training_curves.png", "bits_by_position.png"):
        assert (workdir / "results/evaluate/small" / png).read_bytes()[:4] == b"\x89PNG"
    vcf = ROOT / "config/data/tabix_5.chr20_1-2000000.vcf"
    with pysam.VariantFile(str(vcf)) as a, \
            pysam.VariantFile(str(workdir / "results/score/small/tabix_5.vcf.gz")) as b:
        records = list(zip(a, b, strict=True))           # every record, in order
    assert all((x.pos, x.ref, x.alts) == (y.pos, y.ref, y.alts) for x, y in records)
    assert sum(y.info["GENOSSM_STATUS"][0] == "scored" for _, y in records) > 250
    assert (workdir / "results/score/small/tabix_5.vcf.gz.tbi").is_file()
    emb = zarr.open_group(workdir / "results/embed/small/chr20_tiles.zarr", mode="r")
    assert emb["pooled"].shape == (10, 64)
    assert list(emb["regions/start"][:]) == list(range(100_000, 2_000_000, 190_000))
    for rule, name in (("train", "small"), ("evaluate", "small"), ("score", "small/tabix_5"),
                       ("embed", "small/chr20_tiles")):
        assert (workdir / f"logs/{rule}/{name}.log").read_text().strip().splitlines()[-1] \
            .startswith(f"genossm {rule}:")
        assert (workdir / f"results/benchmarks/{rule}/{name}.tsv").is_file()


@pytest.mark.parametrize("edit,message", [
    (("config/config.yaml", "min_mapq: 0", "min_mapq: -3"), "-3 is less than the minimum"),
    (("config/config.yaml", "samples: [chr20]", "samples: [chr21]"),
     "train.samples: unknown sample(s) ['chr21']"),
    (("config/config.yaml", "device: auto", "device: tpu"), "'tpu' is not one of"),
    (("config/config.yaml", "samples: config/samples.tsv", "sample: x"), "samples"),
    (("config/samples.tsv", "lambda\t", "lam bda\t"), "line 4 ('lam bda')"),
    (("config/samples.tsv", "lambda\t", "chr20\t"), "line 4 ('chr20'): duplicate sample"),
])
def test_config_errors_are_clear(workdir, edit, message):
    path, old, new = edit
    target = workdir / path
    target.write_text(target.read_text().replace(old, new))
    proc = snakemake(workdir, "-n", check=False)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr
