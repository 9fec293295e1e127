# Scoring a call set. With score.parts: 1 (the default) one `score` job scores it whole. With
# parts: N > 1 it is scattered and gathered with Snakemake's own scatter/gather: split_calls
# (`genossm split-calls`, one job per call set) cuts it into N parts balanced by record count
# (N in all, not per contig; cut only between contigs or positions), each part is its own
# `score` job (the profile's `score` threads and resources, a GPU each, apply to every part),
# and gather_scores (`genossm gather-scores`) writes the same outputs one job would have.
# `--set-scatter score=N` on the command line overrides parts.

import os


scattergather:
    score=config["score"]["parts"],


SCORE_PARTS = len(scatter.score("{scatteritem}"))


if SCORE_PARTS == 1:

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
            "-o {output.vcf} --table {output.table} --plot {output.plot} --threads {threads} "
            "--quiet {params.options} > {log} 2>&1"

else:

    rule split_calls:
        """Call set (VCF/BCF) -> its parts (bgzipped VCF, PARTS_DIR/I-of-N.vcf.gz), balanced by
        record count, for the score jobs; shared by every model."""
        input:
            vcf=callset_vcf,
        output:
            temp(scatter.score("results/split/{{genome}}/{{callset}}/{scatteritem}.vcf.gz")),
        log:
            "logs/split_calls/{genome}/{callset}.log",
        benchmark:
            "results/benchmarks/split_calls/{genome}/{callset}.tsv"
        params:
            directory=lambda wildcards, output: os.path.dirname(output[0]),
            parts=lambda wildcards, output: len(output),
        threads: 1
        resources:
            mem_mb=config["score"]["mem_mb"],
            runtime=config["score"]["runtime"],
        conda:
            "../../envs/genossm.yaml"
        shell:
            "genossm split-calls {input.vcf} -o {params.directory} --parts {params.parts} "
            "> {log} 2>&1"

    rule score:
        """One part of a call set + reference FASTA + model -> the part scored (bgzipped VCF,
        table), for gather_scores."""
        input:
            vcf="results/split/{genome}/{callset}/{scatteritem}.vcf.gz",
            fasta=genome_fasta,
            model="results/models/{genome}/{model}",
        output:
            vcf=temp("results/score/{genome}/{model}/{callset}.parts/{scatteritem}.vcf.gz"),
            tbi=temp("results/score/{genome}/{model}/{callset}.parts/{scatteritem}.vcf.gz.tbi"),
            table=temp("results/score/{genome}/{model}/{callset}.parts/{scatteritem}.tsv"),
        log:
            "logs/score/{genome}/{model}/{callset}/{scatteritem}.log",
        benchmark:
            "results/benchmarks/score/{genome}/{model}/{callset}/{scatteritem}.tsv"
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
            "-o {output.vcf} --table {output.table} --threads {threads} --quiet "
            "{params.options} > {log} 2>&1"

    rule gather_scores:
        """The scored parts of a call set -> scored VCF (bgzipped, tabix-indexed) and table, as
        one score job would have written them, and the plot."""
        input:
            vcf=gather.score(
                "results/score/{{genome}}/{{model}}/{{callset}}.parts/{scatteritem}.vcf.gz"
            ),
            table=gather.score(
                "results/score/{{genome}}/{{model}}/{{callset}}.parts/{scatteritem}.tsv"
            ),
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
            "logs/gather_scores/{genome}/{model}/{callset}.log",
        benchmark:
            "results/benchmarks/gather_scores/{genome}/{model}/{callset}.tsv"
        threads: 1
        resources:
            mem_mb=config["score"]["mem_mb"],
            runtime=config["score"]["runtime"],
        conda:
            "../../envs/genossm.yaml"
        shell:
            "genossm gather-scores {input.vcf} -o {output.vcf} --table {output.table} "
            "--plot {output.plot} > {log} 2>&1"
