"""FASTA -> token store round trips on the real example data, against pysam."""

from __future__ import annotations

import hashlib
import json
import pickle

import numpy as np
import pytest
import torch

from genossm import alphabet
from genossm.cli import main
from genossm.store import TokenStore
from helpers import CHR20, EX1_FA, LAMBDA, MPILEUP_FA, fasta_records, write_fasta

REAL_FASTAS = [CHR20, LAMBDA, EX1_FA, MPILEUP_FA]


def tokenize(tmp_path, *inputs, name="out.zarr", extra=()):
    out = tmp_path / name
    assert main(["tokenize", *map(str, inputs), "-o", str(out), "-q", *extra]) == 0
    return TokenStore(out)


def assert_store_matches(store: TokenStore, records):
    assert store.contig_names == [n for n, _ in records]
    for name, seq in records:
        info = store.contig(name)
        assert info.length == len(seq)
        upper = seq.upper()
        assert alphabet.decode(store.codes(name)) == "".join(
            c if c in "ACGTN" else "N" for c in upper)
        mask = store.softmask(name)
        assert mask.dtype == bool
        assert np.array_equal(mask, np.frombuffer(seq.encode(), np.uint8) >= ord("a"))
        assert info.softmasked == sum(c.islower() for c in seq)
        assert info.md5 == hashlib.md5(upper.encode()).hexdigest()
        assert info.n_count == sum(c not in "ACGT" for c in upper)
        assert info.iupac_count == sum(c not in "ACGTN" for c in upper)


@pytest.mark.parametrize("path", REAL_FASTAS, ids=lambda p: p.name)
def test_real_fasta_round_trip(tmp_path, path):
    store = tokenize(tmp_path, path, extra=["--chunk-size", "65536"])
    assert_store_matches(store, fasta_records(path))


def test_chr20_slices_against_pysam_faidx(tmp_path):
    import pysam

    store = tokenize(tmp_path, CHR20)
    fa = pysam.FastaFile(str(CHR20))
    pairs = str.maketrans("ACGTN", "TGCAN")
    for start, end in [(0, 100), (59_990, 60_010), (1_048_570, 1_048_590), (1_999_900, 2_000_000)]:
        expected = fa.fetch("20", start, end).upper()
        assert alphabet.decode(store.codes("20", start, end)) == expected
        rc = alphabet.decode(store.codes("20", start, end, reverse_complement=True))
        assert rc == expected.translate(pairs)[::-1]
    assert store.contig("20").n_count == 60_000


def test_ex1_against_pyfaidx(tmp_path):
    import pyfaidx

    copy = tmp_path / "ex1.fa"  # pyfaidx writes its index beside the FASTA
    copy.write_bytes(EX1_FA.read_bytes())
    store = tokenize(tmp_path, copy)
    fa = pyfaidx.Fasta(str(copy))
    for name in ("chr1", "chr2"):
        assert alphabet.decode(store.codes(name, 100, 1_000)) == str(fa[name][100:1_000]).upper()


@pytest.fixture(scope="module")
def derived_records():
    """Real sequence with soft-masked runs, IUPAC letters and an all-N stretch added."""
    (name, seq), = fasta_records(LAMBDA)
    s = list(seq[:20_000])
    for start in (0, 777, 5_000, 19_990):
        for i in range(start, min(start + 123, len(s))):
            s[i] = s[i].lower()
    for i, letter in zip((10, 500, 9_999, 15_001), "RYkw", strict=True):
        s[i] = letter
    s[12_000:12_050] = "N" * 50
    other = fasta_records(EX1_FA)
    return [(name, "".join(s)), *[(n, q.lower()) for n, q in other]]


@pytest.mark.parametrize("compress", [None, "gzip", "bgzf"])
@pytest.mark.parametrize("width,newline", [(60, "\n"), (7, "\r\n"), (1_000_000, "\n")])
def test_formats_line_widths_and_endings(tmp_path, derived_records, compress, width, newline):
    path = write_fasta(tmp_path / "in.fa.gz", derived_records, width=width, newline=newline,
                       compress=compress)
    store = tokenize(tmp_path, path, extra=["--chunk-size", "4096"])
    assert_store_matches(store, derived_records)


def test_block_boundaries_inside_headers_and_lines(tmp_path, derived_records, monkeypatch):
    import genossm.tokenize.compressed as tk  # the block reader reads BLOCK_SIZE there

    path = write_fasta(tmp_path / "in.fa", derived_records, width=61, newline="\r\n")
    for block in (1, 2, 3, 997):
        monkeypatch.setattr(tk, "BLOCK_SIZE", block)
        store = tokenize(tmp_path, path, name=f"b{block}.zarr", extra=["--chunk-size", "1000"])
        assert_store_matches(store, derived_records)


def test_several_inputs_into_one_store(tmp_path):
    store = tokenize(tmp_path, CHR20, LAMBDA, EX1_FA, extra=["--threads", "2"])
    expected = fasta_records(CHR20) + fasta_records(LAMBDA) + fasta_records(EX1_FA)
    assert_store_matches(store, expected)
    assert [s["path"] for s in store.meta["sources"]] == [str(CHR20), str(LAMBDA), str(EX1_FA)]
    # contig names are never raw Zarr keys
    assert all(key.startswith("c") and "|" not in key for key in store.contig_index.values())


