"""Mamba-2-style selective SSM mixer, RMSNorm and the pre-norm residual block.

Mixer data flow for an input u (b, l, d_model):

    in_proj(u) -> z (d_inner), xBC (d_inner + 2·g·n), dt (heads)
    xBC -> causal depthwise conv (width d_conv) -> SiLU -> x (h, p), B (g, n), C (g, n)
    y = selective_scan(x, dt, A=-exp(A_log), B, C, D, dt_bias, softplus)
    out_proj(RMSNorm(y · SiLU(z)))

The conv and the scan are causal, so the mixer can run over a sequence in pieces carrying
``(conv_state, ssm_state)``: conv_state holds the last d_conv-1 xBC inputs (b, d_conv-1,
conv_dim), ssm_state the scan state (b, h, p, n), both float32.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from genossm.model.config import ModelConfig
from genossm.ops import selective_scan


class RMSNorm(nn.Module):
    """y = x / rms(x) · weight, computed in float32; optionally gated: norm(x · silu(z))."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x, z=None):
        dtype = x.dtype
        x = x.float()
        if z is not None:
            x = x * F.silu(z.float())
        return F.rms_norm(x, x.shape[-1:], self.weight.float(), self.eps).to(dtype)


class Mamba2Mixer(nn.Module):
    """The sequence mixer of one block (unidirectional, causal)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d_in_proj = 2 * cfg.d_inner + 2 * cfg.n_groups * cfg.d_state + cfg.n_heads
        self.in_proj = nn.Linear(cfg.d_model, d_in_proj, bias=False)
        # depthwise: one width-d_conv filter per channel (holds the parameters; applied by hand)
        self.conv1d = nn.Conv1d(cfg.conv_dim, cfg.conv_dim, cfg.d_conv, groups=cfg.conv_dim,
                                bias=cfg.conv_bias)
        self.dt_bias = nn.Parameter(torch.empty(cfg.n_heads))
        self.A_log = nn.Parameter(torch.empty(cfg.n_heads))
        self.D = nn.Parameter(torch.ones(cfg.n_heads))
        self.norm = RMSNorm(cfg.d_inner, eps=cfg.norm_eps)
        self.out_proj = nn.Linear(cfg.d_inner, cfg.d_model, bias=False)
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self):
        """Mamba-2 initialisation: softplus(dt_bias) log-uniform in [dt_min, dt_max],
        -A uniform in [A_init_min, A_init_max], D = 1."""
        cfg = self.cfg
        u = torch.rand(cfg.n_heads)
        dt = torch.exp(u * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min))
        dt = dt.clamp(min=cfg.dt_init_floor)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        A = torch.empty(cfg.n_heads).uniform_(cfg.A_init_min, cfg.A_init_max)
        self.A_log.copy_(torch.log(A))
        self.D.fill_(1.0)

    def forward(self, u, conv_state=None, ssm_state=None, *, return_state=False,
                backend=None):
        """u: (b, l, d_model) -> (b, l, d_model); with ``return_state`` also returns the new
        (conv_state, ssm_state). Missing states mean "start of sequence" (zeros)."""
        cfg = self.cfg
        b, length, _ = u.shape
        h, p, g, n, k = cfg.n_heads, cfg.headdim, cfg.n_groups, cfg.d_state, cfg.d_conv
        z, xBC, dt = torch.split(self.in_proj(u), [cfg.d_inner, cfg.conv_dim, h], dim=-1)

        # Causal depthwise conv, left-padded with the previous piece's last k-1 inputs. Written
        # as k shifted multiply-adds in (b, l, channels) layout: on CPU 2-3x faster (forward +
        # backward) than conv1d, which needs two transposed copies of the whole sequence.
        if conv_state is None:
            prefix = xBC.new_zeros(b, k - 1, cfg.conv_dim)
        else:
            prefix = conv_state.to(xBC.dtype)
        xpad = torch.cat([prefix, xBC], dim=1)                        # (b, k-1+l, conv_dim)
        new_conv_state = None
        if return_state:  # a copy, so the state does not keep the whole piece alive
            new_conv_state = xpad[:, xpad.shape[1] - (k - 1):].to(torch.float32, copy=True)
        w = self.conv1d.weight[:, 0, :].to(xpad.dtype)                # (conv_dim, k)
        acc = xpad[:, k - 1:] * w[:, k - 1]
        if self.conv1d.bias is not None:
            acc = acc + self.conv1d.bias.to(xpad.dtype)
        for j in range(k - 1):
            acc = torch.addcmul(acc, xpad[:, j:j + length], w[:, j])
        xBC = F.silu(acc)                                             # (b, l, conv_dim)

        x, B, C = torch.split(xBC, [cfg.d_inner, g * n, g * n], dim=-1)
        x = x.reshape(b, length, h, p)
        B = B.reshape(b, length, g, n)
        C = C.reshape(b, length, g, n)
        A = -torch.exp(self.A_log.float())                            # scan decay: float32
        dt_hi = math.inf if cfg.dt_limit_max is None else cfg.dt_limit_max
        # Under autocast, x/B/C may arrive in bf16; the scan itself must not be autocast (its
        # backends compute in float32 and keep the state in float32).
        with torch.autocast(u.device.type, enabled=False):
            out = selective_scan(
                x, dt.float(), A, B, C, self.D.float(), dt_bias=self.dt_bias.float(),
                dt_softplus=True, dt_limit=(cfg.dt_limit_min, dt_hi),
                initial_state=None if ssm_state is None else ssm_state.float(),
                return_final_state=return_state, chunk_size=cfg.chunk_size,
                backend=backend or cfg.scan_backend)
        y, new_ssm_state = out if return_state else (out, None)
        y = y.reshape(b, length, cfg.d_inner)
        y = self.out_proj(self.norm(y, z).to(z.dtype))
        if return_state:
            return y, (new_conv_state, new_ssm_state)
        return y


class Block(nn.Module):
    """Pre-norm residual block: h + mixer(norm(h)).

    Bidirectional (Caduceus BiMamba style): the same mixer also reads the sequence reversed and
    the two outputs are summed, mixer(u) + flip(mixer(flip(u))), in one batched call.

    ``checkpoint_length`` > 0 turns on gradient checkpointing: norm + mixer are recomputed in
    backward, in segments of that many positions carrying the conv/SSM state from segment to
    segment (exact: the mixer is causal), so that at most one segment's intermediates are alive
    at a time (what makes a 1 Mb training step fit in a few GB).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mixer = Mamba2Mixer(cfg)

    def forward(self, h, state=None, *, return_state=False, backend=None, checkpoint_length=0):
        """h (b, l, d_model) -> h + mix; with ``return_state`` also the new (conv, ssm) state.
        ``state`` is a (conv_state, ssm_state) pair or None (start of sequence)."""
        if self.cfg.bidirectional:
            if return_state or state is not None:
                raise ValueError("a bidirectional block cannot be streamed")
            both, _ = self._mix(torch.cat([h, h.flip(1)], dim=0), None, False, backend,
                                checkpoint_length)
            fwd, rev = both.chunk(2, dim=0)
            return h + fwd + rev.flip(1)
        y, new_state = self._mix(h, state, return_state, backend, checkpoint_length)
        return (h + y, new_state) if return_state else h + y

    def _mix_piece(self, h, state, return_state, backend):
        conv_state, ssm_state = (None, None) if state is None else state
        out = self.mixer(self.norm(h), conv_state, ssm_state, return_state=return_state,
                         backend=backend)
        return out if return_state else (out, None)

    def _mix(self, h, state, return_state, backend, checkpoint_length):
        if checkpoint_length <= 0:
            return self._mix_piece(h, state, return_state, backend)
        length = h.shape[1]
        outs = []
        for start in range(0, max(length, 1), checkpoint_length):
            last = start + checkpoint_length >= length
            y, state = checkpoint(self._mix_piece, h[:, start:start + checkpoint_length], state,
                                  return_state or not last, backend, use_reentrant=False)
            outs.append(y)
        return (outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)), state
