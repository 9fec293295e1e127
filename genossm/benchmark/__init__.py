"""``genossm benchmark``: how well the variant scores of ``genossm score`` separate labelled
variants. Per score, overall and per group: AUROC, AUPRC (average precision) and Spearman's rho,
each with a stratified bootstrap 95% confidence interval; the counts of positives, negatives and
of labelled alleles without a score, by why; a metrics JSON, a small TSV, and three PNGs.

The parts, in the order the command meets them:

- scored.py: the scored VCF or score table read back, a labels TSV joined to it, the scores;
- labels.py: the labels resolved (INFO values per ALT, flags) and put in classes;
- metrics.py: AUROC, average precision, Spearman and their bootstrap (``Ranked``);
- plots.py: the ROC, precision-recall and scores-by-label PNGs;
- outputs.py: the METRICS.json and TSV, their ``OutputKind``s, the summary line;
- command.py: ``benchmark`` (the command) and ``measure`` (the metrics, nothing written).
"""

from genossm.benchmark.command import Measured, benchmark, measure
from genossm.benchmark.metrics import Ranked, auroc, average_precision, spearman
from genossm.benchmark.outputs import (
    BENCHMARK_COLUMNS,
    BENCHMARK_METRICS,
    BENCHMARK_TABLE,
    format_summary,
)

__all__ = ["BENCHMARK_COLUMNS", "BENCHMARK_METRICS", "BENCHMARK_TABLE", "Measured", "Ranked",
           "auroc", "average_precision", "benchmark", "format_summary", "measure", "spearman"]
