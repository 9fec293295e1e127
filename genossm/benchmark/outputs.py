"""The outputs of ``genossm benchmark``, and how each is recognised (fileio.claim_outputs:
never an input; with ``force`` only what genossm wrote, each by its ``OutputKind``):
METRICS.json (``genossm_benchmark`` and ``created_by``), the TSV (its header row,
BENCHMARK_COLUMNS: a row per group and score, the overall ones in group ``all``, the others
``KEY=value``), the PNGs (``plots.PLOT``): STEM.roc.png, STEM.pr.png and STEM.by_label.png for
METRICS ``STEM.json``; and the one-line summary.
"""

from __future__ import annotations

from pathlib import Path

from genossm.benchmark.scored import ORIENTED
from genossm.fileio import OutputKind, created_by_genossm, json_object, starts_with_row
from genossm.score.variants import SCORED

METRICS_FORMAT = 1
BENCHMARK_COLUMNS = ("group", "score", "n", "n_positive", "n_negative", "n_missing", "auroc",
                     "auroc_low", "auroc_high", "auprc", "auprc_low", "auprc_high", "prevalence",
                     "spearman", "spearman_low", "spearman_high")
OVERALL = "all"
PLOT_NAMES = {"roc": "roc.png", "precision_recall": "pr.png", "by_label": "by_label.png"}


def is_benchmark_metrics(path) -> bool:
    """Whether ``path`` is a METRICS.json that genossm benchmark wrote: a JSON object with
    ``genossm_benchmark`` and genossm's ``created_by``."""
    metrics = json_object(path)
    return metrics is not None and "genossm_benchmark" in metrics and created_by_genossm(metrics)


def is_benchmark_table(path) -> bool:
    """Whether ``path`` is the TSV genossm benchmark wrote: its first line is
    BENCHMARK_COLUMNS."""
    return starts_with_row(path, BENCHMARK_COLUMNS)


BENCHMARK_METRICS = OutputKind("a genossm benchmark METRICS.json", is_benchmark_metrics)
BENCHMARK_TABLE = OutputKind("a genossm benchmark table", is_benchmark_table)


def default_table_path(output: Path) -> Path:
    """METRICS.tsv beside METRICS.json."""
    return output.with_name(output.name.removesuffix(".json") + ".tsv")


def plot_paths(output: Path, plots_dir: Path) -> dict[str, Path]:
    """The PNGs (by PLOT_NAMES' kind) in ``plots_dir``, named after METRICS.json."""
    stem = output.name.removesuffix(".json")
    return {kind: plots_dir / f"{stem}.{name}" for kind, name in PLOT_NAMES.items()}


def table_text(metrics: dict) -> str:
    """The TSV of ``metrics``: BENCHMARK_COLUMNS, a row per group and score."""
    def cell(value):
        return "NA" if value is None else (f"{value:.6g}" if isinstance(value, float)
                                           else str(value))

    sets = [(OVERALL, metrics["overall"]),
            *((f"{metrics['group_by']}={name}", group)
              for name, group in metrics["groups"].items())]
    lines = ["\t".join(BENCHMARK_COLUMNS)]
    for group, result in sets:
        for score, e in result["scores"].items():
            row = [group, score, e["n"], e["n_positive"], e["n_negative"],
                   sum(e["missing"].values())]
            for metric in ("auroc", "auprc"):
                row += [e[metric], *(e[f"{metric}_ci"] or (None, None))]
            row += [e["prevalence"], e["spearman"], *(e["spearman_ci"] or (None, None))]
            lines.append("\t".join(cell(v) for v in row))
    return "\n".join(lines) + "\n"


def format_summary(metrics: dict, output) -> str:
    """genossm benchmark: P positive and N negative alleles (U unscored: status n, ...; M
    unlabelled): AUROC -GENOSSM_LLR X [lo, hi]; ... -> wrote METRICS.json, the table, plots"""
    counts = metrics["alleles"]
    unscored = ", ".join(f"{s} {n:,}" for s, n in counts["by_status"].items() if s != SCORED)
    parts = []
    for name, entry in metrics["overall"]["scores"].items():
        ci = entry["auroc_ci"]
        parts.append(f"{ORIENTED[name]} " + ("n/a" if entry["auroc"] is None else
                                             f"{entry['auroc']:.3f}")
                     + ("" if ci is None else f" [{ci[0]:.3f}, {ci[1]:.3f}]"))
    line = (f"genossm benchmark: {counts['positive']:,} positive and {counts['negative']:,} "
            f"negative alleles ({counts['unscored']:,} unscored"
            + (f": {unscored}" if unscored else "") + f"; {counts['unlabelled']:,} unlabelled")
    if counts["in_neither_class"]:
        line += f", {counts['in_neither_class']:,} in neither class"
    if counts.get("label_rows_matching_no_allele"):
        line += f", {counts['label_rows_matching_no_allele']:,} label rows matching no allele"
    line += f"): AUROC {'; '.join(parts)}"
    if metrics["group_by"]:
        line += f"; {len(metrics['groups'])} groups by {metrics['group_by']}"
    return line + f"; wrote {output}, {metrics['table']} and {len(metrics['plots'])} plots"
