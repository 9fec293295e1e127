"""The one scan entry point (docs/design.md, "The scan").

Preprocesses dt (bias, softplus, clamp) with ordinary torch ops, so that its gradients flow
through autograd, then hands the scan proper to a backend:

- ``ref``: sequential recurrence (:mod:`genossm.ops.scan_ref`), the definition.
- ``torch``: chunked, matmul-based (:mod:`genossm.ops.scan_chunked`), the CPU path.
- ``triton``: chunked Triton kernels (:mod:`genossm.ops.scan_triton`), the GPU path.
- ``auto``: triton on CUDA tensors, torch otherwise.

Every backend has the signature
``fn(x, dt, A, B, C, D, *, initial_state, return_final_state, chunk_size) -> (y, final_state)``
with ``dt`` already preprocessed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

BACKENDS = ("ref", "torch", "triton")


def _backend_fn(name, per_state=False):
    """The backend function; ``per_state``: the Mamba-1 (S6) form, A of shape (h, n)."""
    if name == "ref":
        from genossm.ops.scan_ref import scan_ref
        return scan_ref
    if name == "torch":
        if per_state:
            from genossm.ops.scan_s6_chunked import scan_s6_chunked
            return scan_s6_chunked
        from genossm.ops.scan_chunked import scan_chunked
        return scan_chunked
    if name == "triton":
        if per_state:
            from genossm.ops.scan_s6_triton import scan_s6_triton
            return scan_s6_triton
        from genossm.ops.scan_triton import scan_triton
        return scan_triton
    raise ValueError(f"unknown scan backend {name!r}; choose one of auto, {', '.join(BACKENDS)}")


def _check_shapes(x, dt, A, B, C, D, initial_state, dt_bias=None):
    if x.dim() != 4:
        raise ValueError(f"x must be (batch, length, heads, headdim), got {tuple(x.shape)}")
    batch, length, heads, headdim = x.shape
    if tuple(dt.shape) != (batch, length, heads):
        raise ValueError(f"dt must be {(batch, length, heads)}, got {tuple(dt.shape)}")
    if tuple(A.shape) not in ((heads,), (heads, B.shape[-1])):
        raise ValueError(f"A must be ({heads},) or ({heads}, {B.shape[-1]}), "
                         f"got {tuple(A.shape)}")
    if B.dim() != 4 or B.shape[:2] != (batch, length) or B.shape != C.shape:
        raise ValueError(f"B and C must be (batch, length, groups, dstate) alike, "
                         f"got {tuple(B.shape)} and {tuple(C.shape)}")
    if B.shape[2] == 0 or heads % B.shape[2]:
        raise ValueError(f"groups ({B.shape[2]}) must divide heads ({heads})")
    if D is not None and tuple(D.shape) not in ((heads,), (heads, headdim)):
        raise ValueError(f"D must be ({heads},) or ({heads}, {headdim}), got {tuple(D.shape)}")
    if initial_state is not None and tuple(initial_state.shape) != (
            batch, heads, headdim, B.shape[3]):
        raise ValueError(f"initial_state must be {(batch, heads, headdim, B.shape[3])}, "
                         f"got {tuple(initial_state.shape)}")
    if dt_bias is not None and tuple(dt_bias.shape) != (heads,):
        raise ValueError(f"dt_bias must be ({heads},), got {tuple(dt_bias.shape)}")


def preprocess_dt(dt, dt_bias=None, dt_softplus=False, dt_limit=(0.0, math.inf)):
    """dt' = clamp(softplus(dt + dt_bias)) (each step as asked), at least float32: the step
    the scan decays and injects by."""
    dt = dt.to(torch.promote_types(dt.dtype, torch.float32))
    if dt_bias is not None:
        dt = dt + dt_bias.to(dt.dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    lo, hi = dt_limit
    if lo > 0.0 or hi < math.inf:
        dt = dt.clamp(min=lo, max=hi)
    return dt


def log_decay(dt, A, *, dt_bias=None, dt_softplus=False, dt_limit=(0.0, math.inf)):
    """The log of the scan's total decay over the length: sum over t of dt'_t A, (b, h) for A
    (h,), (b, h, n) for A (h, n); exp of it maps the state before the sequence to its part in
    the state after (what a split scan carries across ranks: ops/context_parallel.py)."""
    summed = preprocess_dt(dt, dt_bias, dt_softplus, dt_limit).sum(1)
    return summed[..., None] * A if A.dim() == 2 else summed * A


def selective_scan(x, dt, A, B, C, D=None, *, dt_bias=None, dt_softplus=False,
                   dt_limit=(0.0, math.inf), initial_state=None, return_final_state=False,
                   chunk_size=256, backend="auto"):
    """Selective state-space scan.

    h_t = exp(dt'_t A) h_{t-1} + dt'_t x_t ⊗ B_t,   y_t = h_t · C_t + D x_t, with
    dt' = softplus(dt + dt_bias) if ``dt_softplus`` else dt + dt_bias, clamped to ``dt_limit``.

    Shapes: x (b, l, h, p), dt (b, l, h), A (h,), B and C (b, l, g, n) with g dividing h,
    D (h,) or (h, p), initial_state (b, h, p, n). Returns y (b, l, h, p), or
    (y, final_state) when ``return_final_state``.

    A of shape (h, n) is the Mamba-1 (S6) scan, whose decay has a value per (channel, state):
    h_t[d, n] = exp(dt'_t[d] A[d, n]) h_{t-1}[d, n] + dt'_t[d] B_t[n] x_t[d], with each
    channel a head of headdim 1 (x (b, l, d, 1)). It does not reduce to the chunked matmul
    form of the SSD backends, so ``torch`` and ``triton`` have their own S6 implementations
    (:mod:`genossm.ops.scan_s6_chunked`, :mod:`genossm.ops.scan_s6_triton`) behind the same
    signature.
    """
    _check_shapes(x, dt, A, B, C, D, initial_state, dt_bias)
    dt = preprocess_dt(dt, dt_bias, dt_softplus, dt_limit)
    if backend == "auto":
        backend = "triton" if x.is_cuda else "torch"
    fn = _backend_fn(backend, per_state=A.dim() == 2)
    y, final_state = fn(x, dt, A, B, C, D, initial_state=initial_state,
                        return_final_state=return_final_state, chunk_size=chunk_size)
    return (y, final_state) if return_final_state else y
