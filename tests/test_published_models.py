"""Published checkpoints through the commands: a PlantCaduceus checkpoint directory (the
official code's fixture, tests/data/interop) given straight to ``score``, ``embed`` and
``evaluate`` as --model, converted in memory; the masked-LM score is PlantCaduceus's zero-shot
score (mask the variant, log p(alt) / p(ref) over the four bases), computed here by hand from
the model's logits; windows longer than the trained length are refused for such a model.
"""

from __future__ import annotations

import gzip
import json

import numpy as np
import pysam
import pytest
import torch
import zarr

from genossm import alphabet
from genossm.cli import main
from genossm.convert import build_model, convert, read_checkpoint
from genossm.model import strand_average
from helpers import ROOT, one_error_line

pytestmark = pytest.mark.usefixtures("one_thread")

PLANT = ROOT / "tests/data/interop/plantcaduceus_tiny"
WINDOW = 48
CONTIG_LENGTH = 400


@pytest.fixture(scope="module")
def model():
    return build_model(read_checkpoint(PLANT))


@pytest.fixture(scope="module")
def genome(tmp_path_factory):
    """(FASTA path, sequence): one random 400-base contig, bgzipped and faidx-indexed."""
    root = tmp_path_factory.mktemp("plant")
    rng = np.random.default_rng(7)
    seq = "".join(rng.choice(list("ACGT"), CONTIG_LENGTH))
    plain = root / "genome.fa"
    plain.write_text(f">chrP\n{seq}\n")
    fasta = root / "genome.fa.gz"
    pysam.tabix_compress(str(plain), str(fasta))
    pysam.faidx(str(fasta))
    return fasta, seq


def write_vcf(path, seq, variants):
    """variants: (1-based POS, REF, ALT) on chrP; REF is read from ``seq``."""
    lines = ["##fileformat=VCFv4.2", f"##contig=<ID=chrP,length={len(seq)}>",
             "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO"]
    for pos, ref_len, alt in variants:
        ref = seq[pos - 1:pos - 1 + ref_len]
        lines.append(f"chrP\t{pos}\t.\t{ref}\t{alt}\t.\tPASS\t.")
    path.write_text("\n".join(lines) + "\n")
    return path


def hand_llr(model, seq, pos, ref, alt) -> float:
    """PlantCaduceus's zero-shot score, by hand: the REF span of the window masked, then per
    masked position log p(alt) - log p(ref) with p a softmax over A C G T only."""
    start = pos - 1
    left, right = WINDOW // 2, WINDOW - WINDOW // 2
    window = seq[start - left:start] + "N" * len(ref) + seq[start + len(ref):
                                                          start + len(ref) + right]
    codes = torch.as_tensor(alphabet.encode(window).astype(np.int64))[None]
    codes[0, left:left + len(ref)] = alphabet.MASK
    with torch.no_grad():
        logits = model(codes)[0, left:left + len(ref), :4].double()
    logp = torch.log_softmax(logits, -1)          # over the four bases only
    index = {b: i for i, b in enumerate("ACGT")}
    return sum(float(logp[k, index[a]] - logp[k, index[r]])
               for k, (r, a) in enumerate(zip(ref, alt, strict=True)))


def read_scores(path) -> list[dict]:
    with pysam.VariantFile(str(path)) as vcf:
        return [dict(rec.info) for rec in vcf]


def test_score_with_a_published_checkpoint_as_model(model, genome, tmp_path, capsys):
    fasta, seq = genome
    variants = [(100, 1, "A" if seq[99] != "A" else "C"),        # SNV
                (201, 2, "".join("T" if b != "T" else "G" for b in seq[200:202])),   # MNV
                (300, 1, seq[299] + "AC")]                         # insertion: distances only
    vcf = write_vcf(tmp_path / "v.vcf", seq, variants)
    out = tmp_path / "scored.vcf.gz"
    argv = ["score", str(vcf), "--fasta", str(fasta), "--model", str(PLANT), "-o", str(out),
            "--window", str(WINDOW), "-q"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert err.count("converted in memory") == 1, err
    scores = read_scores(out)
    for (pos, ref_len, alt), info in zip(variants[:2], scores, strict=False):
        ref = seq[pos - 1:pos - 1 + ref_len]
        assert info["GENOSSM_LLR"][0] == pytest.approx(hand_llr(model, seq, pos, ref, alt),
                                                       rel=1e-4, abs=1e-5)
    assert scores[2]["GENOSSM_LLR"] == (None,)
    assert scores[2]["GENOSSM_COS"][0] > 0


def test_converted_trained_length_refuses_longer_windows(genome, tmp_path, capsys):
    fasta, seq = genome
    model_dir = convert(PLANT, tmp_path / "plant", trained_length=32)
    assert json.loads((model_dir / "config.json").read_text())["source"]["trained_length"] == 32
    vcf = write_vcf(tmp_path / "v.vcf", seq, [(100, 1, "A" if seq[99] != "A" else "C")])
    out = tmp_path / "scored.vcf.gz"
    argv = ["score", str(vcf), "--fasta", str(fasta), "--model", str(model_dir), "-o",
            str(out), "--window", str(WINDOW), "-q"]
    assert main(argv) == 2
    one_error_line(capsys, "--window 48", "longer than the 32", "--beyond-trained-length")
    assert not out.exists()
    assert main(argv + ["--beyond-trained-length"]) == 0
    embed_argv = ["embed", "--model", str(model_dir), "--fasta", str(fasta), "-o",
                  str(tmp_path / "e.zarr"), "-q"]
    assert main(embed_argv) == 2
    one_error_line(capsys, "region chrP:1-400", "longer than the 32")


def test_embed_with_a_published_checkpoint_as_model(model, genome, tmp_path, capsys):
    """The whole contig in one pass; the strand-averaged vector, by default."""
    fasta, seq = genome
    out = tmp_path / "e.zarr"
    assert main(["embed", "--model", str(PLANT), "--fasta", str(fasta), "-o", str(out), "-q",
                 "--per-base"]) == 0
    assert capsys.readouterr().err.count("converted in memory") == 1
    group = zarr.open_group(str(out), mode="r")
    codes = torch.as_tensor(alphabet.encode(seq).astype(np.int64))[None]
    with torch.no_grad():
        expected = strand_average(model.hidden_states(codes))[0].numpy()
    np.testing.assert_allclose(group["per_base"][:], expected, rtol=1e-4, atol=1e-5)
    assert group.attrs["genossm"]["width"] == model.config.d_model


def test_evaluate_with_a_published_checkpoint_as_model(genome, tmp_path, capsys):
    """Without a training record: the BED's regions, the Markov baseline fit on the rest of
    the store, windows of --window."""
    fasta, _ = genome
    store = tmp_path / "s.zarr"
    plain = tmp_path / "g.fa"
    with gzip.open(fasta, "rt") as f:
        plain.write_text(f.read())
    assert main(["tokenize", str(plain), "-o", str(store), "-q"]) == 0
    bed = tmp_path / "r.bed"
    bed.write_text("chrP\t300\t400\n")
    out = tmp_path / "m.json"
    argv = ["evaluate", str(PLANT), str(store), "-o", str(out), "-q"]
    assert main(argv) == 2
    one_error_line(capsys, "give the regions")
    assert main(argv + ["--regions", str(bed)]) == 2
    one_error_line(capsys, "give --window")
    assert main(argv + ["--regions", str(bed), "--window", "50"]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["bases_scored"] > 0 and metrics["markov_training_bases"] == 300
    assert metrics["bits_by_position"]["seq_len"] == 50
