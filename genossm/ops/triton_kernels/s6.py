"""Mamba-1 (S6) selective-scan kernels behind :mod:`genossm.ops.scan_s6_triton`, forward and
backward.

The recurrence, per batch row, channel ("row" r = head·P + p, head h = r // P, group
g = h // (H/G)) and state n, with ``a_t = exp(dt_t[h] A[h, n])``:

    h_t[r, n] = a_t[r, n] h_{t-1}[r, n] + dt_t[h] x_t[r] B_t[g, n]
    y_t[r]    = sum_n C_t[g, n] h_t[r, n] + D[r] x_t[r]

Why a sequential loop: A has a value per (channel, state), so the decay between two positions
is a different number for every (r, n); the matrix (SSD) form of the Mamba-2 kernels would
need a (Q x Q) decay matrix per (r, n). Instead every program (one warp) owns one batch row, a
block of ``BD`` channel rows of one group (so all its rows share B_t and C_t) and all ``BN``
states, keeps the state in float32 registers and walks its time range one step after another,
as mamba_ssm's CUDA kernel does per channel. (tl.associative_scan over a tile of steps would be
the parallel alternative; the interpreter runs it element by element, far too slowly to test.)

State tiles are (BN, BD), states x rows, and every state-shaped buffer (A, initial and final
state, checkpoints, scratch, dA) is state-major, (N, H·P) per batch row: memory contiguous
along the channels is what makes the compiler spread the channels over the lanes and keep a
row's states in few threads (for BN = BD = 16 on sm_90 with the usual divisibility: four rows x
two states per thread), so the sum over states for y needs few shuffles and B_t, C_t load as
small broadcast vectors without layout conversions.

Time goes in groups of four steps, unrolled. Forward, the row vectors of the next group (x, dt)
are loaded before the four dependent updates of the current one (a software prefetch: the
compiler does not pipeline loads that do not feed a dot); B_t and C_t, shared by all programs
and mostly cache hits, are loaded in the group's body (prefetching them too costs a register
per state per step). The backward loads everything in the group's body: its live state is large
(sm_90: 255 registers without spills; the cross-group prefetch spilled). exp is exp2 of A·log2e.

Parallelism along the length: a batch row with few channels gives few programs (512 channels
in blocks of 16 are 32 programs), too few for a GPU, so the launcher may cut the length into
``NSEG`` segments of ``SEG`` steps (a multiple of the checkpoint interval ``K``):

- forward: ``s6_local_kernel`` (FORWARD) gives each segment's end state from a zero start and
  the sum of its dt (the segment's decay is exp(A·Σdt)); ``s6_carry_kernel`` carries the states
  across segments (sequential over segments, parallel over (r, n)); ``s6_fwd_kernel`` reruns
  every segment from its true start state, writing y, the final state and a checkpoint of the
  state every ``K`` steps.
- backward: ``s6_local_kernel`` (backward) gives the gradient of each segment's start state
  from that segment's own outputs (``u``, see below); ``s6_carry_kernel`` (REVERSE) carries it
  right to left; ``s6_bwd_kernel`` runs every segment backward from its true incoming gradient.

With one segment the local and carry kernels are skipped.

Backward (``s6_bwd_kernel``). ``u`` is the gradient of the loss with respect to the state
*before* the current step, carried in registers in reverse time:

    g_t = dy_t[r] C_t[n] + u            (gradient of h_t)
    dC_t += sum_r dy_t[r] h_t            dB_t += sum_r g_t dt_t x_t[r]
    dx_t  = dt_t sum_n g_t B_t + D dy_t    ddt_t = x_t sum_n g_t B_t + sum_n A w_t
    w_t   = a_t g_t h_{t-1}              dA += dt_t w_t              u <- a_t g_t

It needs h_{t-1} and h_t in reverse order. Running the recurrence backwards (dividing by a_t) is
unstable, so the states are recomputed forward: per chunk of ``K`` steps (reverse chunk order)
from the forward's checkpoint, writing the state at the start of every group of four steps
into a per-program scratch buffer (K/4 states of (BN, BD)); then the groups are walked in
reverse, each recomputing its four states from its scratch entry. dB and dC are sums over all
rows of a group: every program adds its block's sum per step with float32 atomics. dA and dD
are accumulated in registers over the program's time range and stored per (batch, segment);
ddt is stored per row (the launcher sums the headdim rows of a head).

Positions past the end (and past a segment's end) load dt = x = dy = B = C = 0, so a = 1 and
every step there is the identity.

Layouts (all contiguous): x, y, dy, dx (b, L, H·P); dt (b, L, H) float32; B, C (b, L, G, N);
A (N, H·P) float32 (A[h, n] repeated over the headdim rows of head h); D (H·P) float32; states
(..., N, H·P) float32. All arithmetic is float32.
"""

