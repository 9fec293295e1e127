"""``genossm benchmark``, the command: the options checked, the outputs claimed, the inputs
read (scored.py) and labelled (labels.py), the metrics computed (metrics.py) per score, overall
and per group, and the outputs (outputs.py, plots.py) staged together and renamed into place
with METRICS.json last. ``measure`` computes the metrics without writing anything.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from genossm import __version__
from genossm.benchmark.labels import (
    Classes,
    check_classes,
    classify,
    positive_class,
    target_side,
)
from genossm.benchmark.metrics import CONFIDENCE, evaluate
from genossm.benchmark.outputs import (
    BENCHMARK_METRICS,
    BENCHMARK_TABLE,
    METRICS_FORMAT,
    default_table_path,
    plot_paths,
    table_text,
)
from genossm.benchmark.plots import write_plots
from genossm.benchmark.scored import ORIENTED, SCORES, Allele, read_inputs
from genossm.errors import InputError
from genossm.fileio import StagedOutputs, check_distinct, claim_outputs
from genossm.plots import PLOT
from genossm.score.variants import SCORED

NO_GROUP = "NA"


@dataclass
class Measured:
    """What ``measure`` found: the metrics (METRICS.json without its outputs) and what the
    table and the plots are drawn from."""
    metrics: dict
    classified: list[tuple[Allele, bool]]      # labelled alleles in a class: (allele, positive)
    title: str


def benchmark(scored, output, *, label_info: str | None = None,
              label_column: str | None = None, labels=None, positive=None, negative=None,
              group_by: str | None = None, table=None, plots_dir=None, bootstrap: int = 1000,
              seed: int = 0, progress: bool = True, force: bool = False) -> dict:
    """Benchmark the scores of ``scored`` (a scored VCF or score table) against labels
    (labels.py); write METRICS.json (``output``), the TSV (``table``, default beside it) and the
    PNGs (into ``plots_dir``, default beside ``output``); ``force`` replaces outputs an earlier
    run wrote. Returns the metrics."""
    output = Path(output)
    table = default_table_path(output) if table is None else Path(table)
    plots = plot_paths(output, output.parent if plots_dir is None else Path(plots_dir))
    _check_options(label_info, label_column, labels, bootstrap)
    check_distinct({"METRICS.json (-o)": output, "the table (--table)": table,
                    **{f"the {k} plot": p for k, p in plots.items()}})
    claim_outputs([(output, BENCHMARK_METRICS), (table, BENCHMARK_TABLE),
                   *((p, PLOT) for p in plots.values())], inputs=[scored, labels], force=force)
    with StagedOutputs() as staged:   # temporaries first: one that cannot be made fails now
        staged_plots = {k: staged.file(p) for k, p in plots.items()}
        staged_table = staged.file(table)
        staged_metrics = staged.file(output)    # last: marks the run finished
        found = measure(scored, label_info=label_info, label_column=label_column, labels=labels,
                        positive=positive, negative=negative, group_by=group_by,
                        bootstrap=bootstrap, seed=seed, progress=progress)
        metrics = {**found.metrics, "table": str(table),
                   "plots": {k: str(p) for k, p in plots.items()}}
        write_plots(found.classified, metrics["overall"], found.title, staged_plots)
        staged_table.write_text(table_text(metrics))
        staged_metrics.write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    return metrics


def measure(scored, *, label_info: str | None = None, label_column: str | None = None,
            labels=None, positive=None, negative=None, group_by: str | None = None,
            bootstrap: int = 1000, seed: int = 0, progress: bool = False) -> Measured:
    """The metrics of ``benchmark`` (its arguments), without writing anything."""
    scored = Path(scored)
    labels = None if labels is None else Path(labels)
    _check_options(label_info, label_column, labels, bootstrap)
    pos_classes = Classes.parse("--positive", positive)
    neg_classes = Classes.parse("--negative", negative)
    kind, alleles, flag, unmatched = read_inputs(scored, label_info, label_column, labels,
                                                 group_by)
    source = (scored, f"INFO {label_info}") if label_info is not None else \
        (labels or scored, f"column {label_column}")
    pos_classes = positive_class(pos_classes, neg_classes, flag, source)
    classified = classify(alleles, pos_classes, neg_classes, source)
    check_classes(alleles, classified, pos_classes, neg_classes, source)
    side = target_side(pos_classes, classified)
    spearman_against = "class (1 positive, 0 negative)" if side == 0 else \
        ("-" if side < 0 else "") + (label_info or label_column)

    groups: dict[str, list[tuple[Allele, bool]]] = {}
    if group_by is not None:
        for allele, c in classified:
            groups.setdefault(NO_GROUP if allele.group is None else str(allele.group),
                              []).append((allele, c))
    tasks = [classified, *(groups[name] for name in sorted(groups))]
    with tqdm(total=len(tasks) * len(SCORES), desc="benchmark", unit=" sets",
              disable=None if progress else True, leave=False) as bar:
        results = [evaluate(members, side, bootstrap, seed, bar) for members in tasks]
    counts = _counts(alleles, classified)
    if unmatched is not None:
        counts["label_rows_matching_no_allele"] = unmatched
    metrics = {
        "genossm_benchmark": METRICS_FORMAT,
        "created_by": f"genossm {__version__}",
        "scored": str(scored),
        "scored_kind": "scored VCF" if kind == "vcf" else "score table",
        "labels": {"source": f"{source[1]} of {source[0]}",
                   "positive": pos_classes.describe(),
                   "negative": None if neg_classes is None else neg_classes.describe(),
                   "spearman_against": spearman_against},
        "group_by": group_by,
        "scores": {name: {"oriented": ORIENTED[name], "higher_means": "more damaging"}
                   for name, *_ in SCORES},
        "bootstrap": {"resamples": bootstrap, "seed": seed, "confidence": CONFIDENCE,
                      "method": "percentile; positives and negatives resampled apart"},
        "alleles": counts,
        "overall": results[0],
        "groups": dict(zip(sorted(groups), results[1:], strict=True)),
    }
    title = f"{scored.name}: {source[1]}, positive {pos_classes.describe()}"
    return Measured(metrics, classified, title)


def _check_options(label_info, label_column, labels, bootstrap: int) -> None:
    if (label_info is None) == (label_column is None):
        raise InputError(None, "give the labels: --label-info KEY (an INFO key of a scored VCF) "
                               "or --label-column NAME (a column of a TSV), one of them")
    if labels is not None and label_column is None:
        raise InputError(None, "--labels TSV goes with --label-column NAME (its column of "
                               "labels)")
    if bootstrap < 0:
        raise InputError(None, f"--bootstrap must be 0 or more, got {bootstrap}")


def _counts(alleles: list[Allele], classified) -> dict:
    """METRICS.json's ``alleles``: how many, and why those not benchmarked are not."""
    labelled = sum(1 for a in alleles if a.label is not None)
    statuses = Counter(a.status for a, _ in classified)
    return {"alt_alleles": len(alleles), "unlabelled": len(alleles) - labelled,
            "in_neither_class": labelled - len(classified),
            "positive": sum(1 for _, c in classified if c),
            "negative": sum(1 for _, c in classified if not c),
            "unscored": sum(n for s, n in statuses.items() if s != SCORED),
            "by_status": dict(statuses.most_common())}
