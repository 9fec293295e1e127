"""The ``torch`` backend of the Mamba-1 (S6) scan: A of shape (heads, dstate), the CPU path.

The recurrence, per head h, headdim index p and state n (the decay is shared over p)::

    H_t = a_t H_{t-1} + u_t,   a_t = exp(dt_t A)  (h, n),   u_t = dt_t x_t (x) B_t  (h, p, n)
    y_t = H_t . C_t + D x_t

The decay differs per state, so there is no (Q x Q) matmul form as in the SSD backend
(:mod:`genossm.ops.scan_chunked`). This backend computes the sequential recurrence itself, one
fused multiply-add per step over a whole state, with many chunks advancing together when the
state alone is too small for an efficient op. The sequence is cut into chunks of ``Q`` steps,
and chunks into blocks of ``K``. Within a block:

1. ``a`` and ``u`` for the whole block, in a few large elementwise ops;
2. *local* pass: every chunk runs its recurrence from a zero state, all K chunks at once (Q
   steps, each one op over (K, b, h, p, n)), giving each chunk's local end state;
3. *carry*: the true state entering each chunk, sequentially over the K chunks:
   ``S_{k+1} = P_k S_k + local_k`` with ``P_k = exp(A sum_{t in chunk k} dt_t)``;
4. *true* pass: the recurrence again, all K chunks at once, from the true entering states,
   writing every state of the block into a buffer; then ``y = C . H`` as one batched matmul.

K is chosen so that a step op covers at least ``STEP_ELEMENTS`` elements. A state that big on
its own (Mamba-1's 512+ channels x 16 states) gives K = 1: the block is one chunk and runs only
the true pass, from the state that entered it, which halves the recurrence work.

Every exponent is ``dt A <= 0`` or a sum of such terms, so nothing is ``exp`` of a large positive
number, and the method is the sequential recurrence regrouped: it matches the float64 reference
to rounding.

The backward (:class:`_S6Scan`) walks the blocks in reverse. It recomputes a block's states from
the one state saved at the block's start, then runs the adjoint recurrence in the same
local / carry / true form::

    R_t = a_t (R_{t+1} + dy_t (x) C_t)   (R_t: gradient of the state entering step t)

and reads every gradient off R and H with elementwise products and batched matmuls:
``d(dt A)_t = sum_p R_t H_{t-1}``, ``du_t = R_{t+1} + dy_t (x) C_t``, ``dC_t = dy_t . H_t``.

Why it is fast and lean on CPU:

- the Python loop runs over the steps of a block, and each step is one op over at least
  ``STEP_ELEMENTS`` elements; everything else is a few large ops per block (a, u, the
  contractions) or per run of blocks (the work on (b, h, p)-sized tensors), on views built once;
- the state is laid out (..., group, state, head, headdim), so that the contractions with B and
  C are (1 x n) @ (n x heads) matmuls over long contiguous rows; the decay is ``exp2`` of
  ``dt * A log2(e)`` (torch's float32 ``exp`` is several times slower than its ``exp2`` on CPU);
- a block's buffers (the decays, the states, their gradients: about 1 MiB each) are allocated
  once per call and reused from block to block, so they stay in cache between the passes that
  read them and cost no page faults; u is written where the states go and the recurrence
  updates it in place (likewise for the adjoints), so there is no separate buffer for it;
  nothing (b, L, h, p, n)-sized exists for the whole sequence, and peak memory is linear in
  length with a small constant (inputs, outputs, gradients and one state per block);
- the backward saves only the inputs and one state per block; it does not need y, because the
  decay gradient comes from R and H.

The constants were chosen on a 2-core x86_64 (forward+backward, float32, batch 1, 512 channels
x 16 states, one thread, least CPU time over 3 rounds of 5 runs at L = 16,384): K = 1, Q = 32
0.71 s; K = 1, Q = 16 0.72 s; K = 4, Q = 8 0.82 s; K = 4, Q = 4 0.83 s; K = 8, Q = 4 0.87 s;
K = 2, Q = 16 0.92 s. Blocks of 2^20 elements (16 MiB buffers) were 1.3-1.5x slower than of
2^18, the working set no longer fitting in cache.
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from genossm.ops.scan_chunked import _block_iter

#: Least number of elements of a step op: a block has K = ceil(STEP_ELEMENTS / (b h p n))
#: chunks, so that each step of the passes is one op over at least this many elements, about
#: where the work of an op outweighs its fixed cost (~2 us). Larger states give K = 1.
STEP_ELEMENTS = 1 << 13
#: Elements of one block-sized state tensor (b x K x Q x h x p x n): the chunk length is
#: Q = BLOCK_ELEMENTS // (K b h p n), or the caller's chunk size if shorter.
BLOCK_ELEMENTS = 1 << 18
#: Shortest chunk (unless the caller's is shorter), so that a block's fixed cost in small ops is
#: shared by a few steps even when the state alone is larger than BLOCK_ELEMENTS.
MIN_CHUNK = 4
#: Elements of the (b, h, p)-sized tensors of a run of blocks (positions x b x h x p): the
#: per-position work that does not involve the state (dt x, and the terms of dx, ddt and dB
#: without it) is done once per run rather than per block, as a few larger ops.
RUN_ELEMENTS = 1 << 21

LOG2E = 1.0 / math.log(2.0)


def _blocks(length, chunk, per_step):
    """Blocks covering [0, length): a list of (start, n_chunks, chunk_len), chunk_len at most
    ``chunk``; a ragged tail is its own one-chunk block of shorter length, so nothing is
    padded. ``per_step``: elements of the state (b h p n)."""
    return list(_block_iter(length, *_shape(chunk, per_step)))


def _shape(chunk, per_step):
    """(chunk length Q, chunks per block K) for a state of ``per_step`` elements."""
    k_max = max(1, -(-STEP_ELEMENTS // per_step))
    return max(1, min(chunk, max(MIN_CHUNK, BLOCK_ELEMENTS // (k_max * per_step)))), k_max


def _to_inner(s, g):
    """A state (b, h, p, n) in the internal layout (b, g, n, r, p), r = h // g heads per group."""
    b, h, p, n = s.shape
    return s.reshape(b, g, h // g, p, n).permute(0, 1, 4, 2, 3).contiguous()


def _to_outer(s):
    """The internal layout (b, g, n, r, p) back to (b, h, p, n)."""
    b, g, n, r, p = s.shape
    return s.permute(0, 1, 3, 4, 2).reshape(b, g * r, p, n)


def _a_inner(A, g, scale=1.0):
    """A (h, n) as (g, n, r), times ``scale`` (log2(e) for exp2)."""
    h, n = A.shape
    return (A * scale).view(g, h // g, n).transpose(1, 2).contiguous()


class _Work:
    """Buffers for every block of one call, in the internal layout (position, batch, group,
    state, head, headdim): allocated once and reused block after block (fresh block-sized
    tensors would cost page faults and cache misses), with the per-step views of each block
    shape built once (slicing costs as much as a small op)."""

    def __init__(self, x, B, blocks, runs, adjoint):
        b, _, h, p = x.shape
        g, n = B.shape[2], B.shape[3]
        r = h // g
        T = max(k * q for _, k, q in blocks)
        K = max(k for _, k, _ in blocks)
        new = x.new_empty
        self.dims = (b, g, n, r, p)
        self.a = new(T, b, g, n, r)  # decays, then (backward) d(dt A)
        self.scratch = new(T, b, g, n, r, p) if adjoint and p > 1 else None  # R H before sum_p
        self.H = new(T + 1, b, g, n, r, p)
        self.R = new(T + 1, b, g, n, r, p) if adjoint else None
        self.z = new(K, b, g, n, r, p)
        self.P = new(K, b, g, n, r)
        self.dA = x.new_zeros(T, b, g, n, r) if adjoint else None
        self.v = new(max(e - s for s, e, _ in runs), b, g, r, p)  # dt x over a run
        self.ones = x.new_ones(1, 1, n).expand(T * b * g, 1, n)
        self.plans = {}

    def plan(self, K, Q):
        """The views of the buffers for a block of K chunks of Q steps (cached)."""
        if (K, Q) not in self.plans:
            self.plans[K, Q] = _Plan(self, K, Q)
        return self.plans[K, Q]


class _Plan:
    """Views of the work buffers for one block shape: ``(K, Q, ...)`` step views and the
    argument tuples of every step of the passes.

    u is written into H[1:] (u_t where the state after step t goes) and the passes update it in
    place, H[t+1] += a_t H[t]; likewise a (dy C) into R[:T] for the adjoints, R[t] += a_t R[t+1].
    """

    def __init__(self, w, K, Q):
        b, g, n, r, p = w.dims
        T = K * Q
        self.K, self.Q, self.T = K, Q, T
        self.a = w.a[:T]
        self.P = w.P[:K]
        self.z = w.z[:K]
        self.H = H = w.H[:T + 1]
        As = self.a.view(K, Q, b, g, n, r, 1)
        P = self.P[..., None]
        z = self.z
        Hp = H[:T].view(K, Q, b, g, n, r, p)
        Hc = H[1:].view(K, Q, b, g, n, r, p)  # u, then the states after each step
        # one chunk: the plain recurrence; else local pass, carry and true pass, the true pass
        # skipping the steps set by the carry
        self.chunked = K > 1
        self.u0 = Hc[:, 0]
        self.fwd_local = [(Hc[:, q], As[:, q], z, z) for q in range(1, Q)] if K > 1 else []
        self.fwd_carry = ([(z[k], P[k], H[k * Q], H[(k + 1) * Q]) for k in range(K)]
                          if K > 1 else [])
        self.fwd_true = [(Hc[:, q], As[:, q], Hp[:, q]) for q in range(Q - 1 if K > 1 else Q)]
        if w.R is not None:
            self.R = R = w.R[:T + 1]
            self.dA = w.dA[:T]
            self.scratch = w.scratch[:T] if p > 1 else None
            Rp = R[:T].view(K, Q, b, g, n, r, p)  # a (dy C), then the adjoints
            Rn = R[1:].view(K, Q, b, g, n, r, p)
            self.w_last = Rp[:, Q - 1]
            self.bwd_local = ([(Rp[:, q], As[:, q], z, z) for q in range(Q - 2, -1, -1)]
                              if K > 1 else [])
            self.bwd_carry = ([(z[k], P[k], R[(k + 1) * Q], R[k * Q])
                               for k in range(K - 1, -1, -1)] if K > 1 else [])
            self.bwd_true = [(Rp[:, q], As[:, q], Rn[:, q])
                             for q in range(Q - 1, 0 if K > 1 else -1, -1)]


def _run(steps):
    """out = c + a * b for every (c, a, b, out) in order."""
    addcmul = torch.addcmul
    for c, a, b, out in steps:
        addcmul(c, a, b, out=out)


def _run_inplace(steps):
    """c += a * b for every (c, a, b) in order."""
    for c, a, b in steps:
        c.addcmul_(a, b)


def _states(pl, dt, v, A2, Bb, state):
    """Fill ``pl.H`` (T+1, b, g, n, r, p) with every state of the block: H[0] = ``state``, H[t+1]
    the state after step t; also leaves the decays in ``pl.a``.
    dt (T, b, g, r), v = dt x (T, b, g, r, p), Bb (T, b, g, n)."""
    torch.mul(dt[:, :, :, None], A2, out=pl.a).exp2_()  # a = exp(dt A)
    H = pl.H
    torch.mul(v[:, :, :, None], Bb[..., None, None], out=H[1:])  # u
    H[0] = state
    if pl.chunked:
        dt_sum = dt.reshape(pl.K, pl.Q, *dt.shape[1:]).sum(1)
        torch.mul(dt_sum[:, :, :, None], A2, out=pl.P).exp2_()  # decay over each chunk
        pl.z.copy_(pl.u0)
    _run(pl.fwd_local)  # each chunk's end state from a zero start
    _run(pl.fwd_carry)  # true states entering the chunks, and leaving the block
    _run_inplace(pl.fwd_true)  # the other states (a chunk's last one was set by the carry)
    return H


def _time_major(t, g):
    """(b, L, h, ...) -> a (L, b, g, r, ...) view."""
    tt = t.transpose(0, 1)
    return tt.reshape(tt.shape[0], tt.shape[1], g, -1, *tt.shape[3:])


def _runs(blocks, row):
    """Consecutive blocks grouped into runs of about RUN_ELEMENTS // ``row`` positions (``row``:
    elements of x at one position, b h p): a list of (start, end, blocks)."""
    steps = max(1, RUN_ELEMENTS // row)
    run, out = [], []
    for i, (start, k, q) in enumerate(blocks):
        run.append((start, k, q))
        end = start + k * q
        if end - run[0][0] >= steps or i == len(blocks) - 1:
            out.append((run[0][0], end, run))
            run = []
    return out


def _bmm_into(m1, m2, dst):
    """dst = bmm(m1, m2), viewed as dst's shape; straight into dst when it is contiguous."""
    if dst.is_contiguous():
        torch.bmm(m1, m2, out=dst.view(m1.shape[0], m1.shape[1], m2.shape[2]))
    else:
        dst.copy_(torch.bmm(m1, m2).view(dst.shape))
    return dst


def _forward(x, dt, A, B, C, state, chunk, y):
    """Write y (without the D term) for every block; return the final state (internal layout)
    and the states entering the blocks."""
    b, length, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    r = h // g
    A2 = _a_inner(A, g, LOG2E)
    xt, dtt, yt = _time_major(x, g), _time_major(dt, g), _time_major(y, g)
    Bt, Ct = B.transpose(0, 1), C.transpose(0, 1)
    blocks = _blocks(length, chunk, b * h * p * n)
    runs = _runs(blocks, b * h * p)
    work = _Work(x, B, blocks, runs, adjoint=False)
    checkpoints = []
    for s0, s1, run in runs:
        v = torch.mul(xt[s0:s1], dtt[s0:s1, ..., None], out=work.v[:s1 - s0])  # dt x
        for start, K, Q in run:
            checkpoints.append(state)
            pl = work.plan(K, Q)
            T, end = pl.T, start + pl.T
            dtb = dtt[start:end]
            H = _states(pl, dtb, v[start - s0:end - s0], A2, Bt[start:end], state)
            state = H[T].clone()
            # y_t = C_t . H_t per group: (T b g, 1, n) @ (T b g, n, r p)
            _bmm_into(Ct[start:end].reshape(T * b * g, 1, n), H[1:].view(T * b * g, n, r * p),
                      yt[start:end])
    return state, checkpoints


def _backward(x, dt, A, B, C, checkpoints, chunk, dy, d_state):
    """Gradients (dx, ddt, dA (h, n), dB, dC, dD (h, p)) without the D term of dx, and the
    gradient of the initial state (internal layout); the blocks are walked in reverse, each
    recomputed from the state saved at its start."""
    b, length, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    r = h // g
    A2 = _a_inner(A, g, LOG2E)
    Ai = _a_inner(A, g)
    dx, ddt, dB, dC = (torch.empty_like(t) for t in (x, dt, B, C))
    dD = x.new_zeros(g, r, p)
    xt, dtt, dyt = (_time_major(t, g) for t in (x, dt, dy))
    dxt, ddtt = _time_major(dx, g), _time_major(ddt, g)
    Bt, Ct, dBt, dCt = (t.transpose(0, 1) for t in (B, C, dB, dC))
    blocks = _blocks(length, chunk, b * h * p * n)
    runs = _runs(blocks, b * h * p)
    work = _Work(x, B, blocks, runs, adjoint=True)
    ckpt = iter(reversed(checkpoints))
    for s0, s1, run in reversed(runs):
        v = torch.mul(xt[s0:s1], dtt[s0:s1, ..., None], out=work.v[:s1 - s0])  # dt x
        for start, K, Q in reversed(run):
            pl = work.plan(K, Q)
            T, end = pl.T, start + pl.T
            dtb, dyb, Bb, Cb = dtt[start:end], dyt[start:end], Bt[start:end], Ct[start:end]
            vb = v[start - s0:end - s0]
            H = _states(pl, dtb, vb, A2, Bb, next(ckpt))
            # adjoints R[t] = a_t R[t+1] + w_t, w = a (dy C) written into R[:T] first
            R = pl.R
            torch.mul(dyb[:, :, :, None], Cb[..., None, None], out=R[:T]).mul_(pl.a[..., None])
            R[T] = d_state
            if pl.chunked:
                pl.z.copy_(pl.w_last)
            _run(pl.bwd_local)  # each chunk's start gradient with nothing after the chunk
            _run(pl.bwd_carry)  # true gradients of the states entering the chunks
            _run_inplace(pl.bwd_true)  # the others
            d_state = R[0].clone()

            # decays: d(dt A)_t = sum_p R[t] H[t] (gradient and value of the state entering
            # step t), written over a; dA accumulated over blocks; ddt's share, summed over
            # the states
            M = pl.a
            if p == 1:
                torch.mul(R[:T, ..., 0], H[:T, ..., 0], out=M)
            else:
                torch.sum(torch.mul(R[:T], H[:T], out=pl.scratch), -1, out=M)
            pl.dA.addcmul_(M, dtb[:, :, :, None])
            M.mul_(Ai)  # then summed over the states by a matmul with ones
            _bmm_into(work.ones[:T * b * g], M.view(T * b * g, n, r), ddtt[start:end])

            # du_t = R[t+1] + dy_t C_t; here its R part, contracted with B (into dx, for x
            # and dt) and with v (for B), and dC
            Rn = R[1:].view(T * b * g, n, r * p)
            _bmm_into(Bb.reshape(T * b * g, 1, n), Rn, dxt[start:end])
            _bmm_into(vb.reshape(T * b * g, 1, r * p), Rn.transpose(1, 2), dBt[start:end])
            _bmm_into(dyb.reshape(T * b * g, 1, r * p),
                      H[1:].view(T * b * g, n, r * p).transpose(1, 2), dCt[start:end])

        # the dy_t C_t part of du, and the chain rule through u = dt x (x) B, over the run
        dyr, xr, Br, Cr = dyt[s0:s1], xt[s0:s1], Bt[s0:s1], Ct[s0:s1]
        gB = dxt[s0:s1]  # du . B
        gB.addcmul_(dyr, (Cr * Br).sum(-1)[..., None, None])
        if p == 1:
            ddtt[s0:s1].addcmul_(gB[..., 0], xr[..., 0])
        else:
            ddtt[s0:s1].add_((gB * xr).sum(-1))
        dBt[s0:s1].addcmul_((v * dyr).sum((-1, -2))[..., None], Cr)
        dD.add_((dyr * xr).sum((0, 1)))
        gB.mul_(dtt[s0:s1, ..., None])  # now dx
    dA = work.dA.sum((0, 1)).transpose(1, 2).reshape(h, n)
    return dx, ddt, dA, dB, dC, dD.view(h, p), d_state


def _d_view(D):
    """D as a tensor that broadcasts against (..., h, p): (h, 1) or (h, p)."""
    return D[:, None] if D.dim() == 1 else D


class _S6Scan(torch.autograd.Function):
    """y, final_state = S6 scan(x, dt, A, B, C, D, state0), with a hand-written backward that
    saves the inputs and one state per block and recomputes the rest block by block."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, state0, chunk):
        with torch.autocast(x.device.type, enabled=False):  # compute in the inputs' dtype
            b, length, h, p = x.shape
            g, n = B.shape[2], B.shape[3]
            y = torch.empty_like(x)
            state = (_to_inner(state0, g) if state0 is not None
                     else x.new_zeros(b, g, n, h // g, p))
            final, checkpoints = _forward(x, dt, A, B, C, state, chunk, y)
            if D is not None:
                y.addcmul_(x, _d_view(D))
            ctx.chunk = chunk
            ctx.has_state0 = state0 is not None
            ctx.save_for_backward(x, dt, A, B, C, D, *checkpoints)
            return y, _to_outer(final)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, d_final):
        x, dt, A, B, C, D, *checkpoints = ctx.saved_tensors
        with torch.autocast(x.device.type, enabled=False):
            b, length, h, p = x.shape
            g, n = B.shape[2], B.shape[3]
            dy = torch.zeros_like(x) if dy is None else dy.contiguous()
            d_state = (x.new_zeros(b, g, n, h // g, p) if d_final is None
                       else _to_inner(d_final, g))
            dx, ddt, dA, dB, dC, dD, d_state = _backward(x, dt, A, B, C, checkpoints,
                                                         ctx.chunk, dy, d_state)
            if D is None:
                dD = None
            else:
                dx.addcmul_(dy, _d_view(D))
                if D.dim() == 1:
                    dD = dD.sum(-1)
            d_state = _to_outer(d_state) if ctx.has_state0 else None
            return dx, ddt, dA, dB, dC, dD, d_state, None


def scan_s6_chunked(x, dt, A, B, C, D=None, *, initial_state=None, return_final_state=False,
                    chunk_size=256):
    """Chunked Mamba-1 (S6) scan, A of shape (h, n); same contract as
    :func:`genossm.ops.scan_ref.scan_ref`.

    ``dt`` is already bias-added/softplus-ed/clamped. Computes in float64 if any input is
    float64, else float32 (y is returned in ``x.dtype``, the final state in the compute dtype).
    ``chunk_size`` is an upper bound on the chunk length, which is otherwise chosen from the
    state's size (see ``BLOCK_ELEMENTS``); the result does not depend on it beyond rounding.
    Any length works.
    """
    batch, length, heads, headdim = x.shape
    dstate = B.shape[3]
    if A.dim() != 2:
        raise ValueError(f"the S6 scan needs A of shape (heads, dstate), got {tuple(A.shape)}")
    inputs = [x, dt, A, B, C] + ([initial_state] if initial_state is not None else [])
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in inputs) else torch.float32
    chunk = max(1, int(chunk_size))
    if length == 0:
        y = x.new_zeros(x.shape)
        state = (initial_state.to(dtype) if initial_state is not None
                 else x.new_zeros(batch, heads, headdim, dstate, dtype=dtype))
        return y, (state if return_final_state else None)
    s0 = initial_state.to(dtype).contiguous() if initial_state is not None else None
    Df = D.to(dtype).contiguous() if D is not None else None
    y, state = _S6Scan.apply(x.to(dtype).contiguous(), dt.to(dtype).contiguous(),
                             A.to(dtype).contiguous(), B.to(dtype).contiguous(),
                             C.to(dtype).contiguous(), Df, s0, chunk)
    return y.to(x.dtype), (state if return_final_state else None)
