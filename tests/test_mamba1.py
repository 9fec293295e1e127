"""The Mamba-1 mixer (``ModelConfig.mixer = "mamba1"``): mamba_ssm's parameter names and
initialisation, the official mixer output (layer 0 of the mamba_ssm Mamba-1 fixture in
tests/data/interop), streaming == full pass in float64, gradient checkpointing, save/load, the
config JSON round trip, and RC equivariance / bidirectional consistency (its training steps are
in test_model.py)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from genossm.model import (
    GenoSSM,
    Mamba1Mixer,
    ModelConfig,
    load_model,
    reverse_complement_logits,
    reverse_complement_tokens,
    save_model,
)
from helpers import (
    ROOT,
    check_stream_equals_full_pass,
    cross_entropy_gradients,
    perturbed_model,
    random_tokens,
)

pytestmark = pytest.mark.usefixtures("one_thread")

FIXTURE = ROOT / "tests/data/interop/mamba1_lm_tiny"


def tiny(**kw) -> ModelConfig:
    base = dict(mixer="mamba1", d_model=24, n_layer=2, d_state=8, expand=2, chunk_size=16)
    base.update(kw)
    return ModelConfig(**base)


def make(seed=0, dtype=torch.float64, **kw) -> GenoSSM:
    return perturbed_model(tiny(**kw), seed=seed, dtype=dtype)


# --- the mixer ------------------------------------------------------------------------------

def test_parameter_names_shapes_and_init_are_mamba_ssm_s():
    cfg = ModelConfig(mixer="mamba1", d_model=40, n_layer=1, d_state=16)
    torch.manual_seed(0)
    mixer = Mamba1Mixer(cfg)
    d_inner, rank = 80, math.ceil(40 / 16)
    assert cfg.resolved_dt_rank == rank == 3
    assert {n: tuple(p.shape) for n, p in mixer.named_parameters()} == {
        "in_proj.weight": (2 * d_inner, 40), "conv1d.weight": (d_inner, 1, 4),
        "conv1d.bias": (d_inner,), "x_proj.weight": (rank + 32, d_inner),
        "dt_proj.weight": (d_inner, rank), "dt_proj.bias": (d_inner,),
        "A_log": (d_inner, 16), "D": (d_inner,), "out_proj.weight": (40, d_inner)}
    want_A = torch.log(torch.arange(1, 17, dtype=torch.float32)).expand(d_inner, -1)
    assert torch.equal(mixer.A_log.detach(), want_A)
    assert torch.equal(mixer.D.detach(), torch.ones(d_inner))
    dt = F.softplus(mixer.dt_proj.bias.detach())
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    assert mixer.dt_proj.weight.abs().max() <= rank ** -0.5
    const = Mamba1Mixer(cfg.replace(dt_init="constant", dt_scale=2.0, dt_rank=4))
    assert torch.allclose(const.dt_proj.weight, torch.full((d_inner, 4), 2.0 * 4 ** -0.5))
    # A_log is a matrix but, like D and the biases, is kept out of weight decay
    model = GenoSSM(cfg)
    decay = model.optim_groups(0.1)[0]["params"]
    assert not any(p is model.layers[0].mixer.A_log for p in decay)
    assert len(decay) == 6  # embedding (= head), in_proj, conv1d, x_proj, dt_proj, out_proj


def test_mixer_equals_the_official_mamba_ssm_module():
    """Layer 0 of mamba_ssm's MambaLMHeadModel (Mamba-1): our mixer, loaded by name from the
    official state dict, gives its output from RMSNorm(embeddings)."""
    state = load_file(FIXTURE / "model.safetensors")
    io = load_file(FIXTURE / "io.safetensors")
    prefix = "backbone.layers.0.mixer."
    cfg = ModelConfig(mixer="mamba1", d_model=32, n_layer=2, d_state=16)
    mixer = Mamba1Mixer(cfg)
    mixer.load_state_dict({k.removeprefix(prefix): v for k, v in state.items()
                           if k.startswith(prefix)}, strict=True)
    emb = io["debug.embeddings"]
    u = F.rms_norm(emb, (32,), state["backbone.layers.0.norm.weight"], 1e-5)
    with torch.no_grad():
        out = mixer(u)
        # streamed in two pieces with the carried state: the same
        y1, (conv, ssm) = mixer(u[:, :30], return_state=True)
        y2 = mixer(u[:, 30:], conv, ssm)
    want = io["debug.layers.0.hidden_states"]
    scale = want.abs().max()
    assert (out - want).abs().max() <= 1e-5 * scale
    assert (torch.cat([y1, y2], 1) - want).abs().max() <= 1e-5 * scale
    assert conv.shape == (2, 3, 64) and ssm.shape == (2, 64, 1, 16)
    assert conv.dtype == ssm.dtype == torch.float32


# --- the model --------------------------------------------------------------------------------

@pytest.mark.parametrize("pieces", [[1] * 30, [1, 2, 1, 5, 3, 17, 1], [29, 1], [16, 14]])
def test_streaming_equals_full_pass_in_float64(pieces):
    model = make()
    full, state = check_stream_equals_full_pass(model, random_tokens(2, 30), pieces, layer=1,
                                                atol=1e-10)
    assert full.dtype == torch.float64
    assert [tuple(c.shape) for c in state.conv] == [(2, 3, 48)] * 2
    assert [tuple(s.shape) for s in state.ssm] == [(2, 48, 1, 8)] * 2


@pytest.mark.parametrize("segment", [0, 20])
@pytest.mark.parametrize("kw", [{}, {"objective": "mlm", "bidirectional": True,
                                     "rc_equivariant": True},
                                {"objective": "mlm", "bidirectional": True,
                                 "bidirectional_sharing": "projections", "rc_equivariant": True,
                                 "rc_strand_swap": True}])
def test_gradient_checkpointing_same_gradients(kw, segment):
    """Whole-sequence (segment 0) and segmented (48 = 20 + 20 + 8) checkpointing; the last
    case is the Caduceus-PS architecture (BiMamba with shared projections, fused RCPS)."""
    x = random_tokens(2, 48)
    want = cross_entropy_gradients(make(**kw), x)
    got = cross_entropy_gradients(make(gradient_checkpointing=True,
                                       checkpoint_segment_length=segment, **kw), x)
    for name, g in want.items():  # RMSNorm computes in float32, the mixer in float64
        tol = 1e-12 if ".mixer" in name else 1e-6
        torch.testing.assert_close(got[name], g, rtol=tol, atol=tol, msg=name)


def test_rc_equivariance_and_bidirectional_consistency():
    model = make(objective="mlm", bidirectional=True, rc_equivariant=True)
    x = random_tokens(2, 25)
    with torch.no_grad():
        out, out_rc = model(x), model(reverse_complement_tokens(x))
    torch.testing.assert_close(out_rc, reverse_complement_logits(out), rtol=0, atol=1e-10)
    bi = make(objective="mlm", bidirectional=True)
    with torch.no_grad():
        torch.testing.assert_close(bi(x.flip(1)), bi(x).flip(1), rtol=0, atol=1e-10)


def test_save_load_round_trip(tmp_path):
    model = make(dtype=torch.float32)
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.config == model.config and loaded.config.mixer == "mamba1"
    x = random_tokens(2, 20)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


# --- config -------------------------------------------------------------------------------

def test_config_json_round_trip_and_old_configs():
    cfg = tiny(dt_rank=5, dt_init="constant", dt_scale=0.5, d_model=30, headdim=7)
    again = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.resolved_dt_rank == 5
    assert tiny().resolved_dt_rank == 2 and tiny(d_model=33).resolved_dt_rank == 3
    old = ModelConfig(d_model=32, n_layer=2).to_dict()
    for key in ("mixer", "dt_rank", "dt_init", "dt_scale"):
        del old[key]
    assert ModelConfig.from_dict(old).mixer == "mamba2"
    for bad in ({"mixer": "mamba3"}, {"dt_rank": -1}, {"dt_init": "uniform"},
                {"dt_scale": 0.0}):
        with pytest.raises(ValueError, match="invalid ModelConfig"):
            tiny(**bad)
    # headdim and n_groups are Mamba-2's: not checked against a Mamba-1 d_inner
    assert tiny(d_model=30, headdim=7, n_groups=3).d_inner == 60
    with pytest.raises(ValueError, match="headdim"):
        tiny(mixer="mamba2", d_model=30, headdim=7)
