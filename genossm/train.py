"""Training: token stores -> model directory (genossm.model.directory).

``train`` reads top to bottom: open the run (new, or resumed from the checkpoint in the output
directory), build the data, the model and the optimizer, then the loop (schedule, optimizer
step, logging, stop or checkpoint) and the summary.

One optimizer step = ``grad_accum`` micro-batches of ``batch_size`` windows on every rank. The
windows of a step are a pure function of (seed, step, micro-batch, rank, row) through
``WindowDataset``'s per-index generator, and the learning rate and sequence length are pure
functions of the step (genossm.train_config), so ``--resume`` from a checkpoint at step s
continues with exactly the windows, lengths and learning rates of an uninterrupted run.

A checkpoint is a whole model directory swapped in by ``ModelDir.write_checkpoint``; a kill at
any moment leaves the old or the new one whole, and the next run first recovers it.

Multi-GPU / multi-node: run under ``torchrun`` (genossm.distributed); each rank draws its own
windows (DistributedDataParallel averages the gradients), rank 0 writes checkpoints and metrics.
With ``context_parallel`` R, the R ranks of a group draw the same windows and each runs the model
over its contiguous shard of them (ops/context_parallel.py carries the scan's state across the
shards exactly); a rank's loss is its shard's share of the window's, scaled by R so that the
gradients DistributedDataParallel averages over every rank are those of the whole windows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from genossm.data import StepBatches, WindowDataset, describe_split, lm_batch, split_regions
from genossm.distributed import Dist, check_context_parallel, shard_span
from genossm.errors import InputError
from genossm.fileio import OutputKind, claim_outputs
from genossm.model import GenoSSM, ModelDir, TrainingInfo, last_record
from genossm.model.directory import MODEL_DIR, TRAIN_STATE_NAME
from genossm.store import TokenStore
from genossm.train_config import (
    TrainConfig,
    check_resumable,
    check_same_split,
    config_path,
    describe,
    epoch_steps,
    fitted_max_steps,
    fitting_step,
    learning_rate,
    load_train_config,
    saved_train_config,
    sequence_length,
)

__all__ = ["TrainConfig", "config_path", "describe", "learning_rate", "load_train_config",
           "saved_train_config", "sequence_length", "train"]

LN2 = math.log(2.0)
# What --resume continues: a directory with a checkpoint (its files are checked as they are read).
CHECKPOINT = OutputKind("a genossm model directory with a checkpoint",
                        lambda path: (Path(path) / TRAIN_STATE_NAME).is_file())


def lm_loss(model, inputs: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
            context_group=None) -> torch.Tensor:
    """Summed cross-entropy (nats) over the weighted targets; ``context_group``: the inputs are
    this rank's shard of the sequences (GenoSSM.forward)."""
    logits = model(inputs, context_group=context_group)
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           reduction="none")
    return (loss * weights.reshape(-1)).sum()


def _autocast(cfg: TrainConfig, dev: torch.device):
    """bf16 autocast with precision "bf16", or "auto" on CUDA."""
    enabled = cfg.precision == "bf16" or (dev.type == "cuda" and cfg.precision == "auto")
    return torch.autocast(dev.type, torch.bfloat16, enabled=enabled)


