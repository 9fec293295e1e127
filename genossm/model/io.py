"""Model directory I/O (docs/design.md, "Model directory"): ``config.json`` + ``model.safetensors``.

config.json = {"format": 1, "genossm_version": ..., "alphabet": "ACGTN", "vocab": [...],
"model": ModelConfig.to_dict(), **extra}. Weights are safetensors (no pickle); a tensor reached
under several names (the tied head, Caduceus's shared bidirectional projections:
``GenoSSM.tied_names``) is stored once, under the first. Every file is written to a temporary
name in the same directory, flushed, and renamed with os.replace, so a crash never leaves a
half-written file; the weights are written before config.json. The rest of a model directory
(training section, train state, metrics, checkpoints) is ``ModelDir``'s
(genossm.model.directory).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import genossm
from genossm import alphabet
from genossm.fileio import atomic_write
from genossm.model.config import ModelConfig
from genossm.model.lm import GenoSSM

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = 1
RESERVED_KEYS = ("format", "genossm_version", "alphabet", "vocab", "model")


def save_model(model: GenoSSM, directory, extra: dict | None = None) -> Path:
    """Write ``model`` to ``directory`` (created if needed). ``extra`` (JSON-serialisable, e.g.
    {"training_data": {...}}) is merged into config.json at top level."""
    directory = Path(directory)
    extra = dict(extra or {})
    clash = sorted(set(extra) & set(RESERVED_KEYS))
    if clash:
        raise ValueError(f"extra may not set reserved config.json key(s): {', '.join(clash)}")
    info = {
        "format": FORMAT,
        "genossm_version": genossm.__version__,
        "alphabet": alphabet.BASES,
        "vocab": list(alphabet.BASES) + list(alphabet.SPECIAL_TOKENS),
        "model": model.config.to_dict(),
        **extra,
    }
    text = json.dumps(info, indent=2, allow_nan=False) + "\n"  # fail before writing anything
    directory.mkdir(parents=True, exist_ok=True)

    tied = model.tied_names()
    tensors = {name: t.detach().to("cpu").contiguous()
               for name, t in model.state_dict().items() if name not in tied}
    metadata = {"format": "pt", "genossm_version": genossm.__version__}
    atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(tensors, p, metadata=metadata))

    def write_text(p):
        with open(p, "w", encoding="utf-8") as f:
            f.write(text)
    atomic_write(directory / CONFIG_NAME, write_text)
    return directory


def read_model_info(directory) -> dict:
    """The whole config.json of a model directory, checked for format and alphabet."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: not a model directory (no {CONFIG_NAME})")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); cut short or corrupt?") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not JSON text (not UTF-8); corrupt?") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot be read ({e.strerror or e})") from None
    if not isinstance(info, dict) or "model" not in info:
        raise ValueError(f"{path}: no 'model' section")
    if info.get("format") != FORMAT:
        raise ValueError(f"{path}: unsupported format {info.get('format')!r} (expected {FORMAT})")
    if info.get("alphabet") != alphabet.BASES:
        raise ValueError(f"{path}: alphabet {info.get('alphabet')!r} is not {alphabet.BASES!r}")
    return info


def load_model(directory, device="cpu", **overrides) -> GenoSSM:
    """Rebuild a model from ``directory`` on ``device`` (eval mode). ``overrides`` replace
    config fields that do not change the weights, e.g. scan_backend="ref" or
    gradient_checkpointing=True."""
    directory = Path(directory)
    info = read_model_info(directory)
    try:
        config = ModelConfig.from_dict(info["model"])
        if overrides:
            config = config.replace(**overrides)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{directory / CONFIG_NAME}: {e}") from None
    weights_path = directory / WEIGHTS_NAME
    if not weights_path.is_file():
        raise FileNotFoundError(f"{directory}: no {WEIGHTS_NAME}")
    try:
        tensors = load_file(str(weights_path), device=str(device))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{weights_path}: not a whole safetensors file; cut short or corrupt "
                         f"({e})") from None
    with torch.device("meta"):
        model = GenoSSM(config)
    model = model.to_empty(device=device)
    model.tie_weights()  # to_empty makes a new Parameter per name
    for alias, source in model.tied_names().items():
        if source in tensors and alias not in tensors:
            tensors[alias] = tensors[source]
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise ValueError(f"{weights_path}: weights do not match the config "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    state = model.state_dict()
    wrong = [f"{k} {tuple(tensors[k].shape)} (config wants {tuple(v.shape)})"
             for k, v in state.items() if tensors[k].shape != v.shape]
    if wrong:
        raise ValueError(f"{weights_path}: weights do not match the config: {wrong[0]}"
                         + (f" and {len(wrong) - 1} more" if len(wrong) > 1 else ""))
    model.load_state_dict(tensors, strict=True)
    model.complement.copy_(torch.as_tensor(alphabet.COMPLEMENT, dtype=torch.long))
    return model.eval()
