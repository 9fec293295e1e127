"""The three PNGs of ``genossm benchmark`` (``plots.PLOT``), over the labelled alleles of both
classes: ROC curves and precision-recall curves of each score (with its AUROC / AUPRC and, for
precision-recall, the prevalence), and each score's values by label class (box plots with the
points, up to 1,000 a class).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from genossm.benchmark.metrics import Ranked, score_vectors
from genossm.benchmark.scored import ORIENTED, SCORES
from genossm.plots import new_figure, save_figure


def write_plots(classified, overall: dict, title: str, paths: dict[str, Path]) -> None:
    """The three PNGs of ``classified`` ((allele, positive) pairs) at ``paths`` (by
    outputs.PLOT_NAMES' kind); the curves of the scores that ``overall`` has an AUROC for."""
    curves = {name: Ranked(*score_vectors(classified, i, 0)[:2])
              for i, (name, *_) in enumerate(SCORES)
              if overall["scores"][name]["auroc"] is not None}
    plot_roc(curves, overall, title, paths["roc"])
    plot_pr(curves, overall, title, paths["precision_recall"])
    plot_by_label(classified, title, paths["by_label"])


def _curves(curves: dict[str, Ranked], overall: dict, metric: str):
    """A figure and its axes, and (name, ranked, entry) of each score that has ``metric``."""
    figure = new_figure((6, 5.5))
    ax = figure.add_subplot()
    shown = [(name, ranked, overall["scores"][name]) for name, ranked in curves.items()
             if overall["scores"][name][metric] is not None]
    return figure, ax, shown


def _finish(figure, ax, xlabel: str, ylabel: str, title: str, legend: str, path: Path) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc=legend)
    save_figure(figure, path)


def _label(name: str, entry: dict, metric: str) -> str:
    return f"{ORIENTED[name]} ({metric.upper()} {entry[metric]:.3f}, n={entry['n']:,})"


def plot_roc(curves: dict[str, Ranked], overall: dict, title: str, path: Path) -> None:
    """ROC curves of ``curves`` (name -> Ranked) with the AUROC of ``overall``."""
    figure, ax, shown = _curves(curves, overall, "auroc")
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="random")
    for name, ranked, entry in shown:
        ax.plot(*ranked.roc_curve(), label=_label(name, entry, "auroc"))
    _finish(figure, ax, "false positive rate", "true positive rate", f"ROC: {title}",
            "lower right", path)


def plot_pr(curves: dict[str, Ranked], overall: dict, title: str, path: Path) -> None:
    """Precision-recall curves of ``curves`` with the AUPRC and the prevalence (dotted)."""
    figure, ax, shown = _curves(curves, overall, "auprc")
    for name, ranked, entry in shown:
        line, = ax.plot(*ranked.pr_curve(), drawstyle="steps-pre",
                        label=_label(name, entry, "auprc"))
        ax.axhline(entry["prevalence"], color=line.get_color(), linestyle=":", linewidth=1)
    _finish(figure, ax, "recall", "precision",
            f"Precision-recall (dotted: prevalence): {title}", "upper right", path)


def plot_by_label(classified, title: str, path: Path) -> None:
    """Each score's values by class of ``classified``, (allele, positive) pairs."""
    figure = new_figure((4 * len(SCORES), 4.5))
    rng = np.random.default_rng(0)
    for column, (_name, _, _, _, axis_label) in enumerate(SCORES):
        ax = figure.add_subplot(1, len(SCORES), column + 1)
        groups = []
        for cls in (False, True):
            values = np.asarray([a.scores[column] for a, c in classified
                                 if c == cls and a.scores[column] is not None], float)
            groups.append(values[np.isfinite(values)])
        names = [f"negative\n({len(groups[0]):,})", f"positive\n({len(groups[1]):,})"]
        shown = [(i, g) for i, g in enumerate(groups) if len(g)]
        if shown:
            ax.boxplot([g for _, g in shown], positions=[i + 1 for i, _ in shown], widths=0.5,
                       showfliers=False)
            for i, g in shown:
                points = g if len(g) <= 1000 else rng.choice(g, 1000, replace=False)
                ax.scatter(i + 1 + rng.uniform(-0.15, 0.15, len(points)), points, s=4,
                           alpha=0.4, color="C0" if i == 0 else "C3")
        else:
            ax.text(0.5, 0.5, "no labelled allele has this score", ha="center",
                    transform=ax.transAxes)
        ax.set_xticks([1, 2], names)
        ax.set_xlim(0.4, 2.6)
        ax.set_ylabel(axis_label)
    figure.suptitle(f"Scores by label: {title}", fontsize=9)
    save_figure(figure, path)

