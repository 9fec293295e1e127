# genossm workflow: FASTA/BAM -> token stores (later: train -> evaluate, score, embed).
# Every rule calls one `genossm` subcommand; the logic lives in the package.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/tokenize.smk"


rule all:
    input:
        token_stores(),
    default_target: True