def test_store_layout_and_attributes(tmp_path):
    store = tokenize(tmp_path, LAMBDA)
    meta = json.loads((store.path / "zarr.json").read_text())
    assert meta["zarr_format"] == 3
    attrs = meta["attributes"]
    assert attrs["genossm"]["format"] == 1 and attrs["genossm"]["alphabet"] == "ACGTN"
    assert attrs["genossm"]["created_by"].startswith("genossm ")
    key = attrs["contig_index"]["gi|9626243|ref|NC_001416.1|"]
    codes_meta = json.loads((store.path / "contigs" / key / "codes" / "zarr.json").read_text())
    assert codes_meta["data_type"] == "uint8" and codes_meta["shape"] == [48_502]
    # shorter than a chunk (1 MiB): one chunk of its length
    assert codes_meta["chunk_grid"]["configuration"]["chunk_shape"] == [48_502]
    group_attrs = json.loads((store.path / "contigs" / key / "zarr.json").read_text())
    assert group_attrs["attributes"]["name"] == "gi|9626243|ref|NC_001416.1|"
    assert not list(store.path.parent.glob(".*tmp*"))
    # written in several buffers of 2 chunks (streamed, grown and trimmed), or whole in its
    # first buffer (created in its final shape): the same layout
    for chunk, buffers in ((4096, 6), (16_384, 2), (32_768, 1)):
        store = tokenize(tmp_path, LAMBDA, name=f"c{chunk}.zarr",
                         extra=["--chunk-size", str(chunk)])
        codes = store.path / "contigs" / key / "codes"
        meta = json.loads((codes / "zarr.json").read_text())
        assert meta["shape"] == [48_502] and meta["chunk_grid"]["configuration"][
            "chunk_shape"] == [chunk], buffers
        assert sorted(int(p.name) for p in (codes / "c").iterdir()) == list(
            range(-(-48_502 // chunk)))
        (name, seq), = fasta_records(LAMBDA)
        assert alphabet.decode(store.codes(name)) == seq.upper()
        assert store.contig(name).md5 == hashlib.md5(seq.upper().encode()).hexdigest()


def test_an_assembly_of_many_short_contigs(tmp_path):
    """300 records of 1 base to 4.4 kb of lambda (soft-masked runs, N and IUPAC letters in some)
    in 2 kb chunks: those that end within their first buffer (4 kb) are created whole, in
    batches (here two), the others streamed; every contig reads back as written, with its
    attributes, in one chunk of its length where it is shorter than a chunk."""
    rng = np.random.default_rng(7)
    (_, lam), = fasta_records(LAMBDA)
    records = []
    for i in range(300):
        n = int(rng.integers(1, 4_400))
        start = int(rng.integers(0, len(lam) - n))
        seq = list(lam[start:start + n])
        if i % 3 == 0:
            a = int(rng.integers(0, n))
            seq[a:a + 300] = [c.lower() for c in seq[a:a + 300]]
        if i % 5 == 0:
            seq[int(rng.integers(0, n))] = "N"
            seq[int(rng.integers(0, n))] = "R"
        records.append((f"scaffold_{i}", "".join(seq)))
    store = tokenize(tmp_path, write_fasta(tmp_path / "assembly.fa", records),
                     extra=["--chunk-size", "2048"])
    assert_store_matches(store, records)
    small = [len(seq) for _, seq in records if len(seq) <= 4096]
    assert len(small) > 256          # more than one batch
    for (name, seq) in records:
        codes = store.path / "contigs" / store.contig_index[name] / "codes"
        chunk, = json.loads((codes / "zarr.json").read_text())["chunk_grid"]["configuration"][
            "chunk_shape"]
        assert chunk == min(2048, len(seq))


def test_empty_record_is_skipped_and_reported(tmp_path, capsys, caplog):
    (name, seq), = fasta_records(LAMBDA)
    path = tmp_path / "in.fa"
    path.write_text(f">empty\n>{name}\n{seq[:100]}\n>also_empty\n\n")
    store = tokenize(tmp_path, path)
    assert store.contig_names == [name]
    out = capsys.readouterr()
    assert "2 empty FASTA record(s) skipped" in out.out
    assert "'empty' (line 1) has no sequence" in caplog.text
    assert store.meta["sources"][0]["empty_records"] == ["empty (line 1)", "also_empty (line 4)"]


def test_info_text_and_json(tmp_path, capsys):
    store = tokenize(tmp_path, CHR20, EX1_FA)
    capsys.readouterr()
    assert main(["info", str(store.path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [c["name"] for c in info["contigs"]] == ["20", "chr1", "chr2"]
    assert info["contigs"][0]["length"] == 2_000_000
    assert info["contigs"][0]["n_count"] == 60_000
    assert info["total_bases"] == 2_000_000 + 1575 + 1584
    assert info["reads"] == 0
    assert main(["info", str(store.path)]) == 0
    text = capsys.readouterr().out
    assert "2,000,000" in text and "chr2" in text and "3 contigs" in text


def test_reader_is_picklable_and_works_in_dataloader_workers(tmp_path):
    store = tokenize(tmp_path, CHR20, extra=["--chunk-size", "65536"])
    clone = pickle.loads(pickle.dumps(store))
    assert np.array_equal(clone.codes("20", 100_000, 100_100), store.codes("20", 100_000, 100_100))

    class Windows(torch.utils.data.Dataset):
        def __len__(self):
            return 16

        def __getitem__(self, i):
            start = 60_000 + i * 100_003
            return torch.from_numpy(store.codes("20", start, start + 1000).astype(np.int64))

    loader = torch.utils.data.DataLoader(Windows(), batch_size=4, num_workers=2)
    got = torch.cat(list(loader))
    (_, seq), = fasta_records(CHR20)
    for i in range(16):
        start = 60_000 + i * 100_003
        assert alphabet.decode(got[i].numpy().astype(np.uint8)) == seq[start:start + 1000].upper()
