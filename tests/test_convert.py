"""genossm.convert against the official mamba_ssm Mamba-2 and Mamba-1 LM fixtures
(tests/data/interop).

The converted model must give the fixture's A C G T N logit columns and final hidden states
(to 1e-4 of the largest value, float32, CPU), whole and streamed in pieces, from either weights
file; what genossm cannot represent is a one-line InputError naming the file and the field or
key.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from genossm.convert import convert
from genossm.convert.mamba_ssm import read_mamba_ssm
from genossm.errors import InputError
from genossm.model import load_model

pytestmark = pytest.mark.usefixtures("one_thread")

FIXTURE = Path(__file__).parent / "data" / "interop" / "mamba2_lm_tiny"
BASES = slice(0, 5)   # A C G T N columns: genossm codes = the fixture's ids 0..4


@pytest.fixture(scope="module")
def io():
    return load_file(str(FIXTURE / "io.safetensors"))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    dst = tmp_path_factory.mktemp("convert") / "model"
    assert convert(FIXTURE, dst) == dst
    return dst


def assert_close(mine, ref, what):
    scale = ref.abs().max().item()
    diff = (mine - ref).abs().max().item()
    assert diff <= 1e-4 * scale, f"{what}: max |diff| {diff:.3g} > 1e-4 x {scale:.3g}"


def check_model(model, io):
    tokens = io["input_ids"]
    with torch.no_grad():
        assert_close(model(tokens)[..., BASES], io["logits"][..., BASES], "logits")
        assert_close(model.hidden_states(tokens), io["hidden_states"], "hidden_states")
        # the residual stream after block 0 = block 0's residual + its mixer output
        after0 = io["debug.layers.0.residual"] + io["debug.layers.0.hidden_states"]
        assert_close(model.hidden_states(tokens, 1), after0, "layer 0")


def test_converted_model_matches_mamba_ssm(converted, io):
    model = load_model(converted)
    assert model.config.n_layer == 2 and model.config.d_state == 16
    check_model(model, io)
    info = json.loads((converted / "config.json").read_text())
    assert info["source"]["format"] == "mamba_ssm"
    assert info["source"]["config"]["ssm_cfg"]["layer"] == "Mamba2"


def test_streamed_in_pieces_matches(converted, io):
    model = load_model(converted)
    tokens = io["input_ids"]
    bounds = [0, 5, 16, 40, 41, 97]   # pieces across the fixture's 16-long scan chunks
    spans = zip(bounds[:-1], bounds[1:], strict=True)
    with torch.no_grad():
        pieces = list(model.stream(tokens[:, a:b] for a, b in spans))
    logits = torch.cat([p.logits for p in pieces], dim=1)
    hidden = torch.cat([p.hidden for p in pieces], dim=1)
    assert_close(logits[..., BASES], io["logits"][..., BASES], "streamed logits")
    assert_close(hidden, io["hidden_states"], "streamed hidden_states")


def test_pytorch_model_bin(tmp_path, io):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("config.json", "pytorch_model.bin"):
        shutil.copy(FIXTURE / name, src / name)
    state, state_st = read_mamba_ssm(src).state, read_mamba_ssm(FIXTURE).state
    assert state.keys() == state_st.keys()
    assert all(torch.equal(state[k], state_st[k]) for k in state)
    check_model(load_model(convert(src, tmp_path / "dst")), io)


def test_output_policy(converted, tmp_path):
    with pytest.raises(InputError, match="output exists"):
        convert(FIXTURE, converted)
    convert(FIXTURE, converted, force=True)
    with pytest.raises(InputError, match="is an input of this run"):
        convert(FIXTURE, FIXTURE / "out")


def copy_fixture(tmp_path, edit_config=None) -> Path:
    src = tmp_path / "src"
    shutil.copytree(FIXTURE, src)
    if edit_config:
        cfg = json.loads((src / "config.json").read_text())
        edit_config(cfg)
        (src / "config.json").write_text(json.dumps(cfg))
    return src


def one_line_error(src, *parts):
    with pytest.raises(InputError) as failure:
        read_mamba_ssm(src)
    message = str(failure.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, message
    return message


@pytest.mark.parametrize("edit, field, words", [
    (lambda c: c["ssm_cfg"].update(layer="Mamba3"), "ssm_cfg.layer",
     "Mamba3 layers are not supported"),
    (lambda c: c.update(d_intermediate=64), "d_intermediate", "MLP"),
    (lambda c: c.update(attn_layer_idx=[1], attn_cfg={"num_heads": 2}), "attn_layer_idx",
     "attention layers"),
    (lambda c: c["ssm_cfg"].update(ngroups=2), "ssm_cfg.ngroups", "not supported"),
    (lambda c: c["ssm_cfg"].update(D_has_hdim=True), "ssm_cfg.D_has_hdim", "not supported"),
    (lambda c: c.update(rms_norm=False), "rms_norm", "LayerNorm"),
])
def test_unsupported_config(tmp_path, edit, field, words):
    src = copy_fixture(tmp_path, edit)
    one_line_error(src, str(src / "config.json"), field, words)


def test_converted_mamba1_model_matches_mamba_ssm(tmp_path):
    """The Mamba-1 LM fixture (mamba_ssm's default layer, dt_rank "auto"): whole and streamed
    in pieces."""
    src = FIXTURE.parent / "mamba1_lm_tiny"
    io1 = load_file(str(src / "io.safetensors"))
    model = load_model(convert(src, tmp_path / "model"))
    assert model.config.mixer == "mamba1" and model.config.resolved_dt_rank == 2
    check_model(model, io1)
    tokens = io1["input_ids"]
    with torch.no_grad():
        pieces = list(model.stream([tokens[:, :30], tokens[:, 30:31], tokens[:, 31:]]))
    logits = torch.cat([p.logits for p in pieces], dim=1)
    assert_close(logits[..., BASES], io1["logits"][..., BASES], "streamed logits")


def test_misshaped_and_missing_tensor(tmp_path):
    src = copy_fixture(tmp_path)
    weights = load_file(str(src / "model.safetensors"))
    key = "backbone.layers.1.mixer.D"
    weights[key] = torch.ones(64)
    save_file(weights, str(src / "model.safetensors"))
    one_line_error(src, str(src / "model.safetensors"), key, "(64,)", "(4,)")
    del weights[key]
    save_file(weights, str(src / "model.safetensors"))
    one_line_error(src, str(src / "model.safetensors"), key, "missing")


def test_tied_head_may_be_absent(tmp_path):
    src = copy_fixture(tmp_path)
    weights = load_file(str(src / "model.safetensors"))
    del weights["lm_head.weight"]
    save_file(weights, str(src / "model.safetensors"))
    model = load_model(convert(src, tmp_path / "model"))
    assert model.lm_head.weight is model.embedding.weight
    cfg = json.loads((src / "config.json").read_text())
    cfg["tie_embeddings"] = False
    (src / "config.json").write_text(json.dumps(cfg))
    one_line_error(src, "model.safetensors", "lm_head.weight", "missing")


def test_the_convert_command(tmp_path, capsys):
    """`genossm convert SRC -o DST` writes the model directory; an architecture genossm does
    not read and an output that is the source are one-line errors."""
    from genossm.cli import main

    dst = tmp_path / "converted"
    assert main(["convert", str(FIXTURE), "-o", str(dst)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert load_model(dst).config.n_layer == 2
    hyena = tmp_path / "hyena"
    hyena.mkdir()
    (hyena / "config.json").write_text('{"model_type": "hyenadna", "d_model": 128}')
    cases = [(["convert", str(hyena), "-o", str(tmp_path / "c")], "a hyenadna checkpoint"),
             (["convert", str(FIXTURE), "-o", str(FIXTURE / "inside"), "--force"], "input")]
    for argv, words in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("genossm: error: ") and words in err[0], err
