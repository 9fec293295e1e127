"""`genossm evaluate` against references computed here: one plain forward pass per region (or
per masked window) and MarkovBaseline used directly, on sequence read by pysam."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pysam
import pytest
import torch

from genossm import alphabet
from genossm.cli import main
from genossm.evaluate import MASK_FRACTION, MASK_SEED
from genossm.markov import MarkovBaseline
from genossm.model import GenoSSM, ModelConfig, save_model
from genossm.tokenize import tokenize
from helpers import CHR20, LAMBDA, fasta_records, files, one_error_line, unwritable_dir, write_fasta

SEQ_LEN = 64
MAX_ORDER = 4
LAMBDA_NAME = "gi|9626243|ref|NC_001416.1|"
# chr20:59,001-66,000 (its first 1,000 bases are N) as contig "20", and the first 4 kb of lambda
TRAIN = [("20", 0, 500), ("20", 2000, 7000), (LAMBDA_NAME, 0, 3000)]
VALIDATION = [("20", 500, 2000), (LAMBDA_NAME, 3000, 4000)]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sequences() -> dict[str, str]:
    with pysam.FastaFile(str(CHR20)) as fa:
        chr20 = fa.fetch("20", 59_000, 66_000)
    (name, lam), = fasta_records(LAMBDA)
    assert name == LAMBDA_NAME
    return {"20": chr20, LAMBDA_NAME: lam[:4000]}


@pytest.fixture(scope="module")
def store(tmp_path_factory, sequences):
    tmp = tmp_path_factory.mktemp("store")
    fasta = write_fasta(tmp / "genome.fa", sequences.items())
    tokenize([fasta], tmp / "genome.zarr", progress=False)
    return tmp / "genome.zarr"


METRICS_LINES = [
    {"split": "train", "step": 10, "tokens": 640, "loss": 1.30, "bits_per_base": 1.876,
     "lr": 1e-3, "seq_len": SEQ_LEN, "tokens_per_s": 1e4, "elapsed_s": 1.0},
    {"split": "val", "step": 10, "tokens": 640, "loss": 1.32, "bits_per_base": 1.904,
     "elapsed_s": 1.2},
    {"split": "train", "step": 20, "tokens": 1280, "loss": 1.20, "bits_per_base": 1.731,
     "lr": 1e-3, "seq_len": SEQ_LEN, "tokens_per_s": 1e4, "elapsed_s": 2.0},
    {"split": "val", "step": 20, "tokens": 1280, "loss": 1.25, "bits_per_base": 1.803,
     "elapsed_s": 2.2},
]


def make_model_dir(path, store_path, **config) -> GenoSSM:
    """A tiny model with a large embedding (so predictions vary a lot with context), saved with
    a training section and a metrics.jsonl as `genossm train` writes them."""
    torch.manual_seed(0)
    model = GenoSSM(ModelConfig(d_model=16, n_layer=2, d_state=8, headdim=8, chunk_size=16,
                                **config)).eval()
    with torch.no_grad():
        model.embedding.weight.normal_(std=0.5)

    def intervals(spans):
        return [{"store": 0, "contig": c, "start": s, "end": e} for c, s, e in spans]
    split = {"stores": [str(store_path)], "train": intervals(TRAIN),
             "validation": intervals(VALIDATION),
             "train_bases": sum(e - s for _, s, e in TRAIN),
             "validation_bases": sum(e - s for _, s, e in VALIDATION)}
    save_model(model, path, extra={"training": {
        "stores": [str(store_path)], "seq_len": SEQ_LEN, "seed": 1, "steps": 20,
        "tokens": 1280, "split": split}})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in METRICS_LINES))
    return model


@pytest.fixture(scope="module")
def clm(tmp_path_factory, store):
    path = tmp_path_factory.mktemp("clm") / "model"
    return path, make_model_dir(path, store)


def encoded(sequences, contig, start, end) -> np.ndarray:
    return alphabet.encode(sequences[contig][start:end])


def reference_markov(sequences):
    """MarkovBaseline fit on the training intervals, order chosen on the last tenth of each."""
    fit, held = [], []
    for contig, start, end in TRAIN:
        cut = end - (end - start) // 10
        fit.append(encoded(sequences, contig, start, cut))
        held.append(encoded(sequences, contig, cut, end))
    markov = MarkovBaseline(max_order=MAX_ORDER)
    scores = markov.choose_order(fit, held)
    return markov, scores


def next_base_bits(model, codes) -> np.ndarray:
    """-log2 p of every base from one plain forward pass (NaN at position 0 and on N)."""
    tokens = torch.from_numpy(codes.astype(np.int64))
    with torch.no_grad():
        logp = torch.log_softmax(model(tokens[None])[0].double(), dim=-1)
    bits = np.full(codes.size, np.nan)
    bits[1:] = -logp[:-1].gather(1, tokens[1:, None])[:, 0].numpy() / math.log(2)
    bits[codes == alphabet.N] = np.nan
    return bits


def check_regions(metrics, spans, model_bits, markov_bits):
    """Per region and overall: bases scored, model and Markov bits per base."""
    assert [(r["contig"], r["start"], r["end"]) for r in metrics["regions"]] == spans
    total_model = total_markov = total_bases = 0.0
    for got, m_bits, k_bits in zip(metrics["regions"], model_bits, markov_bits, strict=True):
        scored = ~np.isnan(m_bits)
        assert got["bases"] == scored.sum()
        assert got["model_bits_per_base"] == pytest.approx(m_bits[scored].mean(), rel=1e-5)
        assert got["markov_bits_per_base"] == pytest.approx(k_bits[scored].mean(), rel=1e-12)
        total_model += m_bits[scored].sum()
        total_markov += k_bits[scored].sum()
        total_bases += scored.sum()
    assert metrics["bases_scored"] == total_bases
    assert metrics["model_bits_per_base"] == pytest.approx(total_model / total_bases, rel=1e-5)
    assert metrics["markov_bits_per_base"] == pytest.approx(total_markov / total_bases,
                                                            rel=1e-12)
    assert metrics["improvement_bits_per_base"] == pytest.approx(
        metrics["markov_bits_per_base"] - metrics["model_bits_per_base"])


def causal_references(model, markov, sequences, spans):
    model_bits, markov_bits = [], []
    for contig, start, end in spans:
        codes = encoded(sequences, contig, start, end)
        model_bits.append(next_base_bits(model, codes))
        markov_bits.append(-markov.log2_probs(codes))
    return model_bits, markov_bits


def test_causal_model_streamed_over_the_validation_split(clm, store, sequences, tmp_path,
                                                         capsys):
    model_dir, model = clm
    out = tmp_path / "eval" / "metrics.json"
    # pieces of 300 bases: every region is streamed in several pieces that carry the state
    rc = main(["evaluate", str(model_dir), str(store), "-o", str(out), "--chunk-length", "300",
               "--markov-max-order", str(MAX_ORDER), "--max-windows", "100", "-q"])
    assert rc == 0
    metrics = json.loads(out.read_text())
    assert metrics["measure"] == "causal_streamed"
    assert metrics["regions_from"] == "validation split"
    assert metrics["training_overlap_bases"] == 0

    markov, scores = reference_markov(sequences)
    assert metrics["markov_order"] == markov.order
    assert metrics["markov_held_out_bits_per_base_by_order"] == {
        str(k): pytest.approx(v, rel=1e-12) for k, v in scores.items()}
    assert metrics["markov_training_bases"] == sum(e - s for _, s, e in TRAIN)
    model_bits, markov_bits = causal_references(model, markov, sequences, VALIDATION)
    check_regions(metrics, VALIDATION, model_bits, markov_bits)
    assert metrics["bases_scored"] == 1000 + 999  # N (chr20 before 1,000) and region starts: no
    assert np.nanstd(model_bits[1]) > 0.5  # the comparison is not against a flat prediction

    # bits by position: every whole window of 64 bases tiled from the regions' starts
    windows = [encoded(sequences, c, s + k, s + k + SEQ_LEN)
               for c, s, e in VALIDATION for k in range(0, e - s - SEQ_LEN + 1, SEQ_LEN)]
    per_window = np.array([next_base_bits(model, codes) for codes in windows])
    profile = metrics["bits_by_position"]
    assert profile["seq_len"] == SEQ_LEN and profile["windows"] == len(windows)
    bins = profile["bins"]
    assert bins[0]["start"] == 1 and bins[-1]["end"] == SEQ_LEN
    assert all(a["end"] == b["start"] for a, b in zip(bins, bins[1:], strict=False))
    for b in bins:
        cell = per_window[:, b["start"]:b["end"]]
        cell = cell[~np.isnan(cell)]
        assert b["bases"] == cell.size
        if cell.size:
            assert b["bits_per_base"] == pytest.approx(cell.mean(), rel=1e-5)

    assert metrics["last_train"] == METRICS_LINES[2]
    assert metrics["last_val"] == METRICS_LINES[3]
    assert set(metrics) >= {"model_dir", "store", "regions", "markov_bits_per_base", "plots"}
    for name in ("training_curves.png", "bits_by_position.png"):
        assert (out.parent / name).read_bytes()[:8] == PNG_MAGIC
        assert str(out.parent / name) in metrics["plots"].values()
    line = capsys.readouterr().out.strip()
    assert f"model {metrics['model_bits_per_base']:.3f} bits/base vs Markov order " \
           f"{markov.order} {metrics['markov_bits_per_base']:.3f} bits/base over " \
           f"{metrics['bases_scored']:,} bases" in line


def test_regions_from_a_bed(clm, store, sequences, tmp_path):
    model_dir, model = clm
    spans = [(LAMBDA_NAME, 2500, 3500), ("20", 6000, 7000)]
    bed = tmp_path / "regions.bed"
    bed.write_text("track name=test\n" + "".join(f"{c}\t{s}\t{e}\n" for c, s, e in spans))
    out, plots = tmp_path / "metrics.json", tmp_path / "plots"
    rc = main(["evaluate", str(model_dir), str(store), "--regions", str(bed), "-o", str(out),
               "--plots", str(plots), "--markov-max-order", str(MAX_ORDER), "-q"])
    assert rc == 0
    metrics = json.loads(out.read_text())
    assert metrics["regions_from"] == str(bed)
    assert metrics["training_overlap_bases"] == 500 + 1000
    markov, _ = reference_markov(sequences)
    check_regions(metrics, spans, *causal_references(model, markov, sequences, spans))
    assert sorted(p.name for p in plots.iterdir()) == ["bits_by_position.png",
                                                       "training_curves.png"]


@pytest.mark.parametrize("bad_line, message", [
    ("20\t6000\t7001\n", "runs past the contig's end"),
    ("chr20\t0\t100\n", "'chr20' is not in"),
])
def test_a_bad_bed_line_is_a_one_line_error_and_writes_nothing(clm, store, tmp_path, capsys,
                                                               bad_line, message):
    bed = tmp_path / "regions.bed"
    bed.write_text("20\t100\t200\n" + bad_line)
    out = tmp_path / "metrics.json"
    rc = main(["evaluate", str(clm[0]), str(store), "--regions", str(bed), "-o", str(out)])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err.startswith(f"genossm: error: {bed}: line 2: ") and message in err
    assert list(tmp_path.iterdir()) == [bed]


def test_masked_lm_scored_on_masked_positions(tmp_path, store, sequences):
    """A bidirectional masked-LM model; its recorded store path is elsewhere, so the store is
    matched by contig name."""
    model_dir = tmp_path / "mlm"
    model = make_model_dir(model_dir, tmp_path / "elsewhere" / "genome.zarr",
                           objective="mlm", bidirectional=True)
    out = tmp_path / "metrics.json"
    rc = main(["evaluate", str(model_dir), str(store), "-o", str(out),
               "--markov-max-order", str(MAX_ORDER), "--max-windows", "4", "-q"])
    assert rc == 0
    metrics = json.loads(out.read_text())
    assert metrics["measure"] == "masked_15pct"

    # windows of L tiled from each region's start; round(15 %) of the non-N bases of each,
    # drawn by a generator seeded with (MASK_SEED, region index, offset), replaced by MASK
    markov, _ = reference_markov(sequences)
    model_bits, markov_bits = [], []
    for index, (contig, start, end) in enumerate(VALIDATION):
        codes = encoded(sequences, contig, start, end)
        bits = np.full(codes.size, np.nan)
        for offset in range(0, codes.size, SEQ_LEN):
            window = codes[offset:offset + SEQ_LEN]
            bases = np.flatnonzero(window != alphabet.N)
            rng = np.random.default_rng([MASK_SEED, index, offset])
            hidden = rng.choice(bases, size=round(MASK_FRACTION * bases.size), replace=False)
            tokens = torch.from_numpy(window.astype(np.int64))
            masked = tokens.clone()
            masked[hidden] = alphabet.MASK
            with torch.no_grad():
                logp = torch.log_softmax(model(masked[None])[0].double(), dim=-1)
            bits[offset + hidden] = -logp[hidden, tokens[hidden]].numpy() / math.log(2)
        model_bits.append(bits)
        markov_bits.append(-markov.log2_probs(codes))
    check_regions(metrics, VALIDATION, model_bits, markov_bits)
    assert metrics["bits_by_position"]["windows"] == 4
    assert (tmp_path / "bits_by_position.png").read_bytes()[:8] == PNG_MAGIC


# --- the output policy, staging and bad input ----------------------------------------------------

def evaluate_cli(model_dir, store, out, *args) -> int:
    return main(["evaluate", str(model_dir), str(store), "-o", str(out), "--markov-max-order",
                 str(MAX_ORDER), "--max-windows", "2", "-q", *map(str, args)])


def test_an_input_is_never_an_output_even_with_force(clm, store, tmp_path, capsys):
    model_dir, _ = clm
    bed = tmp_path / "regions.bed"
    bed.write_text("20\t100\t200\n")
    model_files, store_files = files(model_dir), files(store)
    for out, extra in ((model_dir / "config.json", []), (model_dir / "metrics.json", []),
                       (bed, ["--regions", bed]), (store / "zarr.json", []),
                       (tmp_path / "metrics.json", ["--plots", model_dir])):
        for force in ([], ["--force"]):
            assert evaluate_cli(model_dir, store, out, *extra, *force) == 2
            one_error_line(capsys, "is an input of this run")
    assert files(model_dir) == model_files and files(store) == store_files
    assert [p.name for p in tmp_path.iterdir()] == ["regions.bed"]


def test_force_replaces_only_what_evaluate_wrote(clm, store, tmp_path, capsys):
    model_dir, _ = clm
    out = tmp_path / "metrics.json"
    assert evaluate_cli(model_dir, store, out) == 0
    capsys.readouterr()
    metrics = json.loads(out.read_text())
    assert metrics["created_by"].startswith("genossm ")
    ours = files(tmp_path)
    assert sorted(map(str, ours)) == ["bits_by_position.png", "metrics.json",
                                      "training_curves.png"]
    assert evaluate_cli(model_dir, store, out) == 2
    one_error_line(capsys, "output exists; use --force to replace it")
    older = {k: v for k, v in metrics.items() if k != "created_by"}   # before created_by
    foreign = {"metrics.json": b'{"accuracy": 0.9}\n',
               "training_curves.png": ours[Path("training_curves.png")].replace(b"genossm",
                                                                                b"someone")}
    for name, data in foreign.items():
        (tmp_path / name).write_bytes(data)
        assert evaluate_cli(model_dir, store, out, "--force") == 2
        one_error_line(capsys, f"{name}: exists and is a file of", "genossm wrote")
        assert (tmp_path / name).read_bytes() == data
        (tmp_path / name).write_bytes(ours[Path(name)])
    out.write_text(json.dumps(older))
    assert evaluate_cli(model_dir, store, out, "--force") == 0
    assert json.loads(out.read_text())["created_by"] == metrics["created_by"]


@pytest.mark.parametrize("fail", ["fit_markov", "bits_by_position", "plot_bits_by_position"])
def test_a_failure_leaves_no_plot_no_metrics_and_the_old_outputs(clm, store, tmp_path,
                                                                 monkeypatch, fail):
    import genossm.evaluate as evaluate_module
    model_dir, _ = clm
    out = tmp_path / "metrics.json"

    def failing(*args, **kw):
        raise RuntimeError("failed half way")
    with monkeypatch.context() as m:
        m.setattr(evaluate_module, fail, failing)
        with pytest.raises(RuntimeError, match="failed half way"):
            evaluate_cli(model_dir, store, out)
    assert list(tmp_path.iterdir()) == []
    assert evaluate_cli(model_dir, store, out) == 0
    old = files(tmp_path)
    monkeypatch.setattr(evaluate_module, fail, failing)
    with pytest.raises(RuntimeError, match="failed half way"):
        evaluate_cli(model_dir, store, out, "--force")
    assert files(tmp_path) == old


@pytest.mark.parametrize("option", ["-o", "--plots"])
@pytest.mark.parametrize("place", ["unwritable", "under a file"])
def test_an_output_that_cannot_be_written_is_one_line_before_the_work(
        clm, store, tmp_path, capsys, monkeypatch, option, place):
    import genossm.evaluate as evaluate_module
    monkeypatch.setattr(evaluate_module, "fit_markov", None)   # never reached
    (tmp_path / "file").write_text("")
    directory = unwritable_dir(tmp_path) if place == "unwritable" else tmp_path / "file"
    if option == "-o":
        args = [directory / "metrics.json"]
    else:
        args = [tmp_path / "metrics.json", "--plots", directory / "plots"]
    assert evaluate_cli(clm[0], store, *args) == 2
    one_error_line(capsys, f"{directory}", "cannot write")
    assert sorted(p.name for p in tmp_path.iterdir()) in (["file"], ["file", "read_only"])


def test_a_bed_end_past_64_bits_is_one_line(clm, store, tmp_path, capsys):
    bed = tmp_path / "regions.bed"
    bed.write_text("20\t100\t200\n20\t0\t99999999999999999999999\n")
    assert evaluate_cli(clm[0], store, tmp_path / "metrics.json", "--regions", bed) == 2
    one_error_line(capsys, f"{bed}: line 2: end 99999999999999999999999 is past any contig")
    assert list(tmp_path.iterdir()) == [bed]
