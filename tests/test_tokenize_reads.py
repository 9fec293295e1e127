"""SAM/BAM/CRAM reads -> the store's reads group; counts per filter against samtools (pysam)."""

from __future__ import annotations

import shutil

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
    fastq.write_text(text[: text.index("\n+\n", len(text) // 2) + 5])
    out = tmp_path / "o.zarr"
    assert main(["tokenize", str(fastq), "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"genossm: error: {fastq}: record ") and "FASTQ" in err
    assert not out.exists()
