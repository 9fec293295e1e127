"""The S4D mixer (``ModelConfig.mixer = "s4d"``) and its ops (genossm.ops.s4d): the FFT
convolution and the chunked recurrence equal to each other and to the plain float64 loop over
time, outputs, final state and every gradient; the model streamed in pieces equal to one full
pass; backend "ref" (the loop) equal to the default; gradient checkpointing; save/load through
the model directory; bidirectional and RC-equivariant models; export refused."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from genossm import alphabet
from genossm.errors import InputError
from genossm.hf import export
from genossm.model import (
    GenoSSM,
    ModelConfig,
    ModelDir,
    S4DMixer,
    reverse_complement_logits,
    reverse_complement_tokens,
)
from genossm.ops.s4d import discretize, fft_conv, s4d_conv, s4d_kernel, s4d_recurrent, s4d_ref
from helpers import (
    check_stream_equals_full_pass,
    cross_entropy_gradients,
    perturbed_model,
    random_tokens,
)

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64


# --- the ops ----------------------------------------------------------------------------------

def leaves(batch=2, length=37, heads=5, modes=3, seed=0, dtype=F64):
    """Real leaf tensors of the op's inputs (complex ones as real and imaginary parts), with
    gradients: steps over two decades, Re A in [-0.6, -0.05] (long memory), S4D-Lin-like and
    random imaginary parts."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    def uni(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=dtype)

    out = {"u": rnd(batch, length, heads), "log_dt": uni(math.log(1e-2), math.log(1.0), heads),
           "A_log": uni(math.log(0.05), math.log(0.6), heads, modes),
           "A_imag": math.pi * torch.arange(modes, dtype=dtype) + uni(-1, 1, heads, modes),
           "B_re": rnd(heads, modes), "B_im": rnd(heads, modes), "C_re": rnd(heads, modes),
           "C_im": rnd(heads, modes), "D": rnd(heads),
           "s0_re": rnd(batch, heads, modes), "s0_im": rnd(batch, heads, modes)}
    return {k: v.requires_grad_() for k, v in out.items()}


def op_args(t):
    A = torch.complex(-torch.exp(t["A_log"]), t["A_imag"])
    return (t["u"], torch.exp(t["log_dt"]), A, torch.complex(t["B_re"], t["B_im"]),
            torch.complex(t["C_re"], t["C_im"]), t["D"])


def outputs_and_grads(t, fn, with_state):
    """fn's output (and final state when ``with_state``), and the gradients of a random
    projection of them."""
    for v in t.values():
        v.grad = None
    args = op_args(t)
    s0 = torch.complex(t["s0_re"], t["s0_im"]) if with_state else None
    y, s = fn(*args, s0)
    s = s if with_state else None      # from a zero state: the output alone
    g = torch.Generator().manual_seed(5)
    loss = (y * torch.randn(y.shape, generator=g, dtype=y.dtype)).sum()
    if s is not None:
        loss = loss + (torch.view_as_real(s) * torch.randn(*s.shape, 2, generator=g,
                                                           dtype=y.dtype)).sum()
    loss.backward()
    grads = {k: v.grad.clone() for k, v in t.items() if v.grad is not None}
    return y.detach(), None if s is None else s.detach(), grads


def ref(*args):
    return s4d_ref(*args[:-1], initial_state=args[-1], return_final_state=True)


def recurrent(chunk):
    def fn(*args):
        return s4d_recurrent(*args[:-1], initial_state=args[-1], return_final_state=True,
                             chunk_size=chunk)
    return fn


def conv(*args):
    assert args[-1] is None
    return s4d_conv(*args[:-1]), None


def assert_same(got, want, tol=1e-10):
    y, s, grads = got
    y0, s0, grads0 = want
    scale = y0.abs().max()
    assert (y - y0).abs().max() <= tol * scale
    if s0 is not None:
        assert (s - s0).abs().max() <= tol * s0.abs().max()
    assert grads.keys() == grads0.keys()
    for name, g in grads0.items():
        assert (grads[name] - g).abs().max() <= tol * g.abs().max(), name


