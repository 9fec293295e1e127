"""Sliding-window attention blocks (``ModelConfig.attention_every``, genossm.model.attention) and
their op (genossm.ops.window_attention): the blocked scaled_dot_product_attention equal to an
explicit float64 softmax over the window, outputs and gradients, causal and bidirectional; no
L×L mask at L = 65,536; the window's reach in a model; a hybrid stack streamed in pieces equal
to one full pass (states of different streams stacked row by row); gradient checkpointing;
save/load; export refused."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import genossm.ops.window_attention as wa
from genossm import alphabet
from genossm.errors import InputError
from genossm.hf import export
from genossm.model import (
    AttentionMixer,
    GenoSSM,
    ModelConfig,
    ModelDir,
    ModelState,
    reverse_complement_logits,
    reverse_complement_tokens,
)
from genossm.ops.window_attention import window_attention, window_attention_ref
from helpers import (
    check_stream_equals_full_pass,
    cross_entropy_gradients,
    perturbed_model,
    random_tokens,
)

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64


# --- the op -----------------------------------------------------------------------------------

def qkv(batch=2, heads=3, lq=40, lk=40, dim=8, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, lq, dim, generator=g, dtype=dtype)
    k = torch.randn(batch, heads, lk, dim, generator=g, dtype=dtype)
    v = torch.randn(batch, heads, lk, dim, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (q, k, v)]


def run(fn, tensors, **kw):
    for t in tensors:
        t.grad = None
    out = fn(*tensors, **kw)
    g = torch.Generator().manual_seed(9)
    (out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum().backward()
    return out.detach(), [t.grad.clone() for t in tensors]


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("window, block", [(1, None), (5, None), (5, 7), (12, 8), (300, None)])
def test_blocked_attention_equals_the_explicit_softmax_in_float64(causal, window, block):
    """Outputs and the gradients of q, k and v; windows of one position, shorter than a block,
    spanning several blocks of 7 or 8 queries (40 is ragged), longer than the sequence."""
    tensors = qkv(seed=window)
    want, want_grads = run(window_attention_ref, tensors, window=window, causal=causal)
    got, grads = run(window_attention, tensors, window=window, causal=causal, block=block)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    for g, w in zip(grads, want_grads, strict=True):
        assert w.abs().max() > 0 or window == 1     # one key: q and k change nothing
        torch.testing.assert_close(g, w, rtol=0, atol=1e-12)
    if window == 1:   # each position sees itself only
        torch.testing.assert_close(want, tensors[2].detach(), rtol=0, atol=1e-12)


def test_queries_after_a_prefix_of_partly_valid_keys():
    """A stream's piece: 6 earlier keys (some rows' not yet real) before the piece's own."""
    tensors = qkv(lq=20, lk=26, seed=4)
    valid = torch.tensor([[False, False, True, True, True, True], [True] * 6])
    for block in (None, 4):
        kw = dict(window=7, causal=True, offset=6, prefix_valid=valid)
        want, want_grads = run(window_attention_ref, tensors, **kw)
        got, grads = run(window_attention, tensors, block=block, **kw)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
        for g, w in zip(grads, want_grads, strict=True):
            torch.testing.assert_close(g, w, rtol=0, atol=1e-12)
    # an invalid key is never seen: its value changes nothing
    q, k, v = (t.detach() for t in tensors)
    v2 = v.clone()
    v2[0, :, :2] += 100
    out = window_attention(q, k, v, window=7, offset=6, prefix_valid=valid)
    torch.testing.assert_close(window_attention(q, k, v2, window=7, offset=6,
                                                prefix_valid=valid), out, rtol=0, atol=0)
    with pytest.raises(ValueError, match="not among"):
        window_attention(q, k[:, :, :10], v[:, :, :10], window=7)


