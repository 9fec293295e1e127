"""The model: config round trip, model directory, RC equivariance, bidirectional consistency,
streaming == full pass, gradient checkpointing, tied head, autocast, a few training steps of
each kind of mixer, and overfitting real DNA."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from genossm import alphabet
from genossm.model import (
    GenoSSM,
    ModelConfig,
    load_model,
    read_model_info,
    reverse_complement_logits,
    reverse_complement_tokens,
    save_model,
    strand_average,
)
from helpers import LAMBDA, cross_entropy_gradients, perturbed_model, random_tokens

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**kw) -> ModelConfig:
    base = dict(d_model=32, n_layer=2, d_state=8, headdim=16, expand=2, n_groups=1,
                chunk_size=16)
    base.update(kw)
    return ModelConfig(**base)


def make(seed=0, **kw) -> GenoSSM:
    return perturbed_model(tiny(**kw), seed=seed)


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


# --- config ---------------------------------------------------------------------------------

def test_config_json_round_trip():
    cfg = tiny(objective="mlm", bidirectional=True, rc_equivariant=True, dt_limit_max=0.5,
               scan_backend="ref")
    again = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert ModelConfig.from_dict(json.loads(json.dumps(ModelConfig().to_dict()))) == ModelConfig()


def test_config_rejects_unknown_and_bad_values():
    d = tiny().to_dict()
    d["d_modle"] = 64
    with pytest.raises(ValueError, match="unknown ModelConfig key.*d_modle"):
        ModelConfig.from_dict(d)
    with pytest.raises(ValueError, match="objective"):
        tiny(objective="gpt")
    with pytest.raises(ValueError, match="causal"):
        tiny(objective="clm", bidirectional=True)
    with pytest.raises(ValueError, match="headdim"):
        tiny(headdim=24)
    with pytest.raises(ValueError, match="vocab_size"):
        tiny(vocab_size=8)


# --- model directory ------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [{}, {"objective": "mlm", "bidirectional": True,
                                     "rc_equivariant": True}])
def test_save_load_identical_logits(tmp_path, kw):
    model = make(**kw)
    x = random_tokens(2, 50)
    save_model(model, tmp_path / "m", extra={"training_data": {"bases": 123}})
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json",
                                                                   "model.safetensors"]
    info = read_model_info(tmp_path / "m")
    assert info["alphabet"] == "ACGTN" and info["training_data"] == {"bases": 123}
    assert "genossm_version" in info and ModelConfig.from_dict(info["model"]) == model.config
    loaded = load_model(tmp_path / "m")
    assert loaded.lm_head.weight is loaded.embedding.weight
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    with pytest.raises(ValueError, match="reserved"):
        save_model(model, tmp_path / "n", extra={"model": 1})


def test_load_rejects_mismatched_weights(tmp_path):
    save_model(make(), tmp_path)
    info = json.loads((tmp_path / "config.json").read_text())
    info["model"]["d_model"] = 64
    (tmp_path / "config.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="do not match|size mismatch"):
        load_model(tmp_path)


def test_save_is_atomic(tmp_path, monkeypatch):
    """A crash while writing leaves neither a half-written file nor a temporary one."""
    import genossm.model.io as model_io

    def crash(tensors, path, metadata=None):
        Path(path).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(model_io, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        save_model(make(), tmp_path / "m")
    assert list((tmp_path / "m").iterdir()) == []


# --- head, shapes ---------------------------------------------------------------------------

def test_tied_head_and_hidden_states():
    model = make()
    assert model.lm_head.weight is model.embedding.weight
    names = [n for n, _ in model.named_parameters()]
    assert "lm_head.weight" not in names  # one tensor, counted once
    x = random_tokens(2, 20)
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (2, 20, alphabet.VOCAB_SIZE)
        final = model.hidden_states(x, layer=-1)
        torch.testing.assert_close(final @ model.embedding.weight.T, logits)
        assert torch.equal(model.hidden_states(x, layer=0), model.embedding(x))
        assert model.hidden_states(x, layer=1).shape == (2, 20, 32)
        assert torch.equal(model.hidden_states(x, layer=2), final)
        assert torch.equal(model(x.to(torch.uint8)), logits)  # codes straight from a store
    with pytest.raises(IndexError):
        model.hidden_states(x, layer=3)


# --- reverse-complement equivariance --------------------------------------------------------

@pytest.mark.parametrize("kw", [
    {}, {"bidirectional": True}, {"rc_strand_swap": True},
    {"bidirectional": True, "bidirectional_sharing": "projections", "rc_strand_swap": True,
     "mixer": "mamba1", "d_state": 4},
])
def test_rc_equivariance(kw):
    model = make(objective="mlm", rc_equivariant=True, n_groups=2, **kw)
    x = random_tokens(3, 41, high=alphabet.VOCAB_SIZE)  # N and MASK included
    with torch.no_grad():
        out, out_rc = model(x), model(reverse_complement_tokens(x))
        for layer in (1, -1):
            h, h_rc = (model.hidden_states(t, layer=layer)
                       for t in (x, reverse_complement_tokens(x)))
            # hidden states (Caduceus's layout): flipped along length and channels
            assert rel_err(h_rc, h.flip(1, 2)) <= 1e-5
    assert rel_err(out_rc, reverse_complement_logits(out)) <= 1e-5
    # and the model is not trivially symmetric
    assert rel_err(out_rc, out) > 1e-3
    # the strand average is the same for both strands, flipped along length
    assert rel_err(strand_average(h_rc), strand_average(h).flip(1)) <= 1e-5


def test_rc_helpers():
    x = torch.tensor([[0, 1, 2, 3, 4, 5]])
    assert reverse_complement_tokens(x).tolist() == [[5, 4, 0, 1, 2, 3]]
    assert reverse_complement_tokens(x.to(torch.uint8)).tolist() == [[5, 4, 0, 1, 2, 3]]
    logits = torch.arange(12.0).reshape(1, 2, 6)
    rc = reverse_complement_logits(logits)
    assert rc[0, 0].tolist() == [9, 8, 7, 6, 10, 11]


# --- bidirectional ----------------------------------------------------------------------------

def test_bidirectional_is_tied_forward_plus_reversed():
    model = make(objective="mlm", bidirectional=True)
    x = random_tokens(2, 33)
    with torch.no_grad():
        h = model.embedding(x)
        for block in model.layers:  # by hand, with the block's one shared mixer
            u = block.norm(h)
            h = h + block.mixer(u) + block.mixer(u.flip(1)).flip(1)
        manual = model.lm_head(model.norm_f(h))
        assert rel_err(model(x), manual) <= 1e-6
        # reversing the input reverses the output of a bidirectional model
        assert rel_err(model(x.flip(1)), model(x).flip(1)) <= 1e-5


@pytest.mark.parametrize("sharing", ["projections", "none"])
def test_bidirectional_with_a_reverse_mixer(sharing, tmp_path):
    """Caduceus's BiMamba: a reverse mixer of its own, sharing in_proj and out_proj with the
    forward one ("projections") or nothing; the shared Parameters stay one tensor through
    training's optimizer groups and a save/load."""
    model = make(objective="mlm", bidirectional=True, bidirectional_sharing=sharing,
                 mixer="mamba1", d_state=4)
    block = model.layers[0]
    shared = sharing == "projections"
    assert (block.mixer_rev.in_proj.weight is block.mixer.in_proj.weight) == shared
    assert (block.mixer_rev.out_proj.weight is block.mixer.out_proj.weight) == shared
    assert block.mixer_rev.x_proj.weight is not block.mixer.x_proj.weight
    x = random_tokens(2, 33)
    with torch.no_grad():
        h = model.embedding(x)
        for block in model.layers:
            u = block.norm(h)
            h = h + block.mixer(u) + block.mixer_rev(u.flip(1)).flip(1)
        manual = model.lm_head(model.norm_f(h))
        assert rel_err(model(x), manual) <= 1e-6
    groups = model.optim_groups(0.1)
    n_params = sum(p.numel() for g in groups for p in g["params"])
    assert n_params == model.num_parameters()
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert (loaded.layers[0].mixer_rev.in_proj.weight
            is loaded.layers[0].mixer.in_proj.weight) == shared
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_causal_model_is_causal():
    model = make()
    x = random_tokens(1, 40)
    y = x.clone()
    y[0, 25:] = (y[0, 25:] + 1) % 4
    with torch.no_grad():
        a, b = model(x), model(y)
    assert torch.allclose(a[:, :25], b[:, :25], atol=1e-6)
    assert not torch.allclose(a[:, 25:], b[:, 25:], atol=1e-4)


