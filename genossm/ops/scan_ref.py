"""The selective scan as a plain sequential recurrence: the definition every backend is tested
against. Works in any floating dtype, float64 included; low-precision inputs are computed in
float32.
"""

from __future__ import annotations

import torch


def scan_ref(x, dt, A, B, C, D=None, *, initial_state=None, return_final_state=False,
             chunk_size=None):
    """h_t = exp(dt_t A) h_{t-1} + dt_t x_t ⊗ B_t ;  y_t = h_t · C_t + D x_t.

    x: (b, l, h, p), dt: (b, l, h) already bias-added/softplus-ed, A: (h,), or (h, n) for the
    Mamba-1 scan (a decay per head and state),
    B, C: (b, l, g, n), D: (h,) or (h, p), initial_state: (b, h, p, n).
    ``chunk_size`` is accepted for a uniform backend signature and ignored.
    """
    del chunk_size
    batch, length, heads, headdim = x.shape
    groups, dstate = B.shape[2], B.shape[3]
    dtype = torch.promote_types(x.dtype, torch.float32)
    rep = heads // groups
    xf, dtf, Af = x.to(dtype), dt.to(dtype), A.to(dtype)
    Bf = B.to(dtype).repeat_interleave(rep, dim=2)
    Cf = C.to(dtype).repeat_interleave(rep, dim=2)
    if initial_state is None:
        state = x.new_zeros(batch, heads, headdim, dstate, dtype=dtype)
    else:
        state = initial_state.to(dtype)
    ys = []
    per_state = Af.dim() == 2
    for t in range(length):
        if per_state:
            decay = torch.exp(dtf[:, t, :, None] * Af)[:, :, None, :]  # (b, h, 1, n)
        else:
            decay = torch.exp(dtf[:, t] * Af)[..., None, None]        # (b, h, 1, 1)
        inject = (dtf[:, t, :, None] * xf[:, t])[..., None] * Bf[:, t, :, None, :]
        state = state * decay + inject
        ys.append(torch.einsum("bhpn,bhn->bhp", state, Cf[:, t]))
    y = torch.stack(ys, dim=1) if ys else xf.new_zeros(xf.shape)
    if D is not None:
        Df = D.to(dtype)
        y = y + xf * (Df[:, None] if Df.dim() == 1 else Df)
    y = y.to(x.dtype)
    return y, (state if return_final_state else None)
