rule score:
    """Call set (VCF/BCF) + reference FASTA + model -> scored VCF (bgzipped, tabix-indexed)
    and a table with one row per (record, alt allele)."""
    input:
        vcf=callset_vcf,
        fasta=genome_fasta,
        model="results/models/{genome}/{model}",
    output:
        vcf="results/score/{genome}/{model}/{callset}.vcf.gz",
        tbi="results/score/{genome}/{model}/{callset}.vcf.gz.tbi",
        table="results/score/{genome}/{model}/{callset}.tsv",
        plot=report(
            "results/score/{genome}/{model}/{callset}.png",
            caption="../report/score_distributions.rst",
            category="Variant scores",
            subcategory="{callset}",
        ),
    log:
        "logs/score/{genome}/{model}/{callset}.log",
    benchmark:
        "results/benchmarks/score/{genome}/{model}/{callset}.tsv"
    params:
        options=score_flags,
    threads: config["score"]["threads"]
    resources:
        mem_mb=config["score"]["mem_mb"],
        runtime=config["score"]["runtime"],
        gpu=config["score"]["gpus"],
    conda:
        "../../envs/genossm.yaml"
    shell:
        "genossm score {input.vcf} --fasta {input.fasta} --model {input.model} "
        "-o {output.vcf} --table {output.table} --plot {output.plot} --threads {threads} --quiet "
        "{params.options} > {log} 2>&1"