# --- streaming ----------------------------------------------------------------------------

@pytest.mark.parametrize("pieces", [
    [1] * 40,                      # one token at a time
    [1, 2, 1, 5, 3, 17, 11],       # pieces shorter than d_conv - 1, ragged
    [16, 16, 8],                   # chunk multiples and a tail
    [39, 1],
    [23, 17],
])
def test_streaming_equals_full_pass(pieces):
    """The one streaming path (``model.stream``): pieces read one after another give the
    logits and hidden states of one full pass, and each token's log-probability given every
    token before it, across piece boundaries (computed here from the full pass's logits)."""
    model = make(n_groups=2)
    x = random_tokens(2, 40)
    cuts = np.cumsum([0, *pieces])
    with torch.no_grad():
        full = model(x)
        full_h = model.hidden_states(x, layer=1)
        pieces = [x[:, a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
        out = list(model.stream(pieces, layer=1))
    state = out[-1].state
    assert cuts[-1] == 40 and state.offset == 40
    assert rel_err(torch.cat([p.logits for p in out], 1), full) <= 1e-5
    assert rel_err(torch.cat([p.hidden for p in out], 1), full_h) <= 1e-5
    token_logp = torch.cat([p.token_logp for p in out], 1).double()
    want = torch.log_softmax(full.double(), -1)[:, :-1].gather(-1, x[:, 1:, None])[..., 0]
    assert torch.isnan(token_logp[:, 0]).all()          # nothing predicts the first token
    torch.testing.assert_close(token_logp[:, 1:], want, rtol=0, atol=1e-5)
    torch.testing.assert_close(state.next_logp.double(),
                               torch.log_softmax(full[:, -1].double(), -1), rtol=0, atol=1e-5)


def test_streaming_state_is_fixed_size_and_cloneable():
    model = make()
    x = random_tokens(1, 30)
    with torch.no_grad():
        state = model.step(x[:, :10], model.initial_state(1)).state
        sizes = [t.shape for t in state.conv + state.ssm]
        branch = state.clone()
        ref = model.step(x[:, 10:], state)
        s2 = model.step(x[:, 10:20], ref.state).state
        assert [t.shape for t in s2.conv + s2.ssm] == sizes
        assert all(t.dtype == torch.float32 for t in s2.conv + s2.ssm)
        again = model.step(x[:, 10:], branch)  # state was not modified in place
        assert torch.equal(ref.logits, again.logits)
        assert torch.equal(ref.token_logp, again.token_logp)
        # branch one prefix into three rows (e.g. ref / alt alleles): the state and the
        # prediction of the next token are both carried into every row
        three = state.index_select([0, 0, 0])
        alt = x[:, 10:].repeat(3, 1)
        alt[1, 0], alt[2, 0] = (alt[1, 0] + 1) % 4, (alt[2, 0] + 2) % 4
        out3 = model.step(alt, three)
        torch.testing.assert_close(out3.logits[:1], ref.logits, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out3.token_logp[:1], ref.token_logp, rtol=1e-5, atol=1e-6)
        first = state.next_logp[0, alt[:, 0]]
        torch.testing.assert_close(out3.token_logp[:, 0], first)
    with pytest.raises(ValueError, match="causal"):
        make(objective="mlm", bidirectional=True).initial_state(1)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_scan_backends_agree_with_ref(backend):
    """The model on the chunked backends equals the model on the sequential definition: full
    pass, streaming, and parameter gradients."""
    if backend == "triton":
        pytest.importorskip("triton")
    model = make(n_groups=2).train()
    x = random_tokens(2, 40)

    def run(b):
        model.zero_grad()
        out = model(x, backend=b)
        out.logsumexp(-1).mean().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    ref, ref_grads = run("ref")
    out, grads = run(backend)
    assert rel_err(out, ref) <= 1e-5
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-4, atol=1e-6, msg=name)
    with torch.no_grad():
        streamed = model.stream([x[:, :13], x[:, 13:]], backend=backend)
        logits = torch.cat([p.logits for p in streamed], 1)
    assert rel_err(logits, ref) <= 1e-5


# --- gradient checkpointing, autocast -------------------------------------------------------

@pytest.mark.parametrize("segment", [0, 20])
@pytest.mark.parametrize("kw", [{}, {"objective": "mlm", "bidirectional": True,
                                     "rc_equivariant": True}])
def test_gradient_checkpointing_same_gradients(kw, segment):
    """Per-block checkpointing, over the whole sequence (segment 0) or in segments of 20 that
    carry the conv/SSM state (48 = 20 + 20 + 8, not multiples of chunk_size 16)."""
    x = random_tokens(2, 48)
    grads = [cross_entropy_gradients(make(gradient_checkpointing=ckpt,
                                          checkpoint_segment_length=segment, **kw), x)
             for ckpt in (False, True)]
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-6, atol=1e-6, msg=name)


