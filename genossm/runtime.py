"""What every model-running command shares: ``--device``, ``--threads`` and opening a model
directory, with bad input turned into InputError."""

from __future__ import annotations

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


def open_model(model_dir, device="auto") -> GenoSSM:
    """The model of a model directory on the resolved device (eval mode); a missing or damaged
    file of it is one InputError naming the file (``ModelDir.load_model``)."""
    return ModelDir(model_dir).load_model(resolve_device(device))