# --- the run --------------------------------------------------------------------------------
@dataclass
class Run:
    """One training run as it goes: where it stands, the metrics logged so far, and the model
    directory its checkpoints go to (rank 0 writes it)."""
    directory: ModelDir
    cfg: TrainConfig
    ranks: Dist
    step: int = 0
    tokens: int = 0
    elapsed_before: float = 0.0          # seconds spent by the invocations before this one
    metrics: list[dict] = field(default_factory=list)
    resumed: dict | None = None          # the train_state resumed from (None: a new run)
    trained: TrainingInfo | None = None  # ... and the checkpoint's training section
    live: bool = False                   # the directory (and its metrics.jsonl) is this run's
    started: float = 0.0                 # time.monotonic() when this invocation's loop began
    window: tuple[float, int] = (0.0, 0)  # start and tokens of the throughput window

    def start_clock(self) -> None:
        self.started = time.monotonic()
        self.window = (self.started, 0)

    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.started

    def advance(self, tokens: int) -> None:
        """One optimizer step done on ``tokens`` tokens (all ranks)."""
        self.step += 1
        self.tokens += tokens
        self.window = (self.window[0], self.window[1] + tokens)

    def tokens_per_s(self) -> float:
        """Throughput since the last call (or the start); starts a new window."""
        now = time.monotonic()
        start, tokens = self.window
        self.window = (now, 0)
        return tokens / max(now - start, 1e-9)

    def log(self, record: dict) -> None:
        self.metrics.append(record)
        if self.ranks.main and self.live:
            self.directory.append_metrics(record)

    def checkpoint(self, model: GenoSSM, optimizer, training: TrainingInfo, elapsed: float,
                   stopped: str | None = None) -> None:
        """Checkpoint the run as it stands (``stopped``: why it ended, None while it goes on);
        from then on the directory's metrics.jsonl is this run's."""
        if self.ranks.main:
            state = {"step": self.step, "tokens": self.tokens, "elapsed_s": elapsed,
                     "rng_torch": torch.get_rng_state(), "optimizer": optimizer.state_dict()}
            training = dataclasses.replace(training, steps=self.step, tokens=self.tokens,
                                           elapsed_s=elapsed, stopped=stopped)
            self.directory.write_checkpoint(model, training, state, self.metrics)
        self.live = True
        self.ranks.barrier()


def _open_run(directory: ModelDir, cfg: TrainConfig, ranks: Dist, store_paths: list, *,
              resume: bool, force: bool) -> Run:
    """A new run, or (``resume``) the run of the checkpoint in ``directory``, continued as it
    was (``train_config.check_resumable``); a checkpoint swap that a kill interrupted is
    finished or undone first. The directory is claimed (fileio.claim_outputs) before anything
    is read: never one of the stores or the --config file; an existing model directory is
    continued with --resume or replaced with --force, anything else is not replaced."""
    if ranks.main:
        directory.recover()
    ranks.barrier()
    path, inputs = directory.path, [*store_paths, cfg.source]
    if resume:
        if not CHECKPOINT.recognise(path):
            raise InputError(None, f"nothing to resume in {path}; run without --resume to start")
        claim_outputs([(path, CHECKPOINT)], inputs=inputs, force=True)
        return _resumed_run(directory, cfg, ranks, store_paths)
    # the policy's check; whether an existing model directory is continued or replaced is
    # --resume's or --force's to say, below
    claim_outputs([(path, MODEL_DIR)], inputs=inputs, force=force or MODEL_DIR.recognise(path))
    if path.exists() and not force:
        raise InputError(path, "output exists; use --resume to continue it or --force to "
                               "replace it")
    return Run(directory, cfg, ranks)


def _resumed_run(directory: ModelDir, cfg: TrainConfig, ranks: Dist, store_paths: list) -> Run:
    ckpt = directory.read_checkpoint(ranks.device)
    try:
        saved = TrainConfig.from_dict(ckpt.training.config)
    except (TypeError, ValueError) as e:
        raise InputError(directory.config_path, f"cannot resume: {e}") from None
    check_resumable(directory, cfg, saved, ckpt.training, store_paths)
    try:
        torch.set_rng_state(ckpt.state["rng_torch"].cpu())
    except (RuntimeError, TypeError) as e:
        raise InputError(directory.path / TRAIN_STATE_NAME,
                         f"not a torch random state ({e})") from None
    run = Run(directory, saved.resumed_with(cfg), ranks, step=ckpt.state["step"],
              tokens=ckpt.state["tokens"], elapsed_before=ckpt.state["elapsed_s"],
              metrics=ckpt.metrics, resumed=ckpt.state, trained=ckpt.training, live=True)
    if ranks.main:
        directory.write_metrics(run.metrics)  # drop lines logged after the checkpoint
    return run


def _open_stores(paths: list) -> list[TokenStore]:
    """The stores, their files checked (``TokenStore.check_files``): a damaged store stops
    the run before it starts, not hours in."""
    stores = []
    for path in paths:
        try:
            store = TokenStore(path)
        except (FileNotFoundError, ValueError) as e:
            raise InputError(path, f"not a token store ({e})") from None
        store.check_files()
        stores.append(store)
    return stores


