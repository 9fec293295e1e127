"""The causal (clm) scorer: ln P(alt haplotype) - ln P(ref haplotype) and the mean final hidden
state of every haplotype, on one strand.

The haplotypes of a record share their front (the left flank; on the reverse strand the reverse
complement of the right flank), whose terms cancel in the log-likelihood ratio: only the allele
and what follows it are summed. With prefix reuse the shared front of every record is run once,
its streaming state (``ModelState``, which carries the prediction of the next token too) is
branched into one row per haplotype allele (REF and every ALT to score), and the branches run
as batches, padded at the end and masked by each row's length. Without it every haplotype runs
from its start (same numbers, more work). Either way rows are streamed in pieces of at most
``TOKENS_PER_CALL`` tokens per model call (``model.stream``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from genossm import alphabet
from genossm.model import GenoSSM, ModelState
from genossm.score.haplotypes import (
    HaplotypeScores,
    rows_by_record,
    shared_prefix_and_branches,
    token_tensor,
)
from genossm.score.variants import Record

TOKENS_PER_CALL = 1 << 17   # rows x piece length of one model call when streaming


class Streamed(NamedTuple):
    """What ``CausalScorer.stream`` gives per row (float64) and the state after the rows."""
    logp: torch.Tensor          # (rows,) sum of ln p(token) over the scored positions
    hidden_sum: torch.Tensor    # (rows, width) sum of the final hidden states over the row
    state: ModelState


class CausalScorer:
    """Scores records on one strand with a causal model (see the module docstring)."""

    def __init__(self, model: GenoSSM, *, batch_size: int, prefix_reuse: bool = True,
                 piece_length: int | None = None):
        self.model = model
        self.batch_size = batch_size
        self.prefix_reuse = prefix_reuse
        self.piece_length = piece_length
        self.device = model.embedding.weight.device

    def __call__(self, records: list[Record], rc: bool) -> list[HaplotypeScores]:
        prefixes, branches = zip(*(shared_prefix_and_branches(r, rc) for r in records),
                                 strict=True)
        prefix_length = len(prefixes[0])
        owner = [i for i, b in enumerate(branches) for _ in b]          # row -> record
        row_codes = [codes for b in branches for codes in b]
        logp = torch.empty(len(row_codes), dtype=torch.float64, device=self.device)
        means: list[torch.Tensor | None] = [None] * len(row_codes)
        if self.prefix_reuse:
            tokens = token_tensor(np.stack(prefixes), self.device)
            lengths = torch.full((len(prefixes),), prefix_length, device=self.device)
            shared = self.stream(tokens, lengths, None, score_from=prefix_length)
        for start in range(0, len(row_codes), self.batch_size):
            batch = list(range(start, min(start + self.batch_size, len(row_codes))))
            if self.prefix_reuse:
                index = torch.as_tensor([owner[i] for i in batch], device=self.device)
                tokens, lengths = self._padded([row_codes[i] for i in batch])
                branched = self.stream(tokens, lengths, shared.state.index_select(index), 0)
                hidden_sum = branched.hidden_sum + shared.hidden_sum[index]
                lengths = lengths + prefix_length
            else:
                tokens, lengths = self._padded([np.concatenate([prefixes[owner[i]], row_codes[i]])
                                                for i in batch])
                branched = self.stream(tokens, lengths, None, prefix_length)
                hidden_sum = branched.hidden_sum
            logp[start:start + len(batch)] = branched.logp
            for k, i in enumerate(batch):
                means[i] = hidden_sum[k] / lengths[k]
        return [HaplotypeScores([float(logp[r] - logp[ref]) for r in alts],
                                torch.stack([means[r] for r in (ref, *alts)]))
                for ref, *alts in rows_by_record(owner, len(records))]

    def stream(self, tokens: torch.Tensor, lengths: torch.Tensor, state: ModelState | None,
               score_from: int) -> Streamed:
        """Run padded rows through the model in pieces, from ``state`` (or the start of a
        sequence): the sum of ln p(token t) over score_from <= t < the row's length, the sum
        of the final hidden states over the row's length, and the state after the rows."""
        rows, total = tokens.shape
        length = self._piece_length(rows, total)
        pieces = (tokens[:, at:at + length] for at in range(0, total, length))
        logp = torch.zeros(rows, dtype=torch.float64, device=self.device)
        hidden_sum, start = 0, 0
        for piece in self.model.stream(pieces, state):
            position = torch.arange(start, start + piece.hidden.shape[1], device=self.device)
            inside = position[None] < lengths[:, None]
            kept = piece.hidden * inside[..., None]
            hidden_sum = hidden_sum + kept.sum(1, dtype=torch.float64)
            scored = inside & (position[None] >= score_from)   # token_logp is NaN at 0
            logp += torch.where(scored, piece.token_logp.double(), 0.0).sum(1)
            state, start = piece.state, start + piece.hidden.shape[1]
        return Streamed(logp, hidden_sum, state)

    def _piece_length(self, rows: int, total: int) -> int:
        """Streaming piece length: at most TOKENS_PER_CALL tokens per call, pieces of about
        equal length in whole scan chunks (or ``piece_length`` when given)."""
        if self.piece_length:
            return self.piece_length
        chunk = self.model.config.chunk_size
        limit = max(chunk, TOKENS_PER_CALL // rows // chunk * chunk)
        piece = math.ceil(total / math.ceil(total / limit))
        return min(limit, math.ceil(piece / chunk) * chunk)

    def _padded(self, seqs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows padded at the end with N, and their lengths."""
        lengths = [len(s) for s in seqs]
        out = np.full((len(seqs), max(lengths)), alphabet.N, np.uint8)
        for row, s in zip(out, seqs, strict=True):
            row[:len(s)] = s
        return token_tensor(out, self.device), torch.as_tensor(lengths, device=self.device)
