"""The harness the scan tests share (test_scan.py, test_scan_triton.py and their S6 twins):
random scan inputs, and a backend's outputs, final state and the gradient of every input checked
against the float64 sequential reference (``backend="ref"``); the checks every Triton kernel
shares; and benchmarks/scan_gpu.py, loaded or run with --compile-check.

Where the Triton kernels run: on CPU tensors through the interpreter (TRITON_INTERPRET=1, set in
conftest) by default; with ``GENOSSM_TEST_DEVICE=cuda`` and ``TRITON_INTERPRET=0`` (set by the
caller, as benchmarks/gpu_check.sh does) on the GPU, compiled. Then the inputs of every
``backend="triton"`` run go to :data:`DEVICE` while the float64 reference stays on CPU, and every
comparison is made on CPU."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from genossm.ops import selective_scan

NAMES = ("x", "dt", "A", "B", "C", "D", "dt_bias", "initial_state")
SCAN_ARGS = ("x", "dt", "A", "B", "C", "D")     # the positional arguments of a scan
GPU_BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "scan_gpu.py"

# The device the Triton backend's inputs go to (module docstring): read once, here.
DEVICE = torch.device(os.environ.get("GENOSSM_TEST_DEVICE") or "cpu")
ON_GPU = DEVICE.type != "cpu"
if ON_GPU and os.environ.get("TRITON_INTERPRET") == "1":
    raise RuntimeError(f"GENOSSM_TEST_DEVICE={DEVICE} runs the Triton kernels compiled: set "
                       f"TRITON_INTERPRET=0 as well (conftest.py sets 1 when it is unset)")
if DEVICE.type == "cuda" and not torch.cuda.is_available():
    raise RuntimeError("GENOSSM_TEST_DEVICE=cuda, but torch finds no CUDA device")
# For tests that only make sense under the interpreter (kernels on CPU tensors).
interpreter_only = pytest.mark.skipif(
    ON_GPU, reason=f"interpreter only: GENOSSM_TEST_DEVICE={DEVICE} runs the kernels compiled "
                   f"on the GPU, and the interpreter must be chosen before triton is imported")


def device_of(backend) -> torch.device:
    """Where ``backend``'s inputs go: :data:`DEVICE` for triton, CPU for the others."""
    return DEVICE if backend == "triton" else torch.device("cpu")


def to_device(inp, device=None):
    """The inputs on ``device`` (default :data:`DEVICE`; absent ones stay None). On the device
    they are on already, the very same tensors."""
    device = DEVICE if device is None else device
    return {k: (v.to(device) if v is not None else None) for k, v in inp.items()}


def _cpu(t):
    return t.cpu() if t is not None else None


def make_inputs(seed, batch, length, heads, groups, headdim, dstate, *, d_shape="h",
                state=True, bias=True, dt_scale=1.0, bc_scale=1.0, a_range=None):
    """Random float64 scan inputs (plain tensors: :func:`run` makes the autograd leaves).

    dt is raw (pre-softplus, standard deviation ``dt_scale``) when ``bias`` (softplus(dt +
    dt_bias) is used) and already positive otherwise; B and C have standard deviation
    ``bc_scale``; A is -exp(N(0, 0.7^2)), or uniform in -``a_range`` when given; D is (heads,)
    for ``d_shape="h"``, (heads, headdim) for ``"hp"``, absent for None.
    """
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale

    return {
        "x": rnd(batch, length, heads, headdim),
        "dt": (rnd(batch, length, heads, scale=dt_scale) if bias
               else rnd(batch, length, heads).abs() * 0.5),
        "A": (-torch.exp(rnd(heads, scale=0.7)) if a_range is None else
              -(torch.rand(heads, generator=gen, dtype=torch.float64)
                * (a_range[1] - a_range[0]) + a_range[0])),
        "B": rnd(batch, length, groups, dstate, scale=bc_scale),
        "C": rnd(batch, length, groups, dstate, scale=bc_scale),
        "D": {"h": rnd(heads), "hp": rnd(heads, headdim), None: None}[d_shape],
        "dt_bias": rnd(heads, scale=0.5) - 1.0 if bias else None,
        "initial_state": rnd(batch, heads, headdim, dstate) if state else None,
    }