from __future__ import annotations

import triton
import triton.language as tl

# --------------------------------------------------------------------------------------------
# Helpers. ``geo`` = (H·P, H, G·N, N, group, row index inside the group, global row, head, R,
# state index) describes a program's rows and states; ``ptrs`` = (v, dt, k, k2, w) are the
# base pointers of what one step reads, at position 0 of the program's batch row (:func:`_bases`;
# scalar pointers plus int32 offsets keep 64-bit address tensors out of the registers). The step
# h <- exp(dt A) h + (dt x) ⊗ B is written out inline and the loads of four steps come from one
# call: under the interpreter a call of a jit function costs more than the arithmetic.

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _geometry(pid_blk, H, P, G, N, R, NBG, BD: tl.constexpr, BN: tl.constexpr):
    """The ``geo`` tuple of this program's BD rows (all in one group) and BN states."""
    grp = pid_blk // NBG
    r_loc = (pid_blk % NBG) * BD + tl.arange(0, BD)
    rows = grp * R + r_loc
    return H * P, H, G * N, N, grp, r_loc, rows, rows // P, R, tl.arange(0, BN)


@triton.jit
def _bases(v_ptr, dt_ptr, k_ptr, k2_ptr, w_ptr, b, L, geo):
    """``ptrs``: v and w (b, L, H·P), dt (b, L, H), k and k2 (b, L, G, N) at position 0 of batch
    row b (scalar pointers: add the step's offset and the rows, heads or group states)."""
    HP, H, GN = geo[0], geo[1], geo[2]
    bl = b.to(tl.int64) * L
    return (v_ptr + bl * HP, dt_ptr + bl * H, k_ptr + bl * GN, k2_ptr + bl * GN,
            w_ptr + bl * HP)


@triton.jit
def _rows4(ptrs, t, hi, geo, NV: tl.constexpr):
    """The row vectors of the four steps t .. t+3: a tuple of (v_t, dt_t) (NV = 2) or (v_t,
    dt_t, w_t) (NV = 3), float32 (BD,), zeros once t >= hi. (A step's condition limits the row
    index: a scalar condition does not broadcast into a mask under the interpreter.)"""
    HP, H, r_loc, rows, head, R = geo[0], geo[1], geo[5], geo[6], geo[7], geo[8]
    t64 = t.to(tl.int64)
    out = ()
    for j in tl.static_range(4):
        tj = t64 + j
        m = r_loc < tl.where(tj < hi, R, 0)
        v = tl.load(ptrs[0] + tj * HP + rows, mask=m, other=0.0).to(tl.float32)
        dt = tl.load(ptrs[1] + tj * H + head, mask=m, other=0.0)
        if NV == 2:
            out = out + ((v, dt),)
        else:
            w = tl.load(ptrs[4] + tj * HP + rows, mask=m, other=0.0).to(tl.float32)
            out = out + ((v, dt, w),)
    return out