@pytest.mark.parametrize("chunk", [1, 8, 16, 37, 64])
def test_recurrence_equals_the_loop_in_float64(chunk):
    """Outputs, final state and the gradients of every input (the initial state included):
    chunks of 1 (one step per base), ragged (37 = 4·8 + 5), one chunk, longer than the input."""
    t = leaves()
    want = outputs_and_grads(t, ref, with_state=True)
    assert_same(outputs_and_grads(t, recurrent(chunk), with_state=True), want)
    assert len(want[2]) == len(t)


@pytest.mark.parametrize("length", [1, 2, 37, 200])
def test_convolution_equals_the_loop_and_the_recurrence_in_float64(length):
    t = leaves(length=length, seed=length)
    want = outputs_and_grads(t, ref, with_state=False)
    got = outputs_and_grads(t, conv, with_state=False)
    assert_same(got, want)
    assert_same(outputs_and_grads(t, recurrent(16), with_state=False), want)
    assert set(got[2]) == set(t) - {"s0_re", "s0_im"}


def test_kernel_and_fft_conv_against_their_definitions():
    t = leaves(heads=3, modes=4, seed=3)
    _, dt, A, B, C, _ = op_args(t)
    dA, dB = discretize(dt, A, B)
    with torch.no_grad():
        for length in (1, 2, 5, 17, 101):   # blocks of ceil(sqrt(L)): whole and ragged
            powers = dA[..., None] ** torch.arange(length, dtype=F64)
            want = 2 * (C[..., None] * dB[..., None] * powers).sum(1).real
            K = s4d_kernel(dt, A, B, C, length)
            assert K.shape == (3, length)
            torch.testing.assert_close(K, want, rtol=1e-12, atol=1e-12)
        u = torch.randn(2, 101, 3, dtype=F64)
        y = fft_conv(u, K)
        for b in range(2):
            for h in range(3):
                direct = np.convolve(u[b, :, h].numpy(), K[h].numpy())[:101]
                np.testing.assert_allclose(y[b, :, h].numpy(), direct, rtol=0, atol=1e-12)


def test_float32_convolution_and_recurrence_agree():
    t = leaves(length=300, heads=8, modes=8, dtype=torch.float32, seed=2)
    with torch.no_grad():
        args = op_args(t)
        a = s4d_conv(*args)
        b = s4d_recurrent(*args, chunk_size=64)
        c = s4d_ref(*(x.double() if not x.is_complex() else x.to(torch.complex128)
                      for x in args))
    assert a.dtype == b.dtype == torch.float32
    scale = c.abs().max()
    assert (a.double() - c).abs().max() <= 1e-5 * scale
    assert (b.double() - c).abs().max() <= 1e-5 * scale


# --- the mixer --------------------------------------------------------------------------------

def tiny(**kw) -> ModelConfig:
    base = dict(mixer="s4d", d_model=16, n_layer=2, d_state=8, expand=2, chunk_size=8)
    base.update(kw)
    return ModelConfig(**base)


def make(seed=0, dtype=F64, **kw) -> GenoSSM:
    return perturbed_model(tiny(**kw), seed=seed, dtype=dtype)


def test_parameters_and_s4d_lin_initialisation():
    cfg = tiny(d_model=12, d_state=6, dt_min=1e-3, dt_max=1e-1)
    torch.manual_seed(0)
    mixer = S4DMixer(cfg)
    d_inner = 24
    assert {n: tuple(p.shape) for n, p in mixer.named_parameters()} == {
        "in_proj.weight": (2 * d_inner, 12), "conv1d.weight": (d_inner, 1, 4),
        "conv1d.bias": (d_inner,), "log_dt": (d_inner,), "A_log": (d_inner, 3),
        "A_imag": (d_inner, 3), "B": (d_inner, 3, 2), "C": (d_inner, 3, 2), "D": (d_inner,),
        "out_proj.weight": (12, d_inner)}
    dt, A, B, C, D = mixer.ssm_parameters(F64)
    want_A = torch.complex(torch.full((d_inner, 3), -0.5, dtype=F64),
                           math.pi * torch.arange(3, dtype=F64).expand(d_inner, -1))
    torch.testing.assert_close(A, want_A)                            # S4D-Lin
    assert torch.equal(B, torch.ones(d_inner, 3, dtype=torch.complex128))
    assert dt.min() >= 1e-3 * (1 - 1e-6) and dt.max() <= 1e-1 * (1 + 1e-6)
    assert dt.max() / dt.min() > 5                                   # spread over the range
    assert 0.5 < C.abs().pow(2).mean() < 2 and torch.equal(D, torch.ones(d_inner, dtype=F64))
    assert mixer.state_shapes(cfg) == ((3, d_inner), (d_inner, 3, 2))
    model = GenoSSM(cfg)
    decay = {id(p) for p in model.optim_groups(0.1)[0]["params"]}
    block = model.layers[0].mixer
    assert id(block.C) in decay and id(block.in_proj.weight) in decay
    assert not {id(block.A_log), id(block.A_imag), id(block.B), id(block.log_dt)} & decay


