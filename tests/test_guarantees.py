"""What genossm guarantees its users about their files and its failures: one test per guarantee,
named for it (docs/design.md, "Outputs" and "Bad input").

1. An output that is, or resolves to, an input of the run is refused, even with --force.
2. --force replaces only what genossm wrote; anything else at the output path is refused.
3. Without --force, every command refuses an existing output; an output that cannot be written
   is one line before any work.
4. SIGTERM, SIGHUP and SIGINT remove the temporaries and leave the old output intact; what a
   kill -9 leaves is removed by the next run.
5. Outputs get the umask's permissions.
6. Usage errors are one line.
7. Corrupt input of every kind (FASTA, gzip FASTA, FASTQ, BAM, VCF, BED, model files, store
   chunks) ends in a result or in one error line: never a traceback, a hang, a leftover or a
   changed input (a seeded loop of 540 corruptions: gzip FASTA 80, FASTA 60, FASTQ 60,
   BAM 80, VCF 80, BED 40, config.json 40, model.safetensors 60, store chunk 40).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pysam
import pytest

from genossm.cli import main
from genossm.errors import InputError
from genossm.store import TokenStore
from helpers import CHR20, EX1_BAM, fasta_records

GENOSSM = [sys.executable, "-m", "genossm"]
TIME_LIMIT = 60          # seconds a single command may take in these tests
GENOME_LENGTH = 300_000  # the first 300 kb of the embedded chr20 slice
TINY_CONFIG = """\
model: {d_model: 16, n_layer: 1, d_state: 8, headdim: 8, chunk_size: 16}
split: {val_fraction: 0.2}
seq_len: 64
batch_size: 2
max_steps: 2
warmup_steps: 1
log_every: 1
eval_every: 0
checkpoint_every: 10
"""

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- the run's inputs


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Inputs of every command (genome FASTA, store, tiny trained model, VCF, BED, config) in
    one directory, made once."""
    d = tmp_path_factory.mktemp("world")
    seq = fasta_records(CHR20)[0][1][:GENOME_LENGTH]
    fasta = d / "genome.fa"
    fasta.write_text(">20\n" + "\n".join(seq[i:i + 60] for i in range(0, len(seq), 60)) + "\n")
    pysam.faidx(str(fasta))
    config = d / "tiny.yaml"
    config.write_text(TINY_CONFIG)
    vcf = d / "calls.vcf"
    header, records = [], []
    for line in (CHR20.parent / "tabix_5.chr20_1-2000000.vcf").read_text().splitlines():
        if line.startswith("#"):
            header.append(line)
        elif int(line.split("\t")[1]) < GENOME_LENGTH - 100 and len(records) < 12:
            records.append(line)
    vcf.write_text("\n".join(header + records) + "\n")
    pysam.tabix_compress(str(vcf), str(d / "calls.vcf.gz"))
    bed = d / "regions.bed"
    bed.write_text("20\t1000\t1400\ta\t0\t+\n20\t150000\t150300\tb\t0\t-\n")
    fastq = d / "reads.fq"
    with pysam.AlignmentFile(str(EX1_BAM)) as bam:
        reads = [r for r, _ in zip(bam.fetch(until_eof=True), range(40), strict=False)]
    fastq.write_text("".join(f"@{r.query_name}\n{r.query_sequence}\n+\n{r.qual}\n" for r in reads))
    shutil.copy(EX1_BAM, d / "ex1.bam")
    run_ok(["tokenize", fasta, "-o", d / "genome.zarr"])
    run_ok(["train", d / "genome.zarr", "-o", d / "model", "--config", config])
    return d


def call(argv, limit=TIME_LIMIT) -> int:
    """genossm.cli.main in a daemon thread: its exit status, or a failed test for a hang or a
    traceback (an exception that leaves main)."""
    result: list = []

    def target():
        try:
            result.append(main([str(a) for a in argv]))
        except BaseException as e:   # noqa: BLE001 - any escape is the failure reported
            result.append(e)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(limit)
    assert not thread.is_alive(), f"genossm {' '.join(map(str, argv))} hangs"
    if isinstance(result[0], BaseException):
        pytest.fail(f"genossm {' '.join(map(str, argv))} raised {result[0]!r}")
    return result[0]


def run_ok(argv):
    assert call([*argv, "-q"]) == 0, argv


