"""Every bad input of the tokenize stage: one line naming the file and the place, a non-zero
exit, no traceback and no store left behind."""

from __future__ import annotations

import gzip
import re
import subprocess
import sys
import threading
import zlib

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


def run_in_thread(args, limit=60):
    """main(args) in a daemon thread: its exit status, or a failure if it does not end within
    ``limit`` seconds."""
    result: list[int] = []
    run = threading.Thread(daemon=True, target=lambda: result.append(main(args)))
    run.start()
    run.join(limit)
    assert not run.is_alive(), f"genossm {' '.join(args)} hangs"
    return result[0]


def run_process(*args):
    """genossm in a child process (stderr as the user sees it, htslib's included)."""
    return subprocess.run([*GENOSSM, *map(str, args)], capture_output=True, text=True,
                          timeout=120)


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


def test_headers_without_any_sequence(tmp_path, capsys):
    """Records with names but no sequence at all: an error, not an empty store (a file where
    only some records are empty is a warning per record: test_tokenize.py)."""
    p = tmp_path / "headers.fa"
    p.write_text(">a\n>b description\n\n")
    err = run_bad(tmp_path, capsys, p)
    assert err == f"genossm: error: {p}: no sequence in any record (2 records, headers only)"
    proc = run_process("tokenize", p, "-o", tmp_path / "o.zarr")   # and no warning per record
    assert proc.returncode == 2 and proc.stderr == err + "\n"
    assert not (tmp_path / "o.zarr").exists()


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


def text_before_the_cut(data: bytes) -> bytes:
    """What zlib decompresses of the gzip members of ``data``, a cut gzip file."""
    text, d = b"", zlib.decompressobj(31)
    while data:
        text += d.decompress(data)
        if not d.eof:
            break
        data, d = d.unused_data, zlib.decompressobj(31)
    return text


@pytest.mark.parametrize("path,keep", [(LAMBDA, 1 / 2), (LAMBDA, 1 / 50), (CHR20, 1 / 3)],
                         ids=["gzip-half", "gzip-start", "bgzf"])
def test_truncated_gzip(tmp_path, capsys, path, keep):
    """Cut inside the first (for the gzip, the only) member, the reader has nothing to show
    for it: the message names the compressed byte where the file ends and the text's line."""
    p = tmp_path / "trunc.fa.gz"
    data = path.read_bytes()
    cut = data[: int(len(data) * keep)]
    p.write_bytes(cut)
    line = text_before_the_cut(cut).count(b"\n") + 1
    assert run_bad(tmp_path, capsys, p) == (
        f"genossm: error: {p}: compressed byte {len(cut):,} (end of file), line {line:,}: "
        "truncated gzip data: the file ends inside a compressed block")


def test_gzip_checksum_failure_names_the_block(tmp_path, capsys):
    text = gzip.decompress(LAMBDA.read_bytes())
    data = bytearray(gzip.compress(text))
    data[-8] ^= 1   # the CRC32 in the trailer
    p = tmp_path / "crc.fa.gz"
    p.write_bytes(bytes(data))
    lines = text.count(b"\n") + 1
    assert run_bad(tmp_path, capsys, p) == (
        f"genossm: error: {p}: compressed bytes 1-{len(data) - 4:,}, lines 1-{lines:,}: "
        "corrupt gzip data: a block fails its checksum (incorrect data check)")


