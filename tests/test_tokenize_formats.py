"""GenBank, EMBL and 2bit -> token store (read with Biopython), checked against independent
oracles: the FASTA copies of the same sequences read with pysam, the sequence lines of the flat
files read here as text, and Biopython's feature locations and the files' /translation
qualifiers for the features BED. Bad flat files end in one line with nothing written."""

from __future__ import annotations

import gzip
import hashlib
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from Bio import SeqIO
from Bio.Seq import Seq

from genossm import alphabet
from genossm.cli import main
from genossm.info import format_summary, store_summary
from genossm.regions import read_bed
from genossm.store import TokenStore
from helpers import ROOT, fasta_records, files, one_error_line

FORMATS = ROOT / "tests" / "data" / "formats"
PLASMID_GB = FORMATS / "NC_005816.gb"
PLASMID_FNA = FORMATS / "NC_005816.fna"
PLASMID_EMBL = FORMATS / "AE017046.embl"
CHLOROPLAST_GB = FORMATS / "NC_000932.gb"
GENE_EMBL = FORMATS / "U87107.embl"
TWOBITS = [FORMATS / "sequence.littleendian.2bit", FORMATS / "sequence.bigendian.2bit"]
TWOBIT_FA = FORMATS / "sequence.fa"


def tokenize(tmp_path, *inputs, name="out.zarr", extra=()) -> TokenStore:
    out = tmp_path / name
    assert main(["tokenize", *map(str, inputs), "-o", str(out), "-q", *map(str, extra)]) == 0
    return TokenStore(out)


