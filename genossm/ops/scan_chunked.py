"""The ``torch`` scan backend: chunked, matmul-based selective scan (the CPU path).

The sequence is cut into chunks of ``Q`` steps. Within a chunk the scan is a masked matmul
(the SSD / Mamba-2 "dual" form)::

    s_t   = sum_{k<=t} dt_k A                        (cumulative log-decay, s_t <= 0)
    y_t   = sum_{s<=t} exp(s_t - s_s) (C_t . B_s) dt_s x_s  +  exp(s_t) S_in C_t  +  D x_t
    S_out = exp(s_Q) S_in + sum_s exp(s_Q - s_s) dt_s x_s (x) B_s

and only the (b, h, p, n) state is carried from chunk to chunk, sequentially. Every exponent
is a difference ``s_t - s_s`` with ``s <= t`` (entries above the diagonal are set to -inf before
``exp``), so nothing is ever ``exp`` of a large positive number.

Why it is fast and lean on CPU:

- chunks are processed in *blocks* of chunks sized so that the (Q x Q) matrices of a block stay
  in a few MB; nothing (b, h, L, Q)-sized is ever materialised for the whole sequence and there
  is no (chunks x chunks) decay matrix, so memory is linear in length with a small constant;
- a hand-written backward (:class:`_ChunkScan`) saves only the inputs, the output and one state
  per block, and recomputes the rest block by block;
- ``C Bᵀ`` is computed once per *group* (not per head), and the state-sized matmuls fold the
  heads of a group into the matrix rows, so B and C are never repeated over heads.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

#: Chunk length used on CPU when the caller asks for a longer one: the (Q x Q) work per step
#: grows with Q while the state work does not. Forward+backward at length 65,536 (4 heads x 32,
#: dstate 64) on a 2-core x86_64: 64 fastest, 128 about 1.3x and 256 about 1.8x slower, 32 a
#: little slower (more, smaller matmuls and a longer Python loop over chunks).
CPU_CHUNK = 64
#: Number of (Q x Q) matrix elements (batch x chunks x heads x Q x Q) per block of chunks: the
#: block's working set (about 45 MiB in float32 at this size) is the constant part of the peak
#: memory. Larger blocks were slower (cache) and smaller ones no faster.
BLOCK_ELEMENTS = 1 << 20


def _blocks(length, chunk, batch, heads):
    """Yield (start, n_chunks, chunk_len) blocks covering [0, length); a ragged tail is its own
    one-chunk block of shorter length, so nothing is padded or copied."""
    per_chunk = batch * heads * chunk * chunk
    yield from _block_iter(length, chunk, max(1, BLOCK_ELEMENTS // per_chunk))


def _block_iter(length, chunk, k_max):
    """Yield (start, n_chunks, chunk_len) blocks of at most ``k_max`` chunks of ``chunk`` steps
    covering [0, length), then a ragged tail as a one-chunk block of its own."""
    n_full = length // chunk
    start = 0
    while n_full > 0:
        k = min(k_max, n_full)
        yield start, k, chunk
        start += k * chunk
        n_full -= k
    if start < length:
        yield start, 1, length - start


class _Block:
    """Per-block quantities shared by forward and backward (all recomputable from inputs)."""

    def __init__(self, x, dt, A, B, C, start, K, Q, groups, upper):
        b, _, h, p = x.shape
        g, n = B.shape[2], B.shape[3]
        r = h // g
        end = start + K * Q
        self.dims = (b, K, Q, g, r, p, n)
        self.x = x[:, start:end].view(b, K, Q, h, p)
        self.dt = dt[:, start:end].view(b, K, Q, h)
        # (b, K, g, Q, n): chunks' B and C, one matrix per group
        self.Bg = B[:, start:end].view(b, K, Q, g, n).transpose(2, 3)
        self.Cg = C[:, start:end].view(b, K, Q, g, n).transpose(2, 3)
        s = (self.dt * A).transpose(2, 3).cumsum(-1)  # (b, K, h, Q), s <= 0, decreasing
        self.s = s
        self.e = s.exp()  # decay from chunk start to t
        self.w = (s[..., -1:] - s).exp()  # decay from s to chunk end
        self.e_last = self.e[..., -1]  # (b, K, h): decay over the whole chunk
        self.upper = upper[:Q, :Q]
        # u = dt x: (b, K, Q, h, p)
        self.u = self.x * self.dt[..., None]

    def decay_matrix(self):
        """L[t, s] = exp(s_t - s_s) for s <= t, 0 above the diagonal: (b, K, h, Q, Q)."""
        s = self.s
        return (s[..., :, None] - s[..., None, :]).masked_fill_(self.upper, float("-inf")).exp_()

    def gram(self):
        """G = C Bᵀ per group: (b, K, g, Q, Q)."""
        return self.Cg @ self.Bg.transpose(-1, -2)

    def t_major(self, v):
        """(b, K, h, Q) -> (b, K, Q, h, 1) view, to scale (b, K, Q, h, p) tensors."""
        return v.transpose(2, 3)[..., None]

    def fold(self, v):
        """(b, K, Q, h, p) -> (b, K, g, r*p, Q) view: the heads of a group folded into rows."""
        b, K, Q, g, r, p, _ = self.dims
        return v.reshape(b, K, Q, g, r * p).permute(0, 1, 3, 4, 2)

    def heads(self, v):
        """(b, K, Q, h, p) -> (b, K, g, r, Q, p) view: one (Q, p) matrix per head."""
        b, K, Q, g, r, p, _ = self.dims
        return v.reshape(b, K, Q, g, r, p).permute(0, 1, 3, 4, 2, 5)

    def local_states(self):
        """Each chunk's end state from a zero start: sum_s w_s u_s (x) B_s, (b, K, h, p, n)."""
        b, K, Q, g, r, p, n = self.dims
        wu = self.u * self.t_major(self.w)
        return wu, (self.fold(wu) @ self.Bg).view(b, K, g * r, p, n)

    def chunk_states(self, state, local):
        """Sequential pass over the block's chunks: states entering each chunk (b, K, h, p, n),
        and the state leaving the block."""
        b, K = self.dims[:2]
        states = local.new_empty(b, K + 1, *local.shape[2:])
        states[:, 0] = state
        decay = self.e_last[..., None, None]
        for k in range(K):
            torch.addcmul(local[:, k], decay[:, k], states[:, k], out=states[:, k + 1])
        # a copy, so that the state kept as the next block's checkpoint does not keep this
        # block's whole buffer alive
        return states[:, :K], states[:, K].clone()

    def inter(self, s_in):
        """C_t S_inᵀ per head, without the exp(s_t) factor: (b, K, g, Q, r, p)."""
        b, K, Q, g, r, p, n = self.dims
        return (self.Cg @ s_in.view(b, K, g, r * p, n).transpose(-1, -2)).view(b, K, g, Q, r, p)


