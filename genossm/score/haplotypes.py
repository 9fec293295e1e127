"""Haplotypes: each record checked against the reference and given its flanks, the sequences the
model reads built from them, and the per-haplotype results the strand scorers hand back.

For a record at POS with REF of length r and a window W, every haplotype shares the left flank
(the W//2 bases before POS) and the right flank (the W - W//2 bases after the REF span) and
differs in the middle: ``left + REF + right`` against ``left + ALT + right``. Bases outside the
contig are N. On the reverse strand a haplotype is the reverse complement of that, whose shared
front is then the reverse complement of the right flank.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from genossm import alphabet
from genossm.reference import Reference
from genossm.score.variants import (
    INDEL_NEEDS_CAUSAL,
    SCORED,
    ContigResolver,
    Record,
    allele_status,
)


def flank_lengths(window: int) -> tuple[int, int]:
    """(left, right) flank lengths of a window of ``window`` bases centred on a variant."""
    return window // 2, window - window // 2


class Annotator:
    """Sets each record's ALT statuses and, when an ALT is to be scored, its flanks: the contig
    resolved, REF checked against the reference (case aside), and for masked-LM models an indel
    marked ``indel_needs_causal_model`` (its haplotypes are still read, for the distances)."""

    def __init__(self, reference: Reference, resolver: ContigResolver, *, window: int,
                 causal_lm: bool):
        self.reference = reference
        self.resolver = resolver
        self.left_length, self.right_length = flank_lengths(window)
        self.causal_lm = causal_lm

    def __call__(self, record: Record) -> Record:
        n = len(record.alts)
        record.status = [allele_status(a) or SCORED for a in record.alts]
        record.llr, record.cos, record.l2 = [None] * n, [None] * n, [None] * n
        if not record.alts_to_score():
            return record
        contig, contig_status = self.resolver(record.chrom)
        if contig is None:
            return _unscored(record, contig_status)
        flanks = self._flanks(record, contig)
        if flanks is None:
            return _unscored(record, "ref_mismatch")
        record.left_flank, record.right_flank = flanks
        if not self.causal_lm:
            record.status = [INDEL_NEEDS_CAUSAL if s == SCORED and len(a) != len(record.ref)
                             else s for s, a in zip(record.status, record.alts, strict=True)]
        return record

    def _flanks(self, record: Record, contig: str):
        """(left flank, right flank) codes, or None when REF is empty, lies outside the contig
        or differs from the reference."""
        start = record.pos - 1
        end = start + len(record.ref)
        if start < 0 or end > self.reference.lengths[contig] or not record.ref:
            return None
        lo, hi = self.reference.inside(contig, start - self.left_length, end + self.right_length)
        text = self.reference.text(contig, lo, hi)   # one fetch for the REF check and the window
        if text[start - lo:end - lo].upper() != record.ref.upper():
            return None
        window = self.reference.codes(contig, start - self.left_length, end + self.right_length,
                                      text)
        return window[:self.left_length], window[self.left_length + len(record.ref):]


def _unscored(record: Record, status: str) -> Record:
    record.status = [status if s == SCORED else s for s in record.status]
    return record


# --------------------------------------------------------------------------- sequences


def haplotype(record: Record, allele: int) -> np.ndarray:
    """Codes of the haplotype of ``allele`` (0 REF, i ALT i - 1): left flank, allele, right
    flank."""
    return np.concatenate([record.left_flank, record.allele_codes(allele), record.right_flank])


def masked_ref_haplotype(record: Record) -> np.ndarray:
    """The REF haplotype with its REF span replaced by MASK tokens."""
    return np.concatenate([record.left_flank, np.full(len(record.ref), alphabet.MASK, np.uint8),
                           record.right_flank])


def shared_prefix_and_branches(record: Record, rc: bool):
    """(the front every haplotype of the record shares, [the rest of each haplotype, in the
    order of ``record.haplotype_alleles()``]) on the forward strand, or, with ``rc``, of the
    reverse-complemented haplotypes."""
    middles = [record.allele_codes(a) for a in record.haplotype_alleles()]
    if not rc:
        return record.left_flank, [np.concatenate([m, record.right_flank]) for m in middles]
    return (alphabet.reverse_complement(record.right_flank),
            [alphabet.reverse_complement(np.concatenate([record.left_flank, m]))
             for m in middles])


def token_tensor(codes: np.ndarray, device) -> torch.Tensor:
    """Codes (any integer array) as int64 token ids on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(codes).astype(np.int64)).to(device)


# --------------------------------------------------------------------------- results


@dataclass
class HaplotypeScores:
    """One record's results on one strand: per ALT to score (``record.alts_to_score()``) its
    log-likelihood ratio in nats (None where the model gives none), and the mean final hidden
    state over each haplotype read (``record.haplotype_alleles()``: REF first)."""
    llr: list[float | None]
    means: torch.Tensor     # (haplotypes, width) float64


def rows_by_record(owner: list[int], n_records: int) -> list[list[int]]:
    """The rows of a batch grouped by the record that owns them (``owner[row]``)."""
    grouped: list[list[int]] = [[] for _ in range(n_records)]
    for row, i in enumerate(owner):
        grouped[i].append(row)
    return grouped
