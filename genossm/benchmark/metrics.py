"""The metrics of ``genossm benchmark`` (tests/test_benchmark_scores.py checks them against
scikit-learn and scipy), per score, of one set of labelled alleles (overall or one group).

AUROC is the Mann-Whitney probability that a random positive outscores a random negative, ties
counting one half (``sklearn.metrics.roc_auc_score``); AUPRC is average precision, the sum over
the distinct scores, from the highest, of precision there times the recall gained there
(``average_precision_score``; a random score gets the prevalence); Spearman's rho is the
Pearson correlation of mid-ranks (``scipy.stats.spearmanr``) between the score and the class
(1 positive, 0 negative), or, when ``positive`` is thresholds on one side (``<``/``<=`` or
``>``/``>=``), the numeric label, negated for ``<`` so that the positive side is higher. The
confidence intervals are percentiles 2.5 and 97.5 of the metric over ``bootstrap`` resamples
that draw positives and negatives apart, with replacement, as many as there are (so every
resample has both classes), from ``seed``: the same resamples for each score and group given
the same alleles, whatever else is benchmarked with them. ``Ranked`` computes all three metrics
for many resamples at once from counts of tied cells (numpy only, no sort per resample).
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from genossm.benchmark.scored import SCORES
from genossm.score.variants import SCORED

CONFIDENCE = 95
BOOTSTRAP_CELLS = 1 << 21   # resamples x alleles held at once


def _ties(values: np.ndarray) -> np.ndarray:
    """Each item's run of equal values, numbered in ascending order of the values."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    new = np.r_[True, ordered[1:] != ordered[:-1]] if len(values) else np.zeros(0, bool)
    run = np.empty(len(values), np.intp)
    run[order] = np.cumsum(new) - 1
    return run


def _runs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For sorted ``keys``: where each run of equal keys starts, and each key's run."""
    new = np.r_[True, keys[1:] != keys[:-1]] if len(keys) else np.zeros(0, bool)
    return np.flatnonzero(new), np.cumsum(new) - 1


