"""Every option defined once: its default lives in the stage (a function signature, a dataclass);
the `genossm` parser repeats none of them, the workflow turns each config section into flags with
one helper, and every config key reaches its flag with its value."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import inspect
import os
import re
import shlex
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

from genossm import cli
from helpers import ROOT

BIN = Path(sys.executable).parent
STEPS = ("tokenize", "train", "evaluate", "score", "embed", "benchmark")
MODEL_STEPS = ("train", "evaluate", "score", "embed")


def rule_settings() -> tuple[str, ...]:
    """RULE_SETTINGS of workflow/rules/common.smk: the section keys that are not flags."""
    text = (ROOT / "workflow/rules/common.smk").read_text()
    return ast.literal_eval(re.search(r"^RULE_SETTINGS = (.+)$", text, re.M).group(1))


RULE_SETTINGS = rule_settings()


def shipped_config() -> dict:
    return yaml.safe_load((ROOT / "config/config.yaml").read_text())


def flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def same(parsed, value) -> bool:
    return str(parsed) == str(value) if isinstance(parsed, Path) else parsed == value


def check_flags(step: str, section: dict, argv: list[str], *, threads: int | None = None):
    """`argv` (a `genossm step ...` command line) parses, and carries every key of `section` as
    the config says: a rule setting as no flag (threads as --threads), true as the switch,
    false/null as no flag at all (the stage default applies), any other value parsed back
    equal."""
    try:
        ns = vars(cli.build_parser().parse_args(argv))
    except SystemExit:
        pytest.fail(f"`genossm {shlex.join(argv)}` does not parse")
    assert ns["command"] == step
    options = cli.command_options(step)
    for key, value in section.items():
        if key in RULE_SETTINGS:
            if key == "threads" and threads is not None:
                assert ns.get("threads") == threads, (step, argv)
            elif key != "threads":
                assert flag(key) not in argv, (step, key)
            continue
        action = options.get(flag(key))
        assert action is not None, f"config {step}.{key}: `genossm {step}` has no {flag(key)}"
        if value is None or value is False:
            assert action.dest not in ns, (step, key, argv)
        elif value is True:
            assert action.nargs == 0 and ns.get(action.dest) == action.const, (step, key, argv)
        else:
            assert action.dest in ns, f"config {step}.{key}: no {flag(key)} in {argv}"
            assert same(ns[action.dest], value), (step, key, ns[action.dest], value)


# --- the config against the parser ------------------------------------------------------------
MINIMAL = {
    "tokenize": ["tokenize", "in.fa", "-o", "out.zarr"],
    "train": ["train", "in.zarr", "-o", "model"],
    "evaluate": ["evaluate", "model", "in.zarr", "-o", "metrics.json"],
    "score": ["score", "in.vcf", "--fasta", "ref.fa", "--model", "model", "-o", "out.vcf.gz"],
    "embed": ["embed", "--model", "model", "--fasta", "ref.fa", "-o", "out.zarr"],
    "benchmark": ["benchmark", "scored.vcf.gz", "-o", "metrics.json", "--label-info", "AF"],
}


@pytest.mark.parametrize("step", STEPS)
def test_every_config_key_is_a_rule_setting_or_a_flag_that_parses_to_its_value(step):
    section = shipped_config()[step]
    argv = list(MINIMAL[step])
    for key, value in section.items():
        if key in RULE_SETTINGS or value is None or value is False:
            continue
        argv += [flag(key)] if value is True else [flag(key), str(value)]
    check_flags(step, section, argv)


def test_the_schema_holds_no_default_of_a_command_option():
    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    for step in STEPS:
        props = schema["properties"][step]["properties"]
        repeated = [k for k, v in props.items() if "default" in v and k not in RULE_SETTINGS]
        assert not repeated, f"{step}: defaults of command options in the schema: {repeated}"
        for key in props:
            assert key in RULE_SETTINGS or flag(key) in cli.command_options(step), (step, key)


# --- what the workflow generates ---------------------------------------------------------------
# Every option set to something other than the shipped config (and than the defaults), with
# options the shipped config does not name: whatever is in a section reaches the command.
EDITED = {
    "tokenize": {"threads": 3, "chunk_size": 65536, "exclude_flags": "UNMAP,DUP", "min_mapq": 20,
                 "min_length": 30, "mem_mb": 1000, "runtime": 5},
    "train": {"device": "cpu", "max_time": None, "max_steps": 6, "seq_len": 512, "seed": 7,
              "threads": 4, "gpus": 0, "mem_mb": 1000, "runtime": 5},
    "evaluate": {"device": "cpu", "markov_max_order": 4, "chunk_length": 4096, "max_windows": 3,
                 "threads": 5, "gpus": 0, "mem_mb": 1000, "runtime": 5},
    "score": {"window": 256, "batch_size": 7, "device": "cpu", "no_prefix_reuse": True,
              "threads": 6, "gpus": 0, "mem_mb": 1000, "runtime": 5},
    "embed": {"per_base": True, "layer": 1, "rc_average": False, "chunk_length": 4096,
              "max_length": 8192, "device": "cpu", "threads": 7, "gpus": 0, "mem_mb": 1000,
              "runtime": 5},
    "benchmark": {"bootstrap": 0, "seed": 7, "mem_mb": 1000, "runtime": 5},
}


def dry_run_commands(workdir: Path) -> list[list[str]]:
    """The shell commands of `snakemake -n -p`, as argument lists (without the redirection)."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "-d",
                           str(workdir), "-n", "-p", "--cores", "16"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    commands = []
    for line in proc.stdout.splitlines():
        if line.startswith("Shell command: genossm "):
            argv = shlex.split(line.removeprefix("Shell command: "))
            commands.append(argv[1:argv.index(">")])
    return commands


