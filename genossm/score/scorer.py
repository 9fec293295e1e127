"""The scorer: fills in each record's per-ALT scores, on both strands, a batch of records at a
time.

Per ALT to score, all in natural log (nats): ``llr``, from the causal scorer (causal.py) or the
masked-LM scorer (masked.py); ``cos`` and ``l2``, the cosine distance (1 - cos) and the
Euclidean distance between the mean final hidden states over the REF and the ALT haplotype.
Every score is the average over the forward strand and the reverse-complemented haplotypes,
except for RC-equivariant models, which see both strands already.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from genossm.model import GenoSSM
from genossm.score.causal import CausalScorer
from genossm.score.haplotypes import HaplotypeScores
from genossm.score.masked import MaskedScorer
from genossm.score.variants import Record


class Scorer:
    """Scores batches of records with one model (see the module docstring)."""

    def __init__(self, model: GenoSSM, *, batch_size: int, prefix_reuse: bool = True,
                 piece_length: int | None = None):
        self.config = model.config
        self.batch_size = batch_size
        self.causal_lm = self.config.objective == "clm"
        self.rc_average = not self.config.rc_equivariant
        if self.causal_lm:
            self.score_strand = CausalScorer(model, batch_size=batch_size,
                                             prefix_reuse=prefix_reuse, piece_length=piece_length)
        else:
            self.score_strand = MaskedScorer(model, batch_size=batch_size)

    @torch.inference_mode()
    def score(self, records: list[Record]) -> None:
        """Fill in llr, cos and l2 of every ALT whose status is scored (or, for masked-LM
        models, indel_needs_causal_model: distances only)."""
        records = [r for r in records if r.alts_to_score()]
        if not records:
            return
        strands = (False, True) if self.rc_average else (False,)
        per_strand = [self.score_strand(records, rc) for rc in strands]
        for i, record in enumerate(records):
            fill_scores(record, [strand[i] for strand in per_strand])


def fill_scores(record: Record, per_strand: list[HaplotypeScores]) -> None:
    """Set the record's llr, cos and l2 of every ALT to score: the mean over the strands'
    results (the context-mode scorer, context.py, fills records the same way)."""
    results = [_with_distances(s) for s in per_strand]
    for j, alt in enumerate(record.alts_to_score()):
        record.llr[alt] = _mean(r[j][0] for r in results)
        record.cos[alt] = _mean(r[j][1] for r in results)
        record.l2[alt] = _mean(r[j][2] for r in results)


def _with_distances(scores: HaplotypeScores) -> list[tuple[float | None, float, float]]:
    """Per ALT to score: (llr or None, cosine distance, L2 distance to the REF haplotype)."""
    ref, alts = scores.means[0], scores.means[1:]
    cos = 1 - F.cosine_similarity(alts, ref[None], dim=-1)
    l2 = (alts - ref).norm(dim=-1)
    return [(llr, float(c), float(d)) for llr, c, d in zip(scores.llr, cos, l2, strict=True)]


def _mean(values) -> float | None:
    values = list(values)
    return None if values[0] is None else sum(values) / len(values)


def batches(records: Iterator[Record], batch_size: int) -> Iterator[list[Record]]:
    """Consecutive records, cut when the haplotypes they have the model read (per strand) fill
    a batch of ``batch_size``."""
    batch, rows = [], 0
    for record in records:
        batch.append(record)
        if record.alts_to_score():
            rows += len(record.haplotype_alleles())
        if rows >= batch_size:
            yield batch
            batch, rows = [], 0
    if batch:
        yield batch
