"""Where ``genossm COMMAND --help`` finds each option's default: in the stage that owns it.

The CLI gives every stage option the default argparse.SUPPRESS, so that an option the user did
not give never reaches the stage and the stage's own default applies (docs/design.md, "Options
and the workflow"). The help shows those defaults by reading the stage's signature (or the
dataclass it takes) when, and only when, help is printed: building the parser never imports
torch or a stage module.
"""

from __future__ import annotations

import argparse
import importlib
import inspect


def steps(text: str) -> int | str:
    """--max-steps: a number, or "auto" (TrainConfig.max_steps None)."""
    return text if text == "auto" else int(text)


# Command-line overrides of the training config (TrainConfig fields): name -> (type, metavar,
# help). Not given: the --config file's value (or the resumed run's), else TrainConfig's.
TRAIN_OVERRIDES = {
    "seq_len": (int, "L", "window length"),
    "batch_size": (int, None, "windows per micro-batch per process"),
    "max_steps": (steps, "N|auto",
                  "optimizer steps in all; auto: as many as --max-time allows, the learning "
                  "rate schedule fitted to it"),
    "max_time": (float, "SECONDS", "stop with a checkpoint after this long (this invocation)"),
    "seed": (int, None, "random seed"),
}


def _signature_defaults(fn) -> dict:
    """The keyword defaults of a function (or a dataclass's fields)."""
    return {name: p.default for name, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _tokenize_defaults() -> dict:
    from genossm import tokenize as module

    d = {**_signature_defaults(module.tokenize), **_signature_defaults(module.ReadFilter)}
    # shown the way --exclude-flags takes it: by the flag names defined beside ReadFilter
    flags = d["exclude_flags"]
    names = getattr(inspect.getmodule(module.ReadFilter), "FLAG_NAMES", {})
    if isinstance(flags, int):
        chosen = [name for name, bit in names.items() if flags & bit]
        d["exclude_flags"] = ",".join(chosen) if sum(names[n] for n in chosen) == flags \
            else hex(flags)
    return d


def _train_defaults() -> dict:
    from genossm.runtime import resolve_device
    from genossm.train import load_train_config, train

    d = _signature_defaults(train)
    if d.get("device") is None:     # train(device=None) is resolve_device's default
        d["device"] = _signature_defaults(resolve_device)["name"]
    built_in = load_train_config(None)
    for name in TRAIN_OVERRIDES:
        value = getattr(built_in, name)
        d[name] = f"the training config's, else {'none' if value is None else value}"
    return d


def _function_defaults(module: str, function: str):
    """A function that returns the keyword defaults of ``module.function`` (imported then)."""
    return lambda: _signature_defaults(getattr(importlib.import_module(module), function))


# command -> where its options' defaults are (a function, called only to print help)
STAGE_DEFAULTS = {"tokenize": _tokenize_defaults, "train": _train_defaults,
                  "evaluate": _function_defaults("genossm.evaluate", "evaluate"),
                  "score": _function_defaults("genossm.score", "score_vcf"),
                  "embed": _function_defaults("genossm.embed", "embed"),
                  "convert": _function_defaults("genossm.convert", "convert"),
                  "export": _function_defaults("genossm.hf", "export"),
                  "benchmark": _function_defaults("genossm.benchmark", "benchmark"),
                  "split-calls": _function_defaults("genossm.score.parts", "split_calls"),
                  "gather-scores": _function_defaults("genossm.score.parts", "gather_scores")}


class StageDefaultsHelp(argparse.HelpFormatter):
    """Help that adds "(default: X)" to each option that takes a value, X being the stage's own
    default for it (None, or no default, adds nothing: the help text says what absence means;
    switches are off unless given)."""

    def __init__(self, prog, *, command: str, **kwargs):
        super().__init__(prog, **kwargs)
        self._command = command
        self._defaults: dict | None = None

    def _get_help_string(self, action):
        text = action.help or ""
        if not action.option_strings or action.nargs == 0 or action.help == argparse.SUPPRESS:
            return text
        if self._defaults is None:
            try:
                self._defaults = STAGE_DEFAULTS[self._command]()
            except ImportError:     # a broken install: the help, without the defaults
                self._defaults = {}
        value = self._defaults.get(action.dest)
        if value is None:
            return text
        shown = str(value).replace("%", "%%")
        return f"{text} (default: {shown})" if text else f"(default: {shown})"
