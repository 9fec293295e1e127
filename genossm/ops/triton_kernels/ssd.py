"""Chunked selective-scan kernels (state-space duality form), forward and backward.

Notation, per (batch, head) and chunk of ``Q`` positions: ``a_t = dt_t A`` and ``s_t`` its
inclusive cumulative sum inside the chunk, so the decay from position u to t (u <= t) is
``exp(s_t - s_u)``. ``xd_u = dt_u x_u``. Positions past the sequence end are loaded as zeros
(dt = 0, so ``s`` stays flat there and ``s[Q-1]`` is the decay to the last real position).

Forward:  S_in(c+1) = exp(s_last) S_in(c) + sum_u exp(s_last - s_u) xd_u ⊗ B_u
          y_t = sum_{u<=t} exp(s_t - s_u) (C_t·B_u) xd_u + exp(s_t) S_in C_t + D x_t
Backward: reverse state passing for dS_out (gradient of the state leaving each chunk), then
per-position gradients; d(log-decay) ``ds_t`` is turned into ``da`` by a reverse cumsum.

Buffers shared between kernels use a padded "s layout": (batch*heads, n_chunks*Q) float32.
All accumulation is float32; ``DOT`` ("fp32", "bf16", "fp16") names the operand dtype of the
tensor-core products (the input dtype for bf16/fp16, float32 with ``PREC`` precision otherwise).

The forward and backward kernels stay together in this one file (about 410 lines; the longest
kernel, chunk_scan_bwd_dx, is 81): the backward kernels read the forward's buffers in the same
layouts, and their common prologue (program ids, offsets, masks) is best compared side by side.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _mm(a, b, DOT: tl.constexpr, PREC: tl.constexpr):
    """a @ b with operands cast to ``DOT`` and a float32 accumulator. PREC == "emulate" rounds
    the operands to ``DOT`` but multiplies in float32 (the interpreter's 16-bit tl.dot is wrong;
    products of 16-bit values are exact in float32, so this matches the GPU up to summation
    order)."""
    if DOT == "fp32":
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision=PREC)
    if DOT == "bf16":
        if PREC == "emulate":
            return tl.dot(a.to(tl.bfloat16).to(tl.float32), b.to(tl.bfloat16).to(tl.float32),
                          input_precision="ieee")
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), out_dtype=tl.float32)
    if PREC == "emulate":
        return tl.dot(a.to(tl.float16).to(tl.float32), b.to(tl.float16).to(tl.float32),
                      input_precision="ieee")
    return tl.dot(a.to(tl.float16), b.to(tl.float16), out_dtype=tl.float32)


@triton.jit
def cumsum_kernel(dt_ptr, A_ptr, s_ptr, L, H, NC,
                  s_dt_b, s_dt_l, s_dt_h,
                  Q: tl.constexpr):
    """s = per-chunk inclusive cumsum of dt·A, into the s layout."""
    pid_bh = tl.program_id(0)
    c = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs = c * Q + tl.arange(0, Q)
    dt = tl.load(dt_ptr + b.to(tl.int64) * s_dt_b + offs.to(tl.int64) * s_dt_l + h * s_dt_h,
                 mask=offs < L, other=0.0)
    a = dt * tl.load(A_ptr + h)
    s = tl.cumsum(a, axis=0)
    tl.store(s_ptr + pid_bh.to(tl.int64) * (NC * Q) + offs, s)


@triton.jit
def chunk_state_kernel(v_ptr, k_ptr, dt_ptr, s_ptr, out_ptr,
                       L, H, NC, HPG, P, N,
                       s_v_b, s_v_l, s_v_h, s_v_p,
                       s_k_b, s_k_l, s_k_g, s_k_n,
                       s_dt_b, s_dt_l, s_dt_h,
                       Q: tl.constexpr, BT: tl.constexpr, BP: tl.constexpr, BN: tl.constexpr,
                       FORWARD: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr):
    """Per chunk, out (P, N) = sum_t w_t v_t ⊗ k_t.

    FORWARD: v = x, k = B, w = dt·exp(s_last - s)  (the chunk's own contribution to its end
    state). Otherwise: v = dy, k = C, w = exp(s)  (the gradient of the state entering the chunk
    from the chunk's own outputs).
    """
    pid_bh = tl.program_id(0)
    c = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    g = h // HPG
    offs_p = tl.arange(0, BP)
    offs_n = tl.arange(0, BN)
    mp = offs_p < P
    mn = offs_n < N
    s_base = s_ptr + pid_bh.to(tl.int64) * (NC * Q)
    s_last = tl.load(s_base + c * Q + Q - 1)
    v_base = v_ptr + b.to(tl.int64) * s_v_b + h * s_v_h
    k_base = k_ptr + b.to(tl.int64) * s_k_b + g * s_k_g
    acc = tl.zeros((BP, BN), dtype=tl.float32)
    for t0 in range(0, Q, BT):
        offs_t = c * Q + t0 + tl.arange(0, BT)
        mt = offs_t < L
        ot = offs_t.to(tl.int64)
        v = tl.load(v_base + ot[:, None] * s_v_l + offs_p[None, :] * s_v_p,
                    mask=mt[:, None] & mp[None, :], other=0.0).to(tl.float32)
        k = tl.load(k_base + ot[:, None] * s_k_l + offs_n[None, :] * s_k_n,
                    mask=mt[:, None] & mn[None, :], other=0.0)
        s = tl.load(s_base + offs_t)
        if FORWARD:
            dt = tl.load(dt_ptr + b.to(tl.int64) * s_dt_b + ot * s_dt_l + h * s_dt_h,
                         mask=mt, other=0.0)
            w = dt * tl.exp(s_last - s)
        else:
            w = tl.exp(s)
        acc += _mm(tl.trans(v * w[:, None]), k, DOT, PREC)
    out = out_ptr + (pid_bh.to(tl.int64) * NC + c) * (P * N)
    tl.store(out + offs_p[:, None] * N + offs_n[None, :], acc, mask=mp[:, None] & mn[None, :])


@triton.jit
def state_pass_fwd_kernel(chunk_ptr, s_ptr, init_ptr, states_ptr, final_ptr,
                          NC, PN,
                          Q: tl.constexpr, BLOCK: tl.constexpr, HAS_INIT: tl.constexpr):
    """Sequential over chunks: states[c] = state entering chunk c; final = state after the last."""
    pid_bh = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = offs < PN
    bh = pid_bh.to(tl.int64)
    if HAS_INIT:
        S = tl.load(init_ptr + bh * PN + offs, mask=m, other=0.0).to(tl.float32)
    else:
        S = tl.zeros((BLOCK,), dtype=tl.float32)
    # The loads for chunk c+1 are issued before the dependent update of chunk c (prefetch), so
    # their latency overlaps the sequential chain.
    nxt = tl.load(chunk_ptr + bh * NC * PN + offs, mask=m, other=0.0)
    nxt_s = tl.load(s_ptr + bh * (NC * Q) + Q - 1)
    for c in range(0, NC):
        own = nxt
        s_last = nxt_s
        cn = c + 1 - (c + 1) // NC  # c + 1, or c again at the end (a harmless reload)
        nxt = tl.load(chunk_ptr + (bh * NC + cn) * PN + offs, mask=m, other=0.0)
        nxt_s = tl.load(s_ptr + bh * (NC * Q) + cn * Q + Q - 1)
        tl.store(states_ptr + (bh * NC + c) * PN + offs, S, mask=m)
        S = tl.exp(s_last) * S + own
    tl.store(final_ptr + bh * PN + offs, S, mask=m)


@triton.jit
def state_pass_bwd_kernel(g_ptr, s_ptr, states_ptr, dfinal_ptr, dout_ptr, dinit_ptr, z_ptr,
                          NC, PN, NBLK,
                          Q: tl.constexpr, BLOCK: tl.constexpr, HAS_DFINAL: tl.constexpr):
    """Reverse over chunks: dout[c] = gradient of the state leaving chunk c; dinit = gradient of
    the initial state; z[c] = exp(s_last) <dout[c], states[c]> (partial over this block), the
    part of d(s_last) that comes through the carried state."""
    pid_bh = tl.program_id(0)
    blk = tl.program_id(1)
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    m = offs < PN
    bh = pid_bh.to(tl.int64)
    if HAS_DFINAL:
        dS = tl.load(dfinal_ptr + bh * PN + offs, mask=m, other=0.0).to(tl.float32)
    else:
        dS = tl.zeros((BLOCK,), dtype=tl.float32)
    row = (bh * NC + NC - 1) * PN
    nxt_g = tl.load(g_ptr + row + offs, mask=m, other=0.0)
    nxt_in = tl.load(states_ptr + row + offs, mask=m, other=0.0)
    nxt_s = tl.load(s_ptr + bh * (NC * Q) + (NC - 1) * Q + Q - 1)
    for i in range(0, NC):  # prefetching chunk c-1 as in state_pass_fwd_kernel
        c = NC - 1 - i
        g_own = nxt_g
        s_in = nxt_in
        dec = tl.exp(nxt_s)
        cp = c - 1 + (NC - c) // NC  # c - 1, or 0 again at the end
        prev = (bh * NC + cp) * PN
        nxt_g = tl.load(g_ptr + prev + offs, mask=m, other=0.0)
        nxt_in = tl.load(states_ptr + prev + offs, mask=m, other=0.0)
        nxt_s = tl.load(s_ptr + bh * (NC * Q) + cp * Q + Q - 1)
        tl.store(dout_ptr + (bh * NC + c) * PN + offs, dS, mask=m)
        tl.store(z_ptr + (bh * NC + c) * NBLK + blk, dec * tl.sum(dS * s_in, axis=0))
        dS = g_own + dec * dS
    tl.store(dinit_ptr + bh * PN + offs, dS, mask=m)


@triton.jit
def chunk_scan_fwd_kernel(x_ptr, dt_ptr, s_ptr, B_ptr, C_ptr, D_ptr, states_ptr, y_ptr,
                          L, H, NC, HPG, P, N,
                          s_x_b, s_x_l, s_x_h, s_x_p,
                          s_dt_b, s_dt_l, s_dt_h,
                          s_B_b, s_B_l, s_B_g, s_B_n,
                          s_y_b, s_y_l, s_y_h, s_y_p,
                          Q: tl.constexpr, BT: tl.constexpr, BP: tl.constexpr,
                          BN: tl.constexpr, HAS_D: tl.constexpr,
                          DOT: tl.constexpr, PREC: tl.constexpr):
    """y for one block of BT rows of one chunk: carried-state term plus the causal intra-chunk
    term, accumulated over column blocks up to the diagonal. B and C share strides."""
    pid_bh = tl.program_id(0)
    c = tl.program_id(1)
    tb = tl.program_id(2)
    b = pid_bh // H
    h = pid_bh % H
    g = h // HPG
    bh = pid_bh.to(tl.int64)
    offs_p = tl.arange(0, BP)
    offs_n = tl.arange(0, BN)
    mp = offs_p < P
    mn = offs_n < N
    offs_t = c * Q + tb * BT + tl.arange(0, BT)
    mt = offs_t < L
    ot = offs_t.to(tl.int64)
    s_base = s_ptr + bh * (NC * Q)
    x_base = x_ptr + b.to(tl.int64) * s_x_b + h * s_x_h
    dt_base = dt_ptr + b.to(tl.int64) * s_dt_b + h * s_dt_h
    bc_off = b.to(tl.int64) * s_B_b + g * s_B_g

    s_t = tl.load(s_base + offs_t)
    c_t = tl.load(C_ptr + bc_off + ot[:, None] * s_B_l + offs_n[None, :] * s_B_n,
                  mask=mt[:, None] & mn[None, :], other=0.0)
    s_in = tl.load(states_ptr + (bh * NC + c) * (P * N) + offs_p[:, None] * N + offs_n[None, :],
                   mask=mp[:, None] & mn[None, :], other=0.0)
    acc = _mm(c_t, tl.trans(s_in), DOT, PREC) * tl.exp(s_t)[:, None]
    for u0 in range(0, (tb + 1) * BT, BT):
        offs_u = c * Q + u0 + tl.arange(0, BT)
        mu = offs_u < L
        ou = offs_u.to(tl.int64)
        b_u = tl.load(B_ptr + bc_off + ou[:, None] * s_B_l + offs_n[None, :] * s_B_n,
                      mask=mu[:, None] & mn[None, :], other=0.0)
        x_u = tl.load(x_base + ou[:, None] * s_x_l + offs_p[None, :] * s_x_p,
                      mask=mu[:, None] & mp[None, :], other=0.0)
        dt_u = tl.load(dt_base + ou * s_dt_l, mask=mu, other=0.0)
        s_u = tl.load(s_base + offs_u)
        cb = _mm(c_t, tl.trans(b_u), DOT, PREC)
        causal = offs_t[:, None] >= offs_u[None, :]
        decay = tl.exp(tl.where(causal, s_t[:, None] - s_u[None, :], float("-inf")))
        acc += _mm(cb * decay * dt_u[None, :], x_u, DOT, PREC)
    x_t = tl.load(x_base + ot[:, None] * s_x_l + offs_p[None, :] * s_x_p,
                  mask=mt[:, None] & mp[None, :], other=0.0).to(tl.float32)
    if HAS_D:
        d = tl.load(D_ptr + h * P + offs_p, mask=mp, other=0.0)
        acc += x_t * d[None, :]
    tl.store(y_ptr + b.to(tl.int64) * s_y_b + h * s_y_h + ot[:, None] * s_y_l
             + offs_p[None, :] * s_y_p, acc, mask=mt[:, None] & mp[None, :])


@triton.jit
def chunk_scan_bwd_dc_kernel(x_ptr, dt_ptr, s_ptr, B_ptr, C_ptr, states_ptr, dy_ptr,
                             dC_ptr, ds_ptr,
                             L, H, NC, HPG, P, N,
                             s_x_b, s_x_l, s_x_h, s_x_p,
                             s_dt_b, s_dt_l, s_dt_h,
                             s_B_b, s_B_l, s_B_g, s_B_n,
                             s_dC_b, s_dC_l, s_dC_h, s_dC_n,
                             Q: tl.constexpr, BT: tl.constexpr, BP: tl.constexpr,
                             BN: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr):
    """Row-side gradients for BT output rows t: dC_t (per head, float32) and the row part of
    d(s_t): exp(s_t) dy_t·(S_in C_t) + sum_{u<=t} M_tu, M = decay ∘ (C Bᵀ) ∘ (dy xdᵀ).
    dy shares x's strides."""
    pid_bh = tl.program_id(0)
    c = tl.program_id(1)
    tb = tl.program_id(2)
    b = pid_bh // H
    h = pid_bh % H
    g = h // HPG
    bh = pid_bh.to(tl.int64)
    offs_p = tl.arange(0, BP)
    offs_n = tl.arange(0, BN)
    mp = offs_p < P
    mn = offs_n < N
    offs_t = c * Q + tb * BT + tl.arange(0, BT)
    mt = offs_t < L
    ot = offs_t.to(tl.int64)
    s_base = s_ptr + bh * (NC * Q)
    x_base = x_ptr + b.to(tl.int64) * s_x_b + h * s_x_h
    dy_base = dy_ptr + b.to(tl.int64) * s_x_b + h * s_x_h
    dt_base = dt_ptr + b.to(tl.int64) * s_dt_b + h * s_dt_h
    bc_off = b.to(tl.int64) * s_B_b + g * s_B_g

    s_t = tl.load(s_base + offs_t)
    c_t = tl.load(C_ptr + bc_off + ot[:, None] * s_B_l + offs_n[None, :] * s_B_n,
                  mask=mt[:, None] & mn[None, :], other=0.0)
    dy_t = tl.load(dy_base + ot[:, None] * s_x_l + offs_p[None, :] * s_x_p,
                   mask=mt[:, None] & mp[None, :], other=0.0)
    s_in = tl.load(states_ptr + (bh * NC + c) * (P * N) + offs_p[:, None] * N + offs_n[None, :],
                   mask=mp[:, None] & mn[None, :], other=0.0)
    e_t = tl.exp(s_t)
    dy_sin = _mm(dy_t, s_in, DOT, PREC)  # (BT, BN)
    ds = e_t * tl.sum(c_t.to(tl.float32) * dy_sin, axis=1)
    dc = dy_sin * e_t[:, None]
    for u0 in range(0, (tb + 1) * BT, BT):
        offs_u = c * Q + u0 + tl.arange(0, BT)
        mu = offs_u < L
        ou = offs_u.to(tl.int64)
        b_u = tl.load(B_ptr + bc_off + ou[:, None] * s_B_l + offs_n[None, :] * s_B_n,
                      mask=mu[:, None] & mn[None, :], other=0.0)
        x_u = tl.load(x_base + ou[:, None] * s_x_l + offs_p[None, :] * s_x_p,
                      mask=mu[:, None] & mp[None, :], other=0.0).to(tl.float32)
        dt_u = tl.load(dt_base + ou * s_dt_l, mask=mu, other=0.0)
        s_u = tl.load(s_base + offs_u)
        xd_u = x_u * dt_u[:, None]
        causal = offs_t[:, None] >= offs_u[None, :]
        decay = tl.exp(tl.where(causal, s_t[:, None] - s_u[None, :], float("-inf")))
        gm = _mm(dy_t, tl.trans(xd_u), DOT, PREC) * decay  # (BT, BU)
        dc += _mm(gm, b_u, DOT, PREC)
        cb = _mm(c_t, tl.trans(b_u), DOT, PREC)
        ds += tl.sum(gm * cb, axis=1)
    tl.store(dC_ptr + b.to(tl.int64) * s_dC_b + h * s_dC_h + ot[:, None] * s_dC_l
             + offs_n[None, :] * s_dC_n, dc, mask=mt[:, None] & mn[None, :])
    tl.store(ds_ptr + bh * (NC * Q) + offs_t, ds)


@triton.jit
def chunk_scan_bwd_dx_kernel(x_ptr, dt_ptr, s_ptr, B_ptr, C_ptr, D_ptr, dout_ptr, dy_ptr,
                             dx_ptr, ddt_ptr, dB_ptr, ds_ptr, w_ptr, dD_ptr,
                             L, H, NC, HPG, P, N,
                             s_x_b, s_x_l, s_x_h, s_x_p,
                             s_dt_b, s_dt_l, s_dt_h,
                             s_B_b, s_B_l, s_B_g, s_B_n,
                             s_dB_b, s_dB_l, s_dB_h, s_dB_n,
                             Q: tl.constexpr, BT: tl.constexpr, BP: tl.constexpr,
                             BN: tl.constexpr, HAS_D: tl.constexpr,
                             DOT: tl.constexpr, PREC: tl.constexpr):
    """Column-side gradients for BT input positions u: dx_u, the direct part of ddt_u, dB_u (per
    head, float32), the column part of d(s_u) (-sum_{t>=u} M_tu - w_u), w_u (the end-state
    term, added back at the chunk's last position) and per-block partial dD.
    dy and dx share x's strides."""
    pid_bh = tl.program_id(0)
    c = tl.program_id(1)
    ub = tl.program_id(2)
    b = pid_bh // H
    h = pid_bh % H
    g = h // HPG
    bh = pid_bh.to(tl.int64)
    offs_p = tl.arange(0, BP)
    offs_n = tl.arange(0, BN)
    mp = offs_p < P
    mn = offs_n < N
    offs_u = c * Q + ub * BT + tl.arange(0, BT)
    mu = offs_u < L
    ou = offs_u.to(tl.int64)
    s_base = s_ptr + bh * (NC * Q)
    x_base = x_ptr + b.to(tl.int64) * s_x_b + h * s_x_h
    dy_base = dy_ptr + b.to(tl.int64) * s_x_b + h * s_x_h
    dt_base = dt_ptr + b.to(tl.int64) * s_dt_b + h * s_dt_h
    bc_off = b.to(tl.int64) * s_B_b + g * s_B_g
    mup = mu[:, None] & mp[None, :]

    s_u = tl.load(s_base + offs_u)
    s_last = tl.load(s_base + c * Q + Q - 1)
    b_u = tl.load(B_ptr + bc_off + ou[:, None] * s_B_l + offs_n[None, :] * s_B_n,
                  mask=mu[:, None] & mn[None, :], other=0.0)
    x_u = tl.load(x_base + ou[:, None] * s_x_l + offs_p[None, :] * s_x_p,
                  mask=mup, other=0.0).to(tl.float32)
    dt_u = tl.load(dt_base + ou * s_dt_l, mask=mu, other=0.0)
    xd_u = x_u * dt_u[:, None]
    d_out = tl.load(dout_ptr + (bh * NC + c) * (P * N) + offs_p[:, None] * N + offs_n[None, :],
                    mask=mp[:, None] & mn[None, :], other=0.0)
    el = tl.exp(s_last - s_u)
    dxd = _mm(b_u, tl.trans(d_out), DOT, PREC) * el[:, None]  # (BU, BP)
    db = _mm(xd_u, d_out, DOT, PREC) * el[:, None]  # (BU, BN)
    w = tl.sum(db * b_u.to(tl.float32), axis=1)
    ds = -w
    for t0 in range(ub * BT, Q, BT):
        offs_t = c * Q + t0 + tl.arange(0, BT)
        mt = offs_t < L
        ot = offs_t.to(tl.int64)
        c_t = tl.load(C_ptr + bc_off + ot[:, None] * s_B_l + offs_n[None, :] * s_B_n,
                      mask=mt[:, None] & mn[None, :], other=0.0)
        dy_t = tl.load(dy_base + ot[:, None] * s_x_l + offs_p[None, :] * s_x_p,
                       mask=mt[:, None] & mp[None, :], other=0.0)
        s_t = tl.load(s_base + offs_t)
        causal = offs_t[None, :] >= offs_u[:, None]
        decay = tl.exp(tl.where(causal, s_t[None, :] - s_u[:, None], float("-inf")))  # (BU, BT)
        cb = _mm(b_u, tl.trans(c_t), DOT, PREC)  # (C_t·B_u)
        dxd += _mm(cb * decay, dy_t, DOT, PREC)
        gmt = _mm(xd_u, tl.trans(dy_t), DOT, PREC) * decay
        db += _mm(gmt, c_t, DOT, PREC)
        ds -= tl.sum(gmt * cb, axis=1)
    dy_u = tl.load(dy_base + ou[:, None] * s_x_l + offs_p[None, :] * s_x_p,
                   mask=mup, other=0.0).to(tl.float32)
    dx = dxd * dt_u[:, None]
    if HAS_D:
        d = tl.load(D_ptr + h * P + offs_p, mask=mp, other=0.0)
        dx += dy_u * d[None, :]
        tl.store(dD_ptr + ((bh * NC + c) * tl.num_programs(2) + ub) * P + offs_p,
                 tl.sum(dy_u * x_u, axis=0), mask=mp)
    tl.store(dx_ptr + b.to(tl.int64) * s_x_b + h * s_x_h + ou[:, None] * s_x_l
             + offs_p[None, :] * s_x_p, dx, mask=mup)
    tl.store(ddt_ptr + bh * (NC * Q) + offs_u, tl.sum(dxd * x_u, axis=1))
    tl.store(dB_ptr + b.to(tl.int64) * s_dB_b + h * s_dB_h + ou[:, None] * s_dB_l
             + offs_n[None, :] * s_dB_n, db, mask=mu[:, None] & mn[None, :])
    tl.store(ds_ptr + bh * (NC * Q) + offs_u, ds)
    tl.store(w_ptr + bh * (NC * Q) + offs_u, w)


@triton.jit
def ddt_kernel(dt_ptr, A_ptr, ds_row_ptr, ds_col_ptr, w_ptr, z_ptr, ddt_direct_ptr,
               ddt_ptr, dA_ptr,
               L, H, NC, NBLK,
               s_dt_b, s_dt_l, s_dt_h,
               Q: tl.constexpr, BZ: tl.constexpr):
    """Cumsum chain rule: da = reverse cumsum of d(s) (with the end-state terms at the chunk's
    last position); ddt = direct part + da·A; dA partial = sum(da·dt) per chunk."""
    pid_bh = tl.program_id(0)
    c = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    bh = pid_bh.to(tl.int64)
    idx = tl.arange(0, Q)
    offs = c * Q + idx
    m = offs < L
    base = bh * (NC * Q)
    ds = tl.load(ds_row_ptr + base + offs) + tl.load(ds_col_ptr + base + offs)
    zi = tl.arange(0, BZ)
    z = tl.sum(tl.load(z_ptr + (bh * NC + c) * NBLK + zi, mask=zi < NBLK, other=0.0), axis=0)
    extra = tl.sum(tl.load(w_ptr + base + offs), axis=0) + z
    ds += tl.where(idx == Q - 1, extra, 0.0)
    da = tl.cumsum(ds, axis=0, reverse=True)
    dt_ptrs = dt_ptr + b.to(tl.int64) * s_dt_b + offs.to(tl.int64) * s_dt_l + h * s_dt_h
    dt = tl.load(dt_ptrs, mask=m, other=0.0)
    a_coef = tl.load(A_ptr + h)
    ddt = tl.load(ddt_direct_ptr + base + offs) + da * a_coef
    tl.store(ddt_ptr + b.to(tl.int64) * s_dt_b + offs.to(tl.int64) * s_dt_l + h * s_dt_h,
             ddt, mask=m)
    tl.store(dA_ptr + bh * NC + c, tl.sum(da * dt, axis=0))
