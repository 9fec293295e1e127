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
