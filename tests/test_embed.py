"""genossm embed: pooled and per-base vectors against one plain forward pass over the region's
sequence (fetched with pysam, encoded here), streaming == full pass, strands, RC averaging,
layers, FASTA-records mode, non-causal models, and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pysam
import pytest
import torch
import zarr

from genossm.cli import main
from genossm.model import GenoSSM, ModelConfig, save_model
from helpers import CHR20, LAMBDA, fasta_records, files, one_error_line, unwritable_dir, write_fasta

CODES = {base: code for code, base in enumerate("ACGTN")}
RC = str.maketrans("ACGTN", "TGCAN")
# Two chr20 regions past the leading N; 1,037 bases is not a multiple of the piece lengths used.
REGIONS = [("20", 60_100, 61_137, "first", "+"), ("20", 500_000, 500_800, "second", "-")]


pytestmark = pytest.mark.usefixtures("one_thread")


def make_model(seed=0, **kw) -> GenoSSM:
    torch.manual_seed(seed)
    cfg = dict(d_model=16, n_layer=2, d_state=8, headdim=8, chunk_size=16)
    model = GenoSSM(ModelConfig(**{**cfg, **kw})).eval()
    with torch.no_grad():  # non-trivial values everywhere (init leaves some at 0 or 1)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def causal(tmp_path_factory):
    model = make_model()
    return model, save_model(model, tmp_path_factory.mktemp("causal"))


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    path = tmp_path_factory.mktemp("bed") / "regions.bed"
    path.write_text("".join(f"{c}\t{s}\t{e}\t{n}\t0\t{st}\n" for c, s, e, n, st in REGIONS))
    return path


def sequence(chrom, start, end, strand="+", fasta=CHR20) -> str:
    with pysam.FastaFile(str(fasta)) as fa:
        seq = fa.fetch(chrom, start, end).upper()
    return seq[::-1].translate(RC) if strand == "-" else seq


def full_pass(model, seq, layer=-1) -> np.ndarray:
    """Hidden states of one plain forward pass over ``seq``, float64 (length, width)."""
    tokens = torch.tensor([[CODES[b] for b in seq]])
    with torch.no_grad():
        return model.hidden_states(tokens, layer=layer)[0].double().numpy()


def run_embed(model_dir, out, *args, fasta=CHR20) -> int:
    return main(["embed", "--model", str(model_dir), "--fasta", str(fasta), "-o", str(out),
                 "-q", *map(str, args)])


def read(out) -> dict:
    g = zarr.open_group(str(out), mode="r")
    arrays = {k: g[k][:] for k in ("pooled", "per_base", "per_base_offsets") if k in g}
    regions = {k: g[f"regions/{k}"][:].tolist()
               for k in ("chrom", "start", "end", "name", "strand")}
    return {"attrs": g.attrs["genossm"], "regions": regions, **arrays}


def assert_close(actual, expected, tol=1e-5):
    err = np.abs(actual - expected).max() / np.abs(expected).max()
    assert err <= tol, f"relative error {err:.2e}"


@pytest.mark.parametrize("chunk_length", [65536, 100])
def test_bed_regions_equal_full_pass(causal, bed, tmp_path, capsys, chunk_length):
    """Pooled = mean of the full pass, per-base = the full pass, whether or not the region is
    streamed in pieces; strand '-' embeds the reverse complement, in that strand's order."""
    model, model_dir = causal
    out = tmp_path / "e.zarr"
    assert run_embed(model_dir, out, "--bed", bed, "--per-base",
                     "--chunk-length", chunk_length) == 0
    assert capsys.readouterr().out.strip() == \
        f"genossm embed: 2 regions, 1,837 bases, width 16 -> {out}"
    e = read(out)
    assert e["regions"] == {"chrom": ["20", "20"], "start": [60_100, 500_000],
                            "end": [61_137, 500_800], "name": ["first", "second"],
                            "strand": ["+", "-"]}
    assert e["per_base_offsets"].tolist() == [0, 1037, 1837]
    assert e["pooled"].dtype == e["per_base"].dtype == np.float32
    for i, (chrom, start, end, _, strand) in enumerate(REGIONS):
        expected = full_pass(model, sequence(chrom, start, end, strand))
        rows = e["per_base"][e["per_base_offsets"][i]:e["per_base_offsets"][i + 1]]
        assert_close(rows, expected)
        assert_close(e["pooled"][i], expected.mean(0))
    attrs = e["attrs"]
    assert (attrs["kind"], attrs["layer"], attrs["pooling"], attrs["width"]) == \
        ("embeddings", 2, "mean", 16)
    assert attrs["per_base"] and not attrs["rc_average"]
    assert attrs["model_config"]["d_model"] == 16
    assert [p.name for p in tmp_path.iterdir()] == ["e.zarr"]


