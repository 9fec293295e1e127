"""The ``triton`` backend of the selective scan: chunked Triton kernels for the forward and the
backward pass (:mod:`genossm.ops.triton_kernels.ssd`), joined by a custom autograd Function.

Forward: per-chunk cumsum of dt·A; each chunk's own end state; a sequential pass over chunks
for the state entering each chunk (and the final state); per-chunk outputs. Backward mirrors it:
reverse state passing for the gradient of each chunk's end state, then row-side (dC) and
column-side (dx, dB, ddt) gradients, and the cumsum chain rule for ddt and dA.

State and accumulation are float32 whatever the input dtype; y comes back in x's dtype. Runs on
CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (slow; for tests).
"""

from __future__ import annotations

import os

import torch
import triton

from genossm.ops.triton_kernels import ssd

_LOW_PRECISION = {torch.bfloat16: "bf16", torch.float16: "fp16"}
_STATE_BLOCK = 1024  # elements of a (headdim x dstate) state per state-passing program


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _pow2(n: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(n))


def _check_inputs(x, dt, A, B, C, D, initial_state):
    """The device and dtype checks of the Triton scan backends (SSD and S6)."""
    tensors = [t for t in (x, dt, A, B, C, D, initial_state) if t is not None]
    if not _interpreting() and not all(t.is_cuda for t in tensors):
        raise RuntimeError("the triton scan backend needs CUDA tensors (or TRITON_INTERPRET=1 "
                           "set before triton is imported, to run the kernels on CPU for "
                           "tests); use backend='torch' on CPU")
    if len({t.device for t in tensors}) != 1:
        raise ValueError("all scan inputs must be on one device")
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise TypeError(f"the triton scan backend takes float32, bfloat16 or float16 x, got "
                        f"{x.dtype}; use backend='ref' for float64")


def _empty_scan(x, B, initial_state, return_final_state):
    """A Triton scan backend's result for length 0: y empty, the initial state carried through
    (float32), zeros without one."""
    batch, _, heads, headdim = x.shape
    final = (initial_state.float().clone() if initial_state is not None else
             x.new_zeros(batch, heads, headdim, B.shape[3], dtype=torch.float32))
    return x.clone(), (final if return_final_state else None)


def _narrow(t):
    """16/32-bit operands for the kernels; float64 B/C come down to float32."""
    return t.float() if t.dtype == torch.float64 else t


def _kernel_operands(x, dt, A, B, C):
    """x, dt, A, B, C as the Triton scan kernels take them: contiguous, dt and A in float32."""
    return (x.contiguous(), dt.float().contiguous(), A.float().contiguous(),
            _narrow(B).contiguous(), _narrow(C).contiguous())


def chunk_len(chunk_size: int) -> int:
    """The chunk length actually used: the largest power of two <= chunk_size, within [16, 1024]
    (tl.dot wants power-of-two tiles of at least 16; mathematically the result does not
    depend on it)."""
    q = 1 << (max(int(chunk_size), 1).bit_length() - 1)
    return min(max(q, 16), 1024)


def _dot_config(dtype: torch.dtype):
    """Operand dtype and fp32 precision for tl.dot: 16-bit inputs use their own dtype on the
    tensor cores; float32 uses exact ('ieee') products unless GENOSSM_TRITON_FP32_DOT says
    'tf32' (faster on GPU, ~1e-3 relative error). The interpreter gets 16-bit products
    emulated in float32, as its own 16-bit tl.dot gives wrong results."""
    if dtype in _LOW_PRECISION:
        return _LOW_PRECISION[dtype], ("emulate" if _interpreting() else "ieee")
    prec = os.environ.get("GENOSSM_TRITON_FP32_DOT", "ieee")
    if prec not in ("ieee", "tf32", "tf32x3"):
        raise ValueError(f"GENOSSM_TRITON_FP32_DOT must be ieee, tf32 or tf32x3, got {prec!r}")
    return "fp32", prec