def _build_model(run: Run):
    """(the model, the same wrapped in DistributedDataParallel when there are several ranks,
    its AdamW optimizer): new, or as the resumed checkpoint left them."""
    cfg, dev = run.cfg, run.ranks.device
    if run.resumed is None:
        torch.manual_seed(cfg.seed)
        raw_model = GenoSSM(cfg.model).to(dev)
    else:
        raw_model = run.directory.load_model(dev)
    raw_model.train()
    model = raw_model
    if run.ranks.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            raw_model, device_ids=[dev.index] if dev.type == "cuda" else None)
    optimizer = torch.optim.AdamW(raw_model.optim_groups(cfg.weight_decay), lr=cfg.lr,
                                  betas=(cfg.beta1, cfg.beta2), fused=dev.type == "cuda")
    if run.resumed is not None:
        try:
            optimizer.load_state_dict(run.resumed["optimizer"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise InputError(run.directory.path / TRAIN_STATE_NAME, "the optimizer state does "
                             f"not fit the model ({' '.join(str(e).split())})") from None
    return raw_model, model, optimizer


def _train_loader(stores, train_iv, cfg: TrainConfig, start_step: int, ranks: Dist):
    """This rank's micro-batches of training windows from ``start_step`` on."""
    steps = cfg.max_steps or 2**40   # max_steps auto: as many as the time budget allows
    total_windows = steps * cfg.grad_accum * ranks.data_world * cfg.batch_size
    dataset = WindowDataset(stores, train_iv, cfg.seq_len, num_samples=total_windows,
                            seed=cfg.seed, max_n_fraction=cfg.max_n_fraction,
                            rc_augment=cfg.rc_augment, use_reads=cfg.use_reads,
                            source=cfg.origin("seq_len"))
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=StepBatches(cfg, start_step, ranks.data_rank, ranks.data_world),
        num_workers=cfg.num_workers, pin_memory=ranks.device.type == "cuda")


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
          resume: bool = False, force: bool = False, progress: bool = True,
          context_parallel: int = 1, announce: str | None = None) -> dict:
    """Train a model on the stores; write checkpoints to ``output``. ``context_parallel``:
    ranks per sequence under torchrun (module docstring); ``announce``: a line for standard
    error once the run has started (inputs checked), before its first step. Returns a
    summary."""
    # open the run: a new one, or the checkpoint in ``output`` resumed
    ranks = Dist.setup(device, context_parallel)
    _check_context_parallel(cfg, ranks.context)
    run = _open_run(ModelDir(output), cfg, ranks, store_paths, resume=resume, force=force)
    cfg = run.cfg

    # the data, the model and its optimizer
    stores = _open_stores(store_paths)
    train_iv, val_iv = split_regions(stores, cfg.split, source=cfg.source)
    training = TrainingInfo(stores=[str(Path(p)) for p in store_paths], seq_len=cfg.seq_len,
                            seed=cfg.seed, world_size=ranks.world,
                            split=describe_split(stores, train_iv, val_iv), config=cfg.to_dict())
    check_same_split(run.directory, run.trained, training)
    raw_model, model, optimizer = _build_model(run)
    loader = _train_loader(stores, train_iv, cfg, run.step, ranks)
    val_batches = _validation_batches(stores, val_iv, cfg) if cfg.eval_every else []

    # the loop: one optimizer step a turn
    if announce and ranks.main:
        print(announce, file=sys.stderr, flush=True)
    bar = tqdm(total=cfg.max_steps, initial=run.step, disable=not (progress and ranks.main),
               unit="step", dynamic_ncols=True)
    run.start_clock()
    micro_batches = iter(loader)
    fit = _ScheduleFit(run, loader.dataset.bases) if cfg.max_steps is None else None
    stopped = "max_steps"
    with _StopSignal() as stop:
        while cfg.max_steps is None or run.step < cfg.max_steps:
            # the schedule: window length and learning rate are pure functions of the step
            length = sequence_length(cfg, run.step)
            lr = learning_rate(cfg, run.step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            # forward and backward over the step's micro-batches, then the update
            began = time.monotonic()
            loss = _optimizer_step(model, optimizer, micro_batches, cfg, run.step, length, ranks)
            run.advance(cfg.grad_accum * cfg.batch_size * length * ranks.data_world)
            # max_steps auto: fitted to the time budget once the step rate is known
            fitted = fit.measured(time.monotonic() - began, length) if fit else None
            if fitted:
                cfg = run.cfg = fitted
                training = dataclasses.replace(training, config=cfg.to_dict())
                run.log({"split": "schedule", "step": run.step, "max_steps": cfg.max_steps})
                bar.total = cfg.max_steps
            elapsed = run.elapsed()
            # log the training loss, and now and then the validation loss
            if run.step % cfg.log_every == 0 or run.step == cfg.max_steps:
                _log_train(run, loss, lr, length, elapsed, bar)
            if val_batches and (run.step % cfg.eval_every == 0 or run.step == cfg.max_steps):
                val_loss = _validation_loss(raw_model, val_batches, cfg, ranks)
                run.log({"split": "val", "step": run.step, "tokens": run.tokens,
                         "loss": val_loss, "bits_per_base": val_loss / LN2, "elapsed_s": elapsed})
            bar.update(1)
            # stop on --max-time or SIGTERM (the last checkpoint follows), else checkpoint
            reason = _stop_reason(cfg, run, stop)
            if reason:
                stopped = reason
                break
            if run.step % cfg.checkpoint_every == 0 and run.step != cfg.max_steps:
                run.checkpoint(raw_model, optimizer, training, elapsed)
    bar.close()

    # the last checkpoint, and the summary
    elapsed = run.elapsed()
    run.checkpoint(raw_model, optimizer, training, elapsed, stopped)
    if ranks.world > 1:
        dist.destroy_process_group()
    last = last_record(run.metrics, "train") or {}
    last_val = last_record(run.metrics, "val") or {}
    return {"output": str(run.directory.path), "steps": run.step, "tokens": run.tokens,
            "stopped": stopped, "parameters": raw_model.num_parameters(), "elapsed_s": elapsed,
            "bits_per_base": last.get("bits_per_base"),
            "val_bits_per_base": last_val.get("bits_per_base"),
            "train_bases": training.split["train_bases"],
            "validation_bases": training.split["validation_bases"], "world_size": ranks.world}


class _ScheduleFit:
    """max_steps auto: fits max_steps to the rest of max_time (train_config.fitted_max_steps) at
    the fitting step, and again at 2, 4, 8, ... times it, each time from this rank's seconds per
    window token of the optimizer steps since the last fit (validation and checkpoints aside,
    and the first two steps, which allocate), averaged over the ranks: the estimate follows a
    machine whose speed changes, and the last fits, made late, are close. With max_epochs, no
    more steps than its passes over the training ``bases`` (train_config.epoch_steps)."""

    def __init__(self, run: Run, bases: int):
        self.run, self.skip = run, run.step + 2
        self.most = epoch_steps(run.cfg, bases, run.ranks.data_world)
        self.next = max(fitting_step(run.cfg), self.skip + 3)
        self.seconds, self.tokens = 0.0, 0

    def measured(self, seconds: float, length: int) -> TrainConfig | None:
        """Count one optimizer step over windows of ``length``; the refitted config when it is
        time to fit."""
        run, cfg = self.run, self.run.cfg
        if run.step > self.skip:
            self.seconds += seconds
            self.tokens += cfg.grad_accum * cfg.batch_size * length
        if run.step < self.next and run.step != self.most:
            return None
        steps = run.step + 1   # (passes done before the rate is measured: the run ends now)
        if self.tokens:
            per_token, left = run.ranks.mean([self.seconds / self.tokens,
                                              cfg.max_time - (time.monotonic() - run.started)])
            steps = fitted_max_steps(cfg, run.step, per_token, left)
        self.next, self.seconds, self.tokens = 2 * run.step, 0.0, 0
        if self.most is not None:
            steps = min(steps, max(self.most, run.step))
        return dataclasses.replace(cfg, max_steps=steps)


def _check_context_parallel(cfg: TrainConfig, context: int) -> None:
    """What context parallelism splits (distributed.check_context_parallel), in shards no
    shorter than the convolution's halo."""
    check_context_parallel(cfg.model, context)
    shortest = (cfg.seq_len_start or cfg.seq_len) // context
    if context > 1 and shortest < cfg.model.d_conv - 1:
        raise InputError(None, f"--context-parallel {context}: windows of "
                               f"{cfg.seq_len_start or cfg.seq_len} give shards of {shortest} "
                               f"positions, shorter than the convolution's "
                               f"{cfg.model.d_conv - 1}")


def _optimizer_step(model, optimizer, micro_batches, cfg: TrainConfig, step: int, length: int,
                    ranks: Dist) -> float:
    """One optimizer step over the next ``grad_accum`` micro-batches, cut to ``length``;
    returns this rank's loss in nats per target (with context parallelism, its shard's share
    times the ranks per sequence: the mean over the ranks is the windows' loss)."""
    generator = torch.Generator().manual_seed((cfg.seed * 1_000_003 + step) * 1009
                                              + ranks.data_rank)
    parts = []
    for _ in range(cfg.grad_accum):
        batch = next(micro_batches)
        tokens = batch["tokens"][:, :length].to(ranks.device, non_blocking=True)
        mask = batch["loss_mask"][:, :length].to(ranks.device, non_blocking=True)
        parts.append(lm_batch(tokens, mask, cfg.model.objective, cfg.mlm_probability, generator))
    n_targets = max(1, sum(int(w.sum()) for _, _, w in parts))
    loss_sum = 0.0
    for i, batch in enumerate(parts):
        inputs, targets, weights = (t[:, shard_span(t.shape[1], ranks)] for t in batch)
        last = i == len(parts) - 1
        sync = contextlib.nullcontext() if last or ranks.world == 1 else model.no_sync()
        with sync, _autocast(cfg, ranks.device):
            loss = lm_loss(model, inputs, targets, weights, ranks.context_group)
            (loss * ranks.context / n_targets).backward()
        loss_sum += loss.item() * ranks.context
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum / n_targets


def _log_train(run: Run, loss: float, lr: float, length: int, elapsed: float, bar) -> None:
    """Log the step's training loss (averaged over the ranks) and throughput."""
    loss_mean, = run.ranks.mean([loss])
    rate = run.tokens_per_s()
    run.log({"split": "train", "step": run.step, "tokens": run.tokens, "loss": loss_mean,
             "bits_per_base": loss_mean / LN2, "lr": lr, "seq_len": length,
             "tokens_per_s": rate, "elapsed_s": elapsed})
    bar.set_postfix(loss=f"{loss_mean:.4f}", bits=f"{loss_mean / LN2:.3f}",
                    tok_s=f"{rate:,.0f}", refresh=False)


def _stop_reason(cfg: TrainConfig, run: Run, stop: _StopSignal) -> str | None:
    """"max_time" when this invocation's time is up, "SIGTERM" after one, else None."""
    if cfg.max_time is not None and time.monotonic() - run.started >= cfg.max_time:
        return "max_time"
    return "SIGTERM" if stop.received else None


def _validation_batches(stores, val_iv, cfg: TrainConfig) -> list[dict]:
    """Fixed held-out windows (no augmentation), drawn once; [] when no validation interval is
    as long as a window."""
    if not any(iv.length >= cfg.seq_len for iv in val_iv):
        return []
    data = WindowDataset(stores, val_iv, cfg.seq_len, num_samples=cfg.eval_windows,
                         seed=cfg.seed + 1, max_n_fraction=cfg.max_n_fraction,
                         rc_augment=False, use_reads=False, source=cfg.origin("seq_len"))
    items = [data[i] for i in range(len(data))]
    return [torch.utils.data.default_collate(items[i:i + cfg.batch_size])
            for i in range(0, len(items), cfg.batch_size)]


@torch.no_grad()
def _validation_loss(model: GenoSSM, batches, cfg: TrainConfig, ranks: Dist) -> float:
    """Mean loss (nats per target) of the model on the fixed validation windows (with context
    parallelism, each rank reads its shard of them and the group sums the losses)."""
    model.eval()
    dev = ranks.device
    total, count = torch.zeros((), dtype=torch.float64, device=dev), 0
    generator = torch.Generator().manual_seed(cfg.seed + 17)
    for batch in batches:
        whole = lm_batch(batch["tokens"].to(dev), batch["loss_mask"].to(dev),
                         model.config.objective, cfg.mlm_probability, generator)
        inputs, targets, weights = (t[:, shard_span(t.shape[1], ranks)] for t in whole)
        with _autocast(cfg, dev):
            total += lm_loss(model, inputs, targets, weights, ranks.context_group).double()
        count += int(whole[2].sum())
    if ranks.context_group is not None:
        dist.all_reduce(total, group=ranks.context_group)
    model.train()
    return total.item() / max(count, 1)