@pytest.fixture(scope="module", params=["shipped", "edited"])
def workflow_run(request, tmp_path_factory):
    """(config, the dry run's commands by step) for the shipped config and the edited one."""
    workdir = tmp_path_factory.mktemp(request.param)
    shutil.copytree(ROOT / "config", workdir / "config")
    config = shipped_config()
    if request.param == "edited":
        config.update(EDITED)
        (workdir / "config/config.yaml").write_text(yaml.safe_dump(config))
    by_step: dict[str, list[list[str]]] = {}
    for argv in dry_run_commands(workdir):
        by_step.setdefault(argv[0], []).append(argv)
    assert set(by_step) == set(STEPS), by_step.keys()
    return config, by_step


@pytest.mark.parametrize("step", STEPS)
def test_the_workflow_turns_each_section_into_flags_that_parse(workflow_run, step):
    config, by_step = workflow_run
    for argv in by_step[step]:
        check_flags(step, config[step], argv, threads=config[step].get("threads"))


@pytest.mark.parametrize("step", ("tokenize", *MODEL_STEPS))
def test_every_rule_that_runs_a_model_passes_threads(workflow_run, step):
    config, by_step = workflow_run
    for argv in by_step[step]:
        assert argv[argv.index("--threads") + 1] == str(config[step]["threads"]), argv


def test_sheet_values_are_added_to_the_flags(workflow_run):
    _, by_step = workflow_run
    reads = [a for a in by_step["tokenize"] if "results/tokens/hg00100_reads.zarr" in a]
    assert reads and reads[0][reads[0].index("--region") + 1] == "17:1-4200"
    # the label source of the one labelled call set, tabix_16
    (labelled,) = by_step["benchmark"]
    assert labelled[1] == "results/score/chr20/small/tabix_16.vcf.gz"
    ns = vars(cli.build_parser().parse_args(labelled))
    assert ns["label_info"] == "AF" and ns["positive"] == "<0.05"
    assert not {"labels", "label_column", "negative", "group_by"} & set(ns)


