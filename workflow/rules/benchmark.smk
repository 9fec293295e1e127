# Benchmarking the scores of a call set against its labels: every call set with a label source
# (its label columns in config/callsets.tsv) gets one `genossm benchmark` job per model that
# scores it. Not to be confused with Snakemake's `benchmark:` records in results/benchmarks/.


rule benchmark:
    """Scored VCF + the call set's labels (an INFO key, or a column of a labels TSV) -> AUROC,
    AUPRC and Spearman's rho of each score with bootstrap intervals (METRICS.json, a table),
    and ROC, precision-recall and score-by-label plots."""
    input:
        scored="results/score/{genome}/{model}/{callset}.vcf.gz",
        labels=callset_labels,
    output:
        metrics="results/benchmark/{genome}/{model}/{callset}.json",
        table="results/benchmark/{genome}/{model}/{callset}.tsv",
        # named by `genossm benchmark` after METRICS.json, beside it
        roc=report(
            "results/benchmark/{genome}/{model}/{callset}.roc.png",
            caption="../report/benchmark_roc.rst",
            category="Benchmark",
            subcategory="{callset} / {model}",
        ),
        precision_recall=report(
            "results/benchmark/{genome}/{model}/{callset}.pr.png",
            caption="../report/benchmark_precision_recall.rst",
            category="Benchmark",
            subcategory="{callset} / {model}",
        ),
        by_label=report(
            "results/benchmark/{genome}/{model}/{callset}.by_label.png",
            caption="../report/benchmark_by_label.rst",
            category="Benchmark",
            subcategory="{callset} / {model}",
        ),
    log:
        "logs/benchmark/{genome}/{model}/{callset}.log",
    benchmark:
        "results/benchmarks/benchmark/{genome}/{model}/{callset}.tsv"
    params:
        options=benchmark_flags,
        label_source=label_description,
    threads: 1
    resources:
        mem_mb=config["benchmark"]["mem_mb"],
        runtime=config["benchmark"]["runtime"],
    conda:
        "../../envs/genossm.yaml"
    shell:
        "genossm benchmark {input.scored} -o {output.metrics} --table {output.table} --quiet "
        "{params.options} > {log} 2>&1"
