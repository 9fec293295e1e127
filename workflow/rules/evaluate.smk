rule evaluate:
    """Model -> bits per base on the held-out regions against the k-mer Markov baseline,
    with training curves and bits by position in the window."""
    input:
        model="results/models/{genome}/{model}",
        store=evaluation_store,
        regions=evaluation_regions,
    output:
        metrics=report(
            "results/evaluate/{genome}/{model}/metrics.json",
            caption="../report/metrics.rst",
            category="Evaluation",
            subcategory="{genome} / {model}",
        ),
        curves=report(
            "results/evaluate/{genome}/{model}/training_curves.png",
            caption="../report/training_curves.rst",
            category="Evaluation",
            subcategory="{genome} / {model}",
        ),
        by_position=report(
            "results/evaluate/{genome}/{model}/bits_by_position.png",
            caption="../report/bits_by_position.rst",
            category="Evaluation",
            subcategory="{genome} / {model}",
        ),
    log:
        "logs/evaluate/{genome}/{model}.log",
    benchmark:
        "results/benchmarks/evaluate/{genome}/{model}.tsv"
    params:
        options=evaluate_flags,
    threads: config["evaluate"]["threads"]
    resources:
        mem_mb=config["evaluate"]["mem_mb"],
        runtime=config["evaluate"]["runtime"],
        gpu=config["evaluate"]["gpus"],
    conda:
        "../../envs/genossm.yaml"
    shell:
        "genossm evaluate {input.model} {input.store} -o {output.metrics} --threads {threads} "
        "--quiet {params.options} > {log} 2>&1"
