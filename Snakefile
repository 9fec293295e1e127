# genossm workflow: FASTA/BAM -> token stores -> models -> evaluation, scored VCFs (benchmarked
# against their labels, where a call set has some), embeddings.
# Every rule calls one `genossm` subcommand; the logic lives in the package.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/tokenize.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/score.smk"
include: "workflow/rules/benchmark.smk"
include: "workflow/rules/embed.smk"


rule all:
    input:
        token_stores(),
        evaluations(),
        scored_callsets(),
        benchmarked_callsets(),
        embeddings(),
    default_target: True
