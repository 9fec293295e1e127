"""What every model-running command shares: ``--device``, ``--threads`` and opening a model
(a genossm model directory, or a checkpoint directory of another format converted in memory),
with bad input turned into InputError."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from genossm.errors import InputError
from genossm.model import GenoSSM, ModelDir

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (or None) is the GPU when there is one, else the CPU; ``cuda`` without a GPU is
    an input error rather than a crash deep inside torch."""
    if isinstance(name, torch.device):
        name = str(name)
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(None, f"--device: unknown device {name!r} (auto, cpu or cuda)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(None, f"--device {name}: no CUDA device is available")
    if device.type not in ("cpu", "cuda"):
        raise InputError(None, f"--device: unsupported device {name!r} (auto, cpu or cuda)")
    return device


def set_threads(threads: int | None) -> None:
    """CPU threads for torch's intra-op parallelism (None: torch's default)."""
    if threads:
        torch.set_num_threads(threads)


def is_model_dir(path) -> bool:
    """False for a directory whose config.json is another format's checkpoint config (a JSON
    object without genossm's "format" and "model"); True otherwise, so that ModelDir reports
    what is wrong with a missing or damaged one."""
    try:
        info = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return True
    return not isinstance(info, dict) or "format" in info or "model" in info


def open_model(model_dir, device="auto") -> GenoSSM:
    """The model of ``model_dir`` on the resolved device (eval mode): a genossm model directory
    (a missing or damaged file of it is one InputError naming the file), or a checkpoint that
    ``genossm convert`` reads (Caduceus, PlantCaduceus, mamba_ssm, Transformers), converted in
    memory and said once on stderr."""
    device = resolve_device(device)
    if is_model_dir(model_dir):
        return ModelDir(model_dir).load_model(device)
    from genossm.convert import build_model, read_checkpoint

    checkpoint = read_checkpoint(model_dir)
    print(f"genossm: reading {model_dir} as a {checkpoint.source['format']} checkpoint, "
          "converted in memory (`genossm convert` writes it once as a model directory)",
          file=sys.stderr)
    return build_model(checkpoint, device)


def trained_length(model_dir) -> int | None:
    """The sequence length a model was trained on, when its directory says (ModelDir's
    ``trained_length``; None for a checkpoint of another format)."""
    return ModelDir(model_dir).trained_length() if is_model_dir(model_dir) else None


def check_window(model: GenoSSM, model_dir, length: int, what: str, allow: bool) -> None:
    """Refuse to have a model that reads a window whole (bidirectional, rc_equivariant) read
    ``length`` bases when it was trained on fewer, unless ``allow`` (--beyond-trained-length).
    A causal model streams any length and is not checked."""
    trained = trained_length(model_dir)
    if model.config.causal or allow or trained is None or length <= trained:
        return
    raise InputError(None, f"{what} of {length:,} bases is longer than the {trained:,} the "
                           f"model {model_dir} was trained on, and it reads a window whole "
                           "(bidirectional or rc_equivariant); use a shorter one, or "
                           "--beyond-trained-length to go on anyway")