def test_rc_average(causal, bed, tmp_path):
    """Each base's vector is the mean of both strands' vectors for that base; pooled is the
    mean of the two strands' means. Streamed in pieces that do not divide the regions."""
    model, model_dir = causal
    out = tmp_path / "e.zarr"
    assert run_embed(model_dir, out, "--bed", bed, "--per-base", "--rc-average",
                     "--chunk-length", 300) == 0
    e = read(out)
    assert e["attrs"]["rc_average"]
    for i, (chrom, start, end, _, strand) in enumerate(REGIONS):
        own = full_pass(model, sequence(chrom, start, end, strand))
        other = full_pass(model, sequence(chrom, start, end, strand).translate(RC)[::-1])
        rows = e["per_base"][e["per_base_offsets"][i]:e["per_base_offsets"][i + 1]]
        assert_close(rows, (own + other[::-1]) / 2)
        assert_close(e["pooled"][i], (own.mean(0) + other.mean(0)) / 2)


@pytest.mark.parametrize("layer, index", [(0, 0), (1, 1), (-2, 1)])
def test_layer(causal, bed, tmp_path, layer, index):
    model, model_dir = causal
    out = tmp_path / "e.zarr"
    assert run_embed(model_dir, out, "--bed", bed, "--layer", layer,
                     "--chunk-length", 256) == 0
    e = read(out)
    assert e["attrs"]["layer"] == index and "per_base" not in e
    for i, (chrom, start, end, _, strand) in enumerate(REGIONS):
        expected = full_pass(model, sequence(chrom, start, end, strand), layer=index)
        assert_close(e["pooled"][i], expected.mean(0))


def test_fasta_records(causal, tmp_path, capsys):
    """Without --bed every record is one region, whole, named after the record."""
    model, model_dir = causal
    (name, lam), = fasta_records(LAMBDA)
    short = sequence("20", 1_000_000, 1_000_500)
    fasta = write_fasta(tmp_path / "in.fa", [(name, lam), ("short", short.lower())])
    out = tmp_path / "e.zarr"
    assert run_embed(model_dir, out, fasta=fasta) == 0
    assert f"2 regions, {len(lam) + 500:,} bases" in capsys.readouterr().out
    e = read(out)
    assert e["regions"]["name"] == e["regions"]["chrom"] == [name, "short"]
    assert e["regions"]["end"] == [len(lam), 500] and e["regions"]["strand"] == ["+", "+"]
    for i, seq in enumerate([lam, short]):
        assert_close(e["pooled"][i], full_pass(model, seq.upper()).mean(0))