@pytest.mark.parametrize("pieces", [[1] * 30, [1, 2, 1, 5, 3, 17, 1], [29, 1], [16, 14],
                                    [30]])
def test_streaming_equals_full_pass_in_float64(pieces):
    """The full pass is the FFT convolution, the stream the chunked recurrence (chunk 8)."""
    model = make()
    full, state = check_stream_equals_full_pass(model, random_tokens(2, 30), pieces, layer=1,
                                                atol=1e-10)
    assert full.dtype == torch.float64
    assert [tuple(c.shape) for c in state.conv] == [(2, 3, 32)] * 2
    assert [tuple(s.shape) for s in state.ssm] == [(2, 32, 4, 2)] * 2


def test_float32_streaming_equals_full_pass_and_branches():
    model = make(dtype=torch.float32)
    x = random_tokens(2, 100)
    with torch.no_grad():
        full = model(x)
        out = list(model.stream([x[:, :37], x[:, 37:38], x[:, 38:]]))
        logits = torch.cat([p.logits for p in out], 1)
        assert (logits - full).abs().max() <= 1e-5 * full.abs().max()
        state = out[0].state
        assert all(t.dtype == torch.float32 for t in state.conv + state.ssm)
        two = model.step(x[1:, 37:].repeat(2, 1), state.index_select([1, 1]))
        torch.testing.assert_close(two.logits[0], two.logits[1])
        torch.testing.assert_close(two.logits[:1], torch.cat([p.logits for p in out[1:]], 1)[1:],
                                   rtol=1e-5, atol=1e-6)


