"""The diagonal linear time-invariant SSM of the S4D mixer (``genossm.model.s4d``) in three forms:
the FFT long convolution (training), the chunked recurrence (streaming, inference) and the
plain loop over time that defines both (``s4d_ref``; the tests hold the other two to it in
float64, outputs and gradients).

Per channel h and complex mode m, the zero-order-hold discretisation of x' = A x + B u,
y = C x + D u with step dt_h (every parameter input-independent):

    dA = exp(dt A),   dB = (exp(dt A) - 1) / A · B
    s_t = dA ⊙ s_{t-1} + dB u_t                  (complex state (b, h, m); s_{-1} = initial_state)
    y_t = 2 Re(Σ_m C_m s_t,m) + D u_t

The conjugate partner of every mode is implicit (the factor 2 Re), so the output is real. From a
zero state the output is a causal convolution, y = K * u + D u with K_l = 2 Re Σ_m C_m dB_m dA_m^l,
which ``s4d_conv`` computes with torch.fft in O(L log L). ``s4d_recurrent`` carries the state
from chunk to chunk of ``chunk_size`` positions: inside a chunk the output is the kernel's first
taps as a (chunk × chunk) Toeplitz product plus the incoming state's free response, so it reads a
sequence in pieces (streaming, checkpoint segments) and returns the state at the end.

Shapes: u (b, l, h) real; dt (h,) positive; A, B, C (h, m) complex, Re A < 0; D (h,) or None;
state (b, h, m) complex. Everything is computed in the dtype of u (complex64 or complex128 for
the modes): callers cast (the mixer computes in at least float32).
"""

from __future__ import annotations

import math

import torch


def discretize(dt, A, B):
    """(dA, dB), the zero-order-hold discretisation at step dt (h,) of A and B (h, m)."""
    dtA = dt[:, None] * A
    dA = torch.exp(dtA)
    return dA, (dA - 1) / A * B


def s4d_kernel(dt, A, B, C, length: int) -> torch.Tensor:
    """The convolution kernel K (h, length), K_l = 2 Re Σ_m C_m dB_m dA_m^l.

    dA^(c·T + t) = dA^(c·T) · dA^t with T ≈ sqrt(length): one (h, m) x (m, T) product per block
    c, so nothing of size h·m·length is built (or kept for backward)."""
    dtA = dt[:, None] * A                                             # (h, m)
    _, dB = discretize(dt, A, B)
    block = max(1, math.isqrt(max(length - 1, 0)) + 1)
    blocks = -(-length // block)
    real = A.real.dtype
    steps = torch.arange(block, dtype=real, device=A.device)
    starts = torch.arange(blocks, dtype=real, device=A.device) * block
    inner = torch.exp(dtA[..., None] * steps)                         # (h, m, T): dA^t
    outer = (C * dB)[..., None] * torch.exp(dtA[..., None] * starts)  # (h, m, c): C dB dA^(cT)
    K = torch.einsum("hmc,hmt->hct", outer, inner).real * 2
    return K.reshape(K.shape[0], blocks * block)[:, :length]


def fft_conv(u: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Causal convolution y_t = Σ_{j<=t} K[:, t-j] u_j of u (b, l, h) with K (h, l), by FFT
    (zero-padded to a power of two >= 2l - 1, so no wrap-around)."""
    length = u.shape[1]
    if length == 0:
        return u.new_zeros(u.shape)
    n = 1 << (2 * length - 1).bit_length()
    uf = torch.fft.rfft(u, n=n, dim=1)                                # (b, n/2+1, h)
    kf = torch.fft.rfft(K.transpose(0, 1), n=n, dim=0)                # (n/2+1, h)
    return torch.fft.irfft(uf * kf, n=n, dim=1)[:, :length]


def s4d_conv(u, dt, A, B, C, D=None):
    """y (b, l, h) from a zero state, through the FFT convolution."""
    y = fft_conv(u, s4d_kernel(dt, A, B, C, u.shape[1]))
    return y if D is None else y + u * D


def s4d_recurrent(u, dt, A, B, C, D=None, *, initial_state=None, return_final_state=False,
                  chunk_size: int = 256):
    """y (b, l, h), or (y, final state (b, h, m)) with ``return_final_state``: the recurrence
    chunk by chunk from ``initial_state`` (zeros when None)."""
    batch, length, heads = u.shape
    complex_dtype = (C * A).dtype
    state = (torch.zeros(batch, heads, A.shape[1], dtype=complex_dtype, device=u.device)
             if initial_state is None else initial_state.to(complex_dtype))
    dtA = dt[:, None] * A
    _, dB = discretize(dt, A, B)
    chunk = max(1, min(chunk_size, length))
    whole = length // chunk * chunk
    ys = []
    for start, stop, size in ((0, whole, chunk), (whole, length, length - whole)):
        if stop > start:
            y, state = _chunks(u[:, start:stop], state, size, dtA, dB, C)
            ys.append(y)
    y = torch.cat(ys, dim=1) if ys else u.new_zeros(u.shape)
    if D is not None:
        y = y + u * D
    return (y, state) if return_final_state else y


def _chunks(u, state, size, dtA, dB, C):
    """u (b, c·size, h) read in c chunks of ``size`` from ``state``: (y, state after)."""
    batch, length, heads = u.shape
    x = u.reshape(batch, length // size, size, heads)                 # (b, c, T, h)
    t = torch.arange(size, dtype=dtA.real.dtype, device=u.device)
    power = torch.exp(dtA[..., None] * t)                              # (h, m, T): dA^t
    taps = (C * dB)[..., None] * power
    K = 2 * taps.sum(1).real                                           # (h, T)
    lag = torch.arange(size, device=u.device)
    lag = lag[:, None] - lag[None, :]                                  # (T, T): i - j
    toeplitz = K[:, lag.clamp(min=0)] * (lag >= 0)                     # (h, T, T)
    y = torch.einsum("hij,bcjh->bcih", toeplitz, x)                    # zero-state response
    # each chunk's end state from a zero start, Σ_j dA^(T-1-j) dB x_j (real input, two products)
    w = dB[..., None] * power.flip(-1)                                 # (h, m, T)
    local = torch.complex(torch.einsum("hmj,bcjh->bchm", w.real, x),
                          torch.einsum("hmj,bcjh->bchm", w.imag, x))
    decay = torch.exp(dtA * size)                                      # dA^T
    entering = []
    for c in range(x.shape[1]):
        entering.append(state)
        state = decay * state + local[:, c]
    states = torch.stack(entering, dim=1)                              # (b, c, h, m)
    free = torch.einsum("hmi,bchm->bcih", C[..., None] * power * torch.exp(dtA)[..., None],
                        states)                                        # C dA^(i+1) s
    y = y + 2 * free.real
    return y.reshape(batch, length, heads), state


def s4d_ref(u, dt, A, B, C, D=None, *, initial_state=None, return_final_state=False):
    """The definition: one recurrent step per position, in the dtype given (float64 in tests)."""
    batch, length, heads = u.shape
    dA, dB = discretize(dt, A, B)
    state = (torch.zeros(batch, heads, A.shape[1], dtype=dA.dtype, device=u.device)
             if initial_state is None else initial_state.to(dA.dtype))
    ys = []
    for t in range(length):
        state = dA * state + dB * u[:, t, :, None]
        ys.append(2 * (C * state).sum(-1).real)
    y = torch.stack(ys, dim=1) if ys else u.new_zeros(u.shape)
    if D is not None:
        y = y + u * D
    return (y, state) if return_final_state else y