def test_a_config_key_that_is_no_flag_stops_the_workflow(tmp_path):
    shutil.copytree(ROOT / "config", tmp_path / "config")
    path = tmp_path / "config/config.yaml"
    path.write_text(path.read_text().replace("  window: 4096", "  windw: 4096"))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "-d",
                           str(tmp_path), "-n"], capture_output=True, text=True, env=env)
    assert proc.returncode != 0
    assert "score: windw: `genossm score` has no option --windw" in proc.stdout + proc.stderr


# --- the parser repeats no default -------------------------------------------------------------
@pytest.mark.parametrize("step", STEPS)
def test_the_parser_has_no_defaults_of_its_own(step):
    for action in set(cli.command_options(step).values()):
        if not isinstance(action, argparse._HelpAction):
            assert action.default is argparse.SUPPRESS, (step, action.option_strings)
    ns = vars(cli.build_parser().parse_args(MINIMAL[step]))
    given = {"tokenize": {"inputs", "output"}, "train": {"stores", "output"},
             "evaluate": {"model_dir", "store", "output"},
             "score": {"vcf", "fasta", "model_dir", "output"},
             "embed": {"model_dir", "fasta", "output"},
             "benchmark": {"scored", "output", "label_info"}}[step]
    assert set(ns) - {"command", "func", "debug"} == given