def test_scores_depend_on_distance_only():
    """Rotary positions: the same queries and keys read with an offset (earlier keys all
    invalid) give the same outputs as read from the start."""
    q, k, v = (t.detach() for t in qkv(lq=30, lk=30, seed=2))
    pad = torch.zeros(2, 3, 500, 8, dtype=F64)
    shifted = window_attention(q, torch.cat([pad, k], 2), torch.cat([pad, v], 2), window=9,
                               offset=500, prefix_valid=torch.zeros(2, 500, dtype=torch.bool))
    torch.testing.assert_close(shifted, window_attention(q, k, v, window=9), rtol=0, atol=1e-12)


def test_long_sequence_builds_no_length_squared_mask(monkeypatch):
    """L = 65,536 on CPU: every mask handed to scaled_dot_product_attention is at most
    (block, block + 2·window); the interior blocks share one mask tensor; outputs equal the
    explicit softmax over a slice, causal and bidirectional."""
    length, window = 65536, 100
    seen = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None):
        seen.append(attn_mask)
        return sdpa(q, k, v, attn_mask=attn_mask)

    monkeypatch.setattr(wa.F, "scaled_dot_product_attention", spy)
    q, k, v = (t.detach().float() for t in qkv(batch=1, heads=1, lq=length, lk=length,
                                                  dim=4, seed=7))
    block = wa._block_size(window)
    for causal in (True, False):
        seen.clear()
        out = window_attention(q, k, v, window=window, causal=causal)
        assert out.shape == q.shape and len(seen) == -(-length // block)
        assert max(m.numel() for m in seen) <= block * (block + 2 * window)
        assert len({id(m) for m in seen}) <= 4           # interior, and the ends
        for t0 in (0, 30000, length - 50):
            lo, hi = max(0, t0 - window + 1), min(length, t0 + 50 + (0 if causal else window))
            want = window_attention_ref(q[:, :, t0:t0 + 50].double(), k[:, :, lo:hi].double(),
                                        v[:, :, lo:hi].double(), window=window, causal=causal,
                                        offset=t0 - lo)
            torch.testing.assert_close(out[:, :, t0:t0 + 50].double(), want, rtol=0, atol=1e-5)


# --- the model --------------------------------------------------------------------------------

def tiny(**kw) -> ModelConfig:
    base = dict(d_model=16, n_layer=4, d_state=8, headdim=8, chunk_size=8, attention_every=2,
                attention_window=7, attention_heads=2)
    base.update(kw)
    return ModelConfig(**base)


def make(seed=0, dtype=F64, **kw) -> GenoSSM:
    return perturbed_model(tiny(**kw), seed=seed, dtype=dtype)


def test_layer_pattern_and_parameters():
    cfg = tiny(n_layer=6, attention_every=3)
    assert "".join("A" if cfg.layer_mixer(i) == "attention" else "m" for i in range(6)) == \
        "mmAmmA"
    model = GenoSSM(cfg)
    kinds = [type(b.mixer).__name__ for b in model.layers]
    assert kinds == ["Mamba2Mixer", "Mamba2Mixer", "AttentionMixer"] * 2
    mixer = model.layers[2].mixer
    assert {n: tuple(p.shape) for n, p in mixer.named_parameters()} == {
        "in_proj.weight": (48, 16), "out_proj.weight": (16, 16)}
    assert AttentionMixer.state_shapes(cfg) == ((6, 32), (6,))
    assert tiny(mixer="s4d", attention_every=4).layer_mixer(3) == "attention"
    assert [tiny(attention_every=0).layer_mixer(i) for i in range(4)] == ["mamba2"] * 4


def test_attention_block_equals_the_reference_by_hand():
    model = make()
    block = model.layers[1]
    h = torch.randn(2, 30, 16, dtype=F64)
    with torch.no_grad():
        u = block.norm(h)
        q, k, v = (t.reshape(2, 30, 2, 8).transpose(1, 2)
                   for t in block.mixer.in_proj(u).split(16, -1))
        o = window_attention_ref(q, k, v, window=7).transpose(1, 2).reshape(2, 30, 16)
        torch.testing.assert_close(block(h), h + block.mixer.out_proj(o), rtol=0, atol=1e-12)


@pytest.mark.parametrize("causal", [True, False])
def test_the_window_is_the_reach(causal):
    """A stack of attention blocks only (attention_every 1), one layer: the output at t changes
    with the token window - 1 positions away and not with one window away."""
    kw = {} if causal else {"objective": "mlm", "bidirectional": True}
    model = make(n_layer=1, attention_every=1, **kw)
    x = random_tokens(1, 40)
    t = 20
    with torch.no_grad():
        base = model(x)[0, t]
        for distance, moves in ((-6, True), (-7, False), (6, not causal), (7, False),
                                (1, not causal)):
            y = x.clone()
            y[0, t + distance] = (y[0, t + distance] + 1) % 4
            changed = (model(y)[0, t] - base).abs().max() > 1e-9
            assert changed == moves, (distance, causal)


@pytest.mark.parametrize("pieces", [[1] * 30, [1, 2, 1, 5, 3, 17, 1], [29, 1], [16, 14],
                                    [3, 27], [30]])
@pytest.mark.parametrize("mixer", ["mamba2", "s4d"])
def test_streaming_equals_full_pass_in_float64(pieces, mixer):
    """A hybrid (SSM blocks 0, 2; attention blocks 1, 3 with a window of 7) read in pieces
    shorter and longer than the window."""
    model = make(mixer=mixer)
    # attention and the SSMs in float64; the RMSNorms round to float32 (hence not 1e-12)
    full, state = check_stream_equals_full_pass(model, random_tokens(2, 30), pieces, layer=2,
                                                atol=1e-7)
    assert full.dtype == torch.float64
    assert [tuple(c.shape) for c in state.conv[1::2]] == [(2, 6, 32)] * 2
    assert [tuple(s.shape) for s in state.ssm[1::2]] == [(2, 6)] * 2
    assert state.ssm[1].eq(1).all()                      # 30 tokens: the window is full


def test_float32_states_of_different_streams_stack():
    """Rows of states at different places (3 tokens read, 20 read, none) stacked into one batch,
    as score's left-context streams stack them, continue each row's own stream."""
    model = make(dtype=torch.float32)
    x = random_tokens(3, 40, seed=3)
    reads = (3, 20, 0)
    with torch.no_grad():
        rows = []
        for row, n in enumerate(reads):
            state = model.initial_state(1)
            if n:
                state = model.step(x[row:row + 1, :n], state).state
            rows.append(state)
        assert all(t.dtype == torch.float32 for t in rows[0].conv + rows[0].ssm)
        assert rows[0].ssm[1].sum() == 3 and rows[1].ssm[1].sum() == 6
        layers = range(model.config.n_layer)
        stacked = ModelState([torch.cat([s.conv[i] for s in rows]) for i in layers],
                             [torch.cat([s.ssm[i] for s in rows]) for i in layers], 0)
        piece = torch.stack([x[row, n:n + 15] for row, n in enumerate(reads)])
        out = model.step(piece, stacked)
        for row, n in enumerate(reads):
            full = model(x[row:row + 1, :n + 15])[:, n:]
            assert (out.logits[row:row + 1] - full).abs().max() <= 1e-5 * full.abs().max()


@pytest.mark.parametrize("segment", [0, 20])
@pytest.mark.parametrize("kw", [{}, {"objective": "mlm", "bidirectional": True,
                                     "rc_equivariant": True}])
def test_gradient_checkpointing_same_gradients(kw, segment):
    """Whole-sequence and segmented (48 = 20 + 20 + 8; the window of 7 reaches across
    segments through the carried keys and values) checkpointing; a bidirectional attention
    block is checkpointed whole."""
    x = random_tokens(2, 48)
    want = cross_entropy_gradients(make(**kw), x)
    got = cross_entropy_gradients(make(gradient_checkpointing=True,
                                       checkpoint_segment_length=segment, **kw), x)
    for name, g in want.items():
        torch.testing.assert_close(got[name], g, rtol=1e-6, atol=1e-6, msg=name)


def test_masked_lm_bidirectional_form():
    """A bidirectional masked-LM hybrid: SSM blocks read both ways (forward + reversed mixer),
    attention blocks see window - 1 positions either side; no reverse attention mixer; RC
    equivariant with rc_equivariant; refused to stream."""
    model = make(objective="mlm", bidirectional=True, bidirectional_sharing="projections")
    assert hasattr(model.layers[0], "mixer_rev") and not hasattr(model.layers[1], "mixer_rev")
    x = random_tokens(2, 30, high=alphabet.VOCAB_SIZE)
    with torch.no_grad():
        h = model.embedding(x)
        for i, block in enumerate(model.layers):
            u = block.norm(h)
            if i % 2:
                q, k, v = (t.reshape(2, 30, 2, 8).transpose(1, 2)
                           for t in block.mixer.in_proj(u).split(16, -1))
                o = window_attention_ref(q, k, v, window=7, causal=False)
                h = h + block.mixer.out_proj(o.transpose(1, 2).reshape(2, 30, 16))
            else:
                h = h + block.mixer(u) + block.mixer_rev(u.flip(1)).flip(1)
        torch.testing.assert_close(model(x), model.lm_head(model.norm_f(h)), rtol=0,
                                   atol=1e-10)
    with pytest.raises(ValueError, match="causal"):
        model.initial_state(1)
    with pytest.raises(ValueError, match="cannot be streamed"):
        model.layers[1].mixer(torch.zeros(1, 3, 16, dtype=F64), return_state=True)
    rc = make(objective="mlm", bidirectional=True, rc_equivariant=True, rc_strand_swap=True)
    with torch.no_grad():
        out, out_rc = rc(x), rc(reverse_complement_tokens(x))
    torch.testing.assert_close(out_rc, reverse_complement_logits(out), rtol=0, atol=1e-10)


def test_autocast_bf16_keeps_float32_state():
    model = make(dtype=torch.float32)
    x = random_tokens(2, 30)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
            state = model.step(x, model.initial_state(2)).state
    assert ((out.float() - ref).abs().max() / ref.abs().max()) < 0.1
    assert all(t.dtype == torch.float32 for t in state.conv + state.ssm)


# --- model directory, config, export ----------------------------------------------------------

def test_save_load_through_the_model_directory(tmp_path):
    model = make(dtype=torch.float32)
    ModelDir(tmp_path / "m").save_model(model)
    loaded = ModelDir(tmp_path / "m").load_model()
    assert loaded.config == model.config
    x = random_tokens(2, 20)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_config_round_trip_and_checks():
    cfg = tiny(attention_every=3, attention_window=4096, attention_heads=4, mixer="mamba1")
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    old = ModelConfig(d_model=32, n_layer=2).to_dict()
    for key in ("attention_every", "attention_window", "attention_heads"):
        del old[key]
    assert ModelConfig.from_dict(old).attention_every == 0
    for bad, words in (({"attention_every": 5}, "no block would be attention"),
                       ({"attention_heads": 3}, "even width"),
                       ({"attention_heads": 16}, "even width"),
                       ({"attention_window": 0}, "attention_window"),
                       ({"attention_every": -1}, "attention_every")):
        with pytest.raises(ValueError, match=words):
            tiny(**bad)


def test_export_refuses_attention_blocks(tmp_path):
    ModelDir(tmp_path / "m").save_model(make(dtype=torch.float32))
    with pytest.raises(InputError) as failure:
        export(tmp_path / "m", tmp_path / "hf")
    message = str(failure.value)
    assert "model.attention_every" in message and "attention" in message
    assert "\n" not in message and not (tmp_path / "hf").exists()
