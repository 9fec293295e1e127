# Config and sample-sheet loading, validated with Snakemake's own `validate`.

import csv

from snakemake.utils import validate


validate(config, "../schemas/config.schema.yaml")


def _load_samples(path):
    """Rows of the tab-separated sample sheet, each validated; errors name the line."""
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
            validate(row, "../schemas/samples.schema.yaml")
        except Exception as e:
            raise ValueError(f"{where}: {e}") from None
        if row["name"] in rows:
            raise ValueError(f"{where}: duplicate sample name")
        rows[row["name"]] = row
    if not rows:
        raise ValueError(f"{path}: the sample sheet has no rows")
    return rows


SAMPLES = _load_samples(config["samples"])


wildcard_constraints:
    name="|".join(SAMPLES),


def token_stores():
    return expand("results/tokens/{name}.zarr", name=SAMPLES)


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


# --- models: config["models"] maps a model name to its training config file -------------
MODELS = config["models"]


wildcard_constraints:
    model="|".join(MODELS),


def _require_samples(names, where):
    unknown = [n for n in names if n not in SAMPLES]
    if unknown:
        raise ValueError(f"config {where}: unknown sample(s) {unknown}; the sample sheet has "
                         f"{list(SAMPLES)}")
    return names


def model_dirs():
    return expand("results/models/{model}", model=MODELS)


def evaluations():
    return expand("results/evaluate/{model}/metrics.json", model=MODELS)


def training_stores(wildcards):
    names = _require_samples(config["train"]["samples"], "train.samples")
    return expand("results/tokens/{name}.zarr", name=names)


def model_config_file(wildcards):
    return MODELS[wildcards.model]


def train_options(wildcards):
    opts = config["train"]
    args = [f"--device {opts['device']}"]
    if opts.get("max_time"):
        args.append(f"--max-time {opts['max_time']}")
    if opts.get("max_steps"):
        args.append(f"--max-steps {opts['max_steps']}")
    return " ".join(args)


def evaluation_store(wildcards):
    name = _require_samples([config["evaluate"]["sample"]], "evaluate.sample")[0]
    return f"results/tokens/{name}.zarr"


def evaluation_regions(wildcards):
    bed = config["evaluate"].get("regions")
    return [bed] if bed else []


def evaluate_options(wildcards):
    opts = config["evaluate"]
    args = [f"--device {opts['device']}", f"--threads {opts['threads']}",
            f"--markov-max-order {opts['markov_max_order']}"]
    if opts.get("regions"):
        args.append(f"--regions {opts['regions']}")
    return " ".join(args)


# --- scoring and embedding: named call sets and region sets ----------------------------------
CALLSETS = config["score"]["callsets"]
REGION_SETS = config["embed"]["regions"]


wildcard_constraints:
    callset="|".join(CALLSETS),
    regions="|".join(REGION_SETS),


def scored_callsets():
    return expand("results/score/{model}/{callset}.vcf.gz", model=MODELS, callset=CALLSETS)


def embeddings():
    return expand("results/embed/{model}/{regions}.zarr", model=MODELS, regions=REGION_SETS)


def callset_vcf(wildcards):
    return CALLSETS[wildcards.callset]


def region_set_bed(wildcards):
    return REGION_SETS[wildcards.regions]


def score_options(wildcards):
    opts = config["score"]
    args = [f"--device {opts['device']}", f"--window {opts['window']}",
            f"--batch-size {opts['batch_size']}"]
    if opts.get("rename_chroms"):
        args.append(f"--rename-chroms {opts['rename_chroms']}")
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