@triton.jit
def _states4(ptrs, t, hi, geo, NK: tl.constexpr):
    """The state vectors of the four steps t .. t+3: a tuple of (k_t,) (NK = 1) or (k_t, k2_t)
    (NK = 2), float32 (BN,), zeros once t >= hi."""
    GN, N, grp, offs_n = geo[2], geo[3], geo[4], geo[9]
    col = grp * N + offs_n
    t64 = t.to(tl.int64)
    out = ()
    for j in tl.static_range(4):
        tj = t64 + j
        m = offs_n < tl.where(tj < hi, N, 0)
        k = tl.load(ptrs[2] + tj * GN + col, mask=m, other=0.0).to(tl.float32)
        if NK == 1:
            out = out + ((k,),)
        else:
            k2 = tl.load(ptrs[3] + tj * GN + col, mask=m, other=0.0).to(tl.float32)
            out = out + ((k, k2),)
    return out


@triton.jit
def _decay(A_ptr, geo):
    """A·log2(e) of this program's rows as a (BN, BD) tile (zeros on padding), its mask, and the
    (BN, BD) offsets of the rows' states in a state-major (N, H·P) tensor. A arrives as such
    a (N, H·P) tensor: memory access contiguous along the channels is what makes the compiler
    spread the rows over the lanes (see the module docstring)."""
    HP, N, r_loc, rows, R, offs_n = geo[0], geo[3], geo[5], geo[6], geo[8], geo[9]
    m2 = (offs_n < N)[:, None] & (r_loc < R)[None, :]
    st = offs_n[:, None] * HP + rows[None, :]
    return tl.load(A_ptr + st, mask=m2, other=0.0) * LOG2E, m2, st


# --------------------------------------------------------------------------------------------
# Kernels. State tiles are (BN, BD): states x channel rows.


@triton.jit
def s6_local_kernel(v_ptr, dt_ptr, A_ptr, k_ptr, local_ptr, dtsum_ptr,
                    L, H, P, G, N, R, NBG, SEG, NSEG,
                    BD: tl.constexpr, BN: tl.constexpr, FORWARD: tl.constexpr):
    """One segment on its own (grid: (G·NBG, NSEG - 1, batch)).

    FORWARD (segments 0 .. NSEG-2; v = x, k = B): the segment's end state from a zero start.
    Otherwise (segments 1 .. NSEG-1; v = dy, k = C): u, the gradient of the state entering the
    segment from the segment's own outputs, walking backwards: u <- exp(dt A) (u + dy ⊗ C).
    Both store Σdt per row (the segment's decay is exp(A Σdt)); local (b, NSEG, N, H·P)."""
    geo = _geometry(tl.program_id(0), H, P, G, N, R, NBG, BD, BN)
    HP, r_loc, rows = geo[0], geo[5], geo[6]
    s = tl.program_id(1) + (0 if FORWARD else 1)
    b = tl.program_id(2)
    A2, m2, st = _decay(A_ptr, geo)
    ptrs = _bases(v_ptr, dt_ptr, k_ptr, k_ptr, v_ptr, b, L, geo)
    lo = s * SEG
    hi = tl.minimum(lo + SEG, L)
    ng = tl.cdiv(hi - lo, 4)
    h = tl.zeros((BN, BD), dtype=tl.float32)
    sdt = tl.zeros((BD,), dtype=tl.float32)
    if FORWARD:
        nxt = _rows4(ptrs, lo, hi, geo, 2)
        for i in range(ng):
            t = lo + 4 * i
            cur = nxt
            nxt = _rows4(ptrs, t + 4, hi, geo, 2)
            ks = _states4(ptrs, t, hi, geo, 1)
            for j in tl.static_range(4):
                v, dt = cur[j]
                h = tl.exp2(dt[None, :] * A2) * h + (dt * v)[None, :] * ks[j][0][:, None]
                sdt += dt
    else:
        last = lo + 4 * (ng - 1)
        nxt = _rows4(ptrs, last, hi, geo, 2)
        for i in range(ng):
            t = last - 4 * i
            cur = nxt
            nxt = _rows4(ptrs, tl.maximum(t - 4, lo), hi, geo, 2)
            ks = _states4(ptrs, t, hi, geo, 1)
            for jj in tl.static_range(4):
                v, dt = cur[3 - jj]
                h = tl.exp2(dt[None, :] * A2) * (h + v[None, :] * ks[3 - jj][0][:, None])
                sdt += dt
    tl.store(dtsum_ptr + (b * NSEG + s).to(tl.int64) * HP + rows, sdt, mask=r_loc < R)
    tl.store(local_ptr + (b * NSEG + s).to(tl.int64) * HP * N + st, h, mask=m2)


