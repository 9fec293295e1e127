"""The masked-LM (objective mlm) scorer, for models that read both directions (bidirectional,
rc_equivariant), on one strand.

Log-likelihood ratio: the REF span of the REF haplotype is replaced by MASK and the score is the
sum over the masked positions of ln p(alt base) - ln p(ref base). That needs an ALT as long as
REF (SNVs and MNVs); an indel has status ``indel_needs_causal_model`` and no ratio. Mean hidden
states (for the distances): every haplotype, indels included, read whole.

Such a model reads each window whole, so windows are batched only with windows of the same
length (padding would change what it reads). On the reverse strand the reverse-complemented
windows are read and per-position results are mapped back to forward coordinates.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from genossm import alphabet
from genossm.model import GenoSSM, reverse_complement_logits
from genossm.score.haplotypes import (
    HaplotypeScores,
    haplotype,
    masked_ref_haplotype,
    rows_by_record,
    token_tensor,
)
from genossm.score.variants import SCORED, Record


class MaskedScorer:
    """Scores records on one strand with a masked-LM model (see the module docstring)."""

    def __init__(self, model: GenoSSM, *, batch_size: int):
        self.model = model
        self.batch_size = batch_size
        self.device = model.embedding.weight.device

    def __call__(self, records: list[Record], rc: bool) -> list[HaplotypeScores]:
        means = self._haplotype_means(records, rc)
        llrs = self._masked_llrs(records, rc)
        return [HaplotypeScores(llr, mean) for llr, mean in zip(llrs, means, strict=True)]

    def _haplotype_means(self, records: list[Record], rc: bool) -> list[torch.Tensor]:
        """Per record, the mean final hidden state of each haplotype read (REF first)."""
        owner, windows = [], []
        for i, record in enumerate(records):
            for allele in record.haplotype_alleles():
                owner.append(i)
                windows.append(haplotype(record, allele))
        means = self._full_pass(windows, rc, lambda h: h.double().mean(1))
        return [torch.stack([means[r] for r in rows])
                for rows in rows_by_record(owner, len(records))]

    def _masked_llrs(self, records: list[Record], rc: bool) -> list[list[float | None]]:
        """Per record, per ALT to score: sum over the masked REF span of ln p(alt) - ln p(ref),
        or None for an ALT of another length than REF (an indel)."""
        masked = [r for r in records if SCORED in r.status]
        logps = iter(self._full_pass([masked_ref_haplotype(r) for r in masked], rc,
                                     lambda h: torch.log_softmax(
                                         self.model.head(h).float(), -1)))
        out = []
        for record in records:
            if SCORED not in record.status:
                out.append([None] * len(record.alts_to_score()))
                continue
            start = len(record.left_flank)
            span = next(logps)[start:start + len(record.ref)]
            ref = _summed_logp(span, record.allele_codes(0))
            out.append([_summed_logp(span, record.allele_codes(a + 1)) - ref
                        if record.status[a] == SCORED else None
                        for a in record.alts_to_score()])
        return out

    def _full_pass(self, windows: list[np.ndarray], rc: bool,
                   reduce: Callable[[torch.Tensor], torch.Tensor]) -> list[torch.Tensor]:
        """``reduce(hidden states)`` of each whole window (reverse-complemented when ``rc``,
        per-position results mapped back to forward coordinates), batching windows of equal
        length."""
        results: list[torch.Tensor | None] = [None] * len(windows)
        by_length: dict[int, list[int]] = {}
        for i, w in enumerate(windows):
            by_length.setdefault(len(w), []).append(i)
        for group in by_length.values():
            for start in range(0, len(group), self.batch_size):
                batch = group[start:start + self.batch_size]
                seqs = np.stack([windows[i] for i in batch])
                tokens = token_tensor(alphabet.reverse_complement(seqs) if rc else seqs,
                                      self.device)
                out = reduce(self.model.hidden_states(tokens))
                if rc and out.dim() == 3:
                    out = reverse_complement_logits(out)
                for k, i in enumerate(batch):
                    results[i] = out[k]
        return results


def _summed_logp(logp: torch.Tensor, codes: np.ndarray) -> float:
    """Sum over positions of ``logp`` (positions, vocab) at the tokens ``codes``."""
    index = torch.as_tensor(codes.astype(np.int64), device=logp.device)
    return float(logp.gather(-1, index[:, None]).double().sum())
