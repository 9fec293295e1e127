"""What a training run is: its config (``TrainConfig``, read from YAML), what --resume may change
of it (``check_resumable``, ``check_same_split``) and the schedules that are pure functions of
(config, step), so that a resumed run continues with exactly the learning rates and window
lengths of an uninterrupted one."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from genossm.data import SplitConfig
from genossm.errors import InputError
from genossm.model import ModelConfig, ModelDir, TrainingInfo

# The built-in training configs (``preset``), by name: what `genossm train` runs without --config
PRESETS = Path(__file__).parent / "presets"
# what --resume may change: the run's length, time budget and logging, not its identity
RESUMABLE = ("max_steps", "max_time", "num_workers", "log_every", "checkpoint_every",
             "eval_every", "precision")
# ... and the model settings that change how it runs, not its weights or what it computes
RESUMABLE_MODEL = ("scan_backend", "gradient_checkpointing", "checkpoint_segment_length")
# where the settings came from (for messages and the output policy), not settings themselves
PROVENANCE = ("source", "options")


@dataclass
class TrainConfig:
    """Everything about a training run; ``model`` and ``split`` are nested sections."""
    model: ModelConfig = field(default_factory=ModelConfig)
    split: SplitConfig = field(default_factory=lambda: SplitConfig(val_fraction=0.05))
    seq_len: int = 1024               # target window length L
    seq_len_start: int = 0            # sequence-length warmup: start here (0 = no warmup) ...
    seq_len_warmup_steps: int = 0     # ... and grow linearly to seq_len over these steps
    batch_size: int = 8               # windows per micro-batch per rank
    grad_accum: int = 1               # micro-batches per optimizer step
    max_steps: int | None = 1000      # None ("auto" in YAML / --max-steps auto): fit to max_time
    max_time: float | None = None     # seconds of this invocation; stops with a checkpoint
    max_epochs: float | None = None   # max_steps auto: at most this many passes over the data
    lr: float = 2e-3
    min_lr: float = 2e-4              # cosine decay ends here at max_steps
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0            # max global gradient norm (0 = off)
    mlm_probability: float = 0.15     # objective "mlm": fraction of bases masked
    max_n_fraction: float = 0.1
    rc_augment: bool = True
    use_reads: bool = True
    seed: int = 0
    num_workers: int = 0              # DataLoader workers per rank
    precision: str = "auto"           # "auto" (bf16 autocast on CUDA), "bf16", "fp32"
    log_every: int = 10
    eval_every: int = 100             # validation loss on fixed held-out windows (0 = off)
    eval_windows: int = 16
    checkpoint_every: int = 500
    # Not settings (not in to_dict, not compared): the --config file the settings were read
    # from, and the names of those given as command-line options (set by load_train_config).
    source: str | None = field(default=None, compare=False, repr=False)
    options: tuple[str, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self):
        if isinstance(self.model, dict):
            self.model = _build(ModelConfig, self.model, "model")
        if isinstance(self.split, dict):
            self.split = _build(SplitConfig, self.split, "split")
        if self.max_steps == "auto":
            self.max_steps = None
        if self.max_steps is None and self.max_time is None:
            raise ValueError("max_steps auto (fit the schedule to the time budget) needs "
                             "max_time")
        positive = ("seq_len", "batch_size", "grad_accum", "log_every", "checkpoint_every",
                    "eval_windows") + ("max_steps",) * (self.max_steps is not None)
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.seq_len_start < 0 or self.seq_len_start > self.seq_len:
            raise ValueError("seq_len_start must be in 0..seq_len")
        if not 0.0 < self.mlm_probability < 1.0:
            raise ValueError("mlm_probability must be in (0, 1)")
        if self.max_epochs is not None and not self.max_epochs > 0:
            raise ValueError(f"max_epochs must be positive, got {self.max_epochs!r}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be auto, bf16 or fp32, got {self.precision!r}")
        if not 0.0 <= self.min_lr <= self.lr:
            raise ValueError("need 0 <= min_lr <= lr")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["model"] = self.model.to_dict()
        for name in PROVENANCE:
            del d[name]
        return d

    def origin(self, name: str) -> str | None:
        """Where setting ``name`` came from, for messages: its command-line option, else the
        --config file (None: neither, e.g. the resumed run's own config)."""
        return _option(name) if name in self.options else self.source

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return _build(cls, d, "train config")

    def resumed_with(self, other: TrainConfig) -> TrainConfig:
        """This (saved) config with ``other``'s RESUMABLE settings (and provenance)."""
        model = dataclasses.replace(self.model, **{name: getattr(other.model, name)
                                                   for name in RESUMABLE_MODEL})
        return dataclasses.replace(self, model=model, **{name: getattr(other, name)
                                                         for name in RESUMABLE + PROVENANCE})

    def changes_from(self, saved: TrainConfig) -> list[tuple[str, object, object]]:
        """(setting, this config's value, ``saved``'s) of each setting outside RESUMABLE that
        differs: what --resume refuses. Sections are flattened ("model.d_model")."""
        mine, theirs = _flatten(self.to_dict()), _flatten(saved.to_dict())
        names = list(mine) + [k for k in theirs if k not in mine]
        free = set(RESUMABLE) | {f"model.{name}" for name in RESUMABLE_MODEL}
        return [(k, mine.get(k), theirs.get(k)) for k in names
                if k not in free and mine.get(k) != theirs.get(k)]


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _build(cls, d, what):
    if not isinstance(d, dict):
        raise ValueError(f"{what} must be a mapping, got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(cls)} - set(PROVENANCE)
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {what} key(s): {', '.join(unknown)}")
    return cls(**d)


def load_train_config(path, *, base: dict | None = None, **overrides) -> TrainConfig:
    """TrainConfig from a YAML file (sections ``model`` and ``split`` nested), or from ``base``
    (a saved config, when resuming without a file), then the non-None ``overrides``
    (command-line options) on top. A value of an option that is wrong in itself is an error of
    the option (``--seq-len: must be a positive integer, got -5``); any other error names the
    file (and the options, when the file alone is right)."""
    d = dict(base or {})
    if path is not None:
        try:
            d = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise InputError(path, f"cannot read training config ({e})".replace("\n", " ")) \
                from None
        if not isinstance(d, dict):
            raise InputError(path, f"a training config is a mapping of settings, not a "
                                   f"{type(d).__name__}")
    given = {k: v for k, v in overrides.items() if v is not None}
    for name, value in given.items():
        _option_checked(name, value)
    try:
        cfg = TrainConfig.from_dict({**d, **given})
    except (TypeError, ValueError) as e:
        options = " ".join(_option(name) for name in given)
        with_options = f" (with {options})" if given and _valid(d) else ""
        raise InputError(path, f"{e}{with_options}") from None
    cfg.source = None if path is None else str(path)
    cfg.options = tuple(given)
    return cfg


def preset(name: str) -> Path | None:
    """The built-in config called ``name`` (genossm/presets/NAME.yaml), None when there is none."""
    path = PRESETS / f"{name}.yaml"
    return path if name and "/" not in name and path.is_file() else None


def builtin_config(device_type: str) -> Path:
    """The built-in config of a run without --config on this kind of device: "cpu" (a model
    that learns within the 4-minute CPU budget) or "gpu-131k" (docs/design.md, "Training")."""
    return preset("gpu-131k" if device_type == "cuda" else "cpu")


def config_path(config: Path | None, device: str | None) -> tuple[Path, bool]:
    """The config file of a new run, and whether it was chosen for it: ``config`` as given, or
    the built-in one it names ("cpu", "gpu-131k", "gpu-1m") when no such file exists, or
    without one the built-in default of ``device`` (auto: the GPU when there is one)."""
    if config is None:
        from genossm.runtime import resolve_device

        return builtin_config(resolve_device(device).type), True
    return (config if Path(config).exists() else preset(str(config)) or config), False


def describe(cfg: TrainConfig) -> str:
    """A config in a few words, for the line that says which one a run took."""
    m = cfg.model
    steps = f"{cfg.max_steps:,} steps" if cfg.max_steps else "steps fitted to the time budget"
    if cfg.max_epochs and not cfg.max_steps:
        steps += f" and at most {cfg.max_epochs:g} passes over the data"
    budget = f", --max-time {cfg.max_time:g} s" if cfg.max_time else ""
    return (f"{m.mixer} d_model {m.d_model} x {m.n_layer} layers, windows of {cfg.seq_len:,}, "
            f"{steps}{budget}")


def _option_checked(name: str, value) -> None:
    """InputError of the command-line option of setting ``name`` when ``value`` is wrong in
    itself (on top of the defaults; "auto" is right in itself, whatever it needs besides)."""
    if value == "auto":
        return
    try:
        TrainConfig.from_dict({name: value})
    except (TypeError, ValueError) as e:
        message = str(e)
        if message.startswith(name + " "):
            message = message[len(name) + 1:]
        raise InputError(None, f"{_option(name)}: {message}") from None


def _valid(d: dict) -> bool:
    try:
        TrainConfig.from_dict(d)
    except (TypeError, ValueError):
        return False
    return True


def saved_train_config(directory) -> dict | None:
    """The training config recorded in a model directory's checkpoint (None without one)."""
    return ModelDir(directory).train_config()


def check_resumable(directory: ModelDir, cfg: TrainConfig, saved: TrainConfig,
                    trained: TrainingInfo, store_paths: list) -> None:
    """--resume continues the run as it was: the given settings other than RESUMABLE (model
    section included) are the checkpoint's, and the stores are the ones it was trained on, in
    the same order (by resolved path); InputError saying which differ otherwise."""
    changes = cfg.changes_from(saved)
    if changes:
        origins = [cfg.origin(key.split(".")[0]) for key, _, _ in changes]
        where = cfg.source if cfg.source in origins else origins[0]
        listed = ", ".join(f"{key} {json.dumps(theirs)} -> {json.dumps(mine)}"
                           for key, mine, theirs in changes)
        raise InputError(where, f"cannot resume {directory.path}: changes its {listed}; "
                                "--resume may change only the run's length, time budget, "
                                "logging, precision and how the model runs")
    given = [Path(p).resolve() for p in store_paths]
    recorded = [Path(p).resolve() for p in trained.stores]
    if given != recorded:
        new = [str(p) for p, r in zip(store_paths, given, strict=True) if r not in recorded]
        gone = [p for p, r in zip(trained.stores, recorded, strict=True) if r not in given]
        which = "; ".join([f"{', '.join(new)} not among them"] * bool(new)
                          + [f"{', '.join(gone)} not given"] * bool(gone)) or "another order"
        raise InputError(directory.path, f"cannot resume: it was trained on "
                                         f"{', '.join(trained.stores)} ({which}); give the "
                                         "same stores in the same order")


def check_same_split(directory: ModelDir, trained: TrainingInfo | None,
                     training: TrainingInfo) -> None:
    """A resumed run's stores hold the contigs it was trained on (its split is the same):
    ``trained`` is the checkpoint's training section (None: a new run, nothing to check),
    ``training`` the one of the stores given."""
    if trained is not None and any(trained.split[k] != training.split[k]
                                   for k in ("train", "validation")):
        raise InputError(directory.path, "cannot resume: the stores' contigs are not those "
                                         "it was trained on (the train/validation split "
                                         "differs); was a store tokenized again?")


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warmup to cfg.lr, then cosine decay to cfg.min_lr at cfg.max_steps (the peak while
    max_steps is not yet fitted to the budget: ``fitted_max_steps``)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.max_steps is None:
        return cfg.lr
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


def sequence_length(cfg: TrainConfig, step: int) -> int:
    """Window length at ``step``: linear from seq_len_start to seq_len over the warmup steps,
    rounded up to a multiple of 64 (whole scan chunks)."""
    if not cfg.seq_len_start or step >= cfg.seq_len_warmup_steps:
        return cfg.seq_len
    length = cfg.seq_len_start + (cfg.seq_len - cfg.seq_len_start) * step / \
        cfg.seq_len_warmup_steps
    return min(cfg.seq_len, 64 * math.ceil(length / 64))


def fitting_step(cfg: TrainConfig) -> int:
    """The step after which a run with max_steps auto fits its schedule to the time budget: the
    end of the learning-rate warmup (whose rates do not depend on max_steps), at least 10 steps
    in so that the rate is measured over several steps."""
    return max(10, cfg.warmup_steps)


def epoch_steps(cfg: TrainConfig, bases: int, world: int = 1) -> int | None:
    """The steps whose windows (of ``world`` ranks in data parallelism, lengths by
    ``sequence_length``) hold ``cfg.max_epochs`` passes over ``bases`` (None without
    max_epochs): a small genome is learnt in a few dozen passes and overfit after them
    (BENCHMARKS.md, "The training recipe")."""
    if cfg.max_epochs is None:
        return None
    step, tokens, goal = 0, 0, cfg.max_epochs * bases
    while step < cfg.seq_len_warmup_steps and tokens < goal:    # windows still growing
        tokens += world * cfg.grad_accum * cfg.batch_size * sequence_length(cfg, step)
        step += 1
    per_step = world * cfg.grad_accum * cfg.batch_size * cfg.seq_len
    return step + max(0, math.ceil((goal - tokens) / per_step))


def fitted_max_steps(cfg: TrainConfig, step: int, seconds_per_token: float,
                     seconds_left: float) -> int:
    """The max_steps whose steps from ``step`` on (window lengths by ``sequence_length``) and
    validation passes (forward only: a third of a training token's time each) fill
    ``seconds_left`` less a 3 % margin, at ``seconds_per_token`` of this process (measured over
    the steps so far); at least one more step."""
    per_token = max(seconds_per_token, 1e-12)
    validation = cfg.eval_windows * cfg.seq_len * per_token / 3 / cfg.eval_every \
        if cfg.eval_every else 0.0

    def cost(s: int) -> float:   # seconds of step s, its share of the validation passes included
        return cfg.grad_accum * cfg.batch_size * sequence_length(cfg, s) * per_token + validation

    first, budget = step, 0.97 * seconds_left
    while step < cfg.seq_len_warmup_steps and cost(step) <= budget:   # windows still growing
        budget -= cost(step)
        step += 1
    if step >= cfg.seq_len_warmup_steps:                               # then a constant cost
        step += int(budget // cost(step))
    return max(step, first + 1)