def _forward(x, dt, A, B, C, Dv, state, chunk, upper, y, checkpoints):
    """Write y (skip term ``Dv`` x included when ``Dv`` is not None) for every block and return
    the final state; append each block's start state to ``checkpoints``."""
    b, length, h, p = x.shape
    for start, K, Q in _blocks(length, chunk, b, h):
        checkpoints.append(state)
        blk = _Block(x, dt, A, B, C, start, K, Q, B.shape[2], upper)
        _, K, Q, g, r, p, n = blk.dims
        _, local = blk.local_states()
        s_in, state = blk.chunk_states(state, local)
        M = blk.decay_matrix().view(b, K, g, r, Q, Q).mul_(blk.gram()[:, :, :, None])
        y_intra = M @ blk.heads(blk.u)  # (b, K, g, r, Q, p)
        e = blk.e.view(b, K, g, r, Q).transpose(-1, -2)[..., None]  # (b, K, g, Q, r, 1)
        y_inter = blk.inter(s_in).mul_(e)  # (b, K, g, Q, r, p)
        yb = y[:, start:start + K * Q].view(b, K, Q, g, r, p)
        torch.add(y_intra.permute(0, 1, 4, 2, 3, 5), y_inter.transpose(2, 3), out=yb)
        if Dv is not None:
            yb.view(b, K, Q, g * r, p).addcmul_(blk.x, Dv)
    return state