def _centred_midranks(totals: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Mid-rank minus the mean rank, (n + 1) / 2, of each run of ties of ``totals`` items."""
    return np.cumsum(totals, axis=1) - totals / 2 - n[:, None] / 2


class Ranked:
    """Scores (higher = more likely positive), classes and, optionally, a numeric target for
    Spearman's rho (else the class), ranked once. ``metrics(counts)`` gives AUROC, average
    precision and rho for each row of ``counts``: how many times each cell (the items of one
    score, class and target value) is drawn, one resample per row; ``point()`` for the data as
    they are, ``bootstrap(n, seed)`` for stratified resamples."""

    def __init__(self, score, positive, target=None):
        score = np.asarray(score, dtype=float)
        self.positive = np.asarray(positive, dtype=bool)
        self.n = len(score)
        score_run = _ties(score).astype(np.int64)
        target_run = self.positive.astype(np.int64) if target is None else \
            _ties(np.asarray(target, dtype=float)).astype(np.int64)
        width = int(target_run.max()) + 1 if self.n else 1
        cells, self.cell_of = np.unique((score_run * width + target_run) * 2 + self.positive,
                                        return_inverse=True)      # sorted by score
        cell_score, cell_target = cells // 2 // width, cells // 2 % width
        self.cell_positive = (cells % 2).astype(float)
        self.score_starts, self.score_run = _runs(cell_score)
        self.target_order = np.argsort(cell_target, kind="mergesort")
        self.target_starts, run = _runs(cell_target[self.target_order])
        self.target_run = np.empty_like(run)
        self.target_run[self.target_order] = run
        self.counts = np.bincount(self.cell_of, minlength=len(cells)).astype(float)

    def metrics(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        total = np.add.reduceat(counts, self.score_starts, axis=1)     # per run of tied scores
        pos = np.add.reduceat(counts * self.cell_positive, self.score_starts, axis=1)
        neg = total - pos
        n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
        n = n_pos + n_neg
        with np.errstate(invalid="ignore", divide="ignore"):
            below = np.cumsum(neg, axis=1) - neg
            auroc = (pos * (below + neg / 2)).sum(axis=1) / (n_pos * n_neg)
            # average precision: from the highest score down, the precision at each distinct
            # score times the recall gained there
            tp = np.cumsum(pos[:, ::-1], axis=1)
            seen = np.cumsum(total[:, ::-1], axis=1)
            precision = np.divide(tp, seen, out=np.zeros_like(tp), where=seen > 0)
            ap = (pos[:, ::-1] * precision).sum(axis=1) / n_pos
            # Spearman: Pearson's r of the mid-ranks, whose mean is (n + 1) / 2 for both
            x = _centred_midranks(total, n)
            target_total = np.add.reduceat(counts[:, self.target_order], self.target_starts,
                                           axis=1)
            y = _centred_midranks(target_total, n)
            sxy = (counts * x[:, self.score_run] * y[:, self.target_run]).sum(axis=1)
            sxx = (total * x * x).sum(axis=1)
            syy = (target_total * y * y).sum(axis=1)
            rho = np.clip(sxy / np.sqrt(sxx * syy), -1, 1)
        tiny = 1e-9 * np.maximum(n, 1) ** 3    # n^3 / 12 is the scale of a non-constant sxx
        rho = np.where((sxx > tiny) & (syy > tiny), rho, np.nan)
        auroc = np.where((n_pos > 0) & (n_neg > 0), auroc, np.nan)
        return auroc, np.where(n_pos > 0, ap, np.nan), rho

    def point(self) -> tuple[float, float, float]:
        return tuple(float(m[0]) for m in self.metrics(self.counts[None, :]))

    def bootstrap(self, resamples: int, seed: int) -> np.ndarray:
        """(resamples, 3) metrics over stratified resamples: positives and negatives drawn
        apart, each as many as there are, with replacement."""
        rng = np.random.default_rng(seed)
        n_cells = len(self.counts)
        classes = [self.cell_of[np.flatnonzero(c)] for c in (self.positive, ~self.positive)]
        out = np.empty((resamples, 3))
        step = max(1, BOOTSTRAP_CELLS // max(self.n, 1))
        for start in range(0, resamples, step):
            b = min(step, resamples - start)
            offsets = (np.arange(b) * n_cells)[:, None]
            drawn = [cells[rng.integers(0, len(cells), size=(b, len(cells)))] + offsets
                     for cells in classes if len(cells)]
            counts = np.bincount(np.concatenate([d.ravel() for d in drawn]),
                                 minlength=b * n_cells).reshape(b, n_cells).astype(float)
            out[start:start + b] = np.stack(self.metrics(counts), axis=1)
        return out

    def roc_curve(self) -> tuple[np.ndarray, np.ndarray]:
        """(false positive rate, true positive rate) from the highest score down, from (0, 0)."""
        tp, fp = self._cumulative()
        return np.r_[0, fp / fp[-1]], np.r_[0, tp / tp[-1]]

    def pr_curve(self) -> tuple[np.ndarray, np.ndarray]:
        """(recall, precision) from the highest score down, from (0, 1)."""
        tp, fp = self._cumulative()
        return np.r_[0, tp / tp[-1]], np.r_[1, tp / (tp + fp)]

    def _cumulative(self):
        pos = np.add.reduceat(self.counts * self.cell_positive, self.score_starts)[::-1]
        total = np.add.reduceat(self.counts, self.score_starts)[::-1]
        tp = np.cumsum(pos)
        return tp, np.cumsum(total) - tp


def auroc(score, positive) -> float:
    return Ranked(score, positive).point()[0]


def average_precision(score, positive) -> float:
    return Ranked(score, positive).point()[1]


def spearman(x, y) -> float:
    """Spearman's rho of x and y (NaN when either is constant)."""
    y = np.asarray(y, dtype=float)
    return Ranked(x, np.zeros(len(y), bool), target=y).point()[2]


def score_vectors(members, index: int, side: int):
    """(oriented scores, classes, numeric target or None, why-missing Counter) of score
    ``index`` (SCORES) over ``members``, (allele, positive) pairs; ``side``: the target is the
    label times ``side`` (0: the class)."""
    sign = SCORES[index][3]
    scores, classes, target, missing = [], [], [], Counter()
    for allele, positive in members:
        value = allele.scores[index]
        if value is None or not math.isfinite(value):
            missing["not_finite" if value is not None else
                    allele.status if allele.status != SCORED else "no_value"] += 1
            continue
        scores.append(sign * value)
        classes.append(positive)
        if side:
            target.append(side * float(allele.label))
    return (np.asarray(scores, float), np.asarray(classes, bool),
            np.asarray(target, float) if side else None, missing)


def evaluate(members, side: int, resamples: int, seed: int, bar) -> dict:
    """The metrics of each score over ``members`` (a METRICS.json ``overall`` or group entry),
    with ``resamples`` bootstrap resamples from ``seed``; ``bar`` advances once per score."""
    out = {"n_positive": sum(1 for _, c in members if c),
           "n_negative": sum(1 for _, c in members if not c),
           "unscored_by_status": dict(Counter(a.status for a, _ in members
                                              if a.status != SCORED).most_common()),
           "scores": {}}
    for index, (name, *_) in enumerate(SCORES):
        scores, classes, target, missing = score_vectors(members, index, side)
        entry = {"n": len(scores), "n_positive": int(classes.sum()),
                 "n_negative": int((~classes).sum()), "missing": dict(missing.most_common())}
        note = None
        if not len(scores):
            note = "no labelled allele has this score"
        elif not classes.any() or classes.all():
            note = f"no {'positives' if not classes.any() else 'negatives'} with this score"
        if note is None:
            ranked = Ranked(scores, classes, target)
            point = ranked.point()
            cis = _intervals(ranked.bootstrap(resamples, seed)) if resamples else [None] * 3
        else:
            point, cis = (math.nan,) * 3, [None] * 3
        entry["prevalence"] = entry["n_positive"] / entry["n"] if entry["n"] else None
        for metric, value, ci in zip(("auroc", "auprc", "spearman"), point, cis, strict=True):
            entry[metric] = _finite(value)
            entry[f"{metric}_ci"] = ci
        if note is None and entry["spearman"] is None:
            note = "Spearman's rho undefined: constant scores or labels"
        entry["note"] = note
        out["scores"][name] = entry
        bar.update()
    return out


def _intervals(draws: np.ndarray) -> list[list[float] | None]:
    out = []
    for column in draws.T:
        column = column[np.isfinite(column)]
        if not len(column):
            out.append(None)
            continue
        low, high = np.percentile(column, [(100 - CONFIDENCE) / 2, (100 + CONFIDENCE) / 2])
        out.append([float(low), float(high)])
    return out


def _finite(value) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None

