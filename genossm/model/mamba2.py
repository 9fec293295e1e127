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
from genossm.ops.selective_scan import log_decay


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


def causal_conv(x, conv1d: nn.Conv1d, conv_state=None, return_state=False):
    """Causal depthwise conv of x (b, l, channels) with ``conv1d``'s filters (channels, 1, k)
    and bias, left-padded with ``conv_state`` (b, k-1, channels), the previous piece's last
    k-1 inputs (zeros when None). Returns (out (b, l, channels), new conv_state or None); the
    new state is a copy in float32 (float64 for float64 inputs), so it does not keep the whole
    piece alive.

    Written as k shifted multiply-adds in (b, l, channels) layout: on CPU 2-3x faster
    (forward + backward) than conv1d, which needs two transposed copies of the whole sequence.
    """
    b, length, channels = x.shape
    k = conv1d.weight.shape[-1]
    prefix = x.new_zeros(b, k - 1, channels) if conv_state is None else conv_state.to(x.dtype)
    xpad = torch.cat([prefix, x], dim=1)                              # (b, k-1+l, channels)
    new_state = None
    if return_state:
        new_state = xpad[:, xpad.shape[1] - (k - 1):].to(
            torch.promote_types(x.dtype, torch.float32), copy=True)
    w = conv1d.weight[:, 0, :].to(xpad.dtype)                         # (channels, k)
    acc = xpad[:, k - 1:] * w[:, k - 1]
    if conv1d.bias is not None:
        acc = acc + conv1d.bias.to(xpad.dtype)
    for j in range(k - 1):
        acc = torch.addcmul(acc, xpad[:, j:j + length], w[:, j])
    return acc, new_state


@torch.no_grad()
def init_dt_bias(bias: torch.Tensor, cfg: ModelConfig) -> None:
    """softplus(bias) log-uniform in [dt_min, dt_max], floored at dt_init_floor (the Mamba-1
    and Mamba-2 initialisation of the dt bias)."""
    u = torch.rand(bias.shape)
    dt = torch.exp(u * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min))
    dt = dt.clamp(min=cfg.dt_init_floor)
    bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus


class Mamba2Mixer(nn.Module):
    """The sequence mixer of one block (unidirectional, causal)."""

    splits_across_ranks = True   # runs a shard in two phases (Block._mix_shard)

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
        init_dt_bias(self.dt_bias, cfg)
        A = torch.empty(cfg.n_heads).uniform_(cfg.A_init_min, cfg.A_init_max)
        self.A_log.copy_(torch.log(A))
        self.D.fill_(1.0)

    @staticmethod
    def state_shapes(cfg: ModelConfig) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Per-row shapes of (conv_state, ssm_state): (d_conv-1, conv_dim), (h, p, n)."""
        return (cfg.d_conv - 1, cfg.conv_dim), (cfg.n_heads, cfg.headdim, cfg.d_state)

    def conv_inputs(self, u):
        """What the causal conv reads of u (b, l, d_model): x, B and C before the conv."""
        cfg = self.cfg
        return torch.split(self.in_proj(u), [cfg.d_inner, cfg.conv_dim, cfg.n_heads],
                           dim=-1)[1]

    def forward(self, u, conv_state=None, ssm_state=None, *, return_state=False,
                backend=None, summary=False):
        """u: (b, l, d_model) -> (b, l, d_model); with ``return_state`` also returns the new
        (conv_state, ssm_state). Missing states mean "start of sequence" (zeros). With
        ``summary`` (the first phase of a shard, Block._mix_shard) it returns the new
        (conv_state, ssm_state, log total decay of u) and no outputs."""
        cfg = self.cfg
        b, length, _ = u.shape
        h, p, g, n = cfg.n_heads, cfg.headdim, cfg.n_groups, cfg.d_state
        z, xBC, dt = torch.split(self.in_proj(u), [cfg.d_inner, cfg.conv_dim, h], dim=-1)
        return_state = return_state or summary
        acc, new_conv_state = causal_conv(xBC, self.conv1d, conv_state, return_state)
        xBC = F.silu(acc)                                             # (b, l, conv_dim)

        x, B, C = torch.split(xBC, [cfg.d_inner, g * n, g * n], dim=-1)
        x = x.reshape(b, length, h, p)
        B = B.reshape(b, length, g, n)
        C = C.reshape(b, length, g, n)
        A = -torch.exp(self.A_log.float())                            # scan decay: float32
        dt_hi = math.inf if cfg.dt_limit_max is None else cfg.dt_limit_max
        # Under autocast, x/B/C may arrive in bf16; the scan itself must not be autocast (its
        # backends compute in float32 and keep the state in float32).
        step = dict(dt_bias=self.dt_bias.float(), dt_softplus=True,
                    dt_limit=(cfg.dt_limit_min, dt_hi))
        with torch.autocast(u.device.type, enabled=False):
            out = selective_scan(
                x, dt.float(), A, B, C, self.D.float(), **step,
                initial_state=None if ssm_state is None else ssm_state.float(),
                return_final_state=return_state, chunk_size=cfg.chunk_size,
                backend=backend or cfg.scan_backend)
        y, new_ssm_state = out if return_state else (out, None)
        if summary:
            return new_conv_state, new_ssm_state, log_decay(dt.float(), A, **step)
        y = y.reshape(b, length, cfg.d_inner)
        y = self.out_proj(self.norm(y, z).to(z.dtype))
        if return_state:
            return y, (new_conv_state, new_ssm_state)
        return y


def mixer_class(name: str) -> type[nn.Module]:
    """The mixer class for ``ModelConfig.mixer``, or "attention" (``ModelConfig.layer_mixer``)."""
    # imported here: these modules import this one
    if name == "mamba1":
        from genossm.model.mamba1 import Mamba1Mixer
        return Mamba1Mixer
    if name == "mamba2":
        return Mamba2Mixer
    if name == "s4d":
        from genossm.model.s4d import S4DMixer
        return S4DMixer
    if name == "attention":
        from genossm.model.attention import AttentionMixer
        return AttentionMixer
    raise ValueError(f"unknown mixer {name!r}")


class Block(nn.Module):
    """Pre-norm residual block: h + mixer(norm(h)), the mixer of block ``layer`` chosen by
    ``cfg.layer_mixer`` (Mamba2Mixer; Mamba1Mixer from genossm/model/mamba1.py, S4DMixer from
    s4d.py; AttentionMixer from attention.py for the attention blocks of a hybrid).

    Bidirectional (Caduceus BiMamba, strategy "add"): a second mixer reads the sequence
    reversed and the two outputs are summed, mixer(u) + flip(mixer_rev(flip(u))). With
    ``bidirectional_sharing`` "mixer" the same mixer reads both ways (one batched call); with
    "projections" ``mixer_rev`` has its own conv, x/dt projections, A and D but shares
    in_proj and out_proj with ``mixer`` (Caduceus's weight tie: the same Parameter objects);
    with "none" it shares nothing. An attention block of a bidirectional model is one
    attention that reads both ways (a window either side), with no reverse mixer.

    ``checkpoint_length`` > 0 turns on gradient checkpointing: norm + mixer are recomputed in
    backward, in segments of that many positions carrying the conv/SSM state from segment to
    segment (exact: the mixer is causal), so that at most one segment's intermediates are alive
    at a time (what makes a 1 Mb training step fit in a few GB).
    """

    def __init__(self, cfg: ModelConfig, layer: int = 0):
        super().__init__()
        self.cfg = cfg
        kind = cfg.layer_mixer(layer)
        self.norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mixer = mixer_class(kind)(cfg)
        # an attention block reads both ways by itself (AttentionMixer.causal)
        self.two_way = cfg.bidirectional and kind != "attention"
        if self.two_way and cfg.bidirectional_sharing != "mixer":
            self.mixer_rev = mixer_class(kind)(cfg)
            if cfg.bidirectional_sharing == "projections":
                self.mixer_rev.in_proj = self.mixer.in_proj
                self.mixer_rev.out_proj = self.mixer.out_proj

    def mixers(self) -> list[nn.Module]:
        """The block's distinct mixers (one, or two with a separate ``mixer_rev``)."""
        return [self.mixer] + ([self.mixer_rev] if hasattr(self, "mixer_rev") else [])

    def forward(self, h, state=None, *, return_state=False, backend=None, checkpoint_length=0,
                shard=None):
        """h (b, l, d_model) -> h + mix; with ``return_state`` also the new (conv, ssm) state.
        ``state`` is a (conv_state, ssm_state) pair or None (start of sequence). ``shard``
        (ops/context_parallel.py): h is this rank's shard of sequences split across ranks,
        mixed in two phases (``_mix_shard``); the reverse mixer of a bidirectional block reads
        the shards last to first."""
        if shard is not None:
            if not all(getattr(m, "splits_across_ranks", False) for m in self.mixers()):
                raise ValueError("context parallelism splits Mamba-1 and Mamba-2 blocks; this "
                                 f"model has {type(self.mixer).__name__} blocks")
            if return_state or state is not None:
                raise ValueError("a shard of a sequence split across ranks is one whole pass; "
                                 "it is not streamed")
        if self.cfg.bidirectional:
            if return_state or state is not None:
                raise ValueError("a bidirectional block cannot be streamed")
            if not self.two_way:   # attention both ways: no segments (it reads ahead)
                y, _ = self._mix(self.mixer, h, None, False, backend,
                                 max(h.shape[1], 1) if checkpoint_length > 0 else 0)
                return h + y
            if shard is not None:   # each way its own shard order
                fwd = self._mix_shard(self.mixer, h, backend, checkpoint_length, shard)
                rev = self._mix_shard(getattr(self, "mixer_rev", self.mixer), h.flip(1),
                                      backend, checkpoint_length, shard.reversed())
            elif not hasattr(self, "mixer_rev"):   # one batched call
                both, _ = self._mix(self.mixer, torch.cat([h, h.flip(1)], dim=0), None, False,
                                    backend, checkpoint_length)
                fwd, rev = both.chunk(2, dim=0)
            else:
                fwd, _ = self._mix(self.mixer, h, None, False, backend, checkpoint_length)
                rev, _ = self._mix(self.mixer_rev, h.flip(1), None, False, backend,
                                   checkpoint_length)
            return h + fwd + rev.flip(1)
        if shard is not None:
            return h + self._mix_shard(self.mixer, h, backend, checkpoint_length, shard)
        y, new_state = self._mix(self.mixer, h, state, return_state, backend, checkpoint_length)
        return (h + y, new_state) if return_state else h + y

    def _mix_piece(self, mixer, h, state, return_state, backend):
        conv_state, ssm_state = (None, None) if state is None else state
        out = mixer(self.norm(h), conv_state, ssm_state, return_state=return_state,
                    backend=backend)
        return out if return_state else (out, None)

    def _summary_piece(self, mixer, h, conv_state, ssm_state, backend):
        return mixer(self.norm(h), conv_state, ssm_state, backend=backend, summary=True)

    @staticmethod
    def _segments(length: int, checkpoint_length: int) -> list[slice]:
        """The positions of each checkpointed segment (one, whole, when not checkpointing)."""
        step = checkpoint_length if checkpoint_length > 0 else max(length, 1)
        return [slice(start, start + step) for start in range(0, max(length, 1), step)]

    def _mix(self, mixer, h, state, return_state, backend, checkpoint_length):
        if checkpoint_length <= 0:
            return self._mix_piece(mixer, h, state, return_state, backend)
        segments = self._segments(h.shape[1], checkpoint_length)
        outs = []
        for i, segment in enumerate(segments):
            last = i == len(segments) - 1
            y, state = checkpoint(self._mix_piece, mixer, h[:, segment], state,
                                  return_state or not last, backend, use_reentrant=False)
            outs.append(y)
        return (outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)), state

    def _mix_shard(self, mixer, h, backend, checkpoint_length, shard):
        """The mix of this rank's shard of sequences split across ranks, in the two phases of
        ops/context_parallel.py: the shard from a zero SSM state, keeping only its final state
        and log total decay; the exchange, giving the state the shards before it leave; the
        shard again from that state. The conv starts from the last inputs of the shard before
        (the halo) in both. Each phase runs in checkpointed segments like ``_mix``."""
        width = self.cfg.d_conv - 1
        conv = None
        if width:
            conv = shard.halo(mixer.conv_inputs(self.norm(h[:, max(h.shape[1] - width, 0):])),
                              width)
        conv_state, ssm_state, decay = conv, None, 0.0
        for segment in self._segments(h.shape[1], checkpoint_length):
            piece = (mixer, h[:, segment], conv_state, ssm_state, backend)
            conv_state, ssm_state, piece_decay = (
                checkpoint(self._summary_piece, *piece, use_reentrant=False)
                if checkpoint_length > 0 else self._summary_piece(*piece))
            decay = decay + piece_decay
        start = shard.incoming_state(ssm_state, decay)
        return self._mix(mixer, h, (conv, start), False, backend, checkpoint_length)[0]
