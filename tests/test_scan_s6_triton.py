"""The triton backend of the Mamba-1 (S6) scan (A of shape (heads, dstate)) against the float64
sequential reference: outputs, final state and every gradient.

Runs the Triton kernels on CPU through the interpreter (TRITON_INTERPRET=1, set in conftest),
so sizes stay small; with GENOSSM_TEST_DEVICE=cuda and TRITON_INTERPRET=0
(benchmarks/gpu_check.sh) compiled on the GPU, against the float64 reference on CPU
(scan_harness). The segmented path (the length cut into pieces run in parallel, chosen on
GPUs with few channels) is forced through ``_segment_length``.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

import scan_harness as harness  # noqa: E402
from genossm.ops import scan_s6_triton as s6mod  # noqa: E402
from genossm.ops.scan_s6_triton import checkpoint_len, scan_s6_triton  # noqa: E402
from scan_harness import assert_tensor_close, cast, check_against_ref, make_inputs  # noqa: E402


def _inputs(batch=1, length=37, heads=3, headdim=1, groups=1, dstate=6, d_shape="h",
            init=True, seed=0):
    """Random float64 inputs with A (heads, dstate) in -[0.2, 1.7] (Mamba-1's per-state
    decays), dt through softplus(dt + bias)."""
    inputs = make_inputs(seed, batch, length, heads, groups, headdim, dstate, d_shape=d_shape,
                         state=init, dt_scale=0.5, bc_scale=0.5)
    gen = torch.Generator().manual_seed(seed + 1000)
    inputs["A"] = -(torch.rand(heads, dstate, generator=gen, dtype=torch.float64) * 1.5 + 0.2)
    return inputs


def _check(inputs, dtype=torch.float32, tol=1e-5, chunk_size=16, **kw):
    """Triton in ``dtype`` against the float64 reference on the same rounded inputs: y, the
    final state and every gradient within ``tol`` x that tensor's largest reference
    magnitude."""
    check_against_ref(inputs, "triton", dtype=dtype, chunk_size=chunk_size, rtol=0.0, atol=tol,
                      relative=True, seed=1, **kw)


@pytest.fixture
def segments(monkeypatch):
    """Force segments of ``n`` steps (a multiple of the checkpoint interval)."""
    def force(n):
        monkeypatch.setattr(s6mod, "_segment_length", lambda *args: n)
    return force


@pytest.mark.parametrize("case", [
    # (batch, length, heads, headdim, groups, dstate, D, init, chunk)
    (2, 37, 3, 1, 1, 6, "h", True, 16),      # Mamba-1 shape (headdim 1), ragged length
    (1, 50, 4, 2, 2, 5, "hp", True, 16),     # groups, headdim > 1, D (h, p)
    (1, 64, 2, 3, 1, 16, None, False, 32),   # exact chunks, no D, no initial state
    (1, 45, 6, 1, 3, 4, "h", False, 16),     # three groups of two rows
])
def test_matches_reference(case):
    batch, length, heads, headdim, groups, dstate, d_shape, init, chunk = case
    _check(_inputs(batch, length, heads, headdim, groups, dstate, d_shape, init), chunk_size=chunk)


def test_many_row_blocks_per_group():
    # 80 rows in one group: three row blocks of 32, the last one ragged.
    _check(_inputs(length=9, heads=80, dstate=4, seed=4))


def test_length_one_and_non_multiple_of_four():
    _check(_inputs(length=1, heads=2))
    _check(_inputs(length=6, heads=2, headdim=2, d_shape="hp"))


def test_gradient_of_y_only_and_of_final_state_only():
    inputs = _inputs(length=21, heads=2, seed=2)
    _check(inputs, grad_final=False)
    _check(inputs, grad_y=False)


def test_segments(segments):
    # Segments of 16 steps (= the checkpoint interval): three of them, the last one ragged.
    segments(16)
    _check(_inputs(batch=2, length=40, heads=2, headdim=2, groups=2, d_shape="hp", seed=3))


def test_segments_of_several_chunks_without_init(segments):
    segments(32)
    _check(_inputs(length=77, heads=3, dstate=5, init=False, d_shape=None, seed=5))
    _check(_inputs(length=40, heads=2, seed=6), grad_y=False)


def test_bfloat16_inputs(segments):
    segments(32)
    _check(_inputs(length=50, heads=4, headdim=2, groups=2), dtype=torch.bfloat16, tol=2e-2)


def test_float16_inputs():
    _check(_inputs(length=33, heads=2), dtype=torch.float16, tol=1e-2)


def test_streaming_pieces_equal_one_pass():
    inputs = cast(_inputs(batch=2, length=45, heads=3, headdim=2, groups=1, d_shape="hp"),
                  torch.float32)
    (y, final), (ys, state) = harness.one_pass_and_pieces(
        inputs, ((0, 17), (17, 18), (18, 45)), chunk_size=16, backend="triton")
    assert_tensor_close("y", ys, y, rtol=0.0, atol=1e-6, relative=True)
    assert_tensor_close("final_state", state, final, rtol=0.0, atol=1e-6, relative=True)


def test_long_sequence_segments_and_slow_decay(segments):
    # 512 steps with slow decay: information crosses 16 checkpoints and 4 segments. Every
    # output and gradient of the backend stays within 1e-5 (at 1024 steps too: dA, a float32
    # sum over time, is the largest at ~1.3e-6). dt_bias's gradient, the dispatcher's sum over
    # time of ddt·sigmoid, cancels to well below the size of its terms, so the float32 rounding
    # of ddt (~2e-7 of its largest value) can reach ~2e-5 of it (1024 steps), summed in float64
    # or not.
    segments(128)
    inputs = _inputs(length=512, heads=1, dstate=4, seed=7)
    inputs["A"] = inputs["A"] * 0.05
    _check(inputs, chunk_size=32, tols={"ddt_bias": (0.0, 5e-5)})


def test_checkpoint_len():
    assert [checkpoint_len(c) for c in (1, 16, 100, 256, 300, 4096)] == [16, 16, 64, 256, 256,
                                                                         256]


def test_empty_length():
    harness.check_empty_length(scan_s6_triton, _inputs(length=0, heads=2))


def test_rejects_cpu_without_interpreter_and_float64(monkeypatch):
    harness.check_rejects_cpu_without_interpreter_and_float64(
        scan_s6_triton, _inputs(length=4, heads=2), monkeypatch)


@harness.interpreter_only
def test_gpu_benchmark_s6_smoke(capsys):
    """benchmarks/scan_gpu.py --s6 at tiny sizes on the interpreter: the segmented run (two
    segments) agrees with one pass."""
    harness.load_gpu_benchmark().main(["--s6", "--cpu-interpret-smoke", "--dtypes", "fp32"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| fp32")]
    assert len(rows) == 1, rows
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[2] == "2", cells  # segments
    assert float(cells[8]) < 1e-5, cells  # diff vs 1 segment


def test_s6_kernels_compile_for_h100():
    """The interpreter does not type-check kernels as the compiler does: compile the S6 kernels
    for sm_90 (no GPU needed) through the benchmark's --compile-check."""
    proc = harness.compile_check("--kernels", "s6", "--dtypes", "bf16", "fp32")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if " s6_" in line]
    assert len(lines) == 10 and all(" ok " in line for line in lines), proc.stdout
    assert all("STACK:0" in line for line in lines), proc.stdout  # no register spills
