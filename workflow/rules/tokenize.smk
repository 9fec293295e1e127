rule tokenize:
    """FASTA / SAM / BAM / CRAM inputs of one sample -> its token store."""
    input:
        inputs=sample_inputs,
        reference=sample_reference,
    output:
        directory("results/tokens/{name}.zarr"),
    log:
        "logs/tokenize/{name}.log",
    benchmark:
        "results/benchmarks/tokenize/{name}.tsv"
    params:
        options=tokenize_flags,
    threads: config["tokenize"]["threads"]
    resources:
        mem_mb=config["tokenize"]["mem_mb"],
        runtime=config["tokenize"]["runtime"],
    conda:
        "../../envs/genossm.yaml"
    shell:
        "genossm tokenize {input.inputs} -o {output} --threads {threads} --force --quiet "
        "{params.options} > {log} 2>&1"