def cast(inp, dtype):
    """The inputs rounded to ``dtype`` (absent ones stay None)."""
    return {k: (v.to(dtype) if v is not None else None) for k, v in inp.items()}


def run(inp, backend, *, dtype=None, chunk_size=16, dt_limit=(0.0, math.inf), grad_y=True,
        grad_final=True, seed=123):
    """(y, final_state, {name: gradient}) of ``backend`` on the inputs in ``dtype`` (default:
    as they are), for a random linear functional of y (``grad_y``) plus one of the final state
    (``grad_final``). Gradients are keyed by the inputs that are present; one is None where the
    functional does not depend on that input (D, for the final state alone). The backend runs
    on :func:`device_of` it; the results come back on CPU."""
    dev = device_of(backend)
    leaves = {k: (v.detach().to(device=dev, dtype=dtype or v.dtype).requires_grad_()
                  if v is not None else None)
              for k, v in inp.items()}
    y, state = selective_scan(
        leaves["x"], leaves["dt"], leaves["A"], leaves["B"], leaves["C"], leaves["D"],
        dt_bias=leaves["dt_bias"], dt_softplus=leaves["dt_bias"] is not None, dt_limit=dt_limit,
        initial_state=leaves["initial_state"], return_final_state=True, chunk_size=chunk_size,
        backend=backend)
    gen = torch.Generator().manual_seed(seed)
    terms = [(t.double() * torch.randn(t.shape, generator=gen, dtype=torch.float64)
              .to(t.device)).sum()
             for t, wanted in ((y, grad_y), (state, grad_final)) if wanted]
    names = [k for k in NAMES if leaves[k] is not None]
    grads = torch.autograd.grad(sum(terms), [leaves[k] for k in names], allow_unused=True)
    return _cpu(y), _cpu(state), {k: _cpu(g) for k, g in zip(names, grads, strict=True)}


def assert_tensor_close(name, got, want, *, rtol, atol, relative=False):
    """Elementwise |got - want| <= atol + rtol |want| in float64; ``want`` None (the reference
    does not depend on this input) means zero. ``relative``: atol is a fraction of the largest
    |want| (taken as at least 1e-3). Compared on CPU, wherever the tensors are."""
    assert got is not None, f"{name}: missing"
    got, want = got.detach().cpu(), _cpu(want)
    want = torch.zeros_like(got, dtype=torch.float64) if want is None else want.detach().double()
    if relative:
        atol = atol * max(float(want.abs().max()) if want.numel() else 0.0, 1e-3)
    torch.testing.assert_close(got.detach().double(), want, rtol=rtol, atol=atol,
                               msg=lambda m: f"{name}: {m}")


def assert_matches_ref(got, want, *, rtol=1e-9, atol=1e-9, relative=False, tols=None):
    """Two :func:`run` results agree: y, final state and the gradient of every input.
    ``tols`` ({"y" | "final_state" | "d<input>": (rtol, atol)}) overrides the tolerances of
    single tensors; ``relative`` as in :func:`assert_tensor_close`."""
    (y, s, g), (y0, s0, g0) = got, want
    assert g.keys() == g0.keys()
    tols = tols or {}
    pairs = [("y", y, y0), ("final_state", s, s0), *((f"d{k}", g[k], g0[k]) for k in g0)]
    for name, a, b in pairs:
        r, t = tols.get(name, (rtol, atol))
        assert_tensor_close(name, a, b, rtol=r, atol=t, relative=relative)