def digest(directory: Path) -> dict[str, str]:
    """Every file under ``directory`` by relative path, with its md5: inputs never change."""
    return {str(p.relative_to(directory)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file() and not p.is_symlink()}


def leftovers(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if ".genossm-" in p.name]


def run_to_one_error_line(capfd, argv) -> str:
    """Run a command that must fail on its input; return its one error line."""
    capfd.readouterr()
    status = call([*argv, "-q"])
    err = capfd.readouterr().err.strip().splitlines()
    assert status == 2, (argv, err)
    assert len(err) == 1 and err[0].startswith("genossm: error: "), (argv, err)
    return err[0]


def commands(world: Path, out: Path) -> dict[str, list]:
    """One command line per stage, writing ``out`` (or ``out.vcf.gz`` for score)."""
    return {
        "tokenize": ["tokenize", world / "genome.fa", "-o", out],
        "train": ["train", world / "genome.zarr", "-o", out, "--config", world / "tiny.yaml",
                  "--max-steps", "1"],
        "evaluate": ["evaluate", world / "model", world / "genome.zarr", "-o", out,
                     "--markov-max-order", "2", "--max-windows", "1"],
        "score": ["score", world / "calls.vcf.gz", "--fasta", world / "genome.fa", "--model",
                  world / "model", "-o", out, "--window", "64"],
        "embed": ["embed", "--model", world / "model", "--fasta", world / "genome.fa", "--bed",
                  world / "regions.bed", "-o", out],
    }


OUTPUT_NAMES = {"tokenize": "out.zarr", "train": "model_out", "evaluate": "metrics.json",
                "score": "out.vcf.gz", "embed": "out.zarr"}


# --------------------------------------------------------------------------- 1. inputs


def test_an_output_that_is_an_input_is_refused_even_with_force(world, tmp_path, capfd):
    before = digest(world)
    link = tmp_path / "link.zarr"
    link.symlink_to(world / "genome.fa")
    chrom_map = tmp_path / "out.tsv"
    chrom_map.write_text("20\t20\n")
    def score(out, *more):
        return ["score", world / "calls.vcf.gz", "--fasta", world / "genome.fa", "--model",
                world / "model", "-o", out, "--window", "64", *more]
    cases = [
        ["tokenize", world / "genome.fa", "-o", world / "genome.fa"],
        ["tokenize", world / "genome.fa", "-o", world],                 # holds the input
        ["tokenize", world / "genome.fa", "-o", link],                  # a link to the input
        ["train", world / "genome.zarr", "-o", world / "genome.zarr", "--config",
         world / "tiny.yaml"],
        ["evaluate", world / "model", world / "genome.zarr", "-o", world / "model/config.json"],
        score(world / "calls.vcf.gz"),                                  # -o the input VCF
        score(tmp_path / "x.vcf.gz", "--table", world / "calls.vcf.gz"),
        score(tmp_path / "out.vcf.gz", "--chrom-map", chrom_map),       # the default table
        ["embed", "--model", world / "model", "--fasta", world / "genome.fa", "--bed",
         world / "regions.bed", "-o", world / "regions.bed"],
    ]
    for argv in cases:
        line = run_to_one_error_line(capfd, [*argv, "--force"])
        assert "input" in line, line
    assert digest(world) == before
    assert chrom_map.read_text() == "20\t20\n" and link.resolve() == world / "genome.fa"
    assert not leftovers(world) and not leftovers(tmp_path)


# --------------------------------------------------------------------------- 2. and 3. outputs


@pytest.mark.parametrize("stage", list(OUTPUT_NAMES))
def test_force_replaces_only_what_genossm_wrote(stage, world, tmp_path, capfd):
    out = tmp_path / OUTPUT_NAMES[stage]
    if out.suffix in (".json", ".gz"):
        out.write_text("a user's file\n")
    else:
        out.mkdir()
        (out / "notes.txt").write_text("a user's file\n")
    before = digest(tmp_path)
    line = run_to_one_error_line(capfd, [*commands(world, out)[stage], "--force"])
    assert "not a genossm" in line or "genossm wrote" in line, line
    assert digest(tmp_path) == before and not leftovers(tmp_path)


@pytest.mark.parametrize("stage", list(OUTPUT_NAMES))
def test_an_existing_output_is_refused_without_force_and_replaced_with_it(stage, world,
                                                                          tmp_path, capfd):
    out = tmp_path / OUTPUT_NAMES[stage]
    argv = commands(world, out)[stage]
    run_ok(argv)
    first = digest(tmp_path)
    assert "output exists" in run_to_one_error_line(capfd, argv)
    assert digest(tmp_path) == first
    run_ok([*argv, "--force"])
    assert not leftovers(tmp_path)


@pytest.mark.parametrize("stage", list(OUTPUT_NAMES))
def test_an_output_place_that_cannot_be_written_is_one_line(stage, world, capfd):
    out = Path("/proc/no-such-directory") / OUTPUT_NAMES[stage]   # unwritable, even by root
    assert "cannot write" in run_to_one_error_line(capfd, commands(world, out)[stage])


# --------------------------------------------------------------------------- 4. signals


@pytest.fixture(scope="module")
def large_fasta(tmp_path_factory):
    """~40 Mb of real sequence (the chr20 slice repeated), indexed: long enough to interrupt."""
    seq = fasta_records(CHR20)[0][1]
    path = tmp_path_factory.mktemp("large") / "large.fa"
    lines = "\n".join(seq[i:i + 80] for i in range(0, len(seq), 80)) + "\n"
    with open(path, "w") as fh:
        for i in range(20):
            fh.write(f">copy{i}\n{lines}")
    pysam.faidx(str(path))
    return path


def _interrupt(argv, out: Path, sig) -> subprocess.CompletedProcess:
    """Start genossm, wait for its temporary output, send ``sig``."""
    proc = subprocess.Popen([*GENOSSM, *map(str, argv), "-q"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + TIME_LIMIT
    while time.time() < deadline and not list(out.parent.glob(f".{out.name}.genossm-new.*")):
        time.sleep(0.01)
    assert proc.poll() is None, "finished before it could be interrupted"
    time.sleep(0.2)
    os.kill(proc.pid, sig)
    _, err = proc.communicate(timeout=TIME_LIMIT)
    return subprocess.CompletedProcess(argv, proc.returncode, "", err)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGKILL])
@pytest.mark.parametrize("stage", ["tokenize", "embed"])
def test_signals_remove_temporaries_and_keep_the_old_output(stage, sig, world, large_fasta,
                                                            tmp_path):
    out = tmp_path / "out.zarr"
    if stage == "tokenize":
        argv = ["tokenize", large_fasta, "-o", out]
    else:
        argv = ["embed", "--model", world / "model", "--fasta", large_fasta, "-o", out]
    small = ["tokenize", world / "genome.fa", "-o", out] if stage == "tokenize" else \
        commands(world, out)["embed"]
    run_ok(small)
    old = digest(out)
    done = _interrupt([*argv, "--force"], out, sig)
    if sig == signal.SIGKILL:
        assert done.returncode == -signal.SIGKILL
        left = leftovers(tmp_path)
        assert left and digest(out) == old
        if stage == "tokenize":       # a killed run's temporary is never taken for a store
            for tmp in left:
                with pytest.raises(InputError, match="incomplete"):
                    TokenStore(tmp)
        run_ok([*small, "--force"])     # the next run removes what the killed one left
    else:
        want = 130 if sig == signal.SIGINT else 128 + sig
        assert done.returncode == want, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert digest(out) == old
    assert not leftovers(tmp_path)


# --------------------------------------------------------------------------- 5. permissions


def test_outputs_get_the_umask_permissions(world, tmp_path):
    previous = os.umask(0o027)
    try:
        for stage, name in OUTPUT_NAMES.items():
            (tmp_path / stage).mkdir()
            run_ok(commands(world, tmp_path / stage / name)[stage])
    finally:
        os.umask(previous)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o640, p


# --------------------------------------------------------------------------- 6. usage


@pytest.mark.parametrize("argv, words", [
    (["tokenize", "IN.fa", "-o", "o.zarr", "--threads", "-2"], "--threads"),
    (["score", "IN.vcf"], "required"),
    (["embed", "--model", "M", "--fasta", "IN.fa", "-o", "o.zarr", "--layer", "x"], "--layer"),
    (["frobnicate"], "invalid choice"),
])
def test_usage_errors_are_one_line(argv, words, capfd):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capfd.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2
    assert len(err) == 1 and err[0].startswith("genossm: error: ") and words in err[0], err


def test_debug_is_taken_before_or_after_the_subcommand(world, capfd):
    for argv in (["--debug", "info", world / "nothing.zarr"],
                 ["info", world / "nothing.zarr", "--debug"]):
        with pytest.raises(Exception, match="not a token store"):
            main([str(a) for a in argv])


# --------------------------------------------------------------------------- 7. corruptions


def _flip(data: bytes, rng: random.Random, start: int = 0) -> bytes:
    """``data`` with one to three bytes changed (a bit flipped, a byte replaced, or cut
    short)."""
    out = bytearray(data)
    kind = rng.random()
    if kind < 0.1:
        return bytes(out[:rng.randrange(start, len(out))])
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(start, len(out))
        if kind < 0.6:
            out[i] ^= 1 << rng.randrange(8)
        else:
            out[i] = rng.randrange(256)
    return bytes(out)


def _fuzz(world: Path, tmp_path: Path, capfd, *, cases: int, seed: int, original: Path,
          argv_for, start: int = 0):
    """Corrupt ``original`` ``cases`` times; run ``argv_for(corrupt copy, output)``; each run
    ends in exit 0 or in exit 2 with one error line, within the time limit, with no traceback,
    no leftover temporaries and no input changed."""
    rng = random.Random(seed)
    data = original.read_bytes() if original.is_file() else None
    before = digest(world)
    statuses = []
    for case in range(cases):
        work = tmp_path / f"case{case}"
        work.mkdir()
        corrupt = work / original.name
        if data is None:
            shutil.copytree(original, corrupt)
        else:
            corrupt.write_bytes(_flip(data, rng, start))
        argv = argv_for(corrupt, work / "out", rng)
        inputs = digest(work)
        capfd.readouterr()
        status = call([*argv, "-q"])
        err = capfd.readouterr().err.strip().splitlines()
        statuses.append(status)
        assert status in (0, 2), (case, argv, err)
        if status == 2:
            assert len(err) == 1 and err[0].startswith("genossm: error: "), (case, err)
        assert not [e for e in err if "Traceback" in e], (case, err)
        assert not leftovers(work), case
        assert {k: v for k, v in digest(work).items() if k in inputs} == inputs, case
        shutil.rmtree(work)
    assert digest(world) == before
    assert 2 in statuses
    return statuses


def test_corrupt_fasta_gzip_fasta_and_fastq_end_in_a_result_or_one_line(world, tmp_path, capfd):
    gz = tmp_path / "genome.fa.gz"
    gz.write_bytes(gzip.compress((world / "genome.fa").read_bytes()[:60_000]))
    small = tmp_path / "small.fa"
    small.write_bytes((world / "genome.fa").read_bytes()[:3_000])

    def tokenize(path, out, rng):
        return ["tokenize", path, "-o", Path(str(out) + ".zarr")]
    _fuzz(world, tmp_path, capfd, cases=80, seed=1, original=gz, argv_for=tokenize)
    _fuzz(world, tmp_path, capfd, cases=60, seed=2, original=small, argv_for=tokenize)
    _fuzz(world, tmp_path, capfd, cases=60, seed=3, original=world / "reads.fq",
          argv_for=tokenize)


def test_corrupt_bam_ends_in_a_result_or_one_line(world, tmp_path, capfd):
    def tokenize(path, out, rng):
        return ["tokenize", path, "-o", Path(str(out) + ".zarr")]
    _fuzz(world, tmp_path, capfd, cases=80, seed=4, original=world / "ex1.bam",
          argv_for=tokenize)


def test_corrupt_vcf_and_bed_end_in_a_result_or_one_line(world, tmp_path, capfd):
    def score(path, out, rng):
        return ["score", path, "--fasta", world / "genome.fa", "--model", world / "model",
                "-o", Path(str(out) + ".vcf.gz"), "--window", "32"]

    def embed(path, out, rng):
        return ["embed", "--model", world / "model", "--fasta", world / "genome.fa", "--bed",
                path, "-o", Path(str(out) + ".zarr")]
    _fuzz(world, tmp_path, capfd, cases=80, seed=5, original=world / "calls.vcf",
          argv_for=score)
    _fuzz(world, tmp_path, capfd, cases=40, seed=6, original=world / "regions.bed",
          argv_for=embed)


def test_corrupt_model_files_and_store_chunks_end_in_a_result_or_one_line(world, tmp_path,
                                                                          capfd):
    def with_corrupt(name):
        """A model directory whose file ``name`` is corrupted (the copy is the fuzzed path)."""
        def argv(path, out, rng):
            model = path.parent / "model"
            shutil.copytree(world / "model", model)
            shutil.move(path, model / name)
            return ["embed", "--model", model, "--fasta", world / "genome.fa", "--bed",
                    world / "regions.bed", "-o", Path(str(out) + ".zarr")]
        return argv
    for seed, name, cases in ((7, "config.json", 40), (8, "model.safetensors", 60)):
        _fuzz(world, tmp_path, capfd, cases=cases, seed=seed, original=world / "model" / name,
              argv_for=with_corrupt(name))

    chunk = next((world / "genome.zarr" / "contigs").glob("*/codes/c/0"))

    def evaluate(path, out, rng):
        store = path.parent / "genome.zarr"
        shutil.copytree(world / "genome.zarr", store)
        shutil.move(path, store / chunk.relative_to(world / "genome.zarr"))
        return ["evaluate", world / "model", store, "-o", Path(str(out) + ".json"),
                "--markov-max-order", "2", "--max-windows", "1"]
    _fuzz(world, tmp_path, capfd, cases=40, seed=9, original=chunk, argv_for=evaluate)
