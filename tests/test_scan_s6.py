"""The Mamba-1 (S6) scan through the one entry point: A of shape (heads, dstate), a decay per
channel and state. Checked against the official mamba_ssm code's own scan call (layer 0 of the
mamba_ssm Mamba-1 fixture in tests/data/interop), against finite differences in float64, and
against the SSD form where the two coincide."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from genossm.ops import selective_scan
from helpers import ROOT

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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_equals_the_official_mamba_ssm_scan(dtype):
    call = official_scan_call()
    args = {k: call[k].to(dtype) for k in ("x", "dt", "A", "B", "C", "D", "dt_bias")}
    y = selective_scan(args["x"], args["dt"], args["A"], args["B"], args["C"], args["D"],
                       dt_bias=args["dt_bias"], dt_softplus=True)
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
    s6 = selective_scan(*args, per_head[:, None].expand(-1, 5).contiguous(), *rest,
                        dt_bias=inp["dt_bias"], dt_softplus=True)
    ssd = selective_scan(*args, per_head, *rest, dt_bias=inp["dt_bias"], dt_softplus=True,
                         backend="torch", chunk_size=16)
    torch.testing.assert_close(s6, ssd, rtol=0, atol=1e-10)


def test_backends_without_the_mamba1_scan_say_so():
    inp = _inputs()
    with pytest.raises(ValueError, match="Mamba-1 scan"):
        selective_scan(inp["x"], inp["dt"], inp["A"], inp["B"], inp["C"], backend="torch")
    with pytest.raises(ValueError, match=r"A must be \(3,\) or \(3, 4\)"):
        selective_scan(inp["x"], inp["dt"], inp["A"][:, :2], inp["B"], inp["C"])
