"""A model directory, end to end: ``ModelDir`` is the one owner of its files.

    config.json         model config, alphabet and format (genossm.model.io); for a trained
                        model also its "training" section (``TrainingInfo``)
    model.safetensors   the weights (genossm.model.io)
    train_state.pt      where training stands: step, tokens, elapsed_s, rng_torch, optimizer
    metrics.jsonl       one JSON record per logged step, appended as training goes

A checkpoint is a whole model directory written under a temporary sibling name and swapped in
by two renames (genossm.fileio): a kill at any moment leaves the old or the new checkpoint
whole, and ``ModelDir.recover`` puts the old one back when the kill fell between the renames.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from genossm.errors import InputError
from genossm.fileio import OutputKind, StagedOutputs, atomic_write, recover
from genossm.model.io import CONFIG_NAME, load_model, read_model_info, save_model
from genossm.model.lm import GenoSSM
from genossm.regions import Region

TRAIN_STATE_NAME = "train_state.pt"
METRICS_NAME = "metrics.jsonl"
NOT_TRAINED = ("no usable 'training' section (stores, seq_len >= 2, split.train, "
               "split.validation): was it made by genossm train?")
SPLIT_KINDS = ("train", "validation")
# What train_state.pt holds, each with its type.
TRAIN_STATE_KEYS = {"step": int, "tokens": int, "elapsed_s": (int, float),
                    "rng_torch": torch.Tensor, "optimizer": dict}


def is_model_dir(path) -> bool:
    """Whether ``path`` is a model directory genossm wrote: its config.json is a JSON object
    with "format", "genossm_version" and "model"."""
    try:
        info = json.loads((Path(path) / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and all(k in info for k in ("format", "genossm_version",
                                                                "model"))


MODEL_DIR = OutputKind("a genossm model directory", is_model_dir)


def _interval(iv) -> Region:
    """A split interval as recorded (``Region.interval_json``), read back."""
    if not isinstance(iv["contig"], str):
        raise TypeError("contig is not a string")
    return Region(iv["contig"], int(iv["start"]), int(iv["end"]), store=int(iv["store"]))


@dataclass
class TrainingInfo:
    """config.json's "training" section: the run's stores, window length, seed, ranks, the
    train/validation split (``data.describe_split``) and config (``TrainConfig.to_dict``); at
    a checkpoint also the steps, tokens and seconds so far and why it stopped (None while the
    run goes on). Checked when read (``from_json``): a section without stores, seq_len >= 2 and
    split.train / split.validation is not usable."""
    stores: list[str]
    seq_len: int
    split: dict
    seed: int | None = None
    world_size: int | None = None
    config: dict | None = None
    steps: int | None = None
    tokens: int | None = None
    elapsed_s: float | None = None
    stopped: str | None = None

    def _check(self) -> None:
        """ValueError unless the section is usable (evaluate's needs: stores, seq_len >= 2, well
        formed split intervals)."""
        try:
            ok = (isinstance(self.stores, list) and int(self.seq_len) >= 2
                  and all(isinstance(self.split[k], list) for k in SPLIT_KINDS))
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(NOT_TRAINED)
        self.seq_len = int(self.seq_len)
        for kind in SPLIT_KINDS:
            for iv in self.split[kind]:
                try:
                    _interval(iv)
                except (KeyError, TypeError, ValueError):
                    raise ValueError(f"malformed {kind} interval {iv!r}") from None

    def intervals(self, kind: str) -> list[Region]:
        """The ``kind`` ("train" or "validation") intervals of the split, with their store
        index."""
        return [_interval(iv) for iv in self.split[kind]]

    def to_json(self) -> dict:
        """The section as config.json holds it (keys in the order train always wrote)."""
        keys = ("stores", "seq_len", "seed", "world_size", "split", "config", "steps",
                "tokens", "elapsed_s", "stopped")
        return {k: getattr(self, k) for k in keys}

    @classmethod
    def from_json(cls, section, path=None) -> TrainingInfo:
        """The section read from config.json (``path``, for errors), checked; unknown keys
        are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            info = cls(**{k: v for k, v in section.items() if k in known})
        except (AttributeError, TypeError):   # not a mapping, or a required key missing
            raise InputError(path, NOT_TRAINED) from None
        try:
            info._check()
        except ValueError as e:
            raise InputError(path, str(e)) from None
        return info


@dataclass
class Checkpoint:
    """What a run resumes from."""
    training: TrainingInfo
    state: dict            # train_state.pt
    metrics: list[dict]    # metrics.jsonl up to the checkpoint's step


def last_record(metrics: list[dict], split: str) -> dict | None:
    """The last metrics record of ``split`` ("train" or "val"), None without one."""
    return next((m for m in reversed(metrics) if m.get("split") == split), None)


