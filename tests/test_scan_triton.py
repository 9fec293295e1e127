"""The triton scan backend against the float64 sequential reference, forward and backward.

Runs the Triton kernels on CPU through the interpreter (TRITON_INTERPRET=1, set in conftest);
with GENOSSM_TEST_DEVICE=cuda and TRITON_INTERPRET=0 (benchmarks/gpu_check.sh) compiled on the
GPU, against the float64 reference on CPU (scan_harness).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")

import scan_harness as harness  # noqa: E402
from genossm.ops.scan_triton import chunk_len, scan_triton  # noqa: E402
from genossm.ops.selective_scan import selective_scan  # noqa: E402
from scan_harness import assert_tensor_close, cast, check_against_ref, make_inputs  # noqa: E402


def _inputs(batch=2, length=45, heads=4, headdim=16, groups=2, dstate=16, d_shape="hp",
            init=True, seed=0):
    return make_inputs(seed, batch, length, heads, groups, headdim, dstate, d_shape=d_shape,
                       state=init, dt_scale=0.5, bc_scale=0.5, a_range=(0.3, 1.3))


def _check(inputs, dtype=torch.float32, tol=1e-4, chunk_size=16, **kw):
    """Triton in ``dtype`` against the float64 reference on the same rounded inputs: the error
    of y, the final state and every gradient is at most ``tol`` x that tensor's largest
    reference magnitude."""
    check_against_ref(inputs, "triton", dtype=dtype, chunk_size=chunk_size, rtol=0.0, atol=tol,
                      relative=True, seed=1, **kw)


def _close(name, got, want, tol):
    assert_tensor_close(name, got, want, rtol=0.0, atol=tol, relative=True)


def test_ragged_length_groups_init_full_d():
    _check(_inputs(length=45, d_shape="hp", init=True))


def test_length_one():
    _check(_inputs(length=1, d_shape="h", init=True))


def test_no_d_no_init_one_group_exact_chunks():
    _check(_inputs(batch=1, length=64, groups=1, d_shape=None, init=False))


def test_multi_tile_chunk_head_d():
    # chunk 128 = several row tiles per chunk (32 rows in float32), three chunks, the last
    # one ragged.
    _check(_inputs(batch=1, length=300, heads=2, groups=2, d_shape="h"), chunk_size=128)


def test_non_power_of_two_dims():
    _check(_inputs(batch=1, length=37, heads=3, headdim=12, groups=3, dstate=10))


def test_gradient_of_y_only_and_of_final_state_only():
    inputs = _inputs(batch=1, length=40, heads=2, groups=1)
    _check(inputs, grad_final=False)
    _check(inputs, grad_y=False)


def test_bfloat16_inputs():
    # 16-bit inputs use 64-row tiles: chunk 128 has two; length 150 ends in a ragged chunk.
    _check(_inputs(batch=1, length=150), dtype=torch.bfloat16, tol=3e-2, chunk_size=128)


def test_float16_inputs():
    _check(_inputs(batch=1, length=33, heads=2), dtype=torch.float16, tol=1e-2)


@settings(max_examples=6, deadline=None, derandomize=True)
@given(length=st.integers(1, 70), chunk=st.sampled_from([16, 32]),
       heads_groups=st.sampled_from([(1, 1), (2, 1), (3, 3), (4, 2)]),
       d_shape=st.sampled_from(["h", "hp", None]), init=st.booleans(), seed=st.integers(0, 99))
def test_random_shapes(length, chunk, heads_groups, d_shape, init, seed):
    heads, groups = heads_groups
    _check(_inputs(batch=1, length=length, heads=heads, groups=groups, d_shape=d_shape,
                   init=init, seed=seed), chunk_size=chunk)


def test_streaming_pieces_equal_one_pass():
    (y, final), (ys, state) = harness.one_pass_and_pieces(
        cast(_inputs(length=70), torch.float32), ((0, 23), (23, 24), (24, 70)), chunk_size=16,
        backend="triton")
    _close("y", ys, y, 1e-5)
    _close("final_state", state, final, 1e-5)


def test_long_forward():
    inputs = _inputs(batch=1, length=4096, heads=1, groups=1, seed=3)
    inputs["dt"] = inputs["dt"] - 2.0  # slower decay, so information crosses many chunks
    x, dt, A, B, C, D = (inputs[k] for k in ("x", "dt", "A", "B", "C", "D"))
    want, want_f = selective_scan(x, dt, A, B, C, D, dt_softplus=True, return_final_state=True,
                                  backend="ref")
    f = [t.to(harness.DEVICE, torch.float32) for t in (x, dt, A, B, C, D)]
    got, got_f = selective_scan(*f, dt_softplus=True, return_final_state=True, chunk_size=256,
                                backend="triton")
    _close("y", got, want, 1e-4)
    _close("final_state", got_f, want_f, 1e-4)


def test_chunk_len():
    assert [chunk_len(c) for c in (1, 16, 100, 256, 300, 4096)] == [16, 16, 64, 256, 256, 1024]
    # A chunk size that is not a power of two gives the same function.
    _check(_inputs(batch=1, length=50, heads=2, groups=1), chunk_size=40)


def test_empty_length():
    harness.check_empty_length(scan_triton, _inputs(batch=1, length=0, heads=2, groups=1))


def test_rejects_cpu_without_interpreter_and_float64(monkeypatch):
    harness.check_rejects_cpu_without_interpreter_and_float64(
        scan_triton, _inputs(batch=1, length=4, heads=2, groups=1), monkeypatch)


@harness.interpreter_only
def test_gpu_benchmark_smoke(capsys):
    """benchmarks/scan_gpu.py: --help, and every code path at tiny sizes on the interpreter,
    where the two backends must agree."""
    bench = harness.load_gpu_benchmark()
    with pytest.raises(SystemExit) as exc:
        bench.main(["--help"])
    assert exc.value.code == 0
    capsys.readouterr()
    bench.main(["--cpu-interpret-smoke", "--dtypes", "bf16", "fp32"])
    rows = [line for line in capsys.readouterr().out.splitlines() if "fwd+bwd" in line]
    assert len(rows) == 4
    for row in rows:
        diff = float(row.strip("|").split("|")[-1])
        assert diff < (2e-2 if "bf16" in row else 1e-4), row


@pytest.mark.parametrize("sizes", [[], ["--headdim", "16", "--dstate", "16", "--dtypes", "bf16"]])
def test_kernels_compile_for_h100(sizes):
    """The interpreter does not type-check kernels as the compiler does: compile each one for
    sm_90 (no GPU needed) through the benchmark's --compile-check."""
    proc = harness.compile_check("--kernels", "ssd", *sizes)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # the SSD kernels here; the S6 kernels' compile test is in test_scan_s6_triton.py
    assert proc.stdout.count(" ok ") == (16 if not sizes else 8), proc.stdout
