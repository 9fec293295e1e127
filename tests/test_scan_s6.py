"""The Mamba-1 (S6) scan through the one entry point: A of shape (heads, dstate), a decay per
channel and state. Checked against the official mamba_ssm code's own scan call (layer 0 of the
mamba_ssm Mamba-1 fixture in tests/data/interop), against finite differences in float64, and
against the SSD form where the two coincide; the ``torch`` backend
(:mod:`genossm.ops.scan_s6_chunked`) against the float64 sequential reference: outputs, final
state and the gradient of every input, over block and chunk layouts, groups, headdims and D
shapes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from genossm.ops import scan_s6_chunked as s6
from genossm.ops import selective_scan
from genossm.ops.scan_s6_chunked import scan_s6_chunked
from helpers import ROOT
from scan_harness import (
    assert_matches_ref,
    check_against_ref,
    check_pieces_equal_one_pass,
    make_inputs,
    run,
)

FIXTURE = ROOT / "tests/data/interop/mamba1_lm_tiny/io.safetensors"


def official_scan_call() -> dict:
    """Layer 0's ``selective_scan_fn(u, delta, A, B, C, D, z=z, delta_bias=delta_bias,
    delta_softplus=True)`` as mamba_ssm made it, in genossm's layout: channels are heads of
    headdim 1, B and C one group."""
    io = {k.removeprefix("debug.layers.0.mixer.scan."): v for k, v in load_file(FIXTURE).items()
          if k.startswith("debug.layers.0.mixer.scan.")}
    return {
        "x": io["u"].transpose(1, 2)[..., None],          # (b, l, d, 1)
        "dt": io["delta"].transpose(1, 2),                 # (b, l, d), before bias and softplus
        "A": io["A"],                                      # (d, n)
        "B": io["B"].transpose(1, 2)[:, :, None],          # (b, l, 1, n)
        "C": io["C"].transpose(1, 2)[:, :, None],
        "D": io["D"], "dt_bias": io["delta_bias"],
        "z": io["z"].transpose(1, 2), "out": io["out"].transpose(1, 2),   # (b, l, d)
    }


@pytest.mark.parametrize("backend", ["ref", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_equals_the_official_mamba_ssm_scan(dtype, backend):
    call = official_scan_call()
    args = {k: call[k].to(dtype) for k in ("x", "dt", "A", "B", "C", "D", "dt_bias")}
    y = selective_scan(args["x"], args["dt"], args["A"], args["B"], args["C"], args["D"],
                       dt_bias=args["dt_bias"], dt_softplus=True, backend=backend)
    assert y.dtype == dtype
    out = y[..., 0] * F.silu(call["z"].to(dtype))
    scale = call["out"].abs().max()
    assert (out.float() - call["out"]).abs().max() <= 1e-5 * scale


def _inputs(dtype=torch.float64, b=2, length=7, heads=3, headdim=1, dstate=4, seed=0):
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)
    return {"x": randn(b, length, heads, headdim), "dt": randn(b, length, heads) * 0.5,
            "A": -torch.rand(heads, dstate, generator=g, dtype=dtype) * 2 - 0.1,
            "B": randn(b, length, 1, dstate), "C": randn(b, length, 1, dstate),
            "D": randn(heads), "dt_bias": randn(heads) * 0.1,
            "initial_state": randn(b, heads, headdim, dstate)}


def test_gradients_match_finite_differences_in_float64():
    inp = {k: v.requires_grad_() for k, v in _inputs(length=5, headdim=2).items()}

    def scan(x, dt, A, B, C, D, dt_bias, initial_state):
        return selective_scan(x, dt, A, B, C, D, dt_bias=dt_bias, dt_softplus=True,
                              initial_state=initial_state, return_final_state=True)
    assert torch.autograd.gradcheck(scan, tuple(inp.values()))


def test_pieces_carried_by_the_final_state_equal_one_pass():
    inp = _inputs(length=11)
    common = {"dt_softplus": True, "return_final_state": True}

    def scan(lo, hi, state):
        return selective_scan(inp["x"][:, lo:hi], inp["dt"][:, lo:hi], inp["A"],
                              inp["B"][:, lo:hi], inp["C"][:, lo:hi], inp["D"],
                              dt_bias=inp["dt_bias"], initial_state=state, **common)
    full, full_state = scan(0, 11, inp["initial_state"])
    first, state = scan(0, 4, inp["initial_state"])
    second, last_state = scan(4, 11, state)
    torch.testing.assert_close(torch.cat([first, second], 1), full, rtol=0, atol=1e-12)
    torch.testing.assert_close(last_state, full_state, rtol=0, atol=1e-12)


def test_a_decay_equal_across_states_is_the_ssd_scan():
    """A (h, n) with every state's value the same is the SSD scan with A (h,), computed by the
    chunked backend."""
    inp = _inputs(length=40, headdim=3, dstate=5)
    per_head = inp["A"][:, 0]
    args = (inp["x"], inp["dt"])
    rest = (inp["B"], inp["C"], inp["D"])
    s6_y = selective_scan(*args, per_head[:, None].expand(-1, 5).contiguous(), *rest,
                          dt_bias=inp["dt_bias"], dt_softplus=True)
    ssd = selective_scan(*args, per_head, *rest, dt_bias=inp["dt_bias"], dt_softplus=True,
                         backend="torch", chunk_size=16)
    torch.testing.assert_close(s6_y, ssd, rtol=0, atol=1e-10)


def test_a_of_the_wrong_shape_raises():
    inp = _inputs()
    with pytest.raises(ValueError, match=r"A must be \(3,\) or \(3, 4\)"):
        selective_scan(inp["x"], inp["dt"], inp["A"][:, :2], inp["B"], inp["C"])
    with pytest.raises(ValueError, match="A of shape"):
        scan_s6_chunked(inp["x"], inp["dt"], inp["A"][:, 0], inp["B"], inp["C"])


# --- the torch backend against the float64 reference ----------------------------------------

def s6_inputs(seed, batch, length, heads, groups, headdim, dstate, **kw):
    """scan_harness inputs with A of shape (heads, dstate): -exp(N(0, 0.7^2)) per state."""
    inp = make_inputs(seed, batch, length, heads, groups, headdim, dstate, **kw)
    gen = torch.Generator().manual_seed(seed + 1000)
    inp["A"] = -torch.exp(torch.randn(heads, dstate, generator=gen, dtype=torch.float64) * 0.7)
    return inp


@pytest.fixture
def blocks(monkeypatch):
    """Set the block layout of the torch backend for a state of (b, h, p, n): ``k`` chunks per
    block, chunks of the caller's chunk size, and the per-position work done in runs of
    ``run`` positions. Returns the blocks of a scan of ``length``, to check that a test covers
    the layout it means to."""
    def set_layout(k, run, length, chunk, b, h, p, n):
        monkeypatch.setattr(s6, "STEP_ELEMENTS", k * b * h * p * n)
        monkeypatch.setattr(s6, "BLOCK_ELEMENTS", 1 << 40)
        monkeypatch.setattr(s6, "RUN_ELEMENTS", run * b * h * p)
        return s6._blocks(length, chunk, b * h * p * n)
    return set_layout


# (batch, length, chunk, heads, groups, headdim, dstate, D, initial state, softplus+bias,
#  chunks per block, run length)
CASES = {
    # Mamba-1's form: headdim 1, one group; full blocks, a shorter block, a ragged tail, in
    # two runs of two blocks
    "mamba1_ragged": (2, 41, 4, 6, 1, 1, 5, "h", True, True, 4, 20),
    "headdim3_groups2": (2, 45, 5, 4, 2, 3, 4, "hp", True, True, 2, 16),
    "groups_eq_heads_no_D": (1, 29, 3, 4, 4, 2, 3, None, False, False, 4, 6),
    "chunk1": (2, 13, 1, 3, 1, 2, 3, "h", True, True, 3, 4),
    "one_chunk_per_block": (1, 23, 4, 2, 1, 1, 4, "hp", True, True, 1, 8),
    "chunk_longer_than_input": (1, 5, 8, 3, 1, 1, 4, "h", True, True, 2, 8),
    "exact_multiple": (1, 32, 4, 4, 2, 1, 4, "hp", False, True, 2, 8),
    "length1": (2, 1, 4, 2, 1, 3, 2, "h", True, True, 2, 8),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_torch_matches_ref_float64(blocks, case):
    b, length, chunk, h, g, p, n, d_shape, state, bias, k, run_len = CASES[case]
    layout = blocks(k, run_len, length, chunk, b, h, p, n)
    assert sum(K * Q for _, K, Q in layout) == length
    inp = s6_inputs(1, b, length, h, g, p, n, d_shape=d_shape, state=state, bias=bias)
    check_against_ref(inp, "torch", chunk_size=chunk)


def test_torch_block_layouts_are_covered(blocks):
    """The cases above do cover what they are named for."""
    layout = blocks(4, 20, 41, 4, 2, 6, 1, 5)
    assert layout == [(0, 4, 4), (16, 4, 4), (32, 2, 4), (40, 1, 1)]
    assert [len(r) for _, _, r in s6._runs(layout, 2 * 6 * 1)] == [2, 2]
    assert blocks(2, 8, 5, 8, 1, 3, 1, 4) == [(0, 1, 5)]  # only a ragged chunk
    assert all(Kb == 1 for _, Kb, _ in blocks(1, 8, 23, 4, 1, 2, 1, 4))


def test_torch_default_layout_float64():
    """The constants as shipped (several chunks per block, chunk length chosen from the state
    size below the caller's chunk size), a length that is no multiple of anything."""
    b, length, h, p, n = 1, 300, 8, 1, 16
    Q, K = s6._shape(256, b * h * p * n)
    assert K > 1 and 1 < Q < 256 and length % Q
    check_against_ref(s6_inputs(2, b, length, h, 1, p, n), "torch", chunk_size=256)


def test_torch_large_state_layout_float64():
    """A state as large as Mamba-1's (512 channels x 16 states): the shipped constants give one
    chunk per block, the plain recurrence from the state entering each block."""
    b, length, h, p, n = 1, 75, 512, 1, 16
    assert s6._shape(256, b * h * p * n)[1] == 1
    assert len(s6._blocks(length, 256, b * h * p * n)) > 2
    check_against_ref(s6_inputs(3, b, length, h, 1, p, n), "torch", chunk_size=256)


def test_torch_float32_against_float64_ref(blocks):
    blocks(4, 16, 120, 8, 2, 4, 2, 8)
    check_against_ref(s6_inputs(3, 2, 120, 4, 2, 2, 8, d_shape="hp"), "torch",
                      dtype=torch.float32, chunk_size=8, rtol=1e-4, atol=1e-4, relative=True)


def test_torch_bfloat16_inputs_compute_in_float32():
    check_against_ref(s6_inputs(4, 2, 40, 4, 1, 1, 4), "torch", dtype=torch.bfloat16,
                      chunk_size=8, rtol=5e-2, atol=5e-2, relative=True,
                      tols={"y": (3e-2, 3e-2), "final_state": (1e-3, 1e-3)})


def test_torch_strong_decay_is_finite_and_exact(blocks):
    """dt A down to about -300 per step: every exponent is <= 0, nothing overflows."""
    blocks(2, 8, 48, 4, 1, 2, 2, 3)
    inp = s6_inputs(5, 1, 48, 2, 1, 2, 3, bias=False)
    inp["dt"] = inp["dt"] * 100.0
    inp["A"] = torch.tensor([[-3.0, -0.5, -1e-3], [-1.0, -2e-3, -6.0]], dtype=torch.float64)
    got = run(inp, "torch", chunk_size=4)
    assert all(torch.isfinite(t).all() for t in (got[0], got[1], *got[2].values()))
    assert_matches_ref(got, run(inp, "ref"))


def test_torch_gradcheck(blocks):
    """torch.autograd.gradcheck of the backend itself (dt positive, as the dispatcher makes it),
    over several blocks of several chunks and a ragged tail."""
    b, length, h, p, n = 1, 11, 2, 2, 3
    assert len(blocks(2, 4, length, 2, b, h, p, n)) > 3
    inp = s6_inputs(6, b, length, h, 1, p, n, bias=False, d_shape="hp")
    args = tuple(inp[k].requires_grad_() for k in ("x", "dt", "A", "B", "C", "D",
                                                   "initial_state"))

    def scan(x, dt, A, B, C, D, s0):
        return scan_s6_chunked(x, dt, A, B, C, D, initial_state=s0, return_final_state=True,
                               chunk_size=2)
    assert torch.autograd.gradcheck(scan, args)


def test_torch_pieces_carried_by_the_final_state_equal_one_pass(blocks):
    blocks(2, 8, 50, 4, 2, 4, 2, 4)
    inp = s6_inputs(7, 2, 50, 4, 2, 2, 4, bias=False)
    check_pieces_equal_one_pass(inp, chunk_size=4)


def test_torch_non_contiguous_inputs():
    inp = s6_inputs(8, 2, 20, 4, 2, 3, 4, bias=False)
    x, dt, A, B, C = (inp[k] for k in ("x", "dt", "A", "B", "C"))
    xt = x.transpose(0, 1).contiguous().transpose(0, 1)  # same values, other strides
    Bt = B.transpose(2, 3).contiguous().transpose(2, 3)
    At = A.t().contiguous().t()
    assert not (xt.is_contiguous() or Bt.is_contiguous() or At.is_contiguous())
    got = selective_scan(xt, dt, At, Bt, C, chunk_size=4, backend="torch")
    torch.testing.assert_close(got, selective_scan(x, dt, A, B, C, backend="ref"))


def test_torch_length_zero():
    inp = s6_inputs(9, 2, 0, 3, 1, 2, 4, bias=False)
    x, dt, A, B, C, D = (inp[k] for k in ("x", "dt", "A", "B", "C", "D"))
    s0 = inp["initial_state"].requires_grad_()
    y, s = selective_scan(x, dt, A, B, C, D, initial_state=s0, return_final_state=True,
                          backend="torch")
    assert y.shape == x.shape
    torch.testing.assert_close(s, s0)
    s.sum().backward()
    torch.testing.assert_close(s0.grad, torch.ones_like(s0))
    y, s = scan_s6_chunked(x.float(), dt.float(), A.float(), B.float(), C.float(),
                           return_final_state=True)
    assert y.shape == x.shape and s.shape == (2, 3, 2, 4) and not s.any()