class ModelDir:
    """A model directory (see the module docstring). Config and weights go through
    genossm.model.io; everything else a directory holds is read and written here."""

    def __init__(self, path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"ModelDir({str(self.path)!r})"

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_NAME

    # --- config and weights ---------------------------------------------------------------
    def info(self) -> dict:
        """The whole config.json, checked (FileNotFoundError, ValueError)."""
        return read_model_info(self.path)

    def load_model(self, device="cpu", **overrides) -> GenoSSM:
        """The model (genossm.model.io.load_model); a missing, cut short or corrupt config or
        weights file is one InputError naming it."""
        try:
            return load_model(self.path, device, **overrides)
        except (FileNotFoundError, ValueError) as e:
            raise InputError(None, str(e)) from None

    def save_model(self, model: GenoSSM, extra: dict | None = None) -> None:
        save_model(model, self.path, extra=extra)

    def training(self) -> TrainingInfo:
        """The "training" section of config.json, checked; InputError when there is none."""
        try:
            info = self.info()
        except (FileNotFoundError, ValueError) as e:
            raise InputError(None, str(e)) from None
        return TrainingInfo.from_json(info.get("training"), self.config_path)

    def trained_length(self) -> int | None:
        """The sequence length the model was trained on: the training section's seq_len, or
        what ``genossm convert --trained-length`` recorded; None when unknown."""
        try:
            info = self.info()
        except (FileNotFoundError, ValueError):
            return None
        for section, key in (("training", "seq_len"), ("source", "trained_length")):
            value = (info.get(section) or {}).get(key) \
                if isinstance(info.get(section), dict) else None
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        return None

    def train_config(self) -> dict | None:
        """The training config recorded at the last checkpoint (None without one)."""
        try:
            return self.training().config
        except InputError:
            return None

    # --- metrics.jsonl --------------------------------------------------------------------
    def read_metrics(self) -> list[dict]:
        """The records of metrics.jsonl ([] without one). A last line without its newline is
        an append that a kill cut short, and is not a record."""
        path = self.path / METRICS_NAME
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

    def append_metrics(self, record: dict) -> None:
        with open(self.path / METRICS_NAME, "a") as f:
            f.write(json.dumps(record) + "\n")

    def write_metrics(self, records: list[dict]) -> None:
        """metrics.jsonl written whole (replacing any older one)."""
        text = "".join(json.dumps(m) + "\n" for m in records)
        atomic_write(self.path / METRICS_NAME, lambda p: Path(p).write_text(text))

    # --- checkpoints ----------------------------------------------------------------------
    def recover(self) -> None:
        """Finish or undo a checkpoint swap that a kill interrupted (genossm.fileio.recover)."""
        recover(self.path)

    def write_checkpoint(self, model: GenoSSM, training: TrainingInfo, state: dict,
                         metrics: list[dict]) -> None:
        """Write a whole model directory (weights, config.json with ``training``,
        train_state.pt = ``state``, metrics.jsonl = ``metrics``) beside this one and swap it
        in."""
        with StagedOutputs() as staged:
            new = ModelDir(staged.path(self.path))
            new.path.mkdir()
            new.save_model(model, {"name": self.path.name, "training": training.to_json()})
            atomic_write(new.path / TRAIN_STATE_NAME, lambda p: torch.save(state, p))
            new.write_metrics(metrics)
            fd = os.open(new.path, os.O_RDONLY)   # the renames inside it reach the disk first
            os.fsync(fd)
            os.close(fd)

    def read_train_state(self, device) -> dict:
        """train_state.pt, checked: a missing, cut short or corrupt file, or one without what
        a training state holds (TRAIN_STATE_KEYS), is one InputError naming it."""
        path = self.path / TRAIN_STATE_NAME
        if not path.is_file():
            raise InputError(self.path, f"cannot resume: no {TRAIN_STATE_NAME}")
        try:
            state = torch.load(path, map_location=device, weights_only=True)
        except Exception as e:   # damaged bytes fail torch's unpickler in many ways
            raise InputError(path, "not a whole training state; cut short or corrupt "
                                   f"({type(e).__name__})") from None
        wrong = [k for k, kind in TRAIN_STATE_KEYS.items()
                 if not isinstance(state, dict) or not isinstance(state.get(k), kind)]
        if wrong:
            raise InputError(path, f"not a training state written by genossm train (no valid "
                                   f"{', '.join(wrong)})")
        return state

    def read_checkpoint(self, device) -> Checkpoint:
        """The training section, train state and metrics up to the checkpoint's step."""
        training = self.training()
        state = self.read_train_state(device)
        # lines logged after the checkpoint will be logged again
        metrics = [m for m in self.read_metrics() if m.get("step", 0) <= state["step"]]
        return Checkpoint(training, state, metrics)
