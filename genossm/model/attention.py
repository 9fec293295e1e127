"""Sliding-window attention mixer: the attention blocks of a hybrid stack (``ModelConfig``'s
``attention_every``, ``attention_window``, ``attention_heads``), in the place of the SSM mixer
of every attention_every-th block, so that a Mamba-2 (or Mamba-1, S4D) stack becomes a
Jamba/Samba-style hybrid. Data flow for an input u (b, l, d_model), heads of d_model/heads:

    in_proj(u) -> q, k, v (d_model each)
    o = window_attention(q, k, v)     rotary positions; each position attends to the last
                                      window positions (its own included); in a bidirectional
                                      (masked-LM) model to window - 1 either side as well
    out_proj(o)

Positions are rotary (RoPE) rather than ALiBi: a score depends on the distance between query
and key only, with no additive bias tensor, so the mask stays boolean and the model needs no
absolute position anywhere (the SSM blocks around it carry order too, as in Jamba).

Streaming (causal models): the state is a fixed-size window of the last window - 1 keys and
values (conv_state (b, window - 1, 2·d_model), not rotated) and which of them are real
(ssm_state (b, window - 1), 1.0 or 0.0: at a stream's start none is), float32 (float64 for a
float64 model): what a ring buffer of w entries holds, kept in order, so that it carries no
write position and rows of different streams stack into one batch (``ModelState.index_select``,
score's left-context streams). Each piece attends to that window followed by its own keys;
pieces read one after another equal one full pass. Gradient checkpointing goes through the
block's segments, which carry the same state; a bidirectional attention block is checkpointed
whole (it reads ahead).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from genossm.model.config import ModelConfig
from genossm.ops.window_attention import window_attention


class AttentionMixer(nn.Module):
    """Multi-head sliding-window self-attention with rotary positions (causal, or both ways in
    a bidirectional model)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.heads = cfg.attention_heads
        self.window = cfg.attention_window
        self.causal = not cfg.bidirectional
        self.in_proj = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    @staticmethod
    def state_shapes(cfg: ModelConfig) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Per-row shapes of (keys and values, which are real): (window-1, 2·d_model),
        (window-1,)."""
        return (cfg.attention_window - 1, 2 * cfg.d_model), (cfg.attention_window - 1,)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, length, d = t.shape
        return t.reshape(b, length, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, u, conv_state=None, ssm_state=None, *, return_state=False,
                backend=None):
        """u: (b, l, d_model) -> (b, l, d_model); with ``return_state`` also returns the new
        (keys and values, which are real) window. Missing states mean "start of sequence".
        ``backend`` (the scan's) is not used."""
        del backend
        b, length, d = u.shape
        q, k, v = self.in_proj(u).split(d, dim=-1)
        streaming = return_state or conv_state is not None
        if streaming and not self.causal:
            raise ValueError("a bidirectional attention block cannot be streamed")
        offset, prefix_valid = 0, None
        if streaming:
            keep = self.window - 1
            if conv_state is None:
                conv_state = u.new_zeros(b, keep, 2 * d)
                ssm_state = u.new_zeros(b, keep)
            kv = torch.cat([conv_state.to(k.dtype), torch.cat([k, v], dim=-1)], dim=1)
            k, v = kv.split(d, dim=-1)
            offset, prefix_valid = keep, ssm_state > 0.5
        o = window_attention(self._heads(q), self._heads(k), self._heads(v),
                             window=self.window, causal=self.causal, offset=offset,
                             prefix_valid=prefix_valid)
        y = self.out_proj(o.transpose(1, 2).reshape(b, length, d))
        if not return_state:
            return y
        state_dtype = torch.promote_types(u.dtype, torch.float32)
        start = kv.shape[1] - keep
        valid = torch.cat([ssm_state.to(state_dtype),
                           ssm_state.new_ones(b, length, dtype=state_dtype)], dim=1)
        return y, (kv[:, start:].to(state_dtype, copy=True), valid[:, start:])