def test_corrupt_gzip_that_decodes_to_bad_text_blames_the_gzip(tmp_path, capsys):
    """Damaged deflate data can decode to text that fails to parse before the member's
    checksum is read: the error is the compression's, not an 'invalid character'."""
    seq = fasta_records(LAMBDA)[0][1]
    text = (">a\n" + "\n".join(seq[i:i + 60] for i in range(0, len(seq), 60)) + "\n").encode()
    data = gzip.compress(text, compresslevel=0)   # stored blocks: a flip changes one letter
    flip = bytearray(data)
    flip[len(data) // 2] = ord("!")
    p = tmp_path / "flip.fa.gz"
    p.write_bytes(bytes(flip))
    err = run_bad(tmp_path, capsys, p)
    assert "invalid character" not in err
    assert err.endswith("corrupt gzip data: a block fails its checksum (incorrect data check)")


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


def test_truncated_bam(tmp_path, capsys):
    p = tmp_path / "trunc.bam"
    data = EX1_BAM.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    err = run_bad(tmp_path, capsys, p)
    assert err == (f"genossm: error: {p}: compressed byte {len(data) // 2:,} (end of file): "
                   "no BGZF end-of-file marker (truncated file?)")


BGZF_EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")


def records_before_failure(path) -> int:
    """How many records pysam reads from ``path`` before it fails."""
    import pysam

    n = 0
    with pytest.raises(OSError):
        with pysam.AlignmentFile(str(path), "rb", check_sq=False,
                                 ignore_truncation=True) as aln:
            for _ in aln.fetch(until_eof=True):
                n += 1
    return n


@pytest.mark.parametrize("damage", ["cut", "flip"])
def test_damaged_bam_names_the_record_and_the_compressed_byte(tmp_path, capsys, damage):
    """A BAM cut in half that still ends in an end-of-file marker, and one with a flipped
    bit: the record being read and the compressed byte where its BGZF block fails."""
    data = EX1_BAM.read_bytes()
    if damage == "cut":
        bad = data[: len(data) // 2] + BGZF_EOF
        what = rf"compressed byte {len(bad):,} \(end of file\): truncated BGZF data: the file " \
               "ends inside a compressed block"
    else:
        bad = bytearray(data)
        bad[len(data) // 2] ^= 0x10
        what = r"compressed bytes? [\d,-]+: corrupt BGZF data.*"
    p = tmp_path / f"{damage}.bam"
    p.write_bytes(bytes(bad))
    record = records_before_failure(p) + 1
    err = run_bad(tmp_path, capsys, p)
    assert re.fullmatch(rf"genossm: error: {re.escape(str(p))}: record {record:,}, {what}", err)


def test_corrupt_bam_flips_end_in_one_line_never_a_hang(tmp_path, capsys):
    """20 seeded bit flips past ex1.bam's header block: each run ends, within a time limit,
    in a store or in one line that names the record and the place."""
    import random

    data = EX1_BAM.read_bytes()
    rng = random.Random(6)
    for case in range(20):
        bad = bytearray(data)
        bad[rng.randrange(200, len(data) - len(BGZF_EOF))] ^= 1 << rng.randrange(8)
        path = tmp_path / f"c{case}.bam"
        path.write_bytes(bytes(bad))
        out = tmp_path / f"c{case}.zarr"
        capsys.readouterr()
        rc = run_in_thread(["tokenize", str(path), "-o", str(out), "-q"])
        err = capsys.readouterr().err.strip().splitlines()
        if rc == 0:   # a flip may leave a valid file
            assert TokenStore(out).n_reads > 0 and not err
        else:
            assert rc == 2 and len(err) == 1, err
            assert re.match(rf"genossm: error: {re.escape(str(path))}: record [\d,]+, ", err[0])
            assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".genossm-" in p.name]


def test_malformed_sam_line_names_the_record_and_line(tmp_path, capsys):
    import pysam

    lines = pysam.view("-h", str(EX1_BAM)).splitlines(keepends=True)
    header = sum(line.startswith("@") for line in lines)
    lines[header + 1497] = "EAS56_57:6:190:289:82\t69\tchr1\n"   # record 1,498
    p = tmp_path / "bad.sam"
    p.write_text("".join(lines))
    assert run_bad(tmp_path, capsys, p) == (
        f"genossm: error: {p}: record 1,498, line {header + 1498:,}: malformed SAM line")


@pytest.mark.parametrize("damage", ["bam header block", "sam line", "bam record", "cram cut"])
def test_damaged_alignment_files_print_one_line_and_no_htslib_text(tmp_path, damage):
    """As a user sees it (htslib writes to the process's stderr itself, and pysam reports a
    file that fails to close through sys.excepthook): one line, nothing else."""
    import pysam

    data = EX1_BAM.read_bytes()
    extra = []
    if damage == "bam header block":
        bad = bytearray(data)
        bad[16] ^= 0x40   # BGZF's block size field: pysam cannot open the file
        p = tmp_path / "bad.bam"
        p.write_bytes(bytes(bad))
    elif damage == "sam line":
        lines = pysam.view("-h", str(EX1_BAM)).splitlines(keepends=True)
        lines[1500] = lines[1500].replace("\t", " ", 3)   # htslib warns and fails
        p = tmp_path / "bad.sam"
        p.write_text("".join(lines))
    elif damage == "bam record":
        bad = bytearray(data)
        bad[len(data) // 2] ^= 0x10
        p = tmp_path / "bad.bam"
        p.write_bytes(bytes(bad))
    else:
        ref = tmp_path / "ex1.fa"
        ref.write_bytes((ROOT / "config/data/ex1.fa").read_bytes())
        cram = tmp_path / "ex1.cram"
        pysam.view("-C", "-T", str(ref), "-o", str(cram), str(EX1_BAM), catch_stdout=False)
        p = tmp_path / "cut.cram"
        p.write_bytes(cram.read_bytes()[: cram.stat().st_size // 2])
        extra = ["--reference", ref]
    proc = run_process("tokenize", p, "-o", tmp_path / "o.zarr", *extra)
    assert proc.returncode == 2
    place = "" if damage == "bam header block" else r"record [\d,]+"   # where it was reading
    assert re.fullmatch(rf"genossm: error: {re.escape(str(p))}: {place}[^\n]+\n", proc.stderr), \
        proc.stderr


def test_no_thread_of_a_failed_run_is_left_behind(tmp_path, lambda_seq):
    """The md5 thread and the decompression thread end with the run that failed, even while
    its error (and so the failed run's frames) is still held, as a caller of tokenize() or
    --debug holds it."""
    from genossm.errors import InputError
    from genossm.tokenize import tokenize

    p = tmp_path / "bad.fa.gz"
    p.write_bytes(gzip.compress(f">a\n{lambda_seq[:6000]}\n>b\nAC*T\n".encode()))
    with pytest.raises(InputError, match="invalid character") as failure:
        tokenize([p], tmp_path / "out.zarr", progress=False)
    assert failure.value.__traceback__ is not None
    assert not [t.name for t in threading.enumerate()
                if t.name.startswith(("genossm-md5", "genossm-decompress"))]


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
