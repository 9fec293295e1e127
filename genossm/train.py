"""Training: token stores -> model directory (DESIGN.md, "Model directory").

One optimizer step = ``grad_accum`` micro-batches of ``batch_size`` windows on every rank. The
windows of a step are a pure function of (seed, step, micro-batch, rank, row) through
``WindowDataset``'s per-index generator, and the learning rate and sequence length are pure
functions of the step, so ``--resume`` from a checkpoint at step s continues with exactly the
windows, lengths and learning rates of an uninterrupted run.

A checkpoint is a complete model directory (config.json, model.safetensors, train_state.pt,
metrics.jsonl) written under a temporary sibling name and swapped in by renames; a kill at any
moment leaves either the old or the new checkpoint whole (``recover_checkpoint`` puts the old
one back if the kill fell between the two renames).

Multi-GPU / multi-node: run under ``torchrun``; each rank draws its own windows
(DistributedDataParallel averages the gradients), rank 0 writes checkpoints and metrics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from tqdm import tqdm

from genossm import alphabet
from genossm.data import SplitConfig, WindowDataset, describe_split, split_regions
from genossm.errors import InputError
from genossm.fileio import atomic_write
from genossm.model import GenoSSM, ModelConfig, load_model, save_model
from genossm.model.io import CONFIG_NAME, read_model_info
from genossm.runtime import resolve_device
from genossm.store import TokenStore

TRAIN_STATE_NAME = "train_state.pt"
METRICS_NAME = "metrics.jsonl"
LN2 = math.log(2.0)


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
    max_steps: int = 1000
    max_time: float | None = None     # seconds of this invocation; stops with a checkpoint
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

    def __post_init__(self):
        if isinstance(self.model, dict):
            self.model = _build(ModelConfig, self.model, "model")
        if isinstance(self.split, dict):
            self.split = _build(SplitConfig, self.split, "split")
        positive = ("seq_len", "batch_size", "grad_accum", "max_steps", "log_every",
                    "checkpoint_every", "eval_windows")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.seq_len_start < 0 or self.seq_len_start > self.seq_len:
            raise ValueError("seq_len_start must be in 0..seq_len")
        if not 0.0 < self.mlm_probability < 1.0:
            raise ValueError("mlm_probability must be in (0, 1)")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be auto, bf16 or fp32, got {self.precision!r}")
        if not 0.0 <= self.min_lr <= self.lr:
            raise ValueError("need 0 <= min_lr <= lr")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["model"] = self.model.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return _build(cls, d, "train config")


def _build(cls, d, what):
    if not isinstance(d, dict):
        raise ValueError(f"{what} must be a mapping, got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {what} key(s): {', '.join(unknown)}")
    return cls(**d)


def load_train_config(path, *, base: dict | None = None, **overrides) -> TrainConfig:
    """TrainConfig from a YAML file (sections ``model`` and ``split`` nested), or from ``base``
    (a saved config, when resuming without a file), then the non-None ``overrides``
    (command-line options) on top."""
    d = dict(base or {})
    if path is not None:
        try:
            d = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise InputError(path, f"cannot read training config ({e})".replace("\n", " ")) \
                from None
    try:
        d = {**d, **{k: v for k, v in overrides.items() if v is not None}}
        return TrainConfig.from_dict(d)
    except (TypeError, ValueError) as e:
        raise InputError(path, str(e)) from None


def saved_train_config(directory) -> dict | None:
    """The training config recorded in a model directory's checkpoint (None without one)."""
    try:
        return read_model_info(directory)["training"]["config"]
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


# --- schedules: pure functions of the step ------------------------------------------------
def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warmup to cfg.lr, then cosine decay to cfg.min_lr at cfg.max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
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


# --- distributed ----------------------------------------------------------------------------
@dataclass
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 when run alone)."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def setup(cls, device: str) -> Dist:
        """Join the process group when launched by torchrun (WORLD_SIZE set)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))

    def mean(self, values: list[float], device) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return (t / self.world).tolist()

    def barrier(self):
        if self.world > 1:
            dist.barrier()


# --- batches --------------------------------------------------------------------------------
class StepBatches(torch.utils.data.Sampler):
    """Dataset indices of every micro-batch from ``start_step`` on, for one rank: micro-batch m
    of step s, row r is index ((s·accum + m)·world + rank)·batch + r."""

    def __init__(self, cfg: TrainConfig, start_step: int, rank: int, world: int):
        self.cfg, self.start_step, self.rank, self.world = cfg, start_step, rank, world

    def __iter__(self):
        cfg = self.cfg
        for step in range(self.start_step, cfg.max_steps):
            for micro in range(cfg.grad_accum):
                first = ((step * cfg.grad_accum + micro) * self.world + self.rank) * \
                    cfg.batch_size
                yield list(range(first, first + cfg.batch_size))

    def __len__(self):
        return (self.cfg.max_steps - self.start_step) * self.cfg.grad_accum


def mlm_inputs(tokens: torch.Tensor, mask: torch.Tensor, probability: float,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs with a random ``probability`` of the target positions set to MASK, the masked
    positions); a row with no masked position gets its first target masked."""
    draw = torch.rand(tokens.shape, generator=generator).to(mask.device) < probability
    chosen = draw & mask
    empty = ~chosen.any(dim=-1, keepdim=True)
    chosen |= empty & mask & (mask.cumsum(-1) == 1)
    inputs = torch.where(chosen, torch.full_like(tokens, alphabet.MASK), tokens)
    return inputs, chosen