def test_autocast_bf16_forward_keeps_float32_state():
    model = make()
    x = random_tokens(2, 40)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    x = x.to(device)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast(device, dtype=torch.bfloat16):
            out = model(x)
            state = model.step(x, model.initial_state(2)).state
    assert torch.isfinite(out).all()
    assert rel_err(out.float(), ref) < 0.1
    assert all(s.dtype == torch.float32 for s in state.ssm + state.conv)
    # training step under autocast, with segmented checkpointing
    model.config.gradient_checkpointing, model.config.checkpoint_segment_length = True, 16
    model.train()
    with torch.autocast(device, dtype=torch.bfloat16):
        loss = model(x).float().logsumexp(-1).mean()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


# --- learning ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [
    {},
    {"mixer": "mamba1", "d_model": 24},
    {"mixer": "s4d", "d_model": 16, "chunk_size": 8},
    {"d_model": 16, "n_layer": 4, "headdim": 8, "chunk_size": 8,   # SSM, attention, SSM, ...
     "attention_every": 2, "attention_window": 7, "attention_heads": 2},
], ids=["mamba2", "mamba1", "s4d", "attention"])
def test_training_steps_reduce_the_loss(kw):
    """15 AdamW steps on a repeated 8-base pattern halve the causal loss, for each kind of
    mixer (the tiny models of test_mamba1, test_s4d and test_attention)."""
    torch.manual_seed(0)
    model = GenoSSM(tiny(**kw)).train()
    x = torch.tensor([[0, 1, 2, 3, 3, 2, 1, 0] * 8])
    opt = torch.optim.AdamW(model.optim_groups(0.01), lr=1e-2)
    losses = []
    for _ in range(15):
        logits = model(x)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0]


def read_lambda(n: int) -> torch.Tensor:
    with gzip.open(LAMBDA, "rt") as f:
        lines = f.read().splitlines()
    assert lines[0].startswith(">")
    seq = "".join(lines[1:]).upper()[:n]
    return torch.from_numpy(alphabet.encode(seq).astype(np.int64))[None]


def test_tiny_causal_model_overfits_2kb_of_lambda():
    x = read_lambda(2000)
    assert x.shape == (1, 2000)
    torch.manual_seed(0)
    model = GenoSSM(ModelConfig(d_model=64, n_layer=2, d_state=16, headdim=16, chunk_size=64))
    opt = torch.optim.AdamW(model.optim_groups(0.0), lr=3e-3)

    def bits_per_base():  # clm: logits at t predict token t+1
        logits = model(x[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        return loss, loss.item() / math.log(2)

    first = None
    for step in range(300):
        loss, bpb = bits_per_base()
        first = bpb if first is None else first
        if bpb < 0.08 or step == 299:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        _, bpb = bits_per_base()
    assert first > 1.9  # started near 2 bits/base
    assert bpb < 0.1, f"did not overfit: {bpb:.3f} bits/base after {step} steps"  # ~66 steps
