"""The ``triton`` backend of the Mamba-1 (S6) selective scan, A of shape (heads, dstate): Triton
kernels for the forward and the backward pass (:mod:`genossm.ops.triton_kernels.s6`), joined by
a custom autograd Function.

Every program owns one batch row, a block of channel rows (heads x headdim) of one group and all
states, keeps the float32 state in registers and walks its stretch of the sequence one step
after another (the decay differs per (channel, state), so the chunked matmul form of the SSD
backend does not apply). Where batch x channel blocks are too few programs for the GPU (one
long sequence, 512 channels: 32 programs), the length is cut into segments: each segment's
own end state, a sequential pass over segments for the true start states, then every segment
again from its start (likewise backward, right to left). Forward saves the state every
``K = checkpoint_len(chunk_size)`` steps; backward recomputes the states between checkpoints
and runs the recurrence of the gradient in reverse time. See the kernel module for the maths.

State and accumulation are float32 whatever the input dtype; y comes back in x's dtype. Runs on
CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (slow; for tests).
"""

from __future__ import annotations

import os

import torch
import triton

from genossm.ops.scan_triton import (
    _check_inputs,
    _empty_scan,
    _kernel_operands,
    _pow2,
)
from genossm.ops.triton_kernels import s6

# Elements of a program's (states x rows) state tile. A program is one warp: for dstate 16,
# 16 channel rows, eight values per thread (sm_90 compiles it as four rows x two states per
# thread), so the sums over rows (dB, dC) stay inside the warp and the backward, whose live
# state is largest, fits the registers without spilling. More rows per program would mean
# fewer programs and more registers; fewer, more programs for the same work.
_TILE = 256
_CARRY_BLOCK = 1024  # (row, state) pairs per program of the segment carry kernel
# Length segments (GPU only): cut the sequence until batch x channel blocks x segments reaches
# _PROGRAMS_PER_SM programs per multiprocessor, keeping segments at least _MIN_SEGMENT long
# (each segment costs an extra pass over its inputs in both directions).
_PROGRAMS_PER_SM = 16
_MIN_SEGMENT = 1024


def checkpoint_len(chunk_size: int) -> int:
    """The checkpoint interval K actually used: the largest power of two <= chunk_size, within
    [16, 256]. Forward saves the (batch, channels, dstate) state every K steps (memory L/K
    states); backward keeps K/4 states per program in a scratch buffer. The result does not
    depend on it."""
    q = 1 << (max(int(chunk_size), 1).bit_length() - 1)
    return min(max(q, 16), 256)


def _segment_length(batch: int, blocks: int, length: int, k: int, device) -> int:
    """Steps per segment, a multiple of k: the whole (padded) length unless the GPU needs more
    programs than batch x blocks. GENOSSM_S6_SEGMENT=<steps> sets it (rounded up to a multiple
    of k; 0: one segment), for tuning and for checking the segmented path against one pass."""
    whole = triton.cdiv(length, k) * k
    forced = os.environ.get("GENOSSM_S6_SEGMENT")
    if forced:
        steps = int(forced)
        return whole if steps <= 0 else min(triton.cdiv(steps, k) * k, whole)
    if device.type != "cuda":
        return whole
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    want = triton.cdiv(_PROGRAMS_PER_SM * sms, batch * blocks)
    if want <= 1:
        return whole
    seg = max(triton.cdiv(length, want), _MIN_SEGMENT)
    return min(triton.cdiv(seg, k) * k, whole)