def test_building_the_parser_imports_no_stage_module():
    code = ("import sys; from genossm import cli; cli.build_parser(); "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('genossm.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "torch" not in out and "genossm.score" not in out and "genossm.train" not in out


def stage_defaults(step: str) -> dict:
    """The defaults as the stage modules have them, read here independently of the CLI."""
    def sig(fn):
        return {n: p.default for n, p in inspect.signature(fn).parameters.items()
                if p.default is not inspect.Parameter.empty}

    if step == "tokenize":
        from genossm.tokenize import ReadFilter, tokenize
        return {**sig(tokenize), **{f.name: f.default for f in dataclasses.fields(ReadFilter)}}
    if step == "train":
        from genossm.train import train
        return sig(train)
    if step == "evaluate":
        from genossm.evaluate import evaluate
        return sig(evaluate)
    if step == "score":
        from genossm.score import score_vcf
        return sig(score_vcf)
    if step == "benchmark":
        from genossm.benchmark import benchmark
        return sig(benchmark)
    from genossm.embed import embed
    return sig(embed)


def help_entries(step: str) -> dict[str, str]:
    """`genossm step --help`: each option's entry (on one line) by its last option string."""
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    entries, current = {}, None
    for line in sub.choices[step].format_help().splitlines():
        m = re.match(r"  (-\S+)", line)
        if m:
            current = re.findall(r"(--?[\w-]+)", line.split("  ")[1])[-1]
            entries[current] = line.strip()
        elif current and line.startswith("    "):
            entries[current] += " " + line.strip()
        else:
            current = None
    return entries


@pytest.mark.parametrize("step", STEPS)
def test_help_shows_the_stage_defaults(step, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")                     # one line per help text
    entries = help_entries(step)
    defaults = stage_defaults(step)
    shown = 0
    for action in set(cli.command_options(step).values()):
        if action.nargs == 0:
            # a switch is off unless given: the stage's default must be the off state
            if action.dest in defaults:
                assert defaults[action.dest] == (not action.const), (step, action.dest)
            continue
        value = defaults.get(action.dest)
        if value is None or (step, action.dest) in {("train", "device"),
                                                   ("tokenize", "exclude_flags")}:
            continue
        line = entries[action.option_strings[-1]]
        assert f"(default: {value})" in line, (step, line)
        shown += 1
    assert shown or step == "train"
    if step == "tokenize":
        line = entries["--exclude-flags"]
        from genossm.tokenize import parse_flags
        value = re.search(r"\(default: ([^)]+)\)", line).group(1)
        assert parse_flags(value) == defaults["exclude_flags"]
    if step == "train":
        assert "(default: auto)" in entries["--device"]
        assert re.fullmatch(r"--seq-len L +window length \(default: the training config's, "
                            r"else \d+\)", entries["--seq-len"])


# --- the commands pass on what was given, and only that ----------------------------------------
class Recorder:
    """A stage function's stand-in: records its calls; returns ``result``, or ``answer(*args,
    **kwargs)``."""

    def __init__(self, result=None, answer=None):
        self.result, self.answer, self.calls = result, answer, []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.answer(*args, **kwargs) if self.answer else self.result


CHOSEN = Path("cpu.yaml")   # the built-in config the fake genossm.train chooses


@dataclasses.dataclass
class FakeReadFilter:
    exclude_flags: int = 0
    min_mapq: int = 0
    min_length: int = 0
    region: str | None = None


def fake_modules() -> dict[str, object]:
    def module(**attrs):
        fake = types.ModuleType("fake")
        fake.__dict__.update(attrs)
        return fake

    tokenized = {"sources": [], "empty_records": 0, "contigs": 1, "bases": 1, "n_count": 0,
                 "iupac_count": 0, "reads": 0, "read_bases": 0, "output": "o"}
    trained = {"world_size": 1, "val_bits_per_base": None, "bits_per_base": None, "output": "o",
               "parameters": 1, "steps": 1, "tokens": 1, "elapsed_s": 1, "stopped": "max_steps"}
    metrics = {"model_bits_per_base": 1.0, "markov_order": 1, "markov_bits_per_base": 1.0,
               "bases_scored": 1, "measure": "m"}
    return {
        "genossm.runtime": module(set_threads=Recorder()),
        "genossm.tokenize": module(tokenize=Recorder(tokenized), ReadFilter=FakeReadFilter,
                                   parse_flags=lambda text: 77),
        "genossm.train": module(train=Recorder(trained), load_train_config=Recorder("cfg"),
                                saved_train_config=Recorder({"saved": 1}),
                                config_path=Recorder(answer=lambda config, device: (
                                    config or CHOSEN, config is None)),
                                describe=lambda cfg: "the config"),
        "genossm.evaluate": module(evaluate=Recorder(metrics)),
        "genossm.score": module(score_vcf=Recorder({}), format_summary=lambda s: "summary"),
        "genossm.embed": module(embed=Recorder({"regions": 1, "bases": 1, "width": 1,
                                                "output": "o"})),
        "genossm.benchmark": module(benchmark=Recorder({}),
                                    format_summary=lambda metrics, output: "summary"),
    }


EVERY_OPTION = {
    "tokenize": ["--threads", "3", "--force", "--chunk-size", "4096", "--reference", "r.fa",
                 "--region", "1:1-10", "--exclude-flags", "UNMAP", "--min-mapq", "5",
                 "--min-length", "7", "-q"],
    "train": ["--config", "t.yaml", "--seq-len", "64", "--batch-size", "2", "--max-steps", "3",
              "--max-time", "9", "--seed", "1", "--device", "cpu", "--threads", "2", "--resume",
              "--force", "-q"],
    "evaluate": ["--regions", "r.bed", "--plots", "p", "--device", "cpu", "--threads", "2",
                 "--chunk-length", "64", "--markov-max-order", "3", "--max-windows", "2", "-q"],
    "score": ["--table", "t.tsv", "--plot", "p.png", "--window", "64", "--batch-size", "2",
              "--device", "cpu", "--threads", "2", "--rename-chroms", "add-chr",
              "--no-prefix-reuse", "-q"],
    "embed": ["--bed", "r.bed", "--per-base", "--layer", "1", "--rc-average", "--chunk-length",
              "64", "--max-length", "128", "--device", "cpu", "--threads", "2", "--force", "-q"],
    # with MINIMAL's --label-info: every option but --label-column and --labels, its exclusive
    # alternative
    "benchmark": ["--table", "t.tsv", "--plots", "p", "--positive", "<0.05", "--negative",
                  ">=0.05", "--group-by", "SRC", "--bootstrap", "10", "--seed", "3", "--force",
                  "-q"],
}
STAGE_FUNCTION = {"tokenize": "tokenize", "train": "train", "evaluate": "evaluate",
                  "score": "score_vcf", "embed": "embed", "benchmark": "benchmark"}


def run_with_fakes(monkeypatch, argv):
    fakes = fake_modules()
    for name, module in fakes.items():
        monkeypatch.setitem(sys.modules, name, module)
    assert cli.main(argv) == 0
    return fakes


@pytest.mark.parametrize("step", STEPS)
def test_an_option_not_given_is_not_passed(step, monkeypatch):
    fakes = run_with_fakes(monkeypatch, MINIMAL[step])
    (args, kwargs), = getattr(fakes[f"genossm.{step}"], STAGE_FUNCTION[step]).calls
    passed = set(kwargs) - {"read_filter"}       # tokenize: ReadFilter() with its defaults
    # (train: the line naming the built-in config it chose, without --config)
    assert passed <= {"fasta", "model_dir", "output", "label_info", "announce"}, passed
    if step == "tokenize":
        assert kwargs["read_filter"] == FakeReadFilter()
    if step == "train":
        # without --config nor --device, the built-in default of the machine's device
        assert fakes["genossm.train"].config_path.calls == [((None, None), {})]
        assert fakes["genossm.train"].load_train_config.calls == [((CHOSEN,), {"base": None})]
    if step in MODEL_STEPS:
        assert fakes["genossm.runtime"].set_threads.calls == [((None,), {})]


@pytest.mark.parametrize("step", STEPS)
def test_every_option_given_reaches_the_stage_function(step, monkeypatch):
    real = importlib.import_module(f"genossm.{step}")
    fakes = run_with_fakes(monkeypatch, MINIMAL[step] + EVERY_OPTION[step])
    (args, kwargs), = getattr(fakes[f"genossm.{step}"], STAGE_FUNCTION[step]).calls
    # the real function takes the call the command made
    inspect.signature(getattr(real, STAGE_FUNCTION[step])).bind(*args, **kwargs)
    assert kwargs.get("progress") is False
    if step == "tokenize":
        assert kwargs["read_filter"] == FakeReadFilter(exclude_flags=77, min_mapq=5,
                                                       min_length=7, region="1:1-10")
        inspect.signature(real.ReadFilter).bind(**dataclasses.asdict(kwargs["read_filter"]))
        assert kwargs["threads"] == 3 and kwargs["chunk_size"] == 4096
    elif step in MODEL_STEPS:
        assert fakes["genossm.runtime"].set_threads.calls == [((2,), {})]
    if step == "train":
        (cfg_args, cfg_kwargs), = fakes["genossm.train"].load_train_config.calls
        assert cfg_args == (Path("t.yaml"),) and cfg_kwargs == {
            "base": None, "seq_len": 64, "batch_size": 2, "max_steps": 3, "max_time": 9.0,
            "seed": 1}
        inspect.signature(real.load_train_config).bind(*cfg_args, **cfg_kwargs)
        assert kwargs == {"device": "cpu", "resume": True, "force": True, "progress": False}
    if step == "score":
        assert kwargs["window"] == 64 and kwargs["prefix_reuse"] is False
    if step == "embed":
        assert kwargs["rc_average"] is True and kwargs["per_base"] is True
    if step == "benchmark":
        assert args == (Path("scored.vcf.gz"), Path("metrics.json"))
        assert kwargs == {"label_info": "AF", "table": Path("t.tsv"), "plots_dir": Path("p"),
                          "positive": "<0.05", "negative": ">=0.05", "group_by": "SRC",
                          "bootstrap": 10, "seed": 3, "force": True, "progress": False}


def test_every_subcommand_prints_its_help(capsys):
    """``genossm CMD --help`` works for every subcommand (with the stage's defaults shown)."""
    parser = cli.build_parser()
    commands = next(a for a in parser._actions
                    if isinstance(a, argparse._SubParsersAction)).choices
    for name in commands:
        with pytest.raises(SystemExit) as done:
            parser.parse_args([name, "--help"])
        assert done.value.code == 0, name
        assert "usage: genossm " + name in capsys.readouterr().out, name
