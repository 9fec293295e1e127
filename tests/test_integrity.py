"""Nothing lost, nothing hangs (issue 11): damaged stores, model directories and training states
end in one line naming the file; --resume continues only the run it was given; the output
policy for token stores and model directories; errors name the file or option they come from."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr

from genossm import alphabet
from genossm.cli import main
from genossm.errors import InputError
from genossm.store import TokenStore
from genossm.store import layout as store_layout
from helpers import LAMBDA, fasta_records, write_fasta

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"d_model": 32, "n_layer": 2, "d_state": 8, "headdim": 16, "chunk_size": 32}
CODES = "contigs/c000000/codes"
CHUNK = 4096


def tokenize(source: Path, out: Path, *extra: str) -> Path:
    assert main(["tokenize", str(source), "-o", str(out), "-q", "--chunk-size", str(CHUNK),
                 *extra]) == 0
    return out


def error_line(capsys) -> str:
    """The command's stderr, which must be one line."""
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def copy(src: Path, dst: Path) -> Path:
    subprocess.run(["cp", "-r", str(src), str(dst)], check=True)
    return dst


@pytest.fixture(scope="module")
def lam(tmp_path_factory) -> Path:
    """The lambda genome (48,502 bases) in chunks of 4,096: 12 chunk files of codes."""
    return tokenize(LAMBDA, tmp_path_factory.mktemp("integrity") / "lambda.zarr")


