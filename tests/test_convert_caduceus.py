"""genossm.convert against the official Caduceus / PlantCaduceus fixtures (tests/data/interop):
Caduceus-Ph (bidirectional), Caduceus-PS fused and unfused (RCPS; the same weights give
different functions through the two official paths) and PlantCaduceus (RCPS, fused, its own
vocabulary).

On genossm codes, the converted model's A C G T N logit columns must equal the official logits
at those tokens' ids, and its hidden states the official last hidden state, to 1e-4 of the
largest value (float32, CPU); masked inputs and reverse-complemented inputs too. The id map of
each fixture is read from the fixture's own metadata.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from genossm import alphabet
from genossm.convert import convert, read_checkpoint
from genossm.errors import InputError
from genossm.model import load_model, reverse_complement_logits, strand_average

pytestmark = pytest.mark.usefixtures("one_thread")

INTEROP = Path(__file__).parent / "data" / "interop"
FIXTURES = ["caduceus_ph_tiny", "caduceus_ps_tiny", "caduceus_ps_tiny_unfused",
            "plantcaduceus_tiny"]


def fixture_io(name):
    """(tensors, genossm code -> source id for A C G T N MASK) of one fixture."""
    path = INTEROP / name / "io.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    ids = json.loads(meta["id_map"])
    source_ids = [ids[b] for b in alphabet.BASES] + [int(meta["mask_id"])]
    return load_file(str(path)), source_ids


def to_codes(source_tokens, source_ids):
    """Source token ids -> genossm codes."""
    lookup = {s: code for code, s in enumerate(source_ids)}
    return source_tokens.clone().apply_(lambda t: lookup[t])


def assert_close(mine, ref, what):
    scale = ref.abs().max().item()
    diff = (mine - ref).abs().max().item()
    assert diff <= 1e-4 * scale, f"{what}: max |diff| {diff:.3g} > 1e-4 x {scale:.3g}"


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("caduceus")
    return {name: load_model(convert(INTEROP / name, root / name)) for name in FIXTURES}


@pytest.mark.parametrize("name", FIXTURES)
def test_matches_the_official_code(converted, name):
    io, source_ids = fixture_io(name)
    model = converted[name]
    bases = source_ids[:alphabet.NUM_BASE_CODES]
    with torch.no_grad():
        for inputs, logits in (("input_ids", "logits"), ("masked_input_ids", "masked_logits"),
                               ("rc_input_ids", "rc_logits")):
            if inputs not in io:
                continue
            codes = to_codes(io[inputs], source_ids)
            assert_close(model(codes)[..., :alphabet.NUM_BASE_CODES], io[logits][..., bases],
                         f"{name} {logits}")
        codes = to_codes(io["input_ids"], source_ids)
        assert_close(model.hidden_states(codes), io["hidden_states"], f"{name} hidden_states")
    assert (codes == alphabet.MASK).sum() == 0
    assert (to_codes(io["masked_input_ids"], source_ids)[:, 50] == alphabet.MASK).all()


@pytest.mark.parametrize("name", ["caduceus_ps_tiny", "plantcaduceus_tiny"])
def test_rcps_models_are_rc_equivariant(converted, name):
    io, source_ids = fixture_io(name)
    model = converted[name]
    codes = to_codes(io["input_ids"], source_ids)
    rc = to_codes(io["rc_input_ids"], source_ids)
    with torch.no_grad():
        torch.testing.assert_close(model(rc), reverse_complement_logits(model(codes)),
                                   rtol=0, atol=1e-5)
        h, h_rc = model.hidden_states(codes), model.hidden_states(rc)
        torch.testing.assert_close(h_rc, h.flip(1, 2), rtol=0, atol=1e-5)
        # PlantCaduceus's documented embedding: forward half + channel-flipped reverse half, /2
        d = model.config.d_model
        official = (io["hidden_states"][..., :d] + io["hidden_states"][..., d:].flip(-1)) / 2
        assert_close(strand_average(h), official, "strand-averaged embedding")


def test_fused_and_unfused_paths_differ_as_the_official_code_does(converted):
    fused, unfused = converted["caduceus_ps_tiny"], converted["caduceus_ps_tiny_unfused"]
    assert fused.config.rc_strand_swap and not unfused.config.rc_strand_swap
    for key, value in fused.state_dict().items():
        assert torch.equal(value, unfused.state_dict()[key]), key
    io, source_ids = fixture_io("caduceus_ps_tiny")
    with torch.no_grad():
        codes = to_codes(io["input_ids"], source_ids)
        assert (fused(codes) - unfused(codes)).abs().max() > 0.1


def test_architecture_read(converted):
    ph, ps, plant = (converted[n] for n in ("caduceus_ph_tiny", "caduceus_ps_tiny",
                                             "plantcaduceus_tiny"))
    for model in (ph, ps, plant):
        cfg = model.config
        assert (cfg.mixer, cfg.objective, cfg.bidirectional, cfg.bidirectional_sharing) == (
            "mamba1", "mlm", True, "projections")
        block = model.layers[0]
        assert block.mixer_rev.in_proj.weight is block.mixer.in_proj.weight
        assert block.mixer_rev.x_proj.weight is not block.mixer.x_proj.weight
    assert not ph.config.rc_equivariant and ps.config.rc_equivariant
    assert plant.config.rc_strand_swap


def test_full_state_dict_reads_the_same(tmp_path):
    """A file with every key (the tied ones too, equal) reads as the save_pretrained one; a
    tied key that differs is refused."""
    src = tmp_path / "src"
    shutil.copytree(INTEROP / "caduceus_ps_tiny", src)
    (src / "model.safetensors").unlink()
    shutil.copy(src / "state_dict_full.safetensors", src / "model.safetensors")
    full = read_checkpoint(src).state
    saved = read_checkpoint(INTEROP / "caduceus_ps_tiny").state
    assert full.keys() == saved.keys()
    assert all(torch.equal(full[k], saved[k]) for k in full)
    tensors = load_file(str(src / "model.safetensors"))
    key = "caduceus.backbone.layers.1.mixer.submodule.mamba_rev.in_proj.weight"
    tensors[key] = tensors[key] + 1
    save_file(tensors, str(src / "model.safetensors"))
    with pytest.raises(InputError, match="mamba_rev.in_proj.weight.*differs"):
        read_checkpoint(src)


def edited(tmp_path, name, edit):
    src = tmp_path / name
    shutil.copytree(INTEROP / name, src)
    cfg = json.loads((src / "config.json").read_text())
    edit(cfg)
    (src / "config.json").write_text(json.dumps(cfg))
    return src


@pytest.mark.parametrize("edit, words", [
    (lambda c: c.update(bidirectional_strategy="ew_multiply"), "bidirectional_strategy"),
    (lambda c: c.update(rms_norm=False), "LayerNorm"),
    (lambda c: c.update(hyena_order=2), "unknown Caduceus config field"),
    (lambda c: c["ssm_cfg"].update(bias=True), "ssm_cfg.bias"),
    (lambda c: c["complement_map"].update({"7": 9}), "give --vocab"),
])
def test_refusals_are_one_line(tmp_path, edit, words):
    src = edited(tmp_path, "caduceus_ps_tiny", edit)
    with pytest.raises(InputError) as failure:
        read_checkpoint(src)
    assert words in str(failure.value) and "\n" not in str(failure.value)
    assert str(src / "config.json") in str(failure.value)


def test_explicit_vocab(tmp_path, converted):
    """--vocab picks the rows; one that the complement map contradicts is refused."""
    io, source_ids = fixture_io("caduceus_ph_tiny")
    swapped = "A=10,C=9,G=8,T=7,N=11,MASK=3"     # every base read as its complement
    model = load_model(convert(INTEROP / "caduceus_ph_tiny", tmp_path / "m", vocab=swapped))
    original = converted["caduceus_ph_tiny"]
    comp = torch.as_tensor(alphabet.COMPLEMENT, dtype=torch.long)
    torch.testing.assert_close(model.embedding.weight, original.embedding.weight[comp])
    with pytest.raises(InputError, match="--vocab"):
        read_checkpoint(INTEROP / "caduceus_ph_tiny", vocab="A=7,C=10,G=9,T=8,N=11")
    with pytest.raises(InputError, match="no id for T"):
        read_checkpoint(INTEROP / "caduceus_ph_tiny", vocab="A=7,C=8,G=9,N=11")
