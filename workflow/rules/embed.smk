rule embed:
    """Region set (BED) + reference FASTA + model -> embeddings (.zarr): one pooled vector per
    region, per-base vectors on request."""
    input:
        bed=region_set_bed,
        fasta=genome_fasta,
        model="results/models/{genome}/{model}",
    output:
        directory("results/embed/{genome}/{model}/{regions}.zarr"),
    log:
        "logs/embed/{genome}/{model}/{regions}.log",
    benchmark:
        "results/benchmarks/embed/{genome}/{model}/{regions}.tsv"
    params:
        options=command_flags("embed"),
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
