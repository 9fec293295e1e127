"""Mamba-1 (S6) selective SSM mixer, the module of mamba_ssm's ``Mamba`` (mamba_simple.py).

Data flow for an input u (b, l, d_model), d_inner = expand·d_model, n = d_state:

    in_proj(u) -> x, z (d_inner each)
    x -> causal depthwise conv (width d_conv, with bias) -> SiLU
    x_proj(x) -> dt (dt_rank), B (n), C (n);   dt = dt_proj.weight @ dt
    y = selective_scan(x, dt, A=-exp(A_log) (d_inner, n), B, C, D, dt_bias=dt_proj.bias,
                       softplus)                  (each channel a head of headdim 1)
    out_proj(y · SiLU(z))

Parameter names and shapes are mamba_ssm's (``in_proj.weight, conv1d.weight, conv1d.bias,
x_proj.weight, dt_proj.weight, dt_proj.bias, A_log, D, out_proj.weight``), so its checkpoints
map by name. Streaming state, as for Mamba2Mixer: conv_state (b, d_conv-1, d_inner) the last
d_conv-1 conv inputs, ssm_state (b, d_inner, 1, n), both float32.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from genossm.model.config import ModelConfig
from genossm.model.mamba2 import causal_conv, init_dt_bias
from genossm.ops import selective_scan
from genossm.ops.selective_scan import log_decay


def _at_least_float32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))


class Mamba1Mixer(nn.Module):
    """The Mamba-1 sequence mixer of one block (unidirectional, causal)."""

    splits_across_ranks = True   # runs a shard in two phases (Block._mix_shard)

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d_inner, n, rank = cfg.d_inner, cfg.d_state, cfg.resolved_dt_rank
        self.in_proj = nn.Linear(cfg.d_model, 2 * d_inner, bias=False)
        # depthwise: one width-d_conv filter per channel (holds the parameters; applied by hand)
        self.conv1d = nn.Conv1d(d_inner, d_inner, cfg.d_conv, groups=d_inner,
                                bias=cfg.conv_bias)
        self.x_proj = nn.Linear(d_inner, rank + 2 * n, bias=False)
        self.dt_proj = nn.Linear(rank, d_inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(d_inner, n))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, cfg.d_model, bias=False)
        for p in (self.A_log, self.D):
            p._no_weight_decay = True
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self):
        """mamba_ssm's initialisation: dt_proj.weight constant or uniform ±dt_rank^-0.5·dt_scale
        (dt_init), softplus(dt_proj.bias) log-uniform in [dt_min, dt_max] (floored at
        dt_init_floor), A_log[d] = log(1..d_state) for every channel, D = 1."""
        cfg = self.cfg
        std = cfg.resolved_dt_rank ** -0.5 * cfg.dt_scale
        if cfg.dt_init == "constant":
            self.dt_proj.weight.fill_(std)
        else:
            self.dt_proj.weight.uniform_(-std, std)
        init_dt_bias(self.dt_proj.bias, cfg)
        A = torch.arange(1, cfg.d_state + 1, dtype=torch.float32)
        self.A_log.copy_(torch.log(A).expand(cfg.d_inner, -1))
        self.D.fill_(1.0)

    @staticmethod
    def state_shapes(cfg: ModelConfig) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Per-row shapes of (conv_state, ssm_state): (d_conv-1, d_inner), (d_inner, 1, n)."""
        return (cfg.d_conv - 1, cfg.d_inner), (cfg.d_inner, 1, cfg.d_state)

    def conv_inputs(self, u):
        """What the causal conv reads of u (b, l, d_model): x before the conv."""
        return self.in_proj(u).chunk(2, dim=-1)[0]

    def forward(self, u, conv_state=None, ssm_state=None, *, return_state=False,
                backend=None, summary=False):
        """u: (b, l, d_model) -> (b, l, d_model); with ``return_state`` also returns the new
        (conv_state, ssm_state). Missing states mean "start of sequence" (zeros). With
        ``summary`` (the first phase of a shard, mamba2.Block._mix_shard) it returns the new
        (conv_state, ssm_state, log total decay of u) and no outputs."""
        cfg = self.cfg
        n, rank = cfg.d_state, cfg.resolved_dt_rank
        x, z = self.in_proj(u).chunk(2, dim=-1)
        return_state = return_state or summary
        x, new_conv_state = causal_conv(x, self.conv1d, conv_state, return_state)
        x = F.silu(x)                                                 # (b, l, d_inner)
        dt, B, C = torch.split(self.x_proj(x), [rank, n, n], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)  # dt_proj's bias is added inside the scan
        A = -torch.exp(_at_least_float32(self.A_log))                 # (d_inner, n)
        dt_hi = math.inf if cfg.dt_limit_max is None else cfg.dt_limit_max
        # The scan is not autocast: it computes in (at least) float32, its state is float32.
        step = dict(dt_bias=_at_least_float32(self.dt_proj.bias), dt_softplus=True,
                    dt_limit=(cfg.dt_limit_min, dt_hi))
        with torch.autocast(u.device.type, enabled=False):
            out = selective_scan(
                x[..., None], _at_least_float32(dt), A, B[:, :, None], C[:, :, None],
                _at_least_float32(self.D), **step,
                initial_state=None if ssm_state is None else _at_least_float32(ssm_state),
                return_final_state=return_state, chunk_size=cfg.chunk_size,
                backend=backend or cfg.scan_backend)
            y, new_ssm_state = out if return_state else (out, None)
            if summary:
                return new_conv_state, new_ssm_state, log_decay(_at_least_float32(dt), A, **step)
            y = y[..., 0] * F.silu(z.to(y.dtype))
        y = self.out_proj(y.to(z.dtype))
        if return_state:
            return y, (new_conv_state, new_ssm_state)
        return y