class _Sizes:
    """Shapes and launch constants shared by forward and backward."""

    def __init__(self, x, B, chunk):
        self.b, self.l, self.h, self.p = x.shape
        self.g, self.n = B.shape[2], B.shape[3]
        self.hpg = self.h // self.g
        self.q = chunk
        self.nc = triton.cdiv(self.l, chunk)
        self.dot, self.prec = _dot_config(x.dtype)
        self.bp = _pow2(self.p)
        self.bn = _pow2(self.n)
        # Row tile of the chunk kernels and warps per program, chosen from sm_90 compiles at
        # headdim = dstate = 64 (registers/spills): 16-bit dots fit 64-row tiles in 8 warps;
        # float32 ('ieee') dots need 32-row tiles.
        self.bt = min(chunk, 64 if self.dot != "fp32" else 32)
        self.ntb = chunk // self.bt
        self.warps = 8 if self.bp * self.bn >= 64 * 64 else 4
        self.pn = self.p * self.n
        self.nblk = triton.cdiv(self.pn, _STATE_BLOCK)


def _chunk_states(rows, mat, dt, s, z: _Sizes, *, forward: bool):
    """Per-chunk (headdim x dstate) sums: each chunk's own end state from (x, B) going
    forward, or the gradient of the state entering each chunk from (dy, C) going backward."""
    out = torch.empty(z.b * z.h, z.nc, z.p, z.n, device=rows.device, dtype=torch.float32)
    ssd.chunk_state_kernel[(z.b * z.h, z.nc)](
        rows, mat, dt, s, out, z.l, z.h, z.nc, z.hpg, z.p, z.n,
        *rows.stride(), *mat.stride(), *dt.stride(),
        Q=z.q, BT=z.bt, BP=z.bp, BN=z.bn, FORWARD=forward, DOT=z.dot, PREC=z.prec,
        num_warps=z.warps)
    return out


def _forward(x, dt, A, B, C, D, init, z: _Sizes):
    bh = z.b * z.h
    f32 = dict(device=x.device, dtype=torch.float32)
    s = torch.empty(bh, z.nc * z.q, **f32)
    ssd.cumsum_kernel[(bh, z.nc)](dt, A, s, z.l, z.h, z.nc, *dt.stride(), Q=z.q)
    own = _chunk_states(x, B, dt, s, z, forward=True)
    states = torch.empty_like(own)
    final = torch.empty(z.b, z.h, z.p, z.n, **f32)
    ssd.state_pass_fwd_kernel[(bh, z.nblk)](
        own, s, init if init is not None else final, states, final, z.nc, z.pn,
        Q=z.q, BLOCK=_STATE_BLOCK, HAS_INIT=init is not None)
    del own
    y = torch.empty_like(x)
    ssd.chunk_scan_fwd_kernel[(bh, z.nc, z.ntb)](
        x, dt, s, B, C, D if D is not None else A, states, y,
        z.l, z.h, z.nc, z.hpg, z.p, z.n,
        *x.stride(), *dt.stride(), *B.stride(), *y.stride(),
        Q=z.q, BT=z.bt, BP=z.bp, BN=z.bn, HAS_D=D is not None, DOT=z.dot, PREC=z.prec,
        num_warps=z.warps)
    return y, final, s, states


