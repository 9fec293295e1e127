# Config and sheet loading, validated with Snakemake's own `validate`, and the input functions
# that wire the rules together. Every sheet error names the file, the line and the row.

import csv
import shlex

from snakemake.utils import validate


validate(config, "../schemas/config.schema.yaml")


# --- config sections -> command-line flags ----------------------------------------------------
# Each step's section of config.yaml holds options of its `genossm` command (their defaults live
# in the command: `genossm <step> --help`) and these settings of the rule itself (and parts,
# the number of score jobs a call set is scattered over, see score.smk). Every rule that runs a
# model, and tokenize, passes `--threads {threads}`.
RULE_SETTINGS = ("threads", "mem_mb", "runtime", "gpus", "parts")
STEPS = ("tokenize", "train", "evaluate", "score", "embed")


def _flag(key):
    return f"--{key.replace('_', '-')}"


def command_flags(step, **per_row):
    """The flags of config[step] (plus the values of a sheet row, which win) for `genossm
    step`: `some_key: value` -> `--some-key value`; true -> `--some-key`; false, null or empty
    -> nothing, so the command's own default applies."""
    values = {k: v for k, v in config[step].items() if k not in RULE_SETTINGS}
    values.update(per_row)
    flags = []
    for key, value in values.items():
        if value is None or value is False or value == "":
            continue
        flags.append(_flag(key) if value is True else f"{_flag(key)} {shlex.quote(str(value))}")
    return " ".join(flags)


def _check_step_options():
    """Every option key of a step's section is a flag of its command (a typo fails here, not
    when the job runs). Skipped where the genossm package is not importable by Snakemake
    (it then runs in the rules' conda environment only)."""
    try:
        from genossm.cli import command_options
    except ImportError:
        return
    for step in STEPS:
        options = command_options(step)
        for key, value in config[step].items():
            if key in RULE_SETTINGS:
                continue
            action = options.get(_flag(key))
            if action is None:
                raise ValueError(f"config: {step}: {key}: `genossm {step}` has no option "
                                 f"{_flag(key)} (see `genossm {step} --help`; the settings of the "
                                 f"job itself are {', '.join(RULE_SETTINGS)})")
            if (action.nargs == 0) != isinstance(value, bool) and value is not None:
                want = "true or false" if action.nargs == 0 else "a value, not true/false"
                raise ValueError(f"config: {step}: {key}: {_flag(key)} takes {want}, got "
                                 f"{value!r}")


_check_step_options()


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


def tokenize_flags(wildcards):
    row = SAMPLES[wildcards.name]
    return command_flags("tokenize", reference=row.get("reference"), region=row.get("region"))


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


def evaluation_store(wildcards):
    row = GENOMES[wildcards.genome]
    name = row.get("evaluate") or row["train"].split(";")[0]
    return f"results/tokens/{name}.zarr"


def evaluation_regions(wildcards):
    bed = GENOMES[wildcards.genome].get("evaluate_regions")
    return [bed] if bed else []


def evaluate_flags(wildcards):
    return command_flags("evaluate", regions=GENOMES[wildcards.genome].get("evaluate_regions"))


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


def score_flags(wildcards):
    return command_flags("score", rename_chroms=CALLSETS[wildcards.callset].get("rename_chroms"))