def lm_batch(tokens: torch.Tensor, mask: torch.Tensor, objective: str, mlm_probability: float,
             generator: torch.Generator | None = None):
    """(inputs, targets, target weights) of a batch of windows. clm: inputs are tokens 0..L-2
    and logits t predict token t+1; mlm: masked tokens are predicted where they stand."""
    if objective == "clm":
        return tokens[:, :-1], tokens[:, 1:], mask[:, 1:]
    inputs, chosen = mlm_inputs(tokens, mask, mlm_probability, generator)
    return inputs, tokens, chosen


def lm_loss(model, inputs: torch.Tensor, targets: torch.Tensor,
            weights: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy (nats) over the weighted targets."""
    logits = model(inputs)
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           reduction="none")
    return (loss * weights.reshape(-1)).sum()


# --- checkpoints ----------------------------------------------------------------------------
def _siblings(directory: Path) -> tuple[Path, Path]:
    return (directory.parent / f".{directory.name}.ckpt-new",
            directory.parent / f".{directory.name}.ckpt-old")


def recover_checkpoint(directory: Path) -> None:
    """Finish or undo a checkpoint swap that a kill interrupted."""
    new, old = _siblings(directory)
    if old.exists():
        if directory.exists():
            shutil.rmtree(old)            # the swap completed; only the cleanup was missed
        else:
            os.replace(old, directory)    # killed between the two renames: keep the old one
    if new.exists():
        shutil.rmtree(new)                # a half-written checkpoint


def write_checkpoint(directory: Path, model, optimizer, state: dict, extra: dict,
                     metrics: list[dict]) -> None:
    """Write a whole model directory beside ``directory`` and swap it in."""
    new, old = _siblings(directory)
    if new.exists():
        shutil.rmtree(new)
    new.mkdir(parents=True)
    save_model(model, new, extra=extra)       # every file written and fsynced whole
    atomic_write(new / TRAIN_STATE_NAME,
                 lambda p: torch.save({**state, "optimizer": optimizer.state_dict()}, p))
    write_metrics(new / METRICS_NAME, metrics)
    fd = os.open(new, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    if directory.exists():
        os.replace(directory, old)
    os.replace(new, directory)
    if old.exists():
        shutil.rmtree(old)


def read_checkpoint(directory: Path, device) -> tuple[dict, dict, list[dict]]:
    """(train_state, config.json, metrics up to the checkpoint's step) of a model directory."""
    try:
        info = read_model_info(directory)
    except (FileNotFoundError, ValueError) as e:
        raise InputError(directory, f"cannot resume: {e}") from None
    path = directory / TRAIN_STATE_NAME
    if not path.is_file():
        raise InputError(directory, f"cannot resume: no {TRAIN_STATE_NAME}")
    state = torch.load(path, map_location=device, weights_only=True)
    # lines logged after the checkpoint will be logged again
    metrics = [m for m in read_metrics(directory) if m.get("step", 0) <= state["step"]]
    return state, info, metrics


def read_metrics(directory) -> list[dict]:
    """The records of a model directory's metrics.jsonl ([] without one). A last line without
    its newline is an append that a kill cut short, and is not a record."""
    path = Path(directory) / METRICS_NAME
    if not path.is_file():
        return []
    lines = path.read_text().split("\n")[:-1]  # the text after the last newline is unfinished
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(path, f"not JSON ({e.msg})", place=f"line {number}") from None
        if not isinstance(record, dict):
            raise InputError(path, "not a JSON object", place=f"line {number}")
        records.append(record)
    return records


def write_metrics(path: Path, metrics: list[dict]) -> None:
    """metrics.jsonl written whole (replacing any older one)."""
    text = "".join(json.dumps(m) + "\n" for m in metrics)
    atomic_write(path, lambda p: Path(p).write_text(text))


# --- the loop -------------------------------------------------------------------------------
class _StopSignal:
    """SIGTERM (SLURM's warning before a kill) ends training after the current step, with a
    checkpoint, like --max-time."""

    def __init__(self):
        self.received = False
        self.previous = None

    def __enter__(self):
        try:
            self.previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            self.previous = None
        return self

    def _handle(self, signum, frame):
        self.received = True

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def train(store_paths: list, output, cfg: TrainConfig, *, device: str | None = None,
          resume: bool = False, force: bool = False, progress: bool = True) -> dict:
    """Train a model on the stores; write checkpoints to ``output``. Returns a summary."""
    dev = resolve_device(device)
    ranks = Dist.setup(dev.type)
    if dev.type == "cuda":
        dev = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(dev)
    output = Path(output)
    if ranks.main:
        recover_checkpoint(output)
    ranks.barrier()

    start_step, tokens_seen, elapsed_before, metrics = 0, 0, 0.0, []
    train_state = None
    if resume and (output / CONFIG_NAME).is_file():
        train_state, info, metrics = read_checkpoint(output, dev)
        saved = TrainConfig.from_dict(info["training"]["config"])
        # the run's identity must not change; its length, time budget and logging may
        for name in ("max_steps", "max_time", "num_workers", "log_every", "checkpoint_every"):
            setattr(saved, name, getattr(cfg, name))
        cfg = saved
        start_step = train_state["step"]
        tokens_seen = train_state["tokens"]
        elapsed_before = train_state["elapsed_s"]
        torch.set_rng_state(train_state["rng_torch"].cpu())
    elif output.exists() and not force:
        raise InputError(output, "output exists; use --resume to continue it or --force to "
                                 "replace it")

    stores = []
    for path in store_paths:
        try:
            stores.append(TokenStore(path))
        except (FileNotFoundError, ValueError) as e:
            raise InputError(path, f"not a token store ({e})") from None
    train_iv, val_iv = split_regions(stores, cfg.split)
    split = describe_split(stores, train_iv, val_iv)

    if train_state is None:
        torch.manual_seed(cfg.seed)
        raw_model = GenoSSM(cfg.model).to(dev)
    else:
        raw_model = load_model(output, dev)
    raw_model.train()
    model = raw_model
    if ranks.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            raw_model, device_ids=[dev.index] if dev.type == "cuda" else None)
    optimizer = torch.optim.AdamW(raw_model.optim_groups(cfg.weight_decay), lr=cfg.lr,
                                  betas=(cfg.beta1, cfg.beta2), fused=dev.type == "cuda")
    if train_state is not None:
        optimizer.load_state_dict(train_state["optimizer"])
    autocast = cfg.precision == "bf16" or (dev.type == "cuda" and cfg.precision == "auto")
    objective = cfg.model.objective

    total_windows = cfg.max_steps * cfg.grad_accum * ranks.world * cfg.batch_size
    dataset = WindowDataset(stores, train_iv, cfg.seq_len, num_samples=total_windows,
                            seed=cfg.seed, max_n_fraction=cfg.max_n_fraction,
                            rc_augment=cfg.rc_augment, use_reads=cfg.use_reads)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=StepBatches(cfg, start_step, ranks.rank, ranks.world),
        num_workers=cfg.num_workers, pin_memory=dev.type == "cuda")
    val_batches = _validation_batches(stores, val_iv, cfg) if cfg.eval_every else []

    training_info = {"stores": [str(Path(p)) for p in store_paths], "seq_len": cfg.seq_len,
                     "seed": cfg.seed, "world_size": ranks.world, "split": split,
                     "config": cfg.to_dict()}
    metrics_path = output / METRICS_NAME
    # metrics go to the live directory once this run owns it (resumed, or first checkpoint)
    live = train_state is not None
    if live and ranks.main:
        write_metrics(metrics_path, metrics)  # drop lines logged after the checkpoint

    def log(record: dict):
        metrics.append(record)
        if ranks.main and live:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def checkpoint(step: int, elapsed: float, stopped: str | None = None):
        nonlocal live
        if ranks.main:
            info = {**training_info, "steps": step, "tokens": tokens_seen, "elapsed_s": elapsed,
                    "stopped": stopped}
            state = {"step": step, "tokens": tokens_seen, "elapsed_s": elapsed,
                     "rng_torch": torch.get_rng_state()}
            write_checkpoint(output, raw_model, optimizer, state,
                             {"name": output.name, "training": info}, metrics)
        live = True
        ranks.barrier()

    bar = tqdm(total=cfg.max_steps, initial=start_step, disable=not (progress and ranks.main),
               unit="step", dynamic_ncols=True)
    started = time.monotonic()
    window_start, window_tokens = started, 0
    step, stop_reason = start_step, "max_steps"
    micro_batches = iter(loader)
    with _StopSignal() as stop:
        while step < cfg.max_steps:
            length = sequence_length(cfg, step)
            lr = learning_rate(cfg, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            generator = torch.Generator().manual_seed(
                (cfg.seed * 1_000_003 + step) * 1009 + ranks.rank)
            parts = []
            for _ in range(cfg.grad_accum):
                batch = next(micro_batches)
                tokens = batch["tokens"][:, :length].to(dev, non_blocking=True)
                mask = batch["loss_mask"][:, :length].to(dev, non_blocking=True)
                parts.append(lm_batch(tokens, mask, objective, cfg.mlm_probability, generator))
            n_targets = max(1, sum(int(w.sum()) for _, _, w in parts))
            loss_sum = 0.0
            for i, (inputs, targets, weights) in enumerate(parts):
                last = i == len(parts) - 1
                sync = contextlib.nullcontext() if last or ranks.world == 1 else model.no_sync()
                with sync, torch.autocast(dev.type, torch.bfloat16, enabled=autocast):
                    loss = lm_loss(model, inputs, targets, weights)
                    (loss / n_targets).backward()
                loss_sum += loss.item()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            step_tokens = cfg.grad_accum * cfg.batch_size * length * ranks.world
            tokens_seen += step_tokens
            window_tokens += step_tokens
            elapsed = elapsed_before + time.monotonic() - started
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                loss_mean, = ranks.mean([loss_sum / n_targets], dev)
                now = time.monotonic()
                rate = window_tokens / max(now - window_start, 1e-9)
                window_start, window_tokens = now, 0
                log({"split": "train", "step": step, "tokens": tokens_seen, "loss": loss_mean,
                     "bits_per_base": loss_mean / LN2, "lr": lr, "seq_len": length,
                     "tokens_per_s": rate, "elapsed_s": elapsed})
                bar.set_postfix(loss=f"{loss_mean:.4f}", bits=f"{loss_mean / LN2:.3f}",
                                tok_s=f"{rate:,.0f}", refresh=False)
            if val_batches and (step % cfg.eval_every == 0 or step == cfg.max_steps):
                val_loss = _validation_loss(raw_model, val_batches, cfg, dev, autocast)
                log({"split": "val", "step": step, "tokens": tokens_seen, "loss": val_loss,
                     "bits_per_base": val_loss / LN2, "elapsed_s": elapsed})
            bar.update(1)
            out_of_time = cfg.max_time is not None and time.monotonic() - started >= cfg.max_time
            if out_of_time or stop.received:
                stop_reason = "max_time" if out_of_time else "SIGTERM"
                break
            if step % cfg.checkpoint_every == 0 and step < cfg.max_steps:
                checkpoint(step, elapsed)
    bar.close()
    elapsed = elapsed_before + time.monotonic() - started
    checkpoint(step, elapsed, stop_reason)
    if ranks.world > 1:
        dist.destroy_process_group()
    last = next((m for m in reversed(metrics) if m["split"] == "train"), {})
    last_val = next((m for m in reversed(metrics) if m["split"] == "val"), {})
    return {"output": str(output), "steps": step, "tokens": tokens_seen, "stopped": stop_reason,
            "parameters": raw_model.num_parameters(), "elapsed_s": elapsed,
            "bits_per_base": last.get("bits_per_base"),
            "val_bits_per_base": last_val.get("bits_per_base"),
            "train_bases": split["train_bases"], "validation_bases": split["validation_bases"],
            "world_size": ranks.world}


def _validation_batches(stores, val_iv, cfg: TrainConfig) -> list[dict]:
    """Fixed held-out windows (no augmentation), drawn once; [] when no validation interval is
    as long as a window."""
    if not any(iv.length >= cfg.seq_len for iv in val_iv):
        return []
    data = WindowDataset(stores, val_iv, cfg.seq_len, num_samples=cfg.eval_windows,
                         seed=cfg.seed + 1, max_n_fraction=cfg.max_n_fraction,
                         rc_augment=False, use_reads=False)
    items = [data[i] for i in range(len(data))]
    return [torch.utils.data.default_collate(items[i:i + cfg.batch_size])
            for i in range(0, len(items), cfg.batch_size)]


@torch.no_grad()
def _validation_loss(model: GenoSSM, batches, cfg: TrainConfig, dev, autocast) -> float:
    """Mean loss (nats per target) of the model on the fixed validation windows."""
    model.eval()
    total, count = 0.0, 0
    generator = torch.Generator().manual_seed(cfg.seed + 17)
    for batch in batches:
        inputs, targets, weights = lm_batch(batch["tokens"].to(dev), batch["loss_mask"].to(dev),
                                            model.config.objective, cfg.mlm_probability,
                                            generator)
        with torch.autocast(dev.type, torch.bfloat16, enabled=autocast):
            total += lm_loss(model, inputs, targets, weights).item()
        count += int(weights.sum())
    model.train()
    return total / max(count, 1)
