rule tokenize:
    """FASTA / GenBank / EMBL / 2bit / FASTQ / SAM / BAM / CRAM inputs of one sample -> its
    token store."""
    input:
        inputs=sample_inputs,
        reference=sample_reference,
    output:
        store=directory("results/tokens/{name}.zarr"),
    log:
        "logs/tokenize/{name}.log",
    benchmark:
        "results/benchmarks/tokenize/{name}.tsv"
    wildcard_constraints:
        name=sample_names(features=False),
    params:
        options=tokenize_flags,
    threads: config["tokenize"]["threads"]
    resources:
        mem_mb=config["tokenize"]["mem_mb"],
        runtime=config["tokenize"]["runtime"],
    conda:
        "../../envs/genossm.yaml"
    shell:
        "genossm tokenize {input.inputs} -o {output.store} --threads {threads} --force --quiet "
        "{params.options} > {log} 2>&1"


# A sample with a `features` column (GenBank/EMBL inputs) also writes those features as a BED
# beside its store, where a region set's `bed` may name it.
use rule tokenize as tokenize_features with:
    output:
        store=directory("results/tokens/{name}.zarr"),
        features="results/tokens/{name}.features.bed",
    wildcard_constraints:
        name=sample_names(features=True),