@triton.jit
def s6_carry_kernel(local_ptr, dtsum_ptr, A_ptr, h0_ptr, out_ptr,
                    H, P, N, NSEG,
                    BLOCK: tl.constexpr, HAS_H0: tl.constexpr, REVERSE: tl.constexpr):
    """Sequential over segments, for BLOCK (state, row) pairs of one batch row (grid:
    (cdiv(N·H·P, BLOCK), batch)): out[s] = the state entering segment s (forward, from h0 = the
    initial state) or the gradient of the state leaving segment s (REVERSE, from h0 = the
    gradient of the final state); across segment s, v <- exp(A Σdt) v + local[s]. States are
    (N, H·P) per (batch, segment), A (N, H·P)."""
    b = tl.program_id(1)
    HP = H * P
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < HP * N
    row = offs % HP
    A2 = tl.load(A_ptr + offs, mask=m, other=0.0) * LOG2E
    base = b.to(tl.int64) * NSEG
    if HAS_H0:
        v = tl.load(h0_ptr + b.to(tl.int64) * HP * N + offs, mask=m, other=0.0)
    else:
        v = tl.zeros((BLOCK,), dtype=tl.float32)
    for i in range(NSEG - 1):
        s = NSEG - 1 - i if REVERSE else i
        tl.store(out_ptr + (base + s) * HP * N + offs, v, mask=m)
        sdt = tl.load(dtsum_ptr + (base + s) * HP + row, mask=m, other=0.0)
        v = tl.exp2(A2 * sdt) * v + tl.load(local_ptr + (base + s) * HP * N + offs, mask=m,
                                            other=0.0)
    s_end = 0 if REVERSE else NSEG - 1
    tl.store(out_ptr + (base + s_end) * HP * N + offs, v, mask=m)


