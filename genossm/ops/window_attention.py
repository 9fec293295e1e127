"""Sliding-window attention with rotary positions, for the attention blocks of a hybrid stack
(genossm.model.attention): ``window_attention`` (blocks of queries through
``torch.nn.functional.scaled_dot_product_attention``) and ``window_attention_ref`` (an explicit
softmax over the window, in the dtype given: the definition the tests hold the other to in
float64, outputs and gradients).

Query i sits at key index ``offset + i`` (the keys may begin with earlier positions: a stream's
last window - 1 keys). Query i sees key j when

    causal:         offset + i - (window - 1) <= j <= offset + i
    bidirectional:  |j - (offset + i)| <= window - 1

and j is valid (``prefix_valid`` (b, n) marks the first n keys, e.g. a stream's window of keys
that is not yet full at its start; later keys are all valid). Every query's own key must be
valid, so no query sees nothing.

Positions are rotary (RoFormer's RoPE, the rotate-half pairing of channel f with f + d/2,
frequencies base^(-2f/d)): q and k are rotated by their index in this call, so a score depends
on the distance j - (offset + i) only, never on where the call starts in a sequence (what lets
a stream carry un-rotated keys and no position). Angles are computed in float64.

Memory: queries go in blocks of ``block`` (at most 512, at least 64, about the window), each
against its own key range (block + window - 1 keys, or block + 2·(window - 1)); no mask larger
than (block, block + 2·window) is built, so memory is O(L·d + block·window), never O(L²).
Masks of blocks away from the edges are one shared tensor (saved once for backward).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ROPE_BASE = 10000.0


def rotary_angles(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Angles (l, dim/2), float64: positions × base^(-2f/dim)."""
    freqs = ROPE_BASE ** (-torch.arange(0, dim, 2, dtype=torch.float64,
                                        device=positions.device) / dim)
    return positions.to(torch.float64)[:, None] * freqs


def rotary(x: torch.Tensor, start: int = 0) -> torch.Tensor:
    """x (b, h, l, d) with position start + t rotated into row t (rotate-half pairing)."""
    length, dim = x.shape[-2], x.shape[-1]
    angles = rotary_angles(torch.arange(start, start + length, device=x.device), dim)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def _block_size(window: int) -> int:
    return max(64, min(window, 512))


def window_attention(q, k, v, *, window: int, causal: bool = True, offset: int = 0,
                     prefix_valid: torch.Tensor | None = None, block: int | None = None):
    """Attention output (b, h, lq, d) of q (b, h, lq, d) over k, v (b, h, lk, d), all not yet
    rotated (see the module docstring); ``offset + lq <= lk``."""
    batch, _, lq, dim = q.shape
    lk = k.shape[2]
    if offset < 0 or offset + lq > lk:
        raise ValueError(f"queries at {offset}..{offset + lq} are not among {lk} keys")
    n_prefix = 0 if prefix_valid is None else prefix_valid.shape[1]
    q = rotary(q, offset)
    k = rotary(k)
    before, after = window - 1, (0 if causal else window - 1)
    block = block or _block_size(window)
    masks: dict[tuple[int, int, int], torch.Tensor] = {}
    outs = []
    for s in range(0, lq, block):
        e = min(s + block, lq)
        lo = max(0, offset + s - before)
        hi = min(lk, offset + e + after)
        key = (offset + s - lo, e - s, hi - lo)       # the band's place in the block
        if key not in masks:
            rel = (torch.arange(lo, hi, device=q.device)[None, :]
                   - torch.arange(offset + s, offset + e, device=q.device)[:, None])
            masks[key] = (rel >= -before) & (rel <= after)          # (nq, nk)
        mask = masks[key]
        if lo < n_prefix:   # a block that reaches the prefix: its validity, row by row
            valid = torch.ones(batch, hi - lo, dtype=torch.bool, device=q.device)
            valid[:, :n_prefix - lo] = prefix_valid[:, lo:min(hi, n_prefix)].bool()
            mask = mask & valid[:, None, None, :]
        outs.append(F.scaled_dot_product_attention(q[:, :, s:e], k[:, :, lo:hi],
                                                   v[:, :, lo:hi], attn_mask=mask))
    if not outs:
        return q.new_zeros(q.shape)
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)


def window_attention_ref(q, k, v, *, window: int, causal: bool = True, offset: int = 0,
                         prefix_valid: torch.Tensor | None = None):
    """The definition: every score q_i·k_j/sqrt(d) with rotary positions written as complex
    numbers (channel pair (f, f + d/2) is x_f + i·x_{f+d/2}, rotated by e^{i·θ_f·position},
    so the score is Re Σ_f q_f conj(k_f) e^{i·θ_f·(i - j)}), masked outside the window or
    where a key is not valid, and an explicit softmax; in the dtype given."""
    lq, lk, dim = q.shape[2], k.shape[2], q.shape[3]
    half = dim // 2
    zq = torch.complex(q[..., :half], q[..., half:])
    zk = torch.complex(k[..., :half], k[..., half:])
    qpos = torch.arange(offset, offset + lq, device=q.device)
    kpos = torch.arange(lk, device=q.device)
    rel = qpos[:, None] - kpos[None, :]                                  # (lq, lk): i - j
    freqs = ROPE_BASE ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=q.device) / dim)
    phase = torch.polar(torch.ones_like(freqs), rel[..., None].double() * freqs)  # (lq, lk, f)
    phase = phase.to(zq.dtype)
    scores = torch.einsum("bhif,bhjf,ijf->bhij", zq, zk.conj(), phase).real / dim ** 0.5
    allowed = (rel <= window - 1) & (rel >= (0 if causal else -(window - 1)))
    allowed = allowed[None, None].expand(q.shape[0], 1, lq, lk).clone()
    if prefix_valid is not None:
        n = prefix_valid.shape[1]
        allowed[..., :n] &= prefix_valid.bool()[:, None, None, :]
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v