@pytest.fixture(scope="module")
def train_yaml(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "train.yaml"
    path.write_text(yaml.safe_dump({"model": TINY, "seq_len": 128, "batch_size": 2,
                                    "max_steps": 2, "eval_every": 0, "log_every": 1,
                                    "checkpoint_every": 1, "warmup_steps": 1,
                                    "split": {"val_fraction": 0.1}}))
    return path


@pytest.fixture(scope="module")
def model(lam, train_yaml, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("model") / "m"
    assert main(["train", str(lam), "-o", str(out), "--config", str(train_yaml), "-q",
                 "--device", "cpu"]) == 0
    return out


# --------------------------------------------------------------------------- token stores


def test_every_codes_chunk_is_written_and_the_fill_value_is_no_code(tmp_path):
    """All-N chunks are written too, and a chunk that is not there reads as no base."""
    seq = "N" * (3 * CHUNK) + "ACGT" * CHUNK + "N" * 100
    out = tokenize(write_fasta(tmp_path / "n.fa", [("n", seq)]), tmp_path / "n.zarr")
    meta = json.loads((out / CODES / "zarr.json").read_text())
    assert meta["fill_value"] == alphabet.INVALID
    assert sorted(os.listdir(out / CODES / "c"), key=int) == [str(i) for i in range(8)]
    assert alphabet.decode(TokenStore(out).codes("n")) == seq


def test_a_missing_chunk_is_an_error_not_n(lam, tmp_path, capsys):
    store = copy(lam, tmp_path / "s.zarr")
    (store / CODES / "c" / "3").unlink()
    contig = TokenStore(store).contig_names[0]
    assert TokenStore(store).codes(contig, 0, 3 * CHUNK).size == 3 * CHUNK   # chunks 0-2 read
    with pytest.raises(InputError) as caught:
        TokenStore(store).codes(contig, 3 * CHUNK - 5, 3 * CHUNK + 5)
    assert str(caught.value) == (f"{store}: contig {contig}: chunk file {CODES}/c/3 is missing; "
                                 "the store is damaged")
    assert main(["info", str(store)]) == 2
    assert error_line(capsys) == f"genossm: error: {caught.value}"


def test_a_store_with_fill_value_n_still_reads(tmp_path, monkeypatch, capsys):
    """Stores written before the fill value changed (N): read as before, a missing chunk
    included (it reads as N: nothing tells it from N)."""
    monkeypatch.setattr(store_layout, "CODES_FILL", alphabet.N)
    out = tokenize(LAMBDA, tmp_path / "old.zarr")
    monkeypatch.undo()
    assert json.loads((out / CODES / "zarr.json").read_text())["fill_value"] == alphabet.N
    (out / CODES / "c" / "1").unlink()
    store = TokenStore(out)
    codes = store.codes(store.contig_names[0])
    want = alphabet.encode(fasta_records(LAMBDA)[0][1])
    assert (codes[CHUNK:2 * CHUNK] == alphabet.N).all()
    assert np.array_equal(codes[:CHUNK], want[:CHUNK])
    assert main(["info", str(out)]) == 0


@pytest.mark.parametrize("damage", ["cut", "garbage", "empty"])
def test_a_damaged_chunk_is_one_line_naming_it(lam, tmp_path, capsys, damage):
    """A chunk file cut short made Blosc read past its end: a segmentation fault. Now every
    reader (run in a child process, so a crash fails the test rather than ends it) and
    `genossm info` give one line that names the store, the contig and the chunk file."""
    store = copy(lam, tmp_path / "s.zarr")
    chunk = store / CODES / "c" / "2"
    data = chunk.read_bytes()
    chunk.write_bytes({"cut": data[:len(data) // 2], "garbage": os.urandom(len(data)),
                       "empty": b""}[damage])
    read = ("from genossm.store import TokenStore\nfrom genossm.errors import InputError\n"
            f"s = TokenStore({str(store)!r})\n"
            "try:\n    s.codes(s.contig_names[0])\nexcept InputError as e:\n    print(e)\n")
    proc = subprocess.run([sys.executable, "-c", read], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    contig = TokenStore(store).contig_names[0]
    prefix = f"{store}: contig {contig}: chunk file {CODES}/c/2 is corrupt ("
    assert proc.stdout.startswith(prefix), proc.stdout
    assert main(["info", str(store)]) == 2
    assert error_line(capsys).startswith(f"genossm: error: {prefix}")


def test_a_chunk_that_decodes_to_no_base_code(lam, tmp_path):
    store = copy(lam, tmp_path / "s.zarr")
    array = zarr.open_array(str(store / CODES), mode="r+")
    array[CHUNK + 7] = 7
    contig = TokenStore(store).contig_names[0]
    with pytest.raises(InputError) as caught:
        TokenStore(store).codes(contig)
    assert str(caught.value) == (f"{store}: contig {contig}: chunk file {CODES}/c/1 holds 7, "
                                 "which is no base code; the store is damaged")


@pytest.mark.parametrize("node", ["", "contigs/c000000", CODES, "contigs/c000000/softmask"])
def test_damaged_store_metadata_is_one_line_naming_it(lam, tmp_path, capsys, node):
    store = copy(lam, tmp_path / "s.zarr")
    meta = store / node / "zarr.json"
    meta.write_bytes(meta.read_bytes()[:40])
    assert main(["info", str(store)]) == 2
    assert error_line(capsys).startswith(f"genossm: error: {meta}: ")


def test_a_damaged_store_stops_train_before_it_starts(lam, train_yaml, tmp_path, capsys):
    store = copy(lam, tmp_path / "s.zarr")
    (store / CODES / "c" / "5").unlink()
    assert main(["train", str(store), "-o", str(tmp_path / "m"), "--config", str(train_yaml),
                 "-q"]) == 2
    assert error_line(capsys).endswith(f"chunk file {CODES}/c/5 is missing; the store is "
                                       "damaged")
    assert not (tmp_path / "m").exists()


def test_damage_met_in_a_dataloader_worker_is_one_line(lam, train_yaml, tmp_path, capsys):
    """Damage the file check cannot see (chunks that decode, to no base code) is met by the
    DataLoader workers; their error reaches the command line as the same one line."""
    store = copy(lam, tmp_path / "s.zarr")
    array = zarr.open_array(str(store / CODES), mode="r+")
    array[:] = 6
    config = tmp_path / "workers.yaml"
    config.write_text(yaml.safe_dump({**yaml.safe_load(train_yaml.read_text()),
                                      "num_workers": 1}))
    assert main(["train", str(store), "-o", str(tmp_path / "m"), "--config", str(config),
                 "-q", "--device", "cpu"]) == 2
    err = error_line(capsys)
    assert err.startswith(f"genossm: error: {store}: contig ") and "which is no base code" in err


# --------------------------------------------------------------------------- output policy


def test_tokenize_claims_its_output(tmp_path, capsys):
    fasta = write_fasta(tmp_path / "a.fa", [("a", "ACGT" * 10)])
    assert main(["tokenize", str(fasta), "-o", str(fasta), "--force", "-q"]) == 2
    assert "is an input of this run" in error_line(capsys)
    assert fasta.read_text().startswith(">a")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("mine")
    assert main(["tokenize", str(fasta), "-o", str(junk), "--force", "-q"]) == 2
    assert error_line(capsys) == (f"genossm: error: {junk}: exists and is a directory of 1 "
                                  "entry, not a genossm token store; --force replaces only "
                                  "what genossm wrote")
    embeddings = tmp_path / "e.zarr"              # an embeddings store is not a token store
    embeddings.mkdir()
    (embeddings / "zarr.json").write_text(json.dumps(
        {"zarr_format": 3, "node_type": "group",
         "attributes": {"genossm": {"format": 1, "kind": "embeddings", "alphabet": "ACGTN"}}}))
    assert main(["tokenize", str(fasta), "-o", str(embeddings), "--force", "-q"]) == 2
    assert "not a genossm token store" in error_line(capsys)
    store = tokenize(fasta, tmp_path / "a.zarr")
    assert main(["tokenize", str(LAMBDA), "-o", str(store), "--force", "-q"]) == 0
    assert TokenStore(store).contig_names == ["gi|9626243|ref|NC_001416.1|"]


def test_train_claims_its_output(lam, model, train_yaml, tmp_path, capsys):
    args = ["--config", str(train_yaml), "-q", "--device", "cpu"]
    for output in (lam, train_yaml):
        assert main(["train", str(lam), "-o", str(output), "--force", *args]) == 2
        assert error_line(capsys).startswith(f"genossm: error: {output}: is an input of this "
                                             "run")
    assert main(["train", str(lam), "-o", str(model), *args]) == 2
    assert error_line(capsys) == (f"genossm: error: {model}: output exists; use --resume to "
                                  "continue it or --force to replace it")
    replaced = copy(model, tmp_path / "m")
    (replaced / "metrics.jsonl").write_text("")
    assert main(["train", str(lam), "-o", str(replaced), "--force", "--max-steps", "1",
                 *args]) == 0
    assert json.loads((replaced / "config.json").read_text())["training"]["steps"] == 1
    assert len((replaced / "metrics.jsonl").read_text().splitlines()) == 1


# --------------------------------------------------------------------------- model directories


def _damage(path: Path, how: str) -> None:
    """Cut the file in half, or overwrite it with as many random bytes (which fail torch's
    unpickler with UnpicklingError, IndexError, KeyError, ... depending on the bytes)."""
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2] if how == "cut" else os.urandom(len(data)))


@pytest.mark.parametrize("how", ["cut", "garbage"])
@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_damaged_model_files_are_one_line_naming_them(lam, model, tmp_path, capsys, name, how):
    damaged = copy(model, tmp_path / "m")
    _damage(damaged / name, how)
    fasta = write_fasta(tmp_path / "a.fa", [("a", "ACGT" * 50)])
    commands = [["evaluate", str(damaged), str(lam), "-o", str(tmp_path / "e.json")],
                ["embed", "--model", str(damaged), "--fasta", str(fasta), "-o",
                 str(tmp_path / "e.zarr")],
                ["train", str(lam), "-o", str(damaged), "--resume", "--max-steps", "3"]]
    for command in commands:
        assert main([*command, "-q", "--device", "cpu"]) == 2, command
        assert error_line(capsys).startswith(f"genossm: error: {damaged / name}: "), command
    assert not (tmp_path / "e.json").exists() and not (tmp_path / "e.zarr").exists()


@pytest.mark.parametrize("how", ["cut", "garbage"])
def test_a_damaged_training_state_is_one_line_naming_it(lam, model, tmp_path, capsys, how):
    damaged = copy(model, tmp_path / "m")
    _damage(damaged / "train_state.pt", how)
    assert main(["train", str(lam), "-o", str(damaged), "--resume", "-q", "--device",
                 "cpu"]) == 2
    assert re.fullmatch(rf"genossm: error: {re.escape(str(damaged))}/train_state.pt: not a "
                        r"whole training state; cut short or corrupt \(\w+\)",
                        error_line(capsys))


# --------------------------------------------------------------------------- --resume


def test_resume_refuses_what_it_would_not_continue(lam, model, train_yaml, tmp_path, capsys):
    base = ["-q", "--device", "cpu", "--resume"]
    missing = tmp_path / "nowhere"
    assert main(["train", str(lam), "-o", str(missing), *base]) == 2
    assert error_line(capsys) == (f"genossm: error: nothing to resume in {missing}; run "
                                  "without --resume to start")
    assert not missing.exists()
    no_state = copy(model, tmp_path / "weights_only")
    (no_state / "train_state.pt").unlink()
    assert main(["train", str(lam), "-o", str(no_state), *base]) == 2
    assert "nothing to resume in" in error_line(capsys)

    bigger = tmp_path / "bigger.yaml"
    cfg = yaml.safe_load(train_yaml.read_text())
    bigger.write_text(yaml.safe_dump({**cfg, "model": {**TINY, "d_model": 64}, "lr": 0.01,
                                      "max_steps": 5}))
    assert main(["train", str(lam), "-o", str(model), "--config", str(bigger), *base]) == 2
    assert error_line(capsys) == (
        f"genossm: error: {bigger}: cannot resume {model}: changes its model.d_model 32 -> 64, "
        "lr 0.002 -> 0.01; --resume may change only the run's length, time budget, logging, "
        "precision and how the model runs")
    assert main(["train", str(lam), "-o", str(model), "--seq-len", "64", *base]) == 2
    assert error_line(capsys) == (
        f"genossm: error: --seq-len: cannot resume {model}: changes its seq_len 128 -> 64; "
        "--resume may change only the run's length, time budget, logging, precision and how "
        "the model runs")

    other = tokenize(write_fasta(tmp_path / "o.fa", [("o", "ACGT" * 500)]), tmp_path / "o.zarr")
    assert main(["train", str(lam), str(other), "-o", str(model), *base]) == 2
    assert error_line(capsys) == (f"genossm: error: {model}: cannot resume: it was trained on "
                                  f"{lam} ({other} not among them); give the same stores in "
                                  "the same order")
    assert main(["train", str(other), "-o", str(model), *base]) == 2
    assert f"({other} not among them; {lam} not given)" in error_line(capsys)


def test_resume_takes_the_same_store_by_another_path_but_not_a_changed_one(
        lam, model, tmp_path, capsys, monkeypatch):
    resumed = copy(model, tmp_path / "m")
    monkeypatch.chdir(lam.parent)
    assert main(["train", "lambda.zarr", "-o", str(resumed), "--resume", "--max-steps", "3",
                 "-q", "--device", "cpu"]) == 0
    assert json.loads((resumed / "config.json").read_text())["training"]["steps"] == 3
    # the same path, but the store tokenized again from other sequence
    store = copy(lam, tmp_path / "lambda.zarr")
    again = copy(model, tmp_path / "again")
    config = json.loads((again / "config.json").read_text())
    config["training"]["stores"] = [str(store)]
    (again / "config.json").write_text(json.dumps(config))
    seq = fasta_records(LAMBDA)[0][1][:30_000]
    tokenize(write_fasta(tmp_path / "short.fa", [(TokenStore(lam).contig_names[0], seq)]),
             store, "--force")
    assert main(["train", str(store), "-o", str(again), "--resume", "--max-steps", "3", "-q",
                 "--device", "cpu"]) == 2
    assert error_line(capsys) == (f"genossm: error: {again}: cannot resume: the stores' contigs "
                                  "are not those it was trained on (the train/validation split "
                                  "differs); was a store tokenized again?")


# --------------------------------------------------------------------------- where errors come from


def test_errors_name_the_option_or_the_file(lam, train_yaml, tmp_path, capsys):
    out = str(tmp_path / "m")
    assert main(["train", str(lam), "-o", out, "--config", str(train_yaml), "--seq-len",
                 "-5"]) == 2
    assert error_line(capsys) == "genossm: error: --seq-len: must be a positive integer, got -5"
    bad = tmp_path / "bad.yaml"
    bad.write_text("seq_len: -5\n")
    assert main(["train", str(lam), "-o", out, "--config", str(bad)]) == 2
    assert error_line(capsys) == f"genossm: error: {bad}: seq_len must be a positive integer, " \
                                 "got -5"
    assert main(["train", str(lam), "-o", out, "--config", str(bad), "--seq-len", "64", "-q",
                 "--max-steps", "1", "--device", "cpu"]) == 0      # the option overrides it
    out = str(tmp_path / "m2")
    warm = tmp_path / "warm.yaml"
    warm.write_text("seq_len: 1024\nseq_len_start: 512\n")
    assert main(["train", str(lam), "-o", out, "--config", str(warm), "--seq-len", "256"]) == 2
    assert error_line(capsys) == (f"genossm: error: {warm}: seq_len_start must be in "
                                  "0..seq_len (with --seq-len)")
    split = tmp_path / "split.yaml"
    split.write_text(yaml.safe_dump({**yaml.safe_load(train_yaml.read_text()),
                                     "split": {"val_contigs": ["chrX"]}}))
    assert main(["train", str(lam), "-o", out, "--config", str(split), "-q"]) == 2
    assert error_line(capsys) == (f"genossm: error: {split}: split.val_contigs: chrX not in "
                                  "any store")
    assert main(["train", str(lam), "-o", out, "--config", str(train_yaml), "--seq-len",
                 "100000", "-q"]) == 2
    assert error_line(capsys) == ("genossm: error: --seq-len: no training interval is at least "
                                  "seq_len (100000) bases long and the stores hold no reads")
    assert not Path(out).exists()