@triton.jit
def s6_fwd_kernel(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, h0_ptr, y_ptr, ckpt_ptr,
                  final_ptr,
                  L, H, P, G, N, R, NBG, SEG, NSEG, K,
                  BD: tl.constexpr, BN: tl.constexpr, HAS_D: tl.constexpr,
                  HAS_H0: tl.constexpr, SAVE: tl.constexpr):
    """y for one segment from its start state h0[b, s] (zeros without HAS_H0) (grid: (G·NBG,
    NSEG, batch)); SAVE: the state at every multiple of K into ckpt (b, cdiv(L, K), N, H·P).
    The last segment writes the final state (b, N, H·P)."""
    geo = _geometry(tl.program_id(0), H, P, G, N, R, NBG, BD, BN)
    HP, r_loc, rows = geo[0], geo[5], geo[6]
    s = tl.program_id(1)
    b = tl.program_id(2)
    A2, m2, st = _decay(A_ptr, geo)
    if HAS_D:
        d = tl.load(D_ptr + rows, mask=r_loc < R, other=0.0)
    ptrs = _bases(x_ptr, dt_ptr, B_ptr, C_ptr, x_ptr, b, L, geo)
    y_b = y_ptr + b.to(tl.int64) * L * HP
    ckpt = ckpt_ptr + b.to(tl.int64) * tl.cdiv(L, K) * HP * N
    lo = s * SEG
    hi = tl.minimum(lo + SEG, L)
    if HAS_H0:
        h = tl.load(h0_ptr + (b * NSEG + s).to(tl.int64) * HP * N + st, mask=m2, other=0.0)
    else:
        h = tl.zeros((BN, BD), dtype=tl.float32)
    nxt = _rows4(ptrs, lo, hi, geo, 2)
    for i in range(tl.cdiv(hi - lo, 4)):
        t = lo + 4 * i
        cur = nxt
        nxt = _rows4(ptrs, t + 4, hi, geo, 2)
        bc = _states4(ptrs, t, hi, geo, 2)
        if SAVE:
            if t % K == 0:
                tl.store(ckpt + (t // K).to(tl.int64) * HP * N + st, h, mask=m2)
        for j in tl.static_range(4):
            x, dt = cur[j]
            bv, cv = bc[j]
            h = tl.exp2(dt[None, :] * A2) * h + (dt * x)[None, :] * bv[:, None]
            y = tl.sum(h * cv[:, None], axis=0)
            if HAS_D:
                y += d * x
            tj = t.to(tl.int64) + j
            tl.store(y_b + tj * HP + rows, y, mask=r_loc < tl.where(tj < hi, R, 0))
    if s == NSEG - 1:
        tl.store(final_ptr + b.to(tl.int64) * HP * N + st, h, mask=m2)


@triton.jit
def s6_bwd_kernel(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, dy_ptr, ckpt_ptr, u0_ptr,
                  scratch_ptr,
                  dx_ptr, ddt_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dinit_ptr,
                  L, H, P, G, N, R, NBG, SEG, NSEG, K,
                  BD: tl.constexpr, BN: tl.constexpr, HAS_D: tl.constexpr,
                  HAS_U0: tl.constexpr):
    """Every gradient for one segment, in reverse time (grid: (G·NBG, NSEG, batch)).

    u0[b, s]: the gradient of the state leaving the segment (zeros without HAS_U0). Writes dx
    (in x's dtype) and ddt per row (b, L, H·P), adds into dB and dC (b, L, G, N) float32 with
    atomics, stores the partial sums dA (b, NSEG, N, H·P) and dD (b, NSEG, H·P), and (first
    segment) the gradient of the initial state (b, N, H·P). scratch: (programs, K/4, BN, BD)
    float32. States are (N, H·P) per batch row and checkpoint."""
    geo = _geometry(tl.program_id(0), H, P, G, N, R, NBG, BD, BN)
    HP, GN, grp, r_loc, rows, offs_n = geo[0], geo[2], geo[4], geo[5], geo[6], geo[9]
    s = tl.program_id(1)
    b = tl.program_id(2)
    A2, m2, st = _decay(A_ptr, geo)
    if HAS_D:
        d = tl.load(D_ptr + rows, mask=r_loc < R, other=0.0)
    ptrs = _bases(x_ptr, dt_ptr, B_ptr, C_ptr, dy_ptr, b, L, geo)
    # Outputs at position 0 of batch row b: dx and ddt (slots 0 and 4) like x, dB and dC
    # (slots 2 and 3) like B; slot 1 is unused.
    outs = _bases(dx_ptr, dx_ptr, dB_ptr, dC_ptr, ddt_ptr, b, L, geo)
    ckpt = ckpt_ptr + b.to(tl.int64) * tl.cdiv(L, K) * HP * N
    col = grp * N + offs_n
    lo = s * SEG
    hi = tl.minimum(lo + SEG, L)
    if HAS_U0:
        u = tl.load(u0_ptr + (b * NSEG + s).to(tl.int64) * HP * N + st, mask=m2, other=0.0)
    else:
        u = tl.zeros((BN, BD), dtype=tl.float32)
    pid_lin = (b * NSEG + s) * tl.num_programs(0) + tl.program_id(0)
    scratch = scratch_ptr + pid_lin.to(tl.int64) * (K // 4) * (BN * BD)
    sc = offs_n[:, None] * BD + tl.arange(0, BD)[None, :]
    dA = tl.zeros((BN, BD), dtype=tl.float32)
    dD = tl.zeros((BD,), dtype=tl.float32)
    n_ck = tl.cdiv(hi - lo, K)
    for ci in range(n_ck):
        c_lo = lo + (n_ck - 1 - ci) * K
        c_hi = tl.minimum(c_lo + K, hi)
        ng = tl.cdiv(c_hi - c_lo, 4)
        # Forward again from the chunk's checkpoint: the state entering each group of 4 steps.
        h = tl.load(ckpt + (c_lo // K).to(tl.int64) * HP * N + st, mask=m2, other=0.0)
        nxt = _rows4(ptrs, c_lo, c_hi, geo, 2)
        for i in range(ng):
            t = c_lo + 4 * i
            cur = nxt
            nxt = _rows4(ptrs, t + 4, c_hi, geo, 2)
            ks = _states4(ptrs, t, c_hi, geo, 1)
            tl.store(scratch + i * (BN * BD) + sc, h)
            for j in tl.static_range(4):
                x, dt = cur[j]
                h = tl.exp2(dt[None, :] * A2) * h + (dt * x)[None, :] * ks[j][0][:, None]
        tl.debug_barrier()
        # The groups backwards, each from its scratch state.
        g_last = c_lo + 4 * (ng - 1)
        for i in range(ng):
            t = g_last - 4 * i
            cur = _rows4(ptrs, t, c_hi, geo, 3)
            h_in = tl.load(scratch + (ng - 1 - i) * (BN * BD) + sc)
            bc = _states4(ptrs, t, c_hi, geo, 2)
            # The states before each step of the group (states[j] enters step j).
            states = (h_in,)
            for j in tl.static_range(3):
                x, dt, _dy = cur[j]
                states = states + (tl.exp2(dt[None, :] * A2) * states[j]
                                   + (dt * x)[None, :] * bc[j][0][:, None],)
            for jj in tl.static_range(4):
                x, dt, dy = cur[3 - jj]
                bv, cv = bc[3 - jj]
                h_prev = states[3 - jj]
                a = tl.exp2(dt[None, :] * A2)
                h_cur = a * h_prev + (dt * x)[None, :] * bv[:, None]
                tj = t.to(tl.int64) + (3 - jj)
                live = tj < c_hi
                g = dy[None, :] * cv[:, None] + u  # gradient of the state after step tj
                gb = tl.sum(g * bv[:, None], axis=0)
                w = a * g * h_prev
                dx = dt * gb
                if HAS_D:
                    dx += d * dy
                    dD += dy * x
                mrow = r_loc < tl.where(live, R, 0)
                tl.store(outs[0] + tj * HP + rows, dx, mask=mrow)
                tl.store(outs[4] + tj * HP + rows, x * gb + tl.sum(A2 * w, axis=0) * LN2,
                         mask=mrow)
                dA += dt[None, :] * w
                mst = offs_n < tl.where(live, N, 0)
                tl.atomic_add(outs[2] + tj * GN + col, tl.sum(g * (dt * x)[None, :], axis=1),
                              mask=mst, sem="relaxed")
                tl.atomic_add(outs[3] + tj * GN + col, tl.sum(dy[None, :] * h_cur, axis=1),
                              mask=mst, sem="relaxed")
                u = a * g  # gradient of the state before step tj
        tl.debug_barrier()  # the next chunk overwrites the scratch states
    tl.store(dA_ptr + (b * NSEG + s).to(tl.int64) * HP * N + st, dA, mask=m2)
    if HAS_D:
        tl.store(dD_ptr + (b * NSEG + s).to(tl.int64) * HP + rows, dD, mask=r_loc < R)
    if s == 0:
        tl.store(dinit_ptr + b.to(tl.int64) * HP * N + st, u, mask=m2)