def test_rc_equivariant_model(bed, tmp_path, caplog):
    """A non-causal model embeds a region in one pass; an rc_equivariant model gives the
    strand-averaged embedding (forward half + channel-flipped reverse half, halved: what
    PlantCaduceus documents, computed here by hand) of width d_model, or with
    --strand-halves the raw 2·d_model hidden states; --rc-average is a no-op (said so)."""
    model = make_model(objective="mlm", rc_equivariant=True)
    model_dir = save_model(model, tmp_path / "rceq")
    d = model.config.d_model
    for halves in (False, True):
        out = tmp_path / f"e{halves}.zarr"
        args = ["--bed", bed, "--rc-average", "--per-base"] + (["--strand-halves"] * halves)
        assert run_embed(model_dir, out, *args) == 0
        assert "--rc-average has no effect" in caplog.text
        e = read(out)
        assert e["attrs"]["width"] == (2 * d if halves else d) and not e["attrs"]["rc_average"]
        assert e["attrs"]["strand_halves"] == halves
        for i, (chrom, start, end, _, strand) in enumerate(REGIONS):
            expected = full_pass(model, sequence(chrom, start, end, strand))
            if not halves:
                expected = (expected[:, :d] + expected[:, d:][:, ::-1]) / 2
            assert_close(e["per_base"][e["per_base_offsets"][i]:e["per_base_offsets"][i + 1]],
                         expected)
            assert_close(e["pooled"][i], expected.mean(0))


def test_bidirectional_max_length(bed, tmp_path, capsys):
    model_dir = save_model(make_model(objective="mlm", bidirectional=True), tmp_path / "bi")
    out = tmp_path / "e.zarr"
    assert run_embed(model_dir, out, "--bed", bed, "--max-length", 1000) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"genossm: error: {bed}: line 1: 1,037 bases is more than --max-length "
                   "1,000: a non-causal model (bidirectional or rc_equivariant) embeds a region "
                   "in one pass"]
    assert not out.exists()


