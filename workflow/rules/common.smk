# Config and sheet loading, validated with Snakemake's own `validate`, and the input functions
# that wire the rules together. Every sheet error names the file, the line and the row.

import csv

from snakemake.utils import validate


validate(config, "../schemas/config.schema.yaml")


def load_sheet(path, schema, what):
    """Rows of a tab-separated sheet keyed by their `name`, each validated against `schema`;
    lines starting with '#' are comments."""
    with open(path, newline="") as fh:
        numbered = [
            (n, line) for n, line in enumerate(fh, start=1) if not line.startswith("#")
        ]
    reader = csv.DictReader((line for _, line in numbered), delimiter="\t")
    rows = {}
    for (number, _), row in zip(numbered[1:], reader):
        row = {k: (v or "").strip() for k, v in row.items() if k is not None}
        where = f"{path}: line {number} ({row.get('name')!r})"
        try:
            validate(row, schema)
        except Exception as e:
            raise ValueError(f"{where}: {e}") from None
        if row["name"] in rows:
            raise ValueError(f"{where}: duplicate {what} name")
        rows[row["name"]] = dict(row, where=where)
    if not rows:
        raise ValueError(f"{path}: the {what} sheet has no rows")
    return rows


def _check_refs(rows, column, known, what, split=False):
    """Every row's `column` names rows of `known` (a ';'-separated list when `split`)."""
    for row in rows.values():
        names = [n for n in row[column].split(";") if n] if split else [row[column]]
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"{row['where']}: {column}: unknown {what} {unknown}; known: "
                             f"{sorted(known)}")


SAMPLES = load_sheet(config["samples"], "../schemas/samples.schema.yaml", "sample")
GENOMES = load_sheet(config["genomes"], "../schemas/genomes.schema.yaml", "genome")
CALLSETS = load_sheet(config["callsets"], "../schemas/callsets.schema.yaml", "call set")
REGION_SETS = load_sheet(config["region_sets"], "../schemas/region_sets.schema.yaml",
                         "region set")
MODELS = config["models"]
_check_refs(GENOMES, "train", SAMPLES, "sample(s)", split=True)
_check_refs({k: v for k, v in GENOMES.items() if v.get("evaluate")}, "evaluate", SAMPLES,
            "sample(s)")
_check_refs(CALLSETS, "genome", GENOMES, "genome(s)")
_check_refs(REGION_SETS, "genome", GENOMES, "genome(s)")


wildcard_constraints:
    name="|".join(SAMPLES),
    genome="|".join(GENOMES),
    model="|".join(MODELS),
    callset="|".join(CALLSETS),
    regions="|".join(REGION_SETS),


# --- targets ---------------------------------------------------------------------------------
def token_stores():
    return expand("results/tokens/{name}.zarr", name=SAMPLES)


def evaluations():
    return expand("results/evaluate/{genome}/{model}/metrics.json", genome=GENOMES,
                  model=MODELS)


def scored_callsets():
    return [f"results/score/{row['genome']}/{model}/{name}.vcf.gz"
            for name, row in CALLSETS.items() for model in MODELS]


def embeddings():
    return [f"results/embed/{row['genome']}/{model}/{name}.zarr"
            for name, row in REGION_SETS.items() for model in MODELS]


# --- tokenize --------------------------------------------------------------------------------
def sample_inputs(wildcards):
    return SAMPLES[wildcards.name]["inputs"].split(";")


def sample_reference(wildcards):
    ref = SAMPLES[wildcards.name].get("reference", "")
    return [ref] if ref else []


def tokenize_options(wildcards):
    row, opts = SAMPLES[wildcards.name], config["tokenize"]
    args = [
        f"--chunk-size {opts['chunk_size']}",
        f"--exclude-flags {opts['exclude_flags']}",
        f"--min-mapq {opts['min_mapq']}",
        f"--min-length {opts['min_length']}",
    ]
    if row.get("reference"):
        args.append(f"--reference {row['reference']}")
    if row.get("region"):
        args.append(f"--region {row['region']}")
    return " ".join(args)


# --- train and evaluate ----------------------------------------------------------------------
def training_stores(wildcards):
    names = [n for n in GENOMES[wildcards.genome]["train"].split(";") if n]
    return expand("results/tokens/{name}.zarr", name=names)


def model_config_file(wildcards):
    return MODELS[wildcards.model]


def train_launcher(wildcards, resources):
    """`genossm`, or `torchrun` over it with one process per GPU when a job has several."""
    if resources.gpu > 1:
        return f"torchrun --standalone --nproc-per-node {resources.gpu} -m genossm"
    return "genossm"


def train_options(wildcards):
    opts = config["train"]
    args = [f"--device {opts['device']}"]
    if opts.get("max_time"):
        args.append(f"--max-time {opts['max_time']}")
    if opts.get("max_steps"):
        args.append(f"--max-steps {opts['max_steps']}")
    return " ".join(args)


def evaluation_store(wildcards):
    row = GENOMES[wildcards.genome]
    name = row.get("evaluate") or row["train"].split(";")[0]
    return f"results/tokens/{name}.zarr"


def evaluation_regions(wildcards):
    bed = GENOMES[wildcards.genome].get("evaluate_regions")
    return [bed] if bed else []


def evaluate_options(wildcards, input):
    opts = config["evaluate"]
    args = [f"--device {opts['device']}", f"--markov-max-order {opts['markov_max_order']}"]
    if input.regions:
        args.append(f"--regions {input.regions}")
    return " ".join(args)


# --- score and embed -------------------------------------------------------------------------
def genome_fasta(wildcards):
    return GENOMES[wildcards.genome]["fasta"]


def _belongs(row, wildcards, what):
    if row["genome"] != wildcards.genome:
        raise ValueError(f"{row['where']}: this {what} is on genome {row['genome']!r}, not "
                         f"{wildcards.genome!r}")


def callset_vcf(wildcards):
    row = CALLSETS[wildcards.callset]
    _belongs(row, wildcards, "call set")
    return row["vcf"]


def region_set_bed(wildcards):
    row = REGION_SETS[wildcards.regions]
    _belongs(row, wildcards, "region set")
    return row["bed"]


def score_options(wildcards):
    opts = config["score"]
    args = [f"--device {opts['device']}", f"--window {opts['window']}",
            f"--batch-size {opts['batch_size']}"]
    rename = CALLSETS[wildcards.callset].get("rename_chroms")
    if rename:
        args.append(f"--rename-chroms {rename}")
    return " ".join(args)


def embed_options(wildcards):
    opts = config["embed"]
    args = [f"--device {opts['device']}", f"--layer {opts['layer']}",
            f"--chunk-length {opts['chunk_length']}"]
    if opts.get("per_base"):
        args.append("--per-base")
    if opts.get("rc_average"):
        args.append("--rc-average")
    return " ".join(args)
