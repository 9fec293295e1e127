"""GenoSSM: the genome language model (embedding -> blocks -> final norm -> tied head).

Logits convention: ``objective="clm"`` -> logits[:, t] predict token t+1 (shift targets by one
in the loss); ``objective="mlm"`` -> logits[:, t] predict the (masked) token at t.

Reverse-complement equivariance (``rc_equivariant``), by parameter sharing: one trunk (all
weights shared) reads the forward strand x and the reverse strand rc(x) (as one batch). The
hidden states are laid out as Caduceus's RCPS code lays them out, 2·d_model channels
[a, b]: a the forward strand's, b the reverse strand's flipped back to forward coordinates
*and* in reversed channel order. The tied head combines the strands

    logits[t, v] = <a[t], E[v]> + <flip_channels(b[t]), E[complement(v)]>

so that logits(rc(x)) == rc(logits(x)), where rc of logits flips the length axis and permutes
the vocabulary by alphabet.COMPLEMENT. The reverse strand reads right to left, so such a model
is not causal. With ``rc_strand_swap`` the two strands trade places before every block
(forward row <- rc(reverse row), reverse row <- rc(forward row)): what the official code's
fused add+norm RCPS block computes (it normalises the channel halves the other way round from
its unfused path), so the published Caduceus-PS and PlantCaduceus weights need it.

Two calls, each with one return type: ``model(tokens)`` -> logits and
``model.hidden_states(tokens, layer)`` -> hidden states read the whole sequence at once;
``model.step(tokens, state)`` -> ``StreamPiece`` continues a stream (causal models only).
``model.stream(pieces)`` is the one streaming path (docs/design.md, "Streaming"): piece after
piece it yields the hidden states, logits and each token's log-probability given everything
before it, across piece boundaries, equal to one full pass. The state is fixed-size (conv
inputs + float32 SSM state per layer, or an attention block's window of keys and values, and
the log-probabilities of the next token),
``clone()``-able and ``index_select``-able, to branch one stream into several.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn as nn

from genossm import alphabet
from genossm.model.config import ModelConfig
from genossm.model.mamba2 import Block, RMSNorm
from genossm.ops.context_parallel import Shard


@dataclass
class ModelState:
    """Streaming state of a causal GenoSSM: per layer the mixer's two state tensors, float32
    (a float64 model: float64), of the shapes the mixer's ``state_shapes`` gives: ``conv`` the
    last d_conv-1 conv inputs and ``ssm`` the SSM state (Mamba-2: (b, d_conv-1, conv_dim) and
    (b, heads, headdim, d_state); Mamba-1: (b, d_conv-1, d_inner) and (b, d_inner, 1, d_state);
    S4D: (b, d_conv-1, d_inner) and (b, d_inner, d_state/2, 2)), and for an attention block
    its window of keys and values (b, window-1, 2·d_model) and which of them are real
    (b, window-1), in the same two places (every tensor batch-first, so rows of any states
    stack and ``index_select`` picks them);
    ``next_logp`` (b, vocab), the natural-log probabilities of the token after those consumed
    (None before the first); ``offset`` counts the tokens consumed so far."""

    conv: list[torch.Tensor] = field(default_factory=list)
    ssm: list[torch.Tensor] = field(default_factory=list)
    offset: int = 0
    next_logp: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.ssm[0].shape[0]

    def _map(self, fn) -> ModelState:
        return ModelState([fn(c) for c in self.conv], [fn(s) for s in self.ssm], self.offset,
                          None if self.next_logp is None else fn(self.next_logp))

    def clone(self) -> ModelState:
        """Independent copy (branch a stream, e.g. into ref and alt alleles)."""
        return self._map(torch.clone)

    def detach(self) -> ModelState:
        """Same values, cut from the autograd graph (truncated backprop through time)."""
        return self._map(torch.Tensor.detach)

    def to(self, device) -> ModelState:
        return self._map(lambda t: t.to(device))

    def index_select(self, index) -> ModelState:
        """Pick (or repeat) batch rows: ``state.index_select([0, 0, 0])`` makes three copies of
        row 0, to score several alleles from one shared prefix."""
        idx = torch.as_tensor(index, dtype=torch.long, device=self.ssm[0].device)
        return self._map(lambda t: t.index_select(0, idx))


class StreamPiece(NamedTuple):
    """What one piece of a stream gives (``GenoSSM.step`` and ``GenoSSM.stream``)."""
    hidden: torch.Tensor      # (b, l, width) residual stream after the chosen layer
    logits: torch.Tensor      # (b, l, vocab): logits[:, t] predict token t+1
    token_logp: torch.Tensor  # (b, l) float32 ln p(token t | all tokens before it); NaN for
    #                           the first token of a stream, which nothing predicts
    state: ModelState         # after this piece: continue the stream from here


def reverse_complement_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """rc of token ids (..., l): complement (alphabet.COMPLEMENT) then flip the last axis."""
    comp = torch.as_tensor(alphabet.COMPLEMENT, dtype=torch.long, device=tokens.device)
    return comp[tokens.long()].flip(-1)  # .long(): a uint8 index would act as a mask


def reverse_complement_logits(logits: torch.Tensor) -> torch.Tensor:
    """rc of per-position outputs (..., l, vocab): flip the length axis and permute the
    vocabulary axis by alphabet.COMPLEMENT."""
    comp = torch.as_tensor(alphabet.COMPLEMENT, dtype=torch.long, device=logits.device)
    return logits.flip(-2)[..., comp]


def swap_strands(h: torch.Tensor) -> torch.Tensor:
    """(forward rows; reverse rows) -> (rc(reverse rows); rc(forward rows)), rc flipping the
    length and channel axes: the official fused RCPS block's exchange of channel halves, in
    the two-strand batch layout of ``GenoSSM._trunk``."""
    fwd, rev = h.chunk(2, dim=0)
    return torch.cat([rev, fwd], dim=0).flip(1, 2)


def strand_average(h: torch.Tensor) -> torch.Tensor:
    """The d_model-wide embedding of an rc_equivariant model's hidden states (..., 2·d_model):
    (a + flip_channels(b)) / 2, the strand-averaged embedding PlantCaduceus documents."""
    fwd, rev = h.chunk(2, dim=-1)
    return (fwd + rev.flip(-1)) / 2


class GenoSSM(nn.Module):
    """Selective-SSM language model over alphabet tokens (see the module docstring)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.norm_f = RMSNorm(config.d_model, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.tie_weights()
        comp = torch.as_tensor(alphabet.COMPLEMENT, dtype=torch.long)
        self.register_buffer("complement", comp, persistent=False)
        self._init_weights()

    def tie_weights(self) -> None:
        """(Re)make the head's weight the embedding's Parameter (one tensor, tied)."""
        self.lm_head.weight = self.embedding.weight

    def tied_names(self) -> dict[str, str]:
        """{state-dict name: the name it shares its tensor with}, for every Parameter reached
        under more than one name (the head, Caduceus's shared bidirectional projections): a
        weights file stores each tensor once, under the first name."""
        first: dict[int, str] = {}
        tied = {}
        for name, p in self.named_parameters(remove_duplicate=False):
            if id(p) in first:
                tied[name] = first[id(p)]
            else:
                first[id(p)] = name
        return tied

    @torch.no_grad()
    def _init_weights(self):
        cfg = self.config
        nn.init.normal_(self.embedding.weight, std=cfg.initializer_range)
        if cfg.rescale_prenorm_residual:  # keep the residual stream's scale independent of depth
            out_projs = {id(m.out_proj.weight): m.out_proj.weight
                         for block in self.layers for m in block.mixers()}
            for weight in out_projs.values():   # a shared projection scaled once
                weight /= math.sqrt(cfg.n_layer)

    # --- public API -----------------------------------------------------------------------
    def forward(self, tokens: torch.Tensor, *, backend: str | None = None,
                context_group=None) -> torch.Tensor:
        """tokens (b, l) int -> logits (b, l, vocab) of one whole pass. ``backend`` overrides
        config.scan_backend. ``context_group`` (a torch.distributed process group): tokens
        are this rank's shard of sequences split across the group's ranks in rank order, and
        the logits those of the whole sequences at the shard's positions
        (ops/context_parallel.py)."""
        return self.head(self.hidden_states(tokens, backend=backend,
                                            context_group=context_group))

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Logits from final hidden states (``hidden_states(..., layer=-1)``): the tied head, and
        for rc_equivariant models the sum over the two strand halves, the reverse strand's with
        the vocabulary complemented."""
        if self.config.rc_equivariant:
            fwd, rev = h.chunk(2, dim=-1)
            return self.lm_head(fwd) + self.lm_head(rev.flip(-1))[..., self.complement]
        return self.lm_head(h)

    def hidden_states(self, tokens: torch.Tensor, layer: int = -1, *,
                      backend: str | None = None, context_group=None) -> torch.Tensor:
        """Residual stream after ``layer`` blocks: 0 is the embedding output, n_layer (or -1)
        the final, normalised output the head reads; negative indices count from the end.
        Shape (b, l, d_model), or (b, l, 2·d_model) for rc_equivariant models ([forward strand,
        reverse strand at forward coordinates in reversed channel order], Caduceus's layout;
        ``strand_average`` gives the d_model-wide mean of the two). ``context_group``: as in
        ``forward``."""
        index = self.layer_index(layer)
        shard = None if context_group is None else Shard(context_group)
        if self.config.rc_equivariant:
            if shard is not None:
                raise ValueError("context parallelism does not split rc_equivariant models yet "
                                 "(their reverse strand reads the shards last to first)")
            fwd, rev = self._both_strands(tokens, index, backend)
            return torch.cat([fwd, rev.flip(-1)], dim=-1)
        return self._trunk(tokens, index, None, backend, shard=shard)[0]

    def step(self, tokens: torch.Tensor, state: ModelState, *, layer: int = -1,
             backend: str | None = None) -> StreamPiece:
        """Continue a stream from ``state`` with the next piece ``tokens`` (b, l): the piece's
        hidden states after ``layer`` blocks, its logits, each token's log-probability and the
        state after it. Causal models only; ``state`` is not modified."""
        index = self.layer_index(layer)
        outputs = []
        h, new_state = self._trunk(tokens, self.config.n_layer, state, backend, outputs,
                                   keep=index)
        logits = self.head(h)
        logp = torch.log_softmax(logits.float(), dim=-1)
        if state.next_logp is None:
            first = torch.full_like(logp[:, :1, 0], math.nan)
        else:
            first = state.next_logp.gather(-1, tokens[:, :1].long())
        rest = logp[:, :-1].gather(-1, tokens[:, 1:, None].long())[..., 0]
        new_state.next_logp = logp[:, -1]
        return StreamPiece(outputs[0], logits, torch.cat([first, rest], dim=1), new_state)

    def stream(self, pieces: Iterable[torch.Tensor], state: ModelState | None = None, *,
               layer: int = -1, backend: str | None = None) -> Iterator[StreamPiece]:
        """``step`` over consecutive pieces (each (b, l_i)), from ``state`` or the start of a
        sequence: the pieces read together give the numbers of one full pass."""
        for tokens in pieces:
            if state is None:
                state = self.initial_state(tokens.shape[0], tokens.device)
            piece = self.step(tokens, state, layer=layer, backend=backend)
            state = piece.state
            yield piece

    def initial_state(self, batch_size: int, device=None) -> ModelState:
        """Start-of-sequence streaming state (zeros)."""
        cfg = self.config
        if not cfg.causal:
            raise ValueError("streaming needs a causal model (bidirectional and rc_equivariant "
                             "models read the sequence right to left too)")
        device = self.embedding.weight.device if device is None else device
        conv, ssm = [], []
        for block in self.layers:
            conv_shape, ssm_shape = block.mixer.state_shapes(cfg)
            conv.append(torch.zeros(batch_size, *conv_shape, device=device))
            ssm.append(torch.zeros(batch_size, *ssm_shape, device=device))
        return ModelState(conv, ssm, 0)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # tied weight counted once

    def optim_groups(self, weight_decay: float) -> list[dict]:
        """AdamW parameter groups: decay matrices and conv filters; not norms, biases,
        A_log, D, dt_bias."""
        decay, no_decay = [], []
        for p in self.parameters():
            if p.dim() >= 2 and not getattr(p, "_no_weight_decay", False):
                decay.append(p)
            else:
                no_decay.append(p)
        return [{"params": decay, "weight_decay": weight_decay},
                {"params": no_decay, "weight_decay": 0.0}]

    def layer_index(self, layer: int) -> int:
        """``layer`` as an index 0..n_layer into the residual stream (negative counts from the
        end); IndexError when out of range."""
        n = self.config.n_layer
        if not -(n + 1) <= layer <= n:
            raise IndexError(f"layer {layer} out of range for {n} layers (0..{n} or -1..-{n + 1})")
        return layer % (n + 1)

    # --- internals ------------------------------------------------------------------------
    def _both_strands(self, tokens, index, backend):
        """Run the shared trunk on x and rc(x) as one batch; return (fwd, rev) with rev flipped
        back to forward coordinates."""
        both = torch.cat([tokens, reverse_complement_tokens(tokens)], dim=0)
        h, _ = self._trunk(both, index, None, backend, strands=True)
        fwd, rev = h.chunk(2, dim=0)
        return fwd, rev.flip(1)

    def _checkpoint_length(self, length: int) -> int:
        """Segment length for gradient checkpointing (0 = off): only when training with
        gradients; the whole sequence when config.checkpoint_segment_length is 0."""
        cfg = self.config
        if not (cfg.gradient_checkpointing and self.training and torch.is_grad_enabled()):
            return 0
        return cfg.checkpoint_segment_length or max(length, 1)

    def _trunk(self, tokens, index, state, backend, outputs=None, keep=None, strands=False,
               shard=None):
        """Embedding + blocks over one strand, or with ``strands`` over both (batch = forward
        rows then reverse rows, which ``rc_strand_swap`` exchanges before every block);
        returns (h after ``index`` blocks, final norm applied when index == n_layer; new state
        or None). With ``outputs``, the residual stream after ``keep`` blocks is appended to it
        too (the same pass)."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (batch, length), got {tuple(tokens.shape)}")
        if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            raise TypeError(f"tokens must be integer codes, got {tokens.dtype}")
        n = self.config.n_layer
        if state is not None:
            if not self.config.causal:
                raise ValueError("streaming needs a causal model (not bidirectional, not "
                                 "rc_equivariant)")
            if len(state.ssm) != n or state.batch_size != tokens.shape[0]:
                raise ValueError(f"state is for {len(state.ssm)} layers x batch "
                                 f"{state.batch_size}, tokens are batch {tokens.shape[0]}")
        h = self.embedding(tokens.long())
        kept = {}

        def mark(i, value):
            if i == n:
                value = self.norm_f(value)
            if i == index:
                kept["out"] = value
            if outputs is not None and i == keep:
                outputs.append(value)

        mark(0, h)
        new_state = None
        if state is not None:
            new_state = ModelState(offset=state.offset + tokens.shape[1])
        ckpt = self._checkpoint_length(tokens.shape[1])
        for i, block in enumerate(self.layers):
            if state is None:
                if i >= index:
                    break
                if strands and self.config.rc_strand_swap:
                    h = swap_strands(h)
                h = block(h, backend=backend, checkpoint_length=ckpt, shard=shard)
            else:
                h, (conv, ssm) = block(h, (state.conv[i], state.ssm[i]), return_state=True,
                                       backend=backend, checkpoint_length=ckpt)
                new_state.conv.append(conv)
                new_state.ssm.append(ssm)
            mark(i + 1, h)
        return kept["out"], new_state
