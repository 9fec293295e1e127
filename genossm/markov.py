"""The k-mer Markov baseline that every model is reported against.

An order-k model predicts a base from the k bases before it, with add-one (Laplace) smoothing:
p(b | ctx) = (count(ctx b) + 1) / (count(ctx) + 4). Counts of every order 0..max_order are kept,
so the order can be chosen on held-out training data and so positions with fewer than k
preceding bases (after the start of a sequence or an N) back off to the longest context they
have. N is never a target and never part of a context.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from genossm import alphabet


def _segments(codes: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of every run of A/C/G/T (codes < 4)."""
    base = np.concatenate([[False], np.asarray(codes) < alphabet.N, [False]])
    edges = np.flatnonzero(base[1:] != base[:-1])
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def _kmer_index(segment: np.ndarray, order: int) -> np.ndarray:
    """Base-4 index of the (order+1)-mer ending at each position order..n-1 of the segment."""
    n = segment.size - order
    idx = np.zeros(n, dtype=np.int64)
    for d in range(order + 1):
        idx = idx * 4 + segment[d:d + n]
    return idx


class MarkovBaseline:
    def __init__(self, max_order: int = 10, order: int | None = None):
        if not 0 <= max_order <= 12:
            raise ValueError("max_order must be in 0..12 (4^(k+1) counts are kept)")
        self.max_order = max_order
        self.order = max_order if order is None else order
        self.counts = [np.zeros(4 ** (j + 1), dtype=np.int64) for j in range(max_order + 1)]
        self._context_totals: dict[int, np.ndarray] = {}  # per order, dropped by fit()

    def fit(self, sequences: Iterable[np.ndarray]) -> MarkovBaseline:
        """Add the k-mer counts of every sequence (uint8 codes; N splits a sequence)."""
        self._context_totals.clear()
        for codes in sequences:
            codes = np.asarray(codes, dtype=np.int64)
            for start, end in _segments(codes):
                seg = codes[start:end]
                for j in range(min(self.max_order, seg.size - 1) + 1):
                    self.counts[j] += np.bincount(_kmer_index(seg, j), minlength=4 ** (j + 1))
        return self

    def log2_probs(self, codes: np.ndarray, order: int | None = None) -> np.ndarray:
        """log2 p of every base given the preceding ones (float64, aligned with ``codes``);
        NaN where the code is N."""
        order = self.order if order is None else order
        codes = np.asarray(codes, dtype=np.int64)
        out = np.full(codes.size, np.nan)
        for start, end in _segments(codes):
            seg = codes[start:end]
            for j in range(min(order, seg.size - 1) + 1):
                counts = self.counts[j]
                context_totals = self._totals(j)
                idx = _kmer_index(seg, j)
                logp = np.log2((counts[idx] + 1) / (context_totals[idx // 4] + 4))
                if j < order:  # order j serves only the position with exactly j bases before
                    out[start + j] = logp[0]
                else:
                    out[start + j:end] = logp
        return out

    def _totals(self, order: int) -> np.ndarray:
        """count(context) of every context of ``order`` bases, computed once per fit."""
        if order not in self._context_totals:
            self._context_totals[order] = self.counts[order].reshape(-1, 4).sum(axis=1)
        return self._context_totals[order]

    def choose_order(self, fit_part: list[np.ndarray], held_part: list[np.ndarray]) -> dict:
        """Fit on ``fit_part``, pick the order with the fewest bits per base on ``held_part``,
        then add ``held_part`` to the counts. Returns bits per base of every order tried."""
        self.fit(fit_part)
        scores = {}
        for k in range(self.max_order + 1):
            logp = np.concatenate([self.log2_probs(c, k) for c in held_part] or [np.zeros(0)])
            logp = logp[~np.isnan(logp)]
            scores[k] = float(-logp.mean()) if logp.size else float("inf")
        self.order = min(scores, key=scores.get)
        self.fit(held_part)
        return scores

    def bits_per_base(self, sequences: Iterable[np.ndarray]) -> tuple[float, int]:
        """(mean bits per base, number of bases scored) over the non-N bases."""
        total, count = 0.0, 0
        for codes in sequences:
            logp = self.log2_probs(codes)
            logp = logp[~np.isnan(logp)]
            total -= float(logp.sum())
            count += logp.size
        return (total / count if count else float("nan")), count