def test_reference_backend_equals_the_default_with_gradients():
    """backend "ref" (the loop) against the default (FFT convolution in a whole pass, the
    recurrence in a stream): logits, streamed logits and every parameter gradient, float64."""
    model = make()
    x = random_tokens(2, 40)

    def run(backend):
        model.zero_grad()
        out = model.train()(x, backend=backend)
        out.logsumexp(-1).mean().backward()
        model.eval()
        with torch.no_grad():
            streamed = torch.cat([p.logits for p in model.stream([x[:, :13], x[:, 13:]],
                                                                 backend=backend)], 1)
        return out.detach(), streamed, {n: p.grad.clone() for n, p in model.named_parameters()}

    out, streamed, grads = run(None)
    out_ref, streamed_ref, grads_ref = run("ref")
    torch.testing.assert_close(out, out_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(streamed, out_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(streamed_ref, out_ref, rtol=0, atol=1e-10)
    for name, g in grads_ref.items():
        assert g.abs().max() > 0, name
        torch.testing.assert_close(grads[name], g, rtol=1e-8, atol=1e-12, msg=name)
    with pytest.raises(ValueError, match="backend auto, torch or ref"):
        model(x, backend="triton")


@pytest.mark.parametrize("segment", [0, 20])
@pytest.mark.parametrize("kw", [{}, {"objective": "mlm", "bidirectional": True,
                                     "bidirectional_sharing": "projections",
                                     "rc_equivariant": True}])
def test_gradient_checkpointing_same_gradients(kw, segment):
    """Whole-sequence checkpointing (the convolution) and segments of 20 carrying the state
    (the recurrence, 48 = 20 + 20 + 8) give the gradients of no checkpointing."""
    x = random_tokens(2, 48)
    want = cross_entropy_gradients(make(**kw), x)
    got = cross_entropy_gradients(make(gradient_checkpointing=True,
                                       checkpoint_segment_length=segment, **kw), x)
    for name, g in want.items():  # RMSNorm computes in float32, the mixer in float64
        tol = 1e-10 if ".mixer" in name else 1e-6
        torch.testing.assert_close(got[name], g, rtol=tol, atol=tol, msg=name)


def test_autocast_bf16_keeps_the_ssm_in_float32():
    model = make(dtype=torch.float32, gradient_checkpointing=True, checkpoint_segment_length=16)
    x = random_tokens(2, 40)
    with torch.no_grad():
        ref = model(x)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        with torch.no_grad():
            state = model.step(x, model.initial_state(2)).state
    out.float().logsumexp(-1).mean().backward()
    assert ((out.float() - ref).abs().max() / ref.abs().max()) < 0.1
    assert all(t.dtype == torch.float32 for t in state.conv + state.ssm)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


# --- bidirectional, RC equivariance -----------------------------------------------------------

@pytest.mark.parametrize("sharing", ["mixer", "projections", "none"])
def test_bidirectional_and_rc_equivariant(sharing):
    bi = make(objective="mlm", bidirectional=True, bidirectional_sharing=sharing)
    x = random_tokens(2, 25, high=alphabet.VOCAB_SIZE)
    with torch.no_grad():
        h = bi.embedding(x)
        for block in bi.layers:    # by hand: forward mixer + reversed (own or shared) mixer
            u = block.norm(h)
            rev = block.mixer_rev if sharing != "mixer" else block.mixer
            h = h + block.mixer(u) + rev(u.flip(1)).flip(1)
        torch.testing.assert_close(bi(x), bi.lm_head(bi.norm_f(h)), rtol=0, atol=1e-10)
        if sharing == "mixer":     # one mixer both ways: reversing the input reverses the output
            torch.testing.assert_close(bi(x.flip(1)), bi(x).flip(1), rtol=0, atol=1e-10)
    rc = make(objective="mlm", bidirectional=True, bidirectional_sharing=sharing,
              rc_equivariant=True)
    with torch.no_grad():
        out, out_rc = rc(x), rc(reverse_complement_tokens(x))
    torch.testing.assert_close(out_rc, reverse_complement_logits(out), rtol=0, atol=1e-10)
    assert (out_rc - out).abs().max() > 1e-3


# --- model directory, config, export ----------------------------------------------------------

def test_save_load_through_the_model_directory(tmp_path):
    model = make(dtype=torch.float32)
    ModelDir(tmp_path / "m").save_model(model)
    loaded = ModelDir(tmp_path / "m").load_model()
    assert loaded.config == model.config and loaded.config.mixer == "s4d"
    x = random_tokens(2, 20)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
        a = list(loaded.stream([x[:, :7], x[:, 7:]]))[-1].logits
        b = list(model.stream([x[:, :7], x[:, 7:]]))[-1].logits
        assert torch.equal(a, b)


def test_config_round_trip_and_checks():
    cfg = tiny(d_state=6, d_conv=1, chunk_size=5)
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="even d_state"):
        tiny(d_state=5)
    with pytest.raises(ValueError, match="no triton backend"):
        tiny(scan_backend="triton")
    # headdim is Mamba-2's: not checked against an S4D d_inner
    assert tiny(d_model=30, headdim=7).d_inner == 60
    with torch.no_grad():   # d_conv 1: no conv state, the conv a per-channel scale
        model = make(d_conv=1)
        x = random_tokens(1, 20)
        out = torch.cat([p.logits for p in model.stream([x[:, :9], x[:, 9:]])], 1)
        torch.testing.assert_close(out, model(x), rtol=0, atol=1e-10)


def test_export_refuses_s4d(tmp_path):
    ModelDir(tmp_path / "m").save_model(make(dtype=torch.float32))
    with pytest.raises(InputError) as failure:
        export(tmp_path / "m", tmp_path / "hf")
    message = str(failure.value)
    assert "model.mixer" in message and "mixer 's4d'" in message and "\n" not in message
    assert not (tmp_path / "hf").exists()