def _backward_block(blk, A, Dv, state, y, dy, d_state):
    """Gradients for one block given its output y, the state entering it and the gradient of
    the state leaving it. Returns (dx, ddt, dA, dB, dC, dD (h, p) or None, d_state_in)."""
    b, K, Q, g, r, p, n = blk.dims
    h = g * r
    wu, local = blk.local_states()
    s_in, _ = blk.chunk_states(state, local)

    # gradient of the state entering each chunk, sequentially from the block's end
    edy = dy * blk.t_major(blk.e)  # (b, K, Q, h, p)
    d_local = (blk.fold(edy) @ blk.Cg).view(b, K, h, p, n)
    grads = d_local.new_empty(b, K + 1, h, p, n)  # [:, k]: gradient of chunk k's start state
    grads[:, K] = d_state
    decay = blk.e_last[..., None, None]
    for k in range(K - 1, -1, -1):
        torch.addcmul(d_local[:, k], decay[:, k], grads[:, k + 1], out=grads[:, k])
    d_out, d_state = grads[:, 1:], grads[:, 0]  # gradient of each chunk's end state

    # intra-chunk (Q x Q) part
    Lm = blk.decay_matrix().view(b, K, g, r, Q, Q)
    G = blk.gram()
    M = Lm * G[:, :, :, None]
    dyh = blk.heads(dy).contiguous()  # (b, K, g, r, Q, p), each used twice
    uh = blk.heads(blk.u).contiguous()
    dM = dyh @ uh.transpose(-1, -2)  # (b, K, g, r, Q, Q)
    du_h = M.transpose(-1, -2) @ dyh  # (b, K, g, r, Q, p)
    # The gradient w.r.t. the exponents s_t - s_s is P = dM * M; s needs its row sums minus its
    # column sums, which are dy_t . (M u)_t and u_s . (Mᵀ dy)_s: no (Q x Q) pass needed. The
    # exp(s_t) of the inter-chunk term adds dy_t . y_inter_t; with the first, dy_t . (y - D x)_t.
    dyx = dy * blk.x
    dy_y = (dy * y).sum(-1)
    if Dv is not None:
        dy_y.sub_((dyx * Dv).sum(-1))
    ds = dy_y.transpose(2, 3) - (uh * du_h).sum(-1).view(b, K, h, Q)
    dM.mul_(Lm)  # d(loss)/dG per head
    dG = dM.sum(3) if r > 1 else dM[:, :, :, 0]
    del Lm, M

    # state parts
    d_out_f = d_out.view(b, K, g, r * p, n)
    s_in_f = s_in.view(b, K, g, r * p, n)
    Z = (blk.Bg @ d_out_f.transpose(-1, -2)).view(b, K, g, Q, r, p).transpose(2, 3)
    Z = Z.reshape(b, K, Q, h, p)  # B_s · dS_out per head, (b, K, Q, h, p)
    du = du_h.permute(0, 1, 4, 2, 3, 5).reshape(b, K, Q, h, p)
    du.add_(Z * blk.t_major(blk.w))
    dw = (blk.u * Z).sum(-1).transpose(2, 3)  # (b, K, h, Q)
    dwW = dw.mul_(blk.w)
    dC = dG @ blk.Bg
    dC.add_(blk.fold(edy).transpose(-1, -2) @ s_in_f)
    dB = dG.transpose(-1, -2) @ blk.Cg
    dB.add_(blk.fold(wu).transpose(-1, -2) @ d_out_f)
    ds.sub_(dwW)
    ds[..., -1] += dwW.sum(-1) + (d_out * s_in).sum((-1, -2)) * blk.e_last

    # back through s = cumsum(dt A), u = dt x
    da = ds.flip(-1).cumsum(-1).flip(-1).transpose(2, 3)  # (b, K, Q, h)
    ddt = da * A
    ddt.add_((du * blk.x).sum(-1))
    dA = (da * blk.dt).sum((0, 1, 2))
    dx = du.mul_(blk.dt[..., None])
    dD = None
    if Dv is not None:
        dx.addcmul_(dy, Dv)
        dD = dyx.sum((0, 1, 2))
    return dx, ddt, dA, dB.transpose(2, 3), dC.transpose(2, 3), dD, d_state


def _d_view(D):
    """D as a tensor that broadcasts against (..., h, p): (h, 1) or (h, p); None stays None."""
    return None if D is None else (D[:, None] if D.dim() == 1 else D)


