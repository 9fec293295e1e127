rule embed:
    """Region set (BED) + reference FASTA + model -> embeddings (.zarr): one pooled vector per
    region, per-base vectors on request."""
    input:
        bed=region_set_bed,
        fasta=config["embed"]["fasta"],
        model="results/models/{model}",
    output:
        directory("results/embed/{model}/{regions}.zarr"),
    log:
        "logs/embed/{model}/{regions}.log",
    benchmark:
        "results/benchmarks/embed/{model}/{regions}.tsv"
    params:
        options=embed_options,
    threads: config["embed"]["threads"]
    resources:
        mem_mb=config["embed"]["mem_mb"],
        runtime=config["embed"]["runtime"],
        gpu=config["embed"]["gpus"],
    conda:
        "../../envs/genossm.yaml"
    shell:
        "genossm embed --model {input.model} --fasta {input.fasta} --bed {input.bed} "
        "-o {output} --threads {threads} --force --quiet {params.options} > {log} 2>&1"