def run_bad(tmp_path, capsys, *args, outputs=("out.zarr",)) -> str:
    """tokenize ending in one error line, exit status 2, with no output or temporary left."""
    before = set(tmp_path.iterdir())
    capsys.readouterr()
    assert main(["tokenize", *map(str, args), "-o", str(tmp_path / "out.zarr"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("genossm: error: ") and err.count("\n") == 1, err
    assert set(tmp_path.iterdir()) == before
    for name in outputs:
        assert not (tmp_path / name).exists()
    return err.strip()


def sequence_lines(path: Path) -> str:
    """The sequence of a one-record GenBank/EMBL file read as text (ORIGIN / SQ to //), with
    the numbers and spaces taken out: an oracle independent of Biopython and genossm."""
    text = path.read_text()
    start = re.search(r"^(ORIGIN|SQ  ).*\n", text, re.M).end()
    body = text[start:text.index("\n//", start)]
    return re.sub(r"[\d\s]", "", body).upper()


def assert_contig(store: TokenStore, name: str, seq: str, *, topology=None):
    """The contig holds ``seq`` (case = soft-mask) with the attributes a FASTA would give."""
    info = store.contig(name)
    upper = seq.upper()
    assert info.length == len(seq)
    assert alphabet.decode(store.codes(name)) == "".join(c if c in "ACGTN" else "N"
                                                         for c in upper)
    assert np.array_equal(store.softmask(name), np.frombuffer(seq.encode(), np.uint8) >= 97)
    assert info.softmasked == sum(c.islower() for c in seq)
    assert info.md5 == hashlib.md5(upper.encode()).hexdigest()
    assert info.n_count == sum(c not in "ACGT" for c in upper)
    assert info.iupac_count == sum(c not in "ACGTN" for c in upper)
    assert info.topology == topology


# --------------------------------------------------------------------------- sequences


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_genbank_and_embl_against_the_fasta_oracle(tmp_path, compress):
    inputs = [PLASMID_GB, PLASMID_EMBL]
    if compress:
        inputs = [tmp_path / f"{p.name}.gz" for p in inputs]
        for src, dst in zip([PLASMID_GB, PLASMID_EMBL], inputs, strict=True):
            dst.write_bytes(gzip.compress(src.read_bytes()))
    store = tokenize(tmp_path, *inputs, extra=["--chunk-size", 4096])
    (_, oracle), = fasta_records(PLASMID_FNA)
    assert oracle.isupper() and len(oracle) == 9_609
    assert store.contig_names == ["NC_005816.1", "AE017046.1"]
    for name in store.contig_names:
        assert_contig(store, name, oracle, topology="circular")
    assert [s["format"] for s in store.meta["sources"]] == ["genbank", "embl"]


def test_a_large_genbank_file_and_an_embl_without_topology(tmp_path):
    store = tokenize(tmp_path, CHLOROPLAST_GB, GENE_EMBL, extra=["--chunk-size", 65_536])
    chloroplast = sequence_lines(CHLOROPLAST_GB)
    assert len(chloroplast) == 154_478
    assert_contig(store, "NC_000932.1", chloroplast, topology="circular")
    assert_contig(store, "U87107.1", sequence_lines(GENE_EMBL), topology=None)
    attrs = store.group[f"contigs/{store.contig_index['U87107.1']}"].attrs
    assert "topology" not in attrs       # not stated: not recorded
    shown = format_summary(store_summary(store.path)).splitlines()
    assert shown[3].endswith("topology")
    assert shown[4].startswith("NC_000932.1") and shown[4].endswith("  circular")
    assert shown[5].startswith("U87107.1") and shown[5].endswith("  -")


@pytest.mark.parametrize("path", TWOBITS, ids=["little-endian", "big-endian"])
def test_twobit_keeps_n_and_mask_blocks(tmp_path, path, monkeypatch):
    import genossm.tokenize.flatfile as flatfile

    monkeypatch.setattr(flatfile, "BLOCK_BASES", 100)   # records read in several blocks
    store = tokenize(tmp_path, path, extra=["--chunk-size", 64])
    records = fasta_records(TWOBIT_FA)
    assert any(c.islower() for _, s in records for c in s) and any("N" in s for _, s in records)
    assert store.contig_names == [n for n, _ in records]
    for name, seq in records:
        assert_contig(store, name, seq)
    assert store.meta["sources"][0]["format"] == "twobit"


def test_fasta_and_every_new_format_into_one_store(tmp_path):
    store = tokenize(tmp_path, PLASMID_FNA, CHLOROPLAST_GB, TWOBITS[1])
    assert len(store.contig_names) == 1 + 1 + 6
    assert store.contig(store.contig_names[0]).topology is None     # FASTA states none


# --------------------------------------------------------------------------- features BED


def biopython_parts(path: Path, types) -> list[tuple]:
    """(contig, start, end, strand, type) of every location part of the features of
    ``types``, from Biopython's own parse."""
    parts = []
    for record in SeqIO.parse(str(path), "genbank"):
        for feature in record.features:
            if feature.type in types:
                for part in feature.location.parts:
                    strand = {1: "+", -1: "-"}.get(part.strand, ".")
                    parts.append((record.id, int(part.start), int(part.end), strand,
                                  feature.type))
    return parts


def bed_rows(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()
            if not line.startswith("#")]


@pytest.mark.parametrize("path", [PLASMID_GB, CHLOROPLAST_GB], ids=["plasmid", "chloroplast"])
def test_features_bed_against_biopython_and_the_translations(tmp_path, path):
    store = tokenize(tmp_path, path, name="genome.zarr", extra=["--features", "CDS,gene"])
    bed = tmp_path / "genome.features.bed"          # beside the store by default
    rows = bed_rows(bed)
    assert all(len(r) == 8 and r[4] == "0" for r in rows)
    got = [(r[0], int(r[1]), int(r[2]), r[5], r[6]) for r in rows]
    assert got == biopython_parts(path, {"CDS", "gene"})
    # features counted in the file's text, independently of any parser
    text = path.read_text()
    for kind in ("CDS", "gene"):
        in_text = len(re.findall(rf"^     {kind} +\S", text, re.M))
        assert sum(r[6] == kind and r[7].startswith("1/") for r in rows) == in_text > 0
    assert store.meta["sources"][0]["features"] == {
        "CDS": sum(r[6] == "CDS" for r in rows), "gene": sum(r[6] == "gene" for r in rows)}
    # every CDS, its parts joined in their order (reverse-complemented on '-'), translates to
    # the file's /translation (the first codon may be an alternative start)
    sequence = sequence_lines(path)
    translations = [f.qualifiers["translation"][0]
                    for f in SeqIO.read(str(path), "genbank").features
                    if f.type == "CDS" and "translation" in f.qualifiers]
    cds, current = [], []
    for r in rows:
        if r[6] != "CDS":
            continue
        piece = Seq(sequence[int(r[1]):int(r[2])])
        current.append(str(piece.reverse_complement() if r[5] == "-" else piece))
        k, n = map(int, r[7].split("/"))
        if k == n:
            cds.append("".join(current))
            current = []
    assert len(cds) == len(translations) > 0
    for coding, protein in zip(cds, translations, strict=True):
        assert str(Seq(coding).translate(table=11)).rstrip("*")[1:] == protein[1:]
    # joined locations (introns, trans-splicing) are there for the chloroplast
    if path == CHLOROPLAST_GB:
        assert any(r[7] != "1/1" for r in rows) and any(r[5] == "-" for r in rows)
    # read_bed (embed --bed) takes it: every region inside its contig
    regions = read_bed(bed)
    assert len(regions) == len(rows)
    assert all(0 <= r.start < r.end <= store.contig(r.contig).length for r in regions)


def test_embed_takes_every_cds_of_a_genbank_reference(tmp_path):
    """embed over the features BED with the GenBank file as its reference gives the vectors
    it gives with the same sequence as an indexed FASTA (read by pysam)."""
    import zarr

    from helpers import tiny_model, write_fasta

    tokenize(tmp_path, PLASMID_GB, name="p.zarr", extra=["--features", "CDS"])
    bed = tmp_path / "p.features.bed"
    model_dir = tmp_path / "model"
    tiny_model(model_dir)
    (_, oracle), = fasta_records(PLASMID_FNA)
    fasta = write_fasta(tmp_path / "plasmid.fa", [("NC_005816.1", oracle)])
    pooled = []
    for reference, out in ((PLASMID_GB, "from_gb.zarr"), (fasta, "from_fa.zarr")):
        assert main(["embed", "--model", str(model_dir), "--fasta", str(reference), "--bed",
                     str(bed), "-o", str(tmp_path / out), "-q", "--device", "cpu"]) == 0
        pooled.append(zarr.open_group(str(tmp_path / out), mode="r")["pooled"][:])
    assert pooled[0].shape[0] == len(bed_rows(bed))
    assert np.array_equal(pooled[0], pooled[1])


def test_features_bed_at_a_path_and_force(tmp_path, capsys):
    bed = tmp_path / "cds.bed"
    tokenize(tmp_path, PLASMID_GB, extra=["--features", "CDS", "--features-bed", bed])
    first = bed.read_text()
    assert first.startswith("#genossm features")
    capsys.readouterr()
    assert main(["tokenize", str(PLASMID_GB), "-o", str(tmp_path / "b.zarr"), "-q",
                 "--features", "CDS", "--features-bed", str(bed)]) == 2
    one_error_line(capsys, f"{bed}: output exists; use --force")
    assert not (tmp_path / "b.zarr").exists()
    tokenize(tmp_path, PLASMID_GB, name="b.zarr",
             extra=["--features", "gene", "--features-bed", bed, "--force"])
    assert bed.read_text() != first and all(r[6] == "gene" for r in bed_rows(bed))
    foreign = tmp_path / "mine.bed"
    foreign.write_text("chr1\t0\t10\n")
    assert main(["tokenize", str(PLASMID_GB), "-o", str(tmp_path / "c.zarr"), "-q", "--force",
                 "--features", "CDS", "--features-bed", str(foreign)]) == 2
    one_error_line(capsys, f"{foreign}: exists and is a file of 10 bytes, not a genossm "
                           "features BED")
    assert foreign.read_text() == "chr1\t0\t10\n" and not (tmp_path / "c.zarr").exists()


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("name, message", [
    ("blank_seq.gb", "record 'NP_001832.1' (line 1): a protein record; genossm reads DNA"),
    ("no_origin_no_end.gb", "record 'AB070938' (line 1), line 14 (end of file): cannot parse "
                            "(Premature end of line during features table)"),
], ids=["protein", "no-origin-no-end"])
def test_a_record_that_is_not_dna_or_not_whole_is_refused(tmp_path, capsys, name, message):
    src = tmp_path / name
    shutil.copy(FORMATS / name, src)
    assert run_bad(tmp_path, capsys, src) == f"genossm: error: {src}: {message}"


def test_a_bad_record_after_good_ones_leaves_no_store_and_no_bed(tmp_path, capsys):
    src = tmp_path / "two.gb"
    src.write_bytes(PLASMID_GB.read_bytes() + (FORMATS / "no_origin_no_end.gb").read_bytes())
    lines = PLASMID_GB.read_text().count("\n")
    err = run_bad(tmp_path, capsys, src, "--features", "CDS",
                  outputs=("out.zarr", "out.features.bed"))
    assert f"record 'AB070938' (line {lines + 1}), line {lines + 14} (end of file)" in err


def test_an_invalid_letter_names_the_record_and_base(tmp_path, capsys):
    text = PLASMID_GB.read_text()
    origin = text.index("\nORIGIN")
    first = text.index("        1 ", origin)
    src = tmp_path / "bad.gb"
    src.write_text(text[:first] + "        1 tgtaacgaac ggtgcaatag tgatccacac ccaacgcctg "
                                  "aaatcagatc caggggg!aa tctgctctcc" + text[text.index(
                                      "\n", first):])
    err = run_bad(tmp_path, capsys, src)
    assert err == (f"genossm: error: {src}: record 'NC_005816.1' (line 1), base 58: invalid "
                   "character '!' in sequence")


def test_a_gzip_a_version_1_and_a_cut_twobit_are_refused(tmp_path, capsys):
    packed = tmp_path / "seq.2bit.gz"
    packed.write_bytes(gzip.compress(TWOBITS[0].read_bytes()))
    err = run_bad(tmp_path, capsys, packed)
    assert err.startswith(f"genossm: error: {packed}: a gzip-compressed 2bit file")
    version_1 = tmp_path / "genome.2bit"   # version 1: 64-bit offsets (a genome over 4 GB)
    version_1.write_bytes(struct.pack("<IIII", 0x1A412743, 1, 1, 0) + b"\x01a" +
                          struct.pack("<QIIII", 26, 4, 0, 0, 0) + b"\x1b")
    err = run_bad(tmp_path, capsys, version_1)
    assert err == (f"genossm: error: {version_1}: a version-1 2bit file (64-bit offsets, for "
                   "genomes over 4 GB), which Biopython cannot read; convert it to FASTA: "
                   f"twoBitToFa {version_1} genome.fa && bgzip genome.fa && samtools faidx "
                   "genome.fa.gz")
    cut = tmp_path / "cut.2bit"
    for size in (20, 300, len(TWOBITS[0].read_bytes()) - 1):
        cut.write_bytes(TWOBITS[0].read_bytes()[:size])
        err = run_bad(tmp_path, capsys, cut)
        assert err.startswith(f"genossm: error: {cut}: "), err


@pytest.mark.parametrize("args, message", [
    (["--features", "CDS"], "--features applies to GenBank/EMBL inputs, and none was given"),
    (["--features-bed", "x.bed"], "--features-bed needs --features TYPES"),
    (["--features", " , "], "--features: no feature type"),
])
def test_feature_options_without_their_input(tmp_path, capsys, args, message):
    assert message in run_bad(tmp_path, capsys, TWOBIT_FA, *args)


def test_a_feature_type_found_nowhere_writes_nothing(tmp_path, capsys):
    err = run_bad(tmp_path, capsys, PLASMID_GB, "--features", "CDS,cds",
                  outputs=("out.zarr", "out.features.bed"))
    assert "no feature of type cds in any GenBank/EMBL input" in err


def test_the_bed_may_not_be_the_store(tmp_path, capsys):
    err = run_bad(tmp_path, capsys, PLASMID_GB, "--features", "CDS", "--features-bed",
                  tmp_path / "out.zarr")
    assert "is both the store (-o) and the features BED (--features-bed)" in err


def test_inputs_are_left_as_they_were(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for p in (PLASMID_GB, TWOBITS[0]):
        shutil.copy(p, src / p.name)
    before = files(src)
    tokenize(tmp_path, *sorted(src.iterdir()), extra=["--features", "CDS"])
    assert files(src) == before
