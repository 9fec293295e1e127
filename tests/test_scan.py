"""The selective scan: backends agree with the float64 reference (values, final state and the
gradients of every input), the reference matches a hand-worked example, shapes are checked."""

from __future__ import annotations

import math

import pytest
import torch

from genossm.ops import selective_scan
from genossm.ops.scan_ref import scan_ref
from scan_harness import (
    assert_matches_ref,
    cast,
    check_against_ref,
    check_pieces_equal_one_pass,
    make_inputs,
    run,
)

# (batch, length, chunk, heads, groups, headdim, dstate, D, initial state, softplus+bias, limit)
CASES = {
    "ragged_37_chunk16": (2, 37, 16, 4, 2, 3, 5, "hp", True, True, None),
    "length1": (2, 1, 16, 4, 2, 3, 5, "h", True, True, None),
    "length1_no_state": (1, 1, 16, 2, 1, 2, 3, None, False, False, None),
    "one_chunk": (1, 16, 16, 4, 4, 8, 8, None, False, False, None),
    "two_chunks_groups1": (2, 32, 16, 4, 1, 4, 6, "h", True, False, None),
    "chunk_minus_1": (1, 15, 16, 4, 2, 2, 4, "h", True, True, None),
    "chunk_plus_1": (1, 17, 16, 4, 1, 2, 4, "hp", False, True, None),
    "tiny_chunks": (2, 45, 4, 2, 1, 3, 3, "h", True, True, None),
    "long_default_chunk": (2, 300, 256, 4, 2, 8, 8, "hp", True, True, None),
    "long_chunk64_limit": (1, 300, 64, 4, 1, 8, 8, "h", True, True, (0.05, 0.8)),
    "limit_no_softplus": (2, 40, 16, 2, 2, 4, 4, "h", False, False, (0.1, 0.6)),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_backends_match_ref_float64(case):
    b, length, chunk, h, g, p, n, d_shape, state, bias, limit = CASES[case]
    inp = make_inputs(1, b, length, h, g, p, n, d_shape=d_shape, state=state, bias=bias)
    limit = limit or (0.0, math.inf)
    want = run(inp, "ref", dt_limit=limit)
    assert want[0].dtype == torch.float64 and want[1].dtype == torch.float64
    assert want[0].shape == (b, length, h, p) and want[1].shape == (b, h, p, n)
    for backend in ("ref", "torch"):
        got = run(inp, backend, chunk_size=chunk, dt_limit=limit)
        assert got[0].dtype == torch.float64 and got[1].dtype == torch.float64
        assert_matches_ref(got, want)


@pytest.mark.parametrize("d_shape", ["h", "hp", None])
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_torch_groups_and_d_shapes(groups, d_shape):
    inp = make_inputs(2, 2, 37, 4, groups, 3, 4, d_shape=d_shape)
    check_against_ref(inp, "torch", chunk_size=16)


@pytest.mark.parametrize("chunks_per_block", [1, 2, 3])
def test_torch_many_blocks(monkeypatch, chunks_per_block):
    """Small blocks of chunks, so that states are carried (and gradients passed back) across
    several blocks, as at long lengths."""
    from genossm.ops import scan_chunked as mod

    batch, heads, chunk = 2, 4, 8
    monkeypatch.setattr(mod, "BLOCK_ELEMENTS", chunks_per_block * batch * heads * chunk**2)
    blocks = list(mod._blocks(61, chunk, batch, heads))
    assert len(blocks) > 3 and blocks[-1] == (56, 1, 5)
    inp = make_inputs(10, batch, 61, heads, 2, 3, 4, d_shape="hp")
    check_against_ref(inp, "torch", chunk_size=chunk)


def test_torch_float32_against_float64_ref():
    check_against_ref(make_inputs(3, 2, 200, 4, 2, 8, 8, d_shape="hp"), "torch",
                      dtype=torch.float32, chunk_size=64, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_torch_low_precision_against_float64_ref(dtype):
    # the reference sees exactly the (rounded) values the low-precision run sees; atol is
    # relative to the largest reference magnitude of each tensor
    check_against_ref(make_inputs(4, 2, 70, 4, 2, 4, 4, d_shape="h"), "torch", dtype=dtype,
                      chunk_size=32, rtol=5e-2, atol=5e-2, relative=True,
                      tols={"y": (3e-2, 3e-2), "final_state": (1e-3, 1e-3)})


def test_torch_strong_decay_is_finite_and_exact():
    """Very negative cumulative log-decay (sum dt A down to about -1e4 within a chunk) must not
    overflow: every exponent the chunked form takes is <= 0."""
    inp = make_inputs(5, 1, 64, 2, 1, 2, 3, bias=False)
    inp["dt"] = inp["dt"] * 100.0
    inp["A"] = torch.tensor([-3.0, -1e-3], dtype=torch.float64)
    got = run(inp, "torch", chunk_size=64)
    assert all(torch.isfinite(t).all() for t in (got[0], got[1], *got[2].values()))
    assert_matches_ref(got, run(inp, "ref"))


def test_torch_streaming_pieces_equal_one_pass():
    inp = make_inputs(6, 2, 50, 4, 2, 4, 4, bias=False)
    check_pieces_equal_one_pass(inp, chunk_size=16)


def test_torch_non_contiguous_inputs():
    inp = make_inputs(7, 2, 20, 4, 2, 3, 4, bias=False)
    x, dt, A, B, C = (inp[k] for k in ("x", "dt", "A", "B", "C"))
    xt = x.transpose(0, 1).contiguous().transpose(0, 1)  # same values, other strides
    Bt = B.transpose(2, 3).contiguous().transpose(2, 3)
    assert not xt.is_contiguous() and not Bt.is_contiguous()
    got = selective_scan(xt, dt, A, Bt, C, chunk_size=8, backend="torch")
    torch.testing.assert_close(got, selective_scan(x, dt, A, B, C, backend="ref"))


def test_return_value_forms():
    inp = make_inputs(8, 1, 5, 2, 1, 2, 2, bias=False)
    x, dt, A, B, C = (inp[k] for k in ("x", "dt", "A", "B", "C"))
    for backend in ("ref", "torch"):
        y = selective_scan(x, dt, A, B, C, backend=backend)
        assert isinstance(y, torch.Tensor) and y.shape == x.shape
        y, s = selective_scan(x, dt, A, B, C, return_final_state=True, backend=backend)
        assert s.shape == (1, 2, 2, 2)


def test_ref_matches_hand_computed_example():
    """Two heads sharing one group, dstate 2, headdim 1, three steps, worked with python
    floats: h_t = exp(dt A) h_{t-1} + dt x B_t, y_t = h_t . C_t + D x_t."""
    xs = [[1.0, -2.0], [0.5, 0.0], [-1.0, 3.0]]  # [t][head]
    dts = [[0.1, 0.5], [1.0, 0.2], [0.3, 0.3]]
    A = [-1.0, -0.25]
    Bs = [[1.0, 2.0], [0.0, -1.0], [0.5, 0.5]]  # [t][n] (one group)
    Cs = [[1.0, 0.0], [2.0, 1.0], [-1.0, 1.0]]
    D = [0.5, -1.0]
    h0 = [[0.3, -0.2], [0.0, 1.0]]  # [head][n]
    want_y = [[0.0, 0.0] for _ in range(3)]
    state = [row[:] for row in h0]
    for t in range(3):
        for i in range(2):
            decay = math.exp(dts[t][i] * A[i])
            for k in range(2):
                state[i][k] = decay * state[i][k] + dts[t][i] * xs[t][i] * Bs[t][k]
            want_y[t][i] = sum(state[i][k] * Cs[t][k] for k in range(2)) + D[i] * xs[t][i]
    # spot-check the loop above by hand for head 0, step 0:
    # h = e^-0.1 * [0.3, -0.2] + 0.1 * [1, 2];  y = h . [1, 0] + 0.5 * 1
    assert want_y[0][0] == pytest.approx(math.exp(-0.1) * 0.3 + 0.1 + 0.5)

    f64 = torch.float64
    x = torch.tensor(xs, dtype=f64).view(1, 3, 2, 1)
    dt = torch.tensor(dts, dtype=f64).view(1, 3, 2)
    B = torch.tensor(Bs, dtype=f64).view(1, 3, 1, 2)
    C = torch.tensor(Cs, dtype=f64).view(1, 3, 1, 2)
    s0 = torch.tensor(h0, dtype=f64).view(1, 2, 1, 2)
    want = torch.tensor(want_y, dtype=f64).view(1, 3, 2, 1)
    want_state = torch.tensor(state, dtype=f64).view(1, 2, 1, 2)
    args = (x, dt, torch.tensor(A, dtype=f64), B, C, torch.tensor(D, dtype=f64))
    y, s = scan_ref(*args, initial_state=s0, return_final_state=True)
    torch.testing.assert_close(y, want, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(s, want_state, rtol=1e-14, atol=1e-14)
    for backend in ("ref", "torch"):
        y, s = selective_scan(*args, initial_state=s0, return_final_state=True, chunk_size=2,
                              backend=backend)
        torch.testing.assert_close(y, want, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(s, want_state, rtol=1e-13, atol=1e-13)


def test_length_zero():
    inp = make_inputs(9, 1, 0, 2, 1, 2, 2, bias=False)
    x, dt, A, B, C, s0 = (inp[k] for k in ("x", "dt", "A", "B", "C", "initial_state"))
    for backend in ("ref", "torch"):
        y, s = selective_scan(x, dt, A, B, C, initial_state=s0, return_final_state=True,
                              backend=backend)
        assert y.shape == x.shape
        torch.testing.assert_close(s, s0)


def _good():
    return make_inputs(0, 2, 5, 4, 2, 3, 6, bias=False)


BAD_SHAPES = {
    "x_3d": {"x": torch.zeros(2, 5, 12)},
    "dt_length": {"dt": torch.zeros(2, 4, 4)},
    "dt_heads": {"dt": torch.zeros(2, 5, 2)},
    "A_shape": {"A": torch.zeros(4, 1)},
    "B_batch": {"B": torch.zeros(1, 5, 2, 6)},
    "B_ne_C": {"C": torch.zeros(2, 5, 2, 5)},
    "B_3d": {"B": torch.zeros(2, 5, 12), "C": torch.zeros(2, 5, 12)},
    "groups_not_dividing": {"B": torch.zeros(2, 5, 3, 6), "C": torch.zeros(2, 5, 3, 6)},
    "D_shape": {"D": torch.zeros(3)},
    "D_transposed": {"D": torch.zeros(3, 4)},
    "state_dstate": {"initial_state": torch.zeros(2, 4, 3, 5)},
    "state_batch": {"initial_state": torch.zeros(1, 4, 3, 6)},
    "zero_groups": {"B": torch.zeros(2, 5, 0, 6), "C": torch.zeros(2, 5, 0, 6)},
    "dt_bias_shape": {"dt_bias": torch.zeros(2)},
}


@pytest.mark.parametrize("bad", list(BAD_SHAPES), ids=list(BAD_SHAPES))
@pytest.mark.parametrize("backend", ["ref", "torch"])
def test_bad_shapes_raise_value_error(bad, backend):
    inp = _good()
    inp.update({k: v.double() for k, v in BAD_SHAPES[bad].items()})
    with pytest.raises(ValueError):
        selective_scan(inp["x"], inp["dt"], inp["A"], inp["B"], inp["C"], inp["D"],
                       dt_bias=inp["dt_bias"], initial_state=inp["initial_state"],
                       backend=backend)


def test_unknown_backend_raises_value_error():
    inp = _good()
    with pytest.raises(ValueError):
        selective_scan(inp["x"], inp["dt"], inp["A"], inp["B"], inp["C"], backend="numpy")


def test_torch_ignores_cpu_autocast():
    """The scan computes in float32 even inside a bf16 autocast region (forward and backward)."""
    inp32 = cast(make_inputs(11, 1, 40, 4, 2, 4, 4, d_shape="h"), torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = run(inp32, "torch", chunk_size=16)
    assert got[0].dtype == torch.float32
    assert_matches_ref(got, run(inp32, "ref", dtype=torch.float64), rtol=1e-4, atol=1e-4)