class _ChunkScan(torch.autograd.Function):
    """y, final_state = scan(x, dt, A, B, C, D, state0) with a hand-written, block-recomputing
    backward: saves the inputs, y and one state per block instead of autograd's intermediates
    (y is needed for the gradient of the decays; as it is an output, saving it costs no memory
    while the caller holds y, but modifying y in place before backward is an error)."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, state0, chunk):
        with torch.autocast(x.device.type, enabled=False):  # compute in the inputs' dtype
            return _ChunkScan._forward(ctx, x, dt, A, B, C, D, state0, chunk)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, d_final):
        with torch.autocast(dy.device.type, enabled=False):
            return _ChunkScan._backward(ctx, dy, d_final)

    @staticmethod
    def _forward(ctx, x, dt, A, B, C, D, state0, chunk):
        b, length, h, p = x.shape
        n = B.shape[3]
        upper = torch.ones(chunk, chunk, dtype=torch.bool, device=x.device).triu_(1)
        y = torch.empty_like(x)
        state = state0 if state0 is not None else x.new_zeros(b, h, p, n)
        Dv = _d_view(D)
        checkpoints = []
        final = _forward(x, dt, A, B, C, Dv, state, chunk, upper, y, checkpoints)
        ctx.chunk = chunk
        ctx.has_state0 = state0 is not None
        ctx.d_dim = None if D is None else D.dim()
        ctx.save_for_backward(x, dt, A, B, C, D, y, *checkpoints)
        return y, final

    @staticmethod
    def _backward(ctx, dy, d_final):
        x, dt, A, B, C, D, y, *checkpoints = ctx.saved_tensors
        Dv = _d_view(D)
        chunk = ctx.chunk
        b, length, h, p = x.shape
        n = B.shape[3]
        upper = torch.ones(chunk, chunk, dtype=torch.bool, device=x.device).triu_(1)
        dy = torch.zeros_like(x) if dy is None else dy.contiguous()
        d_state = x.new_zeros(b, h, p, n) if d_final is None else d_final.contiguous()
        dx = torch.empty_like(x)
        ddt = torch.empty_like(dt)
        dB = torch.empty_like(B)
        dC = torch.empty_like(C)
        dA = torch.zeros_like(A)
        dD = torch.zeros(h, p, dtype=x.dtype, device=x.device) if D is not None else None
        blocks = list(_blocks(length, chunk, b, h))
        for (start, K, Q), state in zip(reversed(blocks), reversed(checkpoints), strict=True):
            blk = _Block(x, dt, A, B, C, start, K, Q, B.shape[2], upper)
            end = start + K * Q
            dyb = dy[:, start:end].view(b, K, Q, h, p)
            yb = y[:, start:end].view(b, K, Q, h, p)
            dxb, ddtb, dAb, dBb, dCb, dDb, d_state = _backward_block(blk, A, Dv, state, yb, dyb,
                                                                     d_state)
            dx[:, start:end] = dxb.reshape(b, K * Q, h, p)
            ddt[:, start:end] = ddtb.reshape(b, K * Q, h)
            dB[:, start:end] = dBb.reshape(b, K * Q, B.shape[2], n)
            dC[:, start:end] = dCb.reshape(b, K * Q, B.shape[2], n)
            dA += dAb
            if dD is not None:
                dD += dDb
        if dD is not None and ctx.d_dim == 1:
            dD = dD.sum(-1)
        return dx, ddt, dA, dB, dC, dD, (d_state if ctx.has_state0 else None), None


def scan_chunked(x, dt, A, B, C, D=None, *, initial_state=None, return_final_state=False,
                 chunk_size=256):
    """Chunked selective scan; same contract as :func:`genossm.ops.scan_ref.scan_ref`.

    ``dt`` is already bias-added/softplus-ed/clamped. Computes in float64 if any input is
    float64, else float32 (bf16/fp16 inputs are upcast; y is returned in ``x.dtype``, the final
    state in the compute dtype). ``chunk_size`` is a hint: chunks longer than ``CPU_CHUNK`` are
    shortened to it on CPU, where that is faster; the result does not depend on it beyond
    rounding. Any length works (a ragged last chunk is handled without padding).
    """
    batch, length, heads, headdim = x.shape
    dstate = B.shape[3]
    inputs = [x, dt, A, B, C] + ([initial_state] if initial_state is not None else [])
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in inputs) else torch.float32
    chunk = max(1, int(chunk_size))
    if x.device.type == "cpu":
        chunk = min(chunk, CPU_CHUNK)
    if length == 0:
        y = x.new_zeros(x.shape)
        state = (initial_state.to(dtype) if initial_state is not None
                 else x.new_zeros(batch, heads, headdim, dstate, dtype=dtype))
        return y, (state if return_final_state else None)
    xf = x.to(dtype).contiguous()
    s0 = initial_state.to(dtype).contiguous() if initial_state is not None else None
    Df = D.to(dtype).contiguous() if D is not None else None
    y, state = _ChunkScan.apply(xf, dt.to(dtype).contiguous(), A.to(dtype).contiguous(),
                                B.to(dtype).contiguous(), C.to(dtype).contiguous(), Df, s0,
                                chunk)
    return y.to(x.dtype), (state if return_final_state else None)