class _Plan:
    """Shapes and launch constants shared by forward and backward."""

    def __init__(self, x, B, k, segment_length=None):
        self.b, self.l, self.h, self.p = x.shape
        self.g, self.n = B.shape[2], B.shape[3]
        self.hp = self.h * self.p
        self.r = (self.h // self.g) * self.p  # rows per group
        self.bn = _pow2(self.n, 2)
        self.bd = min(_pow2(self.r, 2), max(2, _TILE // self.bn))
        self.nbg = triton.cdiv(self.r, self.bd)  # row blocks per group
        self.blocks = self.g * self.nbg
        self.k = k
        seg = segment_length if segment_length is not None else _segment_length(
            self.b, self.blocks, self.l, k, x.device)
        self.seg = seg
        self.nseg = triton.cdiv(self.l, seg)
        self.nck = triton.cdiv(self.l, k)
        self.warps = 1

    @property
    def grid(self):
        return (self.blocks, self.nseg, self.b)

    def sizes(self, *, k=True):
        """The runtime size arguments of the segment kernels (L .. NSEG, and K)."""
        out = (self.l, self.h, self.p, self.g, self.n, self.r, self.nbg, self.seg, self.nseg)
        return out + (self.k,) if k else out

    def tiles(self):
        return dict(BD=self.bd, BN=self.bn, num_warps=self.warps)


def _segment_carry(v, dt, A, k, h0, z: _Plan, *, forward):
    """(b, nseg, n, h·p) float32: forward (v = x, k = B, h0 = the initial state or None) the
    state entering each segment; backward (v = dy, k = C, h0 = the gradient of the final state
    or None) the gradient of the state leaving each segment."""
    f32 = dict(device=v.device, dtype=torch.float32)
    local = torch.empty(z.b, z.nseg, z.n, z.hp, **f32)
    dtsum = torch.empty(z.b, z.nseg, z.hp, **f32)
    s6.s6_local_kernel[(z.blocks, z.nseg - 1, z.b)](
        v, dt, A, k, local, dtsum, *z.sizes(k=False), FORWARD=forward, **z.tiles())
    out = torch.empty_like(local)
    s6.s6_carry_kernel[(triton.cdiv(z.hp * z.n, _CARRY_BLOCK), z.b)](
        local, dtsum, A, h0 if h0 is not None else local, out, z.h, z.p, z.n, z.nseg,
        BLOCK=_CARRY_BLOCK, HAS_H0=h0 is not None, REVERSE=not forward)
    return out


def _forward(x, dt, A, B, C, D, init, z: _Plan, save):
    """A, init, the final state and the checkpoints are state-major: (N, H·P) per batch row."""
    f32 = dict(device=x.device, dtype=torch.float32)
    final = torch.empty(z.b, z.n, z.hp, **f32)
    h0 = init
    if z.nseg > 1:
        h0 = _segment_carry(x, dt, A, B, init, z, forward=True)
    y = torch.empty_like(x)
    ckpt = torch.empty(z.b, z.nck, z.n, z.hp, **f32) if save else None
    s6.s6_fwd_kernel[z.grid](
        x, dt, A, B, C, D if D is not None else A, h0 if h0 is not None else final, y,
        ckpt if save else final, final, *z.sizes(),
        HAS_D=D is not None, HAS_H0=h0 is not None, SAVE=save, **z.tiles())
    return y, final, ckpt


def _backward(dy, dfinal, x, dt, A, B, C, D, ckpt, z: _Plan):
    """dfinal and the gradient of the initial state are state-major like the states."""
    f32 = dict(device=x.device, dtype=torch.float32)
    u0 = dfinal
    if z.nseg > 1:
        u0 = _segment_carry(dy, dt, A, C, dfinal, z, forward=False)
    dx = torch.empty_like(x)
    ddt_rows = torch.empty(z.b, z.l, z.hp, **f32)
    dB = torch.zeros(z.b, z.l, z.g, z.n, **f32)
    dC = torch.zeros(z.b, z.l, z.g, z.n, **f32)
    dA_part = torch.empty(z.b, z.nseg, z.n, z.hp, **f32)
    dD_part = torch.empty(z.b, z.nseg, z.hp, **f32) if D is not None else None
    dinit = torch.empty(z.b, z.n, z.hp, **f32)
    programs = z.blocks * z.nseg * z.b
    scratch = torch.empty(programs, z.k // 4, z.bn, z.bd, **f32)
    s6.s6_bwd_kernel[z.grid](
        x, dt, A, B, C, D if D is not None else A, dy, ckpt, u0 if u0 is not None else dinit,
        scratch, dx, ddt_rows, dB, dC, dA_part, dD_part if D is not None else dA_part, dinit,
        *z.sizes(), HAS_D=D is not None, HAS_U0=u0 is not None, **z.tiles())
    del scratch
    ddt = ddt_rows.view(z.b, z.l, z.h, z.p).sum(3) if z.p > 1 else ddt_rows.view(z.b, z.l, z.h)
    dA = dA_part.sum((0, 1)).view(z.n, z.h, z.p).sum(2).t()
    dD = dD_part.sum((0, 1)) if D is not None else None
    return dx, ddt, dA, dB, dC, dD, dinit


def _state_major(t, z: _Plan):
    """(b, h, p, n) -> (b, n, h·p) contiguous float32."""
    return t.float().reshape(z.b, z.hp, z.n).transpose(1, 2).contiguous()


class _S6Triton(torch.autograd.Function):
    """(x, dt, A, B, C, D (h·p,) or None, initial_state or None, K) -> (y, final_state
    (b, h, p, n) float32).

    Inputs arrive contiguous with dt, A, D and initial_state float32 (see scan_s6_triton)."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, init, k):
        z = _Plan(x, B, k)
        save = any(ctx.needs_input_grad[:7])
        A_sm = A.t().repeat_interleave(z.p, dim=1).contiguous()  # (n, h·p)
        init = _state_major(init, z) if init is not None else None
        y, final, ckpt = _forward(x, dt, A_sm, B, C, D, init, z, save)
        final = final.transpose(1, 2).reshape(z.b, z.h, z.p, z.n)
        if save:
            ctx.save_for_backward(x, dt, A_sm, B, C, D, ckpt)
        ctx.plan = z
        ctx.has_init = init is not None
        ctx.set_materialize_grads(False)
        return y, final

    @staticmethod
    def backward(ctx, dy, dfinal):
        x, dt, A, B, C, D, ckpt = ctx.saved_tensors
        z = ctx.plan
        dy = torch.zeros_like(x) if dy is None else dy.to(x.dtype).contiguous()
        if dfinal is not None:
            dfinal = _state_major(dfinal, z)
        dx, ddt, dA, dB, dC, dD, dinit = _backward(dy, dfinal, x, dt, A, B, C, D, ckpt, z)
        dinit = dinit.transpose(1, 2).reshape(z.b, z.h, z.p, z.n) if ctx.has_init else None
        return dx, ddt, dA, dB.to(B.dtype), dC.to(C.dtype), dD, dinit, None


def scan_s6_triton(x, dt, A, B, C, D=None, *, initial_state=None, return_final_state=False,
                   chunk_size=256):
    """Mamba-1 (S6) selective scan in Triton (forward and backward kernels).

    Same contract as the other backends: x (b, l, h, p), dt (b, l, h) already preprocessed,
    A (h, n), B and C (b, l, g, n), D (h,) or (h, p) or None, initial_state (b, h, p, n).
    Returns (y in x.dtype, float32 final state or None). x, B, C may be float32, bfloat16 or
    float16; the checkpoint interval is ``checkpoint_len(chunk_size)``.
    """
    _check_inputs(x, dt, A, B, C, D, initial_state)
    if A.dim() != 2:
        raise ValueError(f"the S6 scan takes A of shape (heads, dstate), got {tuple(A.shape)}")
    batch, length, heads, headdim = x.shape
    if length == 0:
        return _empty_scan(x, B, initial_state, return_final_state)
    if D is not None:
        D = D.float()
        D = (D[:, None].expand(heads, headdim) if D.dim() == 1 else D).reshape(-1).contiguous()
    init = initial_state.float().contiguous() if initial_state is not None else None
    y, final = _S6Triton.apply(*_kernel_operands(x, dt, A, B, C), D, init,
                               checkpoint_len(chunk_size))
    return y, (final if return_final_state else None)
