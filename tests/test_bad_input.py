"""Every bad input of the tokenize stage: one line naming the file and the place, a non-zero
exit, no traceback and no store left behind."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time

import pytest

from genossm.cli import main
from genossm.store import TokenStore
from helpers import CHR20, EX1_BAM, LAMBDA, ROOT, fasta_records

GENOSSM = [sys.executable, "-m", "genossm"]


def run_bad(tmp_path, capsys, *args):
    """Run tokenize expecting failure; return the error line."""
    out = tmp_path / "out.zarr"
    capsys.readouterr()
    assert main(["tokenize", *map(str, args), "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("genossm: error: ")
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".genossm-" in p.name]
    return err[0]


@pytest.fixture(scope="module")
def lambda_seq():
    return fasta_records(LAMBDA)[0][1]


def test_empty_file(tmp_path, capsys):
    p = tmp_path / "empty.fa"
    p.write_bytes(b"")
    assert run_bad(tmp_path, capsys, p) == f"genossm: error: {p}: empty file"


def test_empty_gzip(tmp_path, capsys):
    p = tmp_path / "empty.fa.gz"
    p.write_bytes(gzip.compress(b""))
    assert f"{p}: empty file" in run_bad(tmp_path, capsys, p)


def test_only_blank_lines(tmp_path, capsys):
    p = tmp_path / "blank.fa"
    p.write_bytes(b"\n\n\r\n")
    assert "no FASTA records" in run_bad(tmp_path, capsys, p)


def test_text_before_first_header(tmp_path, capsys, lambda_seq):
    p = tmp_path / "x.fa"
    p.write_text(f"\n\nACGT\n>r1\n{lambda_seq[:50]}\n")
    err = run_bad(tmp_path, capsys, p)
    assert f"{p}: line 3: text before the first '>' header" in err


def test_duplicate_contig_names_in_one_file(tmp_path, capsys, lambda_seq):
    p = tmp_path / "dup.fa"
    p.write_text(f">a\n{lambda_seq[:70]}\n{lambda_seq[70:100]}\n>b\nACGT\n>a desc\nACGT\n")
    err = run_bad(tmp_path, capsys, p)
    assert f"{p}: record 'a' (line 6): duplicate contig name 'a'" in err
    assert "first seen at" in err and "(line 1)" in err


def test_duplicate_contig_names_across_inputs(tmp_path, capsys):
    err = run_bad(tmp_path, capsys, LAMBDA, LAMBDA)
    assert "duplicate contig name 'gi|9626243|ref|NC_001416.1|'" in err
    assert str(LAMBDA) in err


@pytest.mark.parametrize("bad,shown", [("7", "7"), ("-", "-"), ("*", "*"), (".", "."),
                                       ("\x01", "\\x01"), ("\t", "\\x09"), ("U", "U")])
def test_invalid_characters(tmp_path, capsys, lambda_seq, bad, shown):
    line = lambda_seq[100:160]
    p = tmp_path / "bad.fa"
    p.write_text(f">first\n{lambda_seq[:60]}\n>second\n{line}\n{line[:11]}{bad}{line[12:]}\n")
    err = run_bad(tmp_path, capsys, p)
    assert err == (f"genossm: error: {p}: record 'second', line 5, column 12: "
                   f"invalid character '{shown}' in sequence")


def test_greater_than_inside_a_line(tmp_path, capsys, lambda_seq):
    p = tmp_path / "gt.fa"
    p.write_text(f">a\n{lambda_seq[:60]}\n{lambda_seq[60:70]}>{lambda_seq[71:120]}\n")
    err = run_bad(tmp_path, capsys, p)
    assert err.endswith(f"{p}: record 'a', line 3, column 11: invalid character '>' in sequence")


def test_header_without_name(tmp_path, capsys, lambda_seq):
    p = tmp_path / "noname.fa"
    p.write_text(f">a\n{lambda_seq[:60]}\n> \n{lambda_seq[:60]}\n")
    assert run_bad(tmp_path, capsys, p).endswith(f"{p}: line 3: header with no name")


def test_truncated_gzip(tmp_path, capsys):
    p = tmp_path / "trunc.fa.gz"
    data = LAMBDA.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    err = run_bad(tmp_path, capsys, p)
    assert f"{p}: after " in err and "truncated or corrupt gzip data" in err


def test_corrupt_deflate_data_ends_in_one_line_never_a_hang(tmp_path, capsys):
    """One flipped bit at many places of a gzip FASTA: the decompression thread's failure,
    whatever its type (ISA-L's IsalError is not an OSError), reaches the reader; each run ends
    in the right store or one error line, within a time limit."""
    import hashlib
    import random
    import threading

    data = CHR20.read_bytes()
    want = hashlib.md5(fasta_records(CHR20)[0][1].upper().encode()).hexdigest()
    rng = random.Random(11)
    outcomes = set()
    for case in range(16):
        corrupt = bytearray(data)   # past what format sniffing reads: the reader thread's
        corrupt[rng.randrange(len(data) // 2, len(data))] ^= 1 << rng.randrange(8)
        path = tmp_path / f"c{case}.fa.gz"
        path.write_bytes(bytes(corrupt))
        out = tmp_path / f"c{case}.zarr"
        capsys.readouterr()
        result: list[int] = []
        run = threading.Thread(daemon=True, target=lambda a, r: r.append(main(a)),
                               args=(["tokenize", str(path), "-o", str(out), "-q"], result))
        run.start()
        run.join(60)
        assert not run.is_alive(), f"tokenize hangs on {path}"
        rc = result[0]
        err = capsys.readouterr().err.strip().splitlines()
        outcomes.add(rc)
        if rc == 0:
            assert TokenStore(out).contig(TokenStore(out).contig_names[0]).md5 == want
        else:
            assert rc == 2 and len(err) == 1 and err[0].startswith(f"genossm: error: {path}")
            assert not out.exists()
    assert 2 in outcomes
    assert not [p for p in tmp_path.iterdir() if ".genossm-" in p.name]


def test_truncated_bgzf_reference(tmp_path, capsys):
    p = tmp_path / "trunc.fa.gz"
    data = CHR20.read_bytes()
    p.write_bytes(data[: len(data) // 3])
    assert "truncated or corrupt gzip data" in run_bad(tmp_path, capsys, p)


def test_truncated_bam(tmp_path, capsys):
    p = tmp_path / "trunc.bam"
    data = EX1_BAM.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    err = run_bad(tmp_path, capsys, p)
    assert err == (f"genossm: error: {p}: cannot open as BAM "
                   "(no BGZF EOF marker; file may be truncated)")


def test_region_on_unindexed_bam(tmp_path, capsys):
    bam = tmp_path / "ex1.bam"
    bam.write_bytes(EX1_BAM.read_bytes())
    err = run_bad(tmp_path, capsys, bam, "--region", "chr1:100-200")
    assert err == (f"genossm: error: {bam}: --region chr1:100-200 needs an index "
                   "(.bai/.csi/.crai); create one with samtools index")


def test_cram_without_reference(tmp_path, capsys):
    import pysam

    ref = tmp_path / "ex1.fa"
    ref.write_bytes((ROOT / "config/data/ex1.fa").read_bytes())
    cram = tmp_path / "ex1.cram"
    pysam.view("-C", "-T", str(ref), "-o", str(cram), str(EX1_BAM), catch_stdout=False)
    assert f"{cram}: CRAM input needs --reference FASTA" in run_bad(tmp_path, capsys, cram)


def test_missing_input(tmp_path, capsys):
    assert "nothere.fa: no such file" in run_bad(tmp_path, capsys, tmp_path / "nothere.fa")


def test_bad_flag_names(tmp_path, capsys):
    assert "unknown flag name 'NOPE'" in run_bad(tmp_path, capsys, EX1_BAM,
                                                   "--exclude-flags", "DUP,NOPE")


def test_existing_output_needs_force(tmp_path, capsys):
    out = tmp_path / "out.zarr"
    assert main(["tokenize", str(LAMBDA), "-o", str(out), "-q"]) == 0
    before = sorted(p.name for p in out.rglob("*"))
    capsys.readouterr()
    assert main(["tokenize", str(CHR20), "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"genossm: error: {out}: output exists; use --force to replace it"
    assert sorted(p.name for p in out.rglob("*")) == before
    assert main(["tokenize", str(CHR20), "-o", str(out), "-q", "--force"]) == 0
    assert TokenStore(out).contig_names == ["20"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_failed_force_keeps_the_old_store(tmp_path, capsys):
    out = tmp_path / "out.zarr"
    assert main(["tokenize", str(LAMBDA), "-o", str(out), "-q"]) == 0
    bad = tmp_path / "bad.fa"
    bad.write_text(">x\nAC-GT\n")
    assert main(["tokenize", str(bad), "-o", str(out), "-q", "--force"]) == 2
    assert TokenStore(out).contig_names == ["gi|9626243|ref|NC_001416.1|"]


def test_command_line_error_has_no_traceback(tmp_path):
    bad = tmp_path / "bad.fa"
    bad.write_text(">x\nACGT\nAC*T\n")
    proc = subprocess.run([*GENOSSM, "tokenize", str(bad), "-o", str(tmp_path / "o.zarr")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr == (f"genossm: error: {bad}: record 'x', line 3, column 3: "
                           "invalid character '*' in sequence\n")


@pytest.fixture(scope="module")
def large_fasta(tmp_path_factory):
    """~80 Mb of real sequence (the chr20 slice repeated), large enough to interrupt."""
    seq = fasta_records(CHR20)[0][1]
    path = tmp_path_factory.mktemp("large") / "large.fa"
    lines = "\n".join(seq[i:i + 80] for i in range(0, len(seq), 80)) + "\n"
    with open(path, "w") as fh:
        for i in range(40):
            fh.write(f">copy{i}\n")
            fh.write(lines)
    return path


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_run_leaves_no_complete_store(tmp_path, large_fasta, sig):
    out = tmp_path / "out.zarr"
    proc = subprocess.Popen([*GENOSSM, "tokenize", str(large_fasta), "-o", str(out), "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    started = ".out.zarr.genossm-new.*/contigs/c000001"
    while time.time() < deadline and not list(tmp_path.glob(started)):
        time.sleep(0.01)
    assert proc.poll() is None, "tokenize finished before it could be interrupted"
    os.kill(proc.pid, sig)
    _, err = proc.communicate(timeout=60)
    assert not out.exists()
    leftovers = list(tmp_path.glob(".out.zarr.genossm-*"))
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and err.strip().endswith("genossm: interrupted")
        assert not leftovers
    else:
        assert proc.returncode == -signal.SIGKILL
        assert leftovers
        for tmp in leftovers:  # a killed run's temporary store is never taken for a store
            with pytest.raises(Exception, match="incomplete or foreign store"):
                TokenStore(tmp)
        # the next run to write the same output recognises the dead run's temporary and
        # removes it
        assert main(["tokenize", str(LAMBDA), "-o", str(out), "-q"]) == 0
        assert not list(tmp_path.glob(".out.zarr.genossm-*"))
