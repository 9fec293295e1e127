"""Reference (the reference read by region for score and embed) on every format it reads:
2bit, GenBank and EMBL through Biopython, and a FASTA without its index in a read-only
directory through pyfaidx, each against pysam reading a FASTA of the same sequences."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile

import numpy as np
import pysam
import pytest

from genossm import alphabet
from genossm.errors import InputError
from genossm.reference import Reference
from helpers import ROOT, write_fasta

FORMATS = ROOT / "tests" / "data" / "formats"
TWOBIT_FA = FORMATS / "sequence.fa"
PLASMID_FNA = FORMATS / "NC_005816.fna"
SPANS = [(0, 1), (0, 60), (3, 17), (55, 130), (100, 101)]


def oracle(fasta) -> dict[str, str]:
    with pysam.FastxFile(str(fasta)) as fx:
        return {r.name: r.sequence for r in fx}


def assert_reads_like(reference: Reference, expected: dict[str, str]):
    """Lengths, records, text of spans (case kept) and codes with N outside the contig."""
    assert reference.lengths == {n: len(s) for n, s in expected.items()}
    assert [(r.contig, r.start, r.end) for r in reference.records()] == [
        (n, 0, len(s)) for n, s in expected.items()]
    for name, seq in expected.items():
        for start, end in SPANS + [(len(seq) - 9, len(seq))]:
            start, end = min(start, len(seq) - 1), min(end, len(seq))
            assert reference.text(name, start, end) == seq[start:end]
        codes = reference.codes(name, -5, len(seq) + 3)
        assert alphabet.decode(codes) == "N" * 5 + "".join(
            c if c in "ACGTN" else "N" for c in seq.upper()) + "N" * 3


@pytest.mark.parametrize("name", ["sequence.littleendian.2bit", "sequence.bigendian.2bit"])
def test_twobit(name):
    with Reference(FORMATS / name) as reference:
        assert reference.format == "twobit"
        assert_reads_like(reference, oracle(TWOBIT_FA))


@pytest.mark.parametrize("name, contig", [("NC_005816.gb", "NC_005816.1"),
                                          ("AE017046.embl", "AE017046.1")])
def test_genbank_and_embl(name, contig):
    (seq,) = oracle(PLASMID_FNA).values()
    with Reference(FORMATS / name) as reference:
        assert_reads_like(reference, {contig: seq})


def test_a_flat_file_over_the_memory_limit_is_refused_with_the_conversion(monkeypatch):
    import genossm.reference as module

    monkeypatch.setattr(module, "FLAT_FILE_MAX_BASES", 100_000)
    with pytest.raises(InputError) as error:
        Reference(FORMATS / "NC_000932.gb")
    message = str(error.value)
    assert "more than 100,000 bases" in message and "record 'NC_000932.1' (line 1)" in message
    assert "SeqIO.convert(" in message and "samtools faidx" in message and \
        "\n" not in message


def test_a_cut_twobit_is_refused_when_opened(tmp_path):
    data = (FORMATS / "sequence.littleendian.2bit").read_bytes()   # ends with its last base
    cut = tmp_path / "cut.2bit"
    cut.write_bytes(data[:-1])
    with pytest.raises(InputError, match=r"cut\.2bit: record 'seq6': cut short or corrupt: "
                                         r"the record runs to byte 770 of a file of 769 bytes"):
        Reference(cut)


def test_a_twobit_with_a_damaged_block_count_is_refused_before_it_is_read(tmp_path):
    """A record's N-block count read as 4 billion: refused from the file's size, never
    allocated."""
    data = bytearray((FORMATS / "sequence.littleendian.2bit").read_bytes())
    first = int.from_bytes(data[16 + 1 + len(b"seq11111"):][:4], "little")  # its offset
    data[first + 4:first + 8] = (0xFFFFFFF0).to_bytes(4, "little")
    damaged = tmp_path / "damaged.2bit"
    damaged.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"damaged\.2bit: record 'seq11111': cut short or "
                                         r"corrupt: the record runs to byte [\d,]+ of a file "
                                         r"of 770 bytes"):
        Reference(damaged)


@pytest.fixture
def read_only_copy(tmp_path, request):
    """A FASTA (plain or bgzipped) without an index, in a directory whose permissions grant no
    write: pysam would write its index beside it (or, not as root, fail)."""
    records = list(oracle(TWOBIT_FA).items())
    directory = tmp_path / "read_only"
    directory.mkdir()
    fasta = write_fasta(directory / ("genome.fa.gz" if request.param else "genome.fa"),
                        records, width=50, compress="bgzf" if request.param else None)
    directory.chmod(0o555)
    yield fasta, dict(records)
    directory.chmod(0o755)


@pytest.mark.parametrize("read_only_copy", [False, True], ids=["plain", "bgzf"],
                         indirect=True)
def test_an_unindexed_fasta_in_a_read_only_directory(read_only_copy, tmp_path, monkeypatch):
    fasta, records = read_only_copy
    scratch = tmp_path / "scratch"       # where the index is built, as TMPDIR would say
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    with Reference(fasta) as reference:
        assert reference.format == "fasta" and reference.name == str(fasta)
        (index,) = scratch.iterdir()
        assert {p.suffix for p in index.iterdir()} >= {".fai"}
        assert_reads_like(reference, records)
        # against pysam on a writable copy
        copy = tmp_path / fasta.name
        shutil.copy(fasta, copy)
        with pysam.FastaFile(str(copy)) as fa:
            for name, length in reference.lengths.items():
                assert reference.text(name, 0, length) == fa.fetch(name)
                assert np.array_equal(reference.codes(name, 2, length - 1),
                                      alphabet.encode(fa.fetch(name, 2, length - 1)))
    assert os.listdir(fasta.parent) == [fasta.name]          # no index written beside it
    assert not stat.S_IMODE(fasta.parent.stat().st_mode) & 0o222
    assert not list(scratch.iterdir())                          # and the index removed


def test_an_unindexed_fasta_in_a_writable_directory_gets_its_index(tmp_path):
    fasta = shutil.copy(PLASMID_FNA, tmp_path / "p.fa")
    with Reference(fasta) as reference:
        (seq,) = oracle(PLASMID_FNA).values()
        assert reference.text(next(iter(reference.lengths)), 0, 50) == seq[:50]
    assert (tmp_path / "p.fa.fai").is_file()           # htslib's, as before
