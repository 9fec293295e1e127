# Config and sheet loading, validated with Snakemake's own `validate`, and the input functions
# that wire the rules together. Every sheet error names the file, the line and the row.

import csv
import re
import shlex

from snakemake.utils import validate


validate(config, "../schemas/config.schema.yaml")


# --- config sections -> command-line flags ----------------------------------------------------
# Each step's section of config.yaml holds options of its `genossm` command (their defaults live
# in the command: `genossm <step> --help`) and these settings of the rule itself (and parts,
# the number of score jobs a call set is scattered over, see score.smk). Every rule that runs a
# model, and tokenize, passes `--threads {threads}`; benchmark runs on one thread, no GPU.
RULE_SETTINGS = ("threads", "mem_mb", "runtime", "gpus", "parts")
STEPS = ("tokenize", "train", "evaluate", "score", "embed", "benchmark")
# The sample sheet's columns that are flags of `genossm tokenize`, set per sample.
SAMPLE_COLUMNS = ("reference", "region", "features")
# The call-set sheet's columns that are flags of `genossm benchmark`: its label source.
LABEL_COLUMNS = ("label_info", "labels", "label_column", "positive", "negative", "group_by")


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


def _check_benchmark_section():
    """The benchmark section holds neither a label source (a call set's, in the sheet) nor
    threads or GPUs (the command runs on one thread)."""
    for key in config["benchmark"]:
        if key in LABEL_COLUMNS:
            raise ValueError(f"config: benchmark: {key}: the label source is set per call set, "
                             "in its columns of the call-set sheet")
        if key in ("threads", "gpus", "parts"):
            raise ValueError(f"config: benchmark: {key}: `genossm benchmark` runs on one thread "
                             "without a GPU; mem_mb and runtime are the settings of its job")


def _check_tokenize_section():
    """The tokenize section holds no option that is a sample's own: its reference, region or
    features (columns of the sample sheet), nor where the features BED goes (beside the
    store, where the rule declares it)."""
    for key in config["tokenize"]:
        if key in SAMPLE_COLUMNS:
            raise ValueError(f"config: tokenize: {key}: set per sample, in the {key} column of "
                             "the sample sheet")
        if key == "features_bed":
            raise ValueError("config: tokenize: features_bed: the workflow writes a sample's "
                             "features to results/tokens/NAME.features.bed")


_check_step_options()
_check_benchmark_section()
_check_tokenize_section()


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


def _check_label_sources(callsets):
    """Each call set's label columns make one label source that the benchmark job can read
    (the scored VCF's INFO, or a labels TSV), or are all empty. What the labels hold is
    `genossm benchmark`'s to check."""
    for row in callsets.values():
        given = [c for c in LABEL_COLUMNS if row.get(c)]
        problem = None
        if row.get("label_info") and row.get("label_column"):
            problem = "label_info and label_column: give one label source, not both"
        elif row.get("labels") and not row.get("label_column"):
            problem = "labels: give label_column too, the TSV's column of labels"
        elif row.get("label_column") and not row.get("labels"):
            problem = ("label_column: give labels too, the TSV that holds it (the benchmark "
                       "reads the scored VCF, whose INFO keys go in label_info)")
        elif row.get("label_column") and not row.get("positive"):
            problem = "positive: which values of label_column count as positive"
        elif given and not (row.get("label_info") or row.get("label_column")):
            problem = (f"{', '.join(given)}: no label source; give label_info (an INFO key) or "
                       "labels and label_column (a TSV and its column)")
        if problem:
            raise ValueError(f"{row['where']}: {problem}")


_check_label_sources(CALLSETS)


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


def benchmarked_callsets():
    """The METRICS.json of `genossm benchmark` of each call set with a label source, per
    model."""
    return [f"results/benchmark/{row['genome']}/{model}/{name}.json"
            for name, row in CALLSETS.items() if has_labels(row) for model in MODELS]


def embeddings():
    return [f"results/embed/{row['genome']}/{model}/{name}.zarr"
            for name, row in REGION_SETS.items() for model in MODELS]


# --- tokenize --------------------------------------------------------------------------------
def sample_inputs(wildcards):
    return SAMPLES[wildcards.name]["inputs"].split(";")


def sample_reference(wildcards):
    ref = SAMPLES[wildcards.name].get("reference", "")
    return [ref] if ref else []


def sample_names(features):
    """The samples with (or without) a `features` column, as a wildcard constraint: the rules
    tokenize_features and tokenize (which lacks the BED output) split them."""
    names = [re.escape(n) for n, row in SAMPLES.items() if bool(row.get("features")) == features]
    return "|".join(names) or "(?!)"   # (?!): no sample; the rule never matches


def tokenize_flags(wildcards):
    row = SAMPLES[wildcards.name]
    return command_flags("tokenize", reference=row.get("reference"), region=row.get("region"),
                         features=row.get("features"))


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


# --- benchmark -------------------------------------------------------------------------------
def has_labels(row):
    return bool(row.get("label_info") or row.get("label_column"))


def _labelled_callset(wildcards):
    row = CALLSETS[wildcards.callset]
    if not has_labels(row):
        raise ValueError(f"{row['where']}: this call set has no label source to benchmark "
                         f"against ({', '.join(LABEL_COLUMNS)})")
    return row


def callset_labels(wildcards):
    """The labels TSV of the call set, when its labels come from one."""
    labels = _labelled_callset(wildcards).get("labels")
    return [labels] if labels else []


def benchmark_flags(wildcards):
    row = _labelled_callset(wildcards)
    return command_flags("benchmark", **{c: row.get(c) for c in LABEL_COLUMNS})


def label_description(wildcards):
    """The label source in words, for the report's captions."""
    row = _labelled_callset(wildcards)
    source = (f"INFO {row['label_info']}" if row.get("label_info") else
              f"column {row['label_column']} of {row['labels']}")
    positive = row.get("positive") or "present (a Flag)"
    negative = row.get("negative") or "every other label"
    return f"{source}; positive: {positive}; negative: {negative}"
