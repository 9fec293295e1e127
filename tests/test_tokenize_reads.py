"""SAM/BAM/CRAM reads -> the store's reads group; counts per filter against samtools (pysam)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pysam
import pytest

from genossm import alphabet
from genossm.cli import main
from genossm.store import TokenStore
from helpers import EX1_BAM, EX1_FA, MPILEUP_BAM

DEFAULT_EXCLUDE = 0x100 | 0x200 | 0x400 | 0x800


def samtools_count(path, *args, region=None) -> int:
    return int(pysam.view("-c", *args, str(path), *([region] if region else [])).strip())


def tokenize_reads(tmp_path, path, *extra, name="reads.zarr"):
    out = tmp_path / name
    assert main(["tokenize", str(path), "-o", str(out), "-q", *map(str, extra)]) == 0
    return TokenStore(out)


@pytest.mark.parametrize("bam", [EX1_BAM, MPILEUP_BAM], ids=lambda p: p.name)
@pytest.mark.parametrize("args,samtools_args", [
    ((), ("-F", str(DEFAULT_EXCLUDE))),
    (("--exclude-flags", "0"), ()),
    (("--exclude-flags", "UNMAP"), ("-F", "4")),
    (("--exclude-flags", "UNMAP,DUP,SECONDARY"), ("-F", str(0x4 | 0x400 | 0x100))),
    (("--exclude-flags", "0x10"), ("-F", "16")),
    (("--min-mapq", "30"), ("-F", str(DEFAULT_EXCLUDE), "-q", "30")),
])
def test_read_counts_per_filter_match_samtools(tmp_path, bam, args, samtools_args):
    store = tokenize_reads(tmp_path, bam, *args)
    assert store.n_reads == samtools_count(bam, *samtools_args)


def test_min_length_filter_matches_pysam(tmp_path):
    with pysam.AlignmentFile(str(EX1_BAM)) as aln:
        expected = sum(1 for r in aln.fetch(until_eof=True)
                       if not r.flag & DEFAULT_EXCLUDE and r.query_length >= 36)
    assert tokenize_reads(tmp_path, EX1_BAM, "--min-length", "36").n_reads == expected


def test_read_content_names_and_fields_match_pysam(tmp_path):
    store = tokenize_reads(tmp_path, EX1_BAM, "--exclude-flags", "0")
    with pysam.AlignmentFile(str(EX1_BAM)) as aln:
        reads = list(aln.fetch(until_eof=True))
    stored = list(store.iter_reads(batch_size=1000))
    assert len(stored) == len(reads) == store.n_reads
    refs = store.references
    for r, (name, codes, fields) in zip(reads, stored, strict=True):
        assert name == r.query_name
        assert alphabet.decode(codes) == r.query_sequence
        assert fields["flag"] == r.flag and fields["mapq"] == r.mapping_quality
        if r.is_unmapped:
            assert fields["position"] == -1
        else:
            assert fields["position"] == r.reference_start
            assert refs[fields["reference_id"]] == r.reference_name
    offsets = store.read_offsets()
    assert offsets[-1] == sum(len(r.query_sequence) for r in reads)
    assert np.array_equal(store.read_codes(5, reverse_complement=True),
                          alphabet.reverse_complement(alphabet.encode(reads[5].query_sequence)))


def test_region_on_indexed_bam(tmp_path):
    region = "17:1000-2000"
    store = tokenize_reads(tmp_path, MPILEUP_BAM, "--region", region)
    assert store.n_reads == samtools_count(MPILEUP_BAM, "-F", str(DEFAULT_EXCLUDE), region=region)
    assert 0 < store.n_reads < samtools_count(MPILEUP_BAM)


def test_sam_and_cram_inputs(tmp_path):
    sam = tmp_path / "ex1.sam"
    sam.write_text(pysam.view("-h", str(EX1_BAM)))
    ref = tmp_path / "ex1.fa"
    shutil.copy(EX1_FA, ref)
    cram = tmp_path / "ex1.cram"
    pysam.view("-C", "-T", str(ref), "-o", str(cram), str(EX1_BAM), catch_stdout=False)
    expected = samtools_count(EX1_BAM, "-F", str(DEFAULT_EXCLUDE))
    assert tokenize_reads(tmp_path, sam, name="sam.zarr").n_reads == expected
    store = tokenize_reads(tmp_path, cram, "--reference", ref, name="cram.zarr")
    assert store.n_reads == expected
    bam_store = tokenize_reads(tmp_path, EX1_BAM, name="bam.zarr")
    assert np.array_equal(store.group["reads/codes"][:], bam_store.group["reads/codes"][:])


def test_fasta_and_reads_in_one_store(tmp_path):
    out = tmp_path / "both.zarr"
    assert main(["tokenize", str(EX1_FA), str(EX1_BAM), "-o", str(out), "-q"]) == 0
    store = TokenStore(out)
    assert store.contig_names == ["chr1", "chr2"]
    assert store.n_reads == samtools_count(EX1_BAM, "-F", str(DEFAULT_EXCLUDE))
    assert [s["format"] for s in store.meta["sources"]] == ["fasta", "bam"]


@pytest.fixture
def fastq(tmp_path):
    """The first 300 reads of ex1.bam written as FASTQ (real reads, another container)."""
    path = tmp_path / "ex1.fq"
    with pysam.AlignmentFile(str(EX1_BAM)) as aln, open(path, "w") as out:
        for i, r in enumerate(aln.fetch(until_eof=True)):
            if i == 300:
                break
            quals = pysam.qualities_to_qualitystring(r.query_qualities)
            out.write(f"@{r.query_name}\n{r.query_sequence}\n+\n{quals}\n")
    return path


def test_fastq_reads_match_pysam(tmp_path, fastq):
    store = tokenize_reads(tmp_path, fastq, "--min-length", "35")
    with pysam.FastxFile(str(fastq)) as fx:
        expected = [(r.name, r.sequence) for r in fx if len(r.sequence) >= 35]
    got = [(name, alphabet.decode(codes)) for name, codes, _ in store.iter_reads()]
    assert got == expected and 0 < len(got) < 300
    assert {f["flag"] for _, _, f in store.iter_reads()} == {0x4}


def test_truncated_fastq_is_an_error(tmp_path, fastq, capsys):
    text = fastq.read_text()
    cut = text.index("\n+\n", len(text) // 2) + 5
    fastq.write_text(text[:cut])
    lines = text[:cut].splitlines()
    out = tmp_path / "o.zarr"
    assert main(["tokenize", str(fastq), "-o", str(out), "-q"]) == 2
    assert capsys.readouterr().err == (
        f"genossm: error: {fastq}: read '{lines[-4][1:]}' (record {len(lines) // 4:,}, line "
        f"{len(lines) - 3:,}): quality string has 2 characters, sequence has {len(lines[-3])}\n")
    assert not out.exists()


@pytest.mark.parametrize("last,what", [
    ("@r\nACGTA\n+\nIII\n", "quality string has 3 characters, sequence has 5"),
    ("@r\nACGTA\n+\nIIIIII\n", "quality string has 6 characters, sequence has 5"),
    ("@r\nACGTA\nIIIII\n", "no '+' line or quality string after the sequence"),
    ("@r\nACGTA\n", "no '+' line or quality string after the sequence"),
    ("@r\nACGTA\n+\n", "no quality string after the '+' line"),
    ("@r\n", "a header line alone: no sequence, '+' line or quality string"),
    (">r\nACGTA\n", "a FASTA record ('>' header) in a FASTQ file"),
], ids=["short-quality", "long-quality", "no-plus", "no-plus-at-end", "no-quality",
        "header-alone", "fasta-record"])
@pytest.mark.parametrize("at_end", [True, False], ids=["last", "middle"])
def test_malformed_fastq_record_names_the_read_and_line(tmp_path, fastq, capsys, last, what,
                                                        at_end):
    """htslib accepts some of these (a record without '+' is FASTA to it) and words the rest
    as 'truncated quality string': each is one line naming the read, record and line."""
    text = fastq.read_text()
    n = text.count("\n") // 4
    fastq.write_text(text + last + ("" if at_end else text))
    out = tmp_path / "o.zarr"
    assert main(["tokenize", str(fastq), "-o", str(out), "-q"]) == 2
    if at_end and "'+' line" in what and "quality string has" not in what:
        what += " (truncated file?)"
    assert capsys.readouterr().err == (
        f"genossm: error: {fastq}: read 'r' (record {n + 1:,}, line {4 * n + 1:,}): {what}\n")
    assert not out.exists()


def test_empty_fastq_records_are_reads_of_length_zero(tmp_path, fastq):
    """An empty record ('+' and an empty quality line) is valid FASTQ: dropped by length."""
    text = fastq.read_text()
    fastq.write_text("@e1\n\n+\n\n" + text + "@e2\n\n+\n\n")
    out = tmp_path / "o.zarr"
    assert main(["tokenize", str(fastq), "-o", str(out), "-q"]) == 0
    assert TokenStore(out).n_reads == 300
    assert TokenStore(out).meta["sources"][0]["dropped"] == {"length": 2}


def test_corrupt_gzip_fastq_blames_the_gzip(tmp_path, fastq, capsys):
    """htslib decodes damaged deflate data before it reads the checksum, and fails on the
    text it gets: the error names the gzip fault."""
    import gzip

    data = bytearray(gzip.compress(fastq.read_bytes(), compresslevel=0))
    data[len(data) // 2] = ord("!")
    p = tmp_path / "bad.fq.gz"
    p.write_bytes(bytes(data))
    assert main(["tokenize", str(p), "-o", str(tmp_path / "o.zarr"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"genossm: error: {p}: compressed bytes 1-")
    assert err.endswith(": corrupt gzip data: a block fails its checksum (incorrect data check)\n")


def test_cram_success_prints_no_htslib_messages(tmp_path):
    """Reading a CRAM without a .crai, htslib reports the missing index on stderr: only
    genossm's own summary is printed, and htslib's verbosity is restored after."""
    ref = tmp_path / "ex1.fa"
    shutil.copy(EX1_FA, ref)
    cram = tmp_path / "ex1.cram"
    pysam.view("-C", "-T", str(ref), "-o", str(cram), str(EX1_BAM), catch_stdout=False)
    out = tmp_path / "o.zarr"
    proc = subprocess.run([sys.executable, "-m", "genossm", "tokenize", str(cram), "-o",
                           str(out), "--reference", str(ref)], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.startswith(f"genossm tokenize: wrote {out}: ")
    before = pysam.get_verbosity()
    tokenize_reads(tmp_path, cram, "--reference", ref, name="again.zarr")
    assert pysam.get_verbosity() == before