def check_against_ref(inp, backend, *, dtype=torch.float64, chunk_size=16, rtol=1e-9, atol=1e-9,
                      relative=False, tols=None, **run_kw):
    """Run ``backend`` on the inputs in ``dtype`` and the float64 reference on the very same
    (rounded) values; check the dtypes (y and gradients in ``dtype``, the final state in float64
    or else float32) and every output and gradient (:func:`assert_matches_ref`). ``run_kw`` go
    to both runs. Returns (got, want)."""
    rounded = cast(inp, dtype)
    want = run(rounded, "ref", dtype=torch.float64, **run_kw)
    got = run(rounded, backend, chunk_size=chunk_size, **run_kw)
    y, s, g = got
    assert y.dtype == dtype, y.dtype
    assert s.dtype == (torch.float64 if dtype == torch.float64 else torch.float32), s.dtype
    assert all(v.dtype == dtype for v in g.values() if v is not None)
    assert_matches_ref(got, want, rtol=rtol, atol=atol, relative=relative, tols=tols)
    return got, want


def one_pass_and_pieces(inp, cuts, **kw):
    """((y, final state) of ``selective_scan`` in one pass, (y, final state) of the pieces
    [lo, hi) of ``cuts`` in turn, each started from the previous one's final state, their y
    concatenated). ``kw`` (backend, chunk_size) go to every call; the inputs are moved to
    :func:`device_of` the backend first."""
    inp = to_device(inp, device_of(kw.get("backend")))
    x, dt, A, B, C, D = (inp[k] for k in SCAN_ARGS)
    whole = selective_scan(x, dt, A, B, C, D, initial_state=inp["initial_state"],
                           return_final_state=True, **kw)
    state, ys = inp["initial_state"], []
    for lo, hi in cuts:
        y, state = selective_scan(x[:, lo:hi], dt[:, lo:hi], A, B[:, lo:hi], C[:, lo:hi], D,
                                  initial_state=state, return_final_state=True, **kw)
        ys.append(y)
    return whole, (torch.cat(ys, dim=1), state)


def check_pieces_equal_one_pass(inp, *, chunk_size):
    """The torch backend over 50 steps in pieces (0-7, 7-8, 8-33, 33-50), each piece started
    from the previous one's final state, equals one pass: y and the final state."""
    (full, full_s), (ys, state) = one_pass_and_pieces(
        inp, ((0, 7), (7, 8), (8, 33), (33, 50)), chunk_size=chunk_size, backend="torch")
    torch.testing.assert_close(ys, full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state, full_s, rtol=1e-12, atol=1e-12)


# --- what every Triton kernel (scan_triton, scan_s6_triton) is checked for ----------------------

def check_empty_length(kernel, inp):
    """``kernel`` on float32 inputs of length 0: y of the input's shape, and the initial state
    as the final state (on :data:`DEVICE`)."""
    inp = to_device(cast(inp, torch.float32))
    y, final = kernel(*(inp[k] for k in SCAN_ARGS), initial_state=inp["initial_state"],
                      return_final_state=True)
    assert y.shape == inp["x"].shape
    torch.testing.assert_close(final, inp["initial_state"])


def check_rejects_cpu_without_interpreter_and_float64(kernel, inp, monkeypatch):
    """``kernel`` refuses float64 inputs on :data:`DEVICE` (TypeError), and CPU tensors without
    the interpreter (RuntimeError naming CUDA)."""
    inp = to_device(cast(inp, torch.float32))
    args = [inp[k] for k in ("x", "dt", "A", "B", "C")]
    with pytest.raises(TypeError, match="float64"):
        kernel(args[0].double(), *args[1:])
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="CUDA"):
        kernel(*(a.cpu() for a in args))


def load_gpu_benchmark():
    """benchmarks/scan_gpu.py as a module."""
    spec = importlib.util.spec_from_file_location("scan_gpu_bench", GPU_BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compile_check(*args) -> subprocess.CompletedProcess:
    """``benchmarks/scan_gpu.py --compile-check *args``, compiling kernels for sm_90 (no GPU
    needed; the interpreter does not type-check kernels as the compiler does), without the
    interpreter. Skips the test where triton's CUDA toolchain (ptxas) is not installed."""
    import triton

    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.exists():
        pytest.skip("triton's CUDA toolchain (ptxas) is not installed")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    return subprocess.run([sys.executable, str(GPU_BENCHMARK), "--compile-check", *args],
                          env=env, capture_output=True, text=True, timeout=600)