def _backward(dy, dfinal, x, dt, A, B, C, D, s, states, z: _Sizes):
    bh = z.b * z.h
    f32 = dict(device=x.device, dtype=torch.float32)
    # Gradient of the state entering each chunk from that chunk's own outputs.
    g_own = _chunk_states(dy, C, dt, s, z, forward=False)
    d_out = torch.empty_like(g_own)
    d_init = torch.empty(z.b, z.h, z.p, z.n, **f32)
    zpart = torch.empty(bh, z.nc, z.nblk, **f32)
    ssd.state_pass_bwd_kernel[(bh, z.nblk)](
        g_own, s, states, dfinal if dfinal is not None else d_init, d_out, d_init, zpart,
        z.nc, z.pn, z.nblk, Q=z.q, BLOCK=_STATE_BLOCK, HAS_DFINAL=dfinal is not None)
    del g_own

    dC_h = torch.empty(z.b, z.l, z.h, z.n, **f32)
    ds_row = torch.empty(bh, z.nc * z.q, **f32)
    grid = (bh, z.nc, z.ntb)
    ssd.chunk_scan_bwd_dc_kernel[grid](
        x, dt, s, B, C, states, dy, dC_h, ds_row,
        z.l, z.h, z.nc, z.hpg, z.p, z.n,
        *x.stride(), *dt.stride(), *B.stride(), *dC_h.stride(),
        Q=z.q, BT=z.bt, BP=z.bp, BN=z.bn, DOT=z.dot, PREC=z.prec, num_warps=z.warps)

    dx = torch.empty_like(x)
    dB_h = torch.empty(z.b, z.l, z.h, z.n, **f32)
    ddt_direct = torch.empty_like(ds_row)
    ds_col = torch.empty_like(ds_row)
    w = torch.empty_like(ds_row)
    dD_part = torch.empty(bh, z.nc, z.ntb, z.p, **f32) if D is not None else None
    ssd.chunk_scan_bwd_dx_kernel[grid](
        x, dt, s, B, C, D if D is not None else A, d_out, dy,
        dx, ddt_direct, dB_h, ds_col, w, dD_part if D is not None else w,
        z.l, z.h, z.nc, z.hpg, z.p, z.n,
        *x.stride(), *dt.stride(), *B.stride(), *dB_h.stride(),
        Q=z.q, BT=z.bt, BP=z.bp, BN=z.bn, HAS_D=D is not None, DOT=z.dot, PREC=z.prec,
        num_warps=z.warps)
    del d_out

    ddt = torch.empty_like(dt)
    dA_part = torch.empty(bh, z.nc, **f32)
    ssd.ddt_kernel[(bh, z.nc)](
        dt, A, ds_row, ds_col, w, zpart, ddt_direct, ddt, dA_part,
        z.l, z.h, z.nc, z.nblk, *dt.stride(), Q=z.q, BZ=_pow2(z.nblk, 2))

    dA = dA_part.view(z.b, z.h, z.nc).sum((0, 2))
    dB = dB_h.view(z.b, z.l, z.g, z.hpg, z.n).sum(3)
    dC = dC_h.view(z.b, z.l, z.g, z.hpg, z.n).sum(3)
    dD = dD_part.view(z.b, z.h, -1, z.p).sum((0, 2)) if D is not None else None
    return dx, ddt, dA, dB, dC, dD, d_init


class _SelectiveScanTriton(torch.autograd.Function):
    """(x, dt, A, B, C, D(h, p) or None, initial_state or None) -> (y, final_state).

    Inputs arrive contiguous with dt, A, D and initial_state float32 (see scan_triton)."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, init, chunk):
        z = _Sizes(x, B, chunk)
        y, final, s, states = _forward(x, dt, A, B, C, D, init, z)
        ctx.save_for_backward(x, dt, A, B, C, D, s, states)
        ctx.sizes = z
        ctx.has_init = init is not None
        ctx.set_materialize_grads(False)
        return y, final

    @staticmethod
    def backward(ctx, dy, dfinal):
        x, dt, A, B, C, D, s, states = ctx.saved_tensors
        z = ctx.sizes
        dy = torch.zeros_like(x) if dy is None else dy.to(x.dtype).contiguous()
        if dfinal is not None:
            dfinal = dfinal.float().contiguous()
        dx, ddt, dA, dB, dC, dD, d_init = _backward(dy, dfinal, x, dt, A, B, C, D, s, states, z)
        return (dx, ddt, dA, dB.to(B.dtype), dC.to(C.dtype), dD,
                d_init if ctx.has_init else None, None)


def scan_triton(x, dt, A, B, C, D=None, *, initial_state=None, return_final_state=False,
                chunk_size=256):
    """Chunked Triton selective scan (forward and backward kernels).

    Same contract as the other backends: x (b, l, h, p), dt (b, l, h) already preprocessed,
    A (h,), B and C (b, l, g, n), D (h,) or (h, p) or None, initial_state (b, h, p, n).
    Returns (y in x.dtype, float32 final state or None). x, B, C may be float32, bfloat16 or
    float16; the chunk length is ``chunk_len(chunk_size)``.
    """
    _check_inputs(x, dt, A, B, C, D, initial_state)
    batch, length, heads, headdim = x.shape
    if length == 0:
        return _empty_scan(x, B, initial_state, return_final_state)
    if D is not None:
        D = (D.float()[:, None].expand(heads, headdim) if D.dim() == 1 else D.float())
        D = D.contiguous()
    init = initial_state.float().contiguous() if initial_state is not None else None
    y, final = _SelectiveScanTriton.apply(*_kernel_operands(x, dt, A, B, C), D, init,
                                          chunk_len(chunk_size))
    return y, (final if return_final_state else None)