@pytest.mark.parametrize("line, message", [
    ("chr20\t70000\t70100", "contig 'chr20' is not in"),
    ("20\t1999990\t2000010", "runs past the contig's end (2,000,000)"),
    ("20\t70000\t70100\tx\t0\t*", "strand must be +, - or ., got '*'"),
    ("20\t70100\t70000", "need 0 <= start < end"),
    ("20\t0\t99999999999999999999999", "end 99999999999999999999999 is past any contig"),
    ("20\t9223372036854775806\t9223372036854775807", "runs past the contig's end"),
])
def test_bad_bed(causal, tmp_path, capsys, line, message):
    """A bad BED line: exit 2, one line naming the file and line, nothing written."""
    _, model_dir = causal
    bed = tmp_path / "bad.bed"
    bed.write_text(f"#header\n20\t60000\t60100\n{line}\n")
    out = tmp_path / "out" / "e.zarr"
    assert run_embed(model_dir, out, "--bed", bed) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"genossm: error: {bed}: line 3: ")
    assert message in err[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_existing_output_needs_force(causal, bed, tmp_path, capsys):
    _, model_dir = causal
    out = tmp_path / "e.zarr"
    assert run_embed(model_dir, out, "--bed", bed, "--per-base") == 0
    assert run_embed(model_dir, out, "--bed", bed) == 2
    one_error_line(capsys, f"{out}: output exists; use --force to replace it")
    assert run_embed(model_dir, out, "--bed", bed, "--force") == 0
    assert read(out)["pooled"].shape == (2, 16) and "per_base" not in read(out)
    assert [p.name for p in tmp_path.iterdir()] == ["e.zarr"]


def test_force_replaces_only_embeddings_genossm_wrote(causal, bed, tmp_path, capsys):
    _, model_dir = causal
    out = tmp_path / "e.zarr"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert run_embed(model_dir, out, "--bed", bed, "--force") == 2
    one_error_line(capsys, "exists and is a directory of 1 entry, not a genossm embeddings "
                           "group; --force replaces only what genossm wrote")
    (out / "notes.txt").unlink()
    (out / "zarr.json").write_text('{"attributes": {"genossm": {"kind": "tokens"}}}')
    assert run_embed(model_dir, out, "--bed", bed, "--force") == 2
    one_error_line(capsys, "not a genossm embeddings group")
    assert [p.name for p in out.iterdir()] == ["zarr.json"]


def test_an_input_is_never_an_output_even_with_force(causal, tmp_path, capsys):
    _, model_dir = causal
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    fasta = write_fasta(inputs / "genome.fa", [("20", sequence("20", 60_000, 62_000))])
    bed = inputs / "regions.bed"
    bed.write_text("20\t100\t300\n")
    before, model_files = files(inputs), files(model_dir)
    for out in (fasta, bed, inputs, model_dir, model_dir / "e.zarr", Path(f"{fasta}.fai")):
        for force in ([], ["--force"]):
            assert run_embed(model_dir, out, "--bed", bed, *force, fasta=fasta) == 2
            one_error_line(capsys, "is an input of this run")
    assert files(inputs) == before and files(model_dir) == model_files


@pytest.mark.parametrize("records, culprit", [
    ([("a", "ACGT" * 10), ("b", ""), ("c", "ACGT" * 10)], "record 2 ('b'): no sequence"),
    ([("b", ""), ("a", "ACGT" * 10)], "record 1 ('b'): no sequence"),
    ([("a", "ACGT" * 10), ("b desc", "ACGT"), ("a", "TTTT")],
     "record 3 ('a'): a second record named 'a' (record 1 is the first): names must be unique"),
])
def test_fasta_records_that_the_index_hides_are_refused(causal, tmp_path, capsys, records,
                                                        culprit):
    """htslib's faidx leaves a record without sequence out of the index and keeps only the
    first of two records of one name: embedding the FASTA's records refuses both."""
    _, model_dir = causal
    fasta = write_fasta(tmp_path / "genome.fa", records)
    out = tmp_path / "e.zarr"
    assert run_embed(model_dir, out, fasta=fasta) == 2
    one_error_line(capsys, f"{fasta}: {culprit}")
    assert not out.exists()


@pytest.mark.parametrize("place", ["unwritable", "under a file"])
def test_an_output_that_cannot_be_written_is_one_line(causal, bed, tmp_path, capsys, place):
    _, model_dir = causal
    (tmp_path / "file").write_text("")
    out = (unwritable_dir(tmp_path) if place == "unwritable" else tmp_path / "file") / "e.zarr"
    assert run_embed(model_dir, out, "--bed", bed) == 2
    one_error_line(capsys, f"{out}: cannot write")
    assert sorted(p.name for p in tmp_path.iterdir()) in (["file"], ["file", "read_only"])


def test_a_failure_half_way_leaves_the_old_output_and_no_temporary(causal, bed, tmp_path,
                                                                  monkeypatch):
    _, model_dir = causal
    out = tmp_path / "e.zarr"
    assert run_embed(model_dir, out, "--bed", bed) == 0
    old = files(out)
    import genossm.embed as embed_module
    real, calls = embed_module.embed_region, []

    def fail_second(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("failed half way")
        return real(*args, **kw)
    monkeypatch.setattr(embed_module, "embed_region", fail_second)
    with pytest.raises(RuntimeError, match="failed half way"):
        run_embed(model_dir, out, "--bed", bed, "--per-base", "--rc-average",
                  "--chunk-length", 100, "--force")
    assert len(calls) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["e.zarr"] and files(out) == old


@pytest.mark.parametrize("has_model, fasta, extra, culprit", [
    (True, LAMBDA, [], f"{LAMBDA}: cannot open as an indexed FASTA"),
    (False, CHR20, [], "not a model directory (no config.json)"),
    (True, CHR20, ["--layer", 3], "--layer 3 is out of range for a model of 2 layers"),
])
def test_bad_arguments(causal, bed, tmp_path, capsys, has_model, fasta, extra, culprit):
    """A plain-gzip FASTA (not indexable), a directory that holds no model, a layer the model
    lacks: exit 2 with one line naming the culprit, nothing written."""
    model_dir = causal[1] if has_model else tmp_path / "not_a_model"
    model_dir.mkdir(exist_ok=True)
    out = tmp_path / "e.zarr"
    assert run_embed(model_dir, out, "--bed", bed, *extra, fasta=fasta) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("genossm: error: ") and culprit in err[0]
    assert not out.exists()
