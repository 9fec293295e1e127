"""What every checkpoint reader shares: the files of a checkpoint directory, tensor checks, the
Mamba-1/Mamba-2 constructor settings, and the vocabulary map onto genossm's alphabet.

A reader turns a directory as users download it into ``Checkpoint(config, state, source)``:
a ``ModelConfig``, a state dict with ``GenoSSM``'s names (float32, tied tensors present under
every name) and a JSON-able ``source`` record that the model directory keeps. Anything genossm
cannot compute the same way is an ``InputError`` naming the file and the field or tensor.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from genossm import alphabet
from genossm.errors import InputError
from genossm.model.config import ModelConfig

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
PICKLE_NAME = "pytorch_model.bin"
#: genossm's vocabulary rows, in order: A C G T N MASK.
SYMBOLS = tuple(alphabet.BASES) + alphabet.SPECIAL_TOKENS


@dataclass
class Checkpoint:
    """A checkpoint read into genossm's terms."""
    config: ModelConfig
    state: dict[str, torch.Tensor]
    source: dict


def read_config(src: Path) -> dict:
    """The JSON object in ``src/config.json``."""
    path = src / CONFIG_NAME
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(src, f"not a checkpoint directory (no {CONFIG_NAME})") from None
    except IsADirectoryError:
        raise InputError(path, "a directory, not a JSON config") from None
    except NotADirectoryError:
        raise InputError(src, "not a directory") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(path, f"not a readable JSON config ({e})") from None
    if not isinstance(cfg, dict):
        raise InputError(path, "not a JSON object")
    return cfg


def read_weights(src: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """(file, tensors) from model.safetensors, else pytorch_model.bin, which is read only with
    ``torch.load(weights_only=True)``: a pickle that needs anything but tensors is refused."""
    path = src / SAFETENSORS_NAME
    if path.is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return path, load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise InputError(path, f"not a whole safetensors file; cut short or corrupt ({e})"
                             ) from None
    path = src / PICKLE_NAME
    if path.is_file():
        try:
            tensors = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:   # damaged or unsafe bytes fail torch's unpickler in many ways
            raise InputError(path, "not a weights-only state dict (cut short, corrupt, or a "
                                   f"pickle of more than tensors; {type(e).__name__})"
                             ) from None
        if not isinstance(tensors, dict) or not all(
                isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items()):
            raise InputError(path, "not a state dict of tensors")
        return path, tensors
    raise InputError(src, f"no weights ({SAFETENSORS_NAME} or {PICKLE_NAME})")


def check_shapes(path: Path, tensors: dict, shapes: dict[str, tuple[int, ...]]) -> None:
    """Every tensor of ``shapes`` present with that shape, else an InputError naming the key
    and both shapes."""
    for key, shape in shapes.items():
        if key not in tensors:
            raise InputError(path, "missing tensor", place=key)
        if tuple(tensors[key].shape) != tuple(shape):
            raise InputError(path, f"shape {tuple(tensors[key].shape)}, the config needs "
                                   f"{tuple(shape)}", place=key)


def check_tied(path: Path, tensors: dict, alias: str, source: str, what: str) -> None:
    """A tied tensor that the file may leave out; when present it must equal ``source``."""
    if alias in tensors and (tensors[alias].shape != tensors[source].shape
                             or not torch.equal(tensors[alias], tensors[source])):
        raise InputError(path, f"differs from {source}: {what} is not supported", place=alias)


def float32_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Own float32 copies (the head tie is restored by loading into GenoSSM)."""
    return {k: v.detach().to(torch.float32).clone().contiguous() for k, v in state.items()}


# --- the mixers' constructor settings -----------------------------------------------------

# Per mamba_ssm layer kind: the constructor arguments that must keep a value genossm computes
# with, those that do not change what a trained model computes, those mapped onto ModelConfig
# fields (with mamba_ssm 2.3.2's constructor defaults for what a config leaves out).
LAYERS = {
    "Mamba2": {
        "mixer": "mamba2",
        "fixed": {"D_has_hdim": False, "rmsnorm": True, "norm_before_gate": False,
                  "bias": False, "learnable_init_states": False},
        "ignored": ("layer", "A_init_range", "conv_init", "use_mem_eff_path", "process_group",
                    "sequence_parallel", "device", "dtype", "layer_idx", "activation",
                    "dt_limit", "d_ssm"),
        "mapped": {"d_state": "d_state", "d_conv": "d_conv", "expand": "expand",
                   "headdim": "headdim", "ngroups": "n_groups", "chunk_size": "chunk_size",
                   "conv_bias": "conv_bias", "dt_min": "dt_min", "dt_max": "dt_max",
                   "dt_init_floor": "dt_init_floor"},
        "defaults": {"d_state": 128, "d_conv": 4, "expand": 2, "headdim": 64, "ngroups": 1,
                     "chunk_size": 256, "conv_bias": True, "dt_min": 0.001, "dt_max": 0.1,
                     "dt_init_floor": 1e-4},
    },
    "Mamba1": {
        "mixer": "mamba1",
        "fixed": {"bias": False},
        "ignored": ("layer", "use_fast_path", "device", "dtype", "layer_idx"),
        "mapped": {"d_state": "d_state", "d_conv": "d_conv", "expand": "expand",
                   "dt_rank": "dt_rank", "conv_bias": "conv_bias", "dt_min": "dt_min",
                   "dt_max": "dt_max", "dt_init": "dt_init", "dt_scale": "dt_scale",
                   "dt_init_floor": "dt_init_floor"},
        "defaults": {"d_state": 16, "d_conv": 4, "expand": 2, "dt_rank": "auto",
                     "conv_bias": True, "dt_min": 0.001, "dt_max": 0.1, "dt_init": "random",
                     "dt_scale": 1.0, "dt_init_floor": 1e-4},
    },
}


def mixer_fields(ssm, layer: str, d_model: int, path: Path) -> dict:
    """The ModelConfig fields for a mamba_ssm ``layer`` ("Mamba1" or "Mamba2") built with the
    keyword arguments ``ssm`` (a config's ssm_cfg), or an InputError naming ssm_cfg.<key>."""
    def refuse(key, message):
        raise InputError(path, message, place=f"ssm_cfg.{key}" if key else "ssm_cfg")

    if not isinstance(ssm, dict):
        refuse(None, "not a JSON object")
    kind = LAYERS[layer]
    for key, want in kind["fixed"].items():
        if key in ssm and ssm[key] != want:
            refuse(key, f"{ssm[key]!r} is not supported (only {want!r})")
    if ssm.get("activation", "swish") not in ("swish", "silu"):
        refuse("activation", f"{ssm['activation']!r} is not supported (only swish)")
    unknown = sorted(set(ssm) - set(kind["fixed"]) - set(kind["ignored"]) - set(kind["mapped"]))
    if unknown:
        refuse(unknown[0], f"unknown {layer} setting")
    values = {**kind["defaults"], **{k: ssm[k] for k in kind["mapped"] if k in ssm}}
    d_inner = values["expand"] * d_model
    if ssm.get("d_ssm") not in (None, d_inner):
        refuse("d_ssm", f"{ssm['d_ssm']} < expand*d_model ({d_inner}) adds an MLP branch to "
                        "in_proj; not supported")
    if values.get("ngroups", 1) != 1:
        # mamba_ssm normalises y*silu(z) in ngroups groups of d_inner/ngroups channels;
        # genossm's RMSNorm normalises all d_inner channels together.
        refuse("ngroups", f"{values['ngroups']} groups are not supported yet (the gated "
                          "RMSNorm is grouped; genossm's is not)")
    if values.get("dt_rank") == "auto":
        values["dt_rank"] = 0          # ModelConfig's 0 is mamba_ssm's "auto"
    try:
        dt_lo, dt_hi = (float(v) for v in ssm.get("dt_limit", (0.0, math.inf)))
    except (TypeError, ValueError):
        refuse("dt_limit", f"not a (min, max) pair: {ssm['dt_limit']!r}")
    fields = {kind["mapped"][k]: v for k, v in values.items()}
    fields.update(mixer=kind["mixer"], dt_limit_min=dt_lo,
                  dt_limit_max=None if math.isinf(dt_hi) else dt_hi)
    return fields


def model_config(path: Path, place: str, **fields) -> ModelConfig:
    """ModelConfig(**fields) with genossm's vocabulary, an invalid value an InputError."""
    try:
        return ModelConfig(vocab_size=alphabet.VOCAB_SIZE, **fields)
    except (TypeError, ValueError) as e:
        raise InputError(path, str(e), place=place) from None


def mixer_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The mixer tensors of one layer (mamba_ssm's names, which GenoSSM keeps) and shapes."""
    d, d_inner, n, k = config.d_model, config.d_inner, config.d_state, config.d_conv
    if config.mixer == "mamba1":
        rank = config.resolved_dt_rank
        shapes = {"in_proj.weight": (2 * d_inner, d), "conv1d.weight": (d_inner, 1, k),
                  "conv1d.bias": (d_inner,), "x_proj.weight": (rank + 2 * n, d_inner),
                  "dt_proj.weight": (d_inner, rank), "dt_proj.bias": (d_inner,),
                  "A_log": (d_inner, n), "D": (d_inner,), "out_proj.weight": (d, d_inner)}
    else:
        d_in_proj = 2 * d_inner + 2 * config.n_groups * n + config.n_heads
        shapes = {"in_proj.weight": (d_in_proj, d), "conv1d.weight": (config.conv_dim, 1, k),
                  "conv1d.bias": (config.conv_dim,), "dt_bias": (config.n_heads,),
                  "A_log": (config.n_heads,), "D": (config.n_heads,),
                  "norm.weight": (d_inner,), "out_proj.weight": (d, d_inner)}
    if not config.conv_bias:
        del shapes["conv1d.bias"]
    return shapes


def read_backbone(path: Path, tensors: dict, config: ModelConfig, n_rows: int,
                  embedding_key: str, tie_field: str, tied: bool) -> dict[str, torch.Tensor]:
    """The tensors of a mamba_ssm-style LM, checked: ``backbone.`` + the embedding
    (``embedding_key``), ``layers.{i}.norm`` and ``.mixer.*``, ``norm_f``, and a head tied to
    the embedding that the file may leave out unless the config's ``tie_field`` is false
    (``tied``). mamba_ssm's MambaLMHeadModel and Transformers' Mamba LMs name them alike.
    Returns them under GenoSSM's names, the embedding with all ``n_rows`` source rows."""
    shapes = {embedding_key: (n_rows, config.d_model),
              "backbone.norm_f.weight": (config.d_model,)}
    mixer = mixer_shapes(config)
    for i in range(config.n_layer):
        shapes[f"backbone.layers.{i}.norm.weight"] = (config.d_model,)
        for key, shape in mixer.items():
            shapes[f"backbone.layers.{i}.mixer.{key}"] = shape
    check_shapes(path, tensors, shapes)
    extra = sorted(set(tensors) - set(shapes) - {"lm_head.weight"})
    if extra:
        raise InputError(path, "unexpected tensor (a part genossm does not have)", place=extra[0])
    check_tied(path, tensors, "lm_head.weight", embedding_key, "an untied LM head")
    if "lm_head.weight" not in tensors and not tied:
        raise InputError(path, f"missing tensor ({tie_field} is false)", place="lm_head.weight")
    state = {"embedding.weight": tensors[embedding_key]}
    for key in shapes:
        if key != embedding_key:
            state[key.removeprefix("backbone.")] = tensors[key]
    return state


# --- vocabulary ---------------------------------------------------------------------------

def parse_vocab(text: str) -> dict[str, int]:
    """``--vocab`` text, e.g. ``A=7,C=8,G=9,T=10,N=11,MASK=3``: genossm symbol -> source id.
    A C G T N are needed; MASK may be left out (a model that never reads MASK)."""
    vocab = {}
    for item in text.split(","):
        symbol, sep, value = item.partition("=")
        symbol = symbol.strip().upper()
        if not sep or symbol not in SYMBOLS or not value.strip().isdigit():
            raise InputError(None, f"--vocab: {item.strip()!r} is not SYMBOL=ID with SYMBOL "
                                   f"one of {', '.join(SYMBOLS)}")
        if symbol in vocab:
            raise InputError(None, f"--vocab: {symbol} given twice")
        vocab[symbol] = int(value)
    missing = [s for s in alphabet.BASES if s not in vocab]
    if missing:
        raise InputError(None, f"--vocab: no id for {', '.join(missing)}")
    return vocab


def vocab_rows(vocab: dict[str, int], n_rows: int, path: Path, key: str) -> list[int]:
    """The source rows for genossm's A C G T N MASK. Without a MASK id, MASK's row is the
    first source row that none of A C G T N uses (a model that never reads MASK: its A C G T
    N logit columns are unchanged)."""
    bad = {s: i for s, i in vocab.items() if not 0 <= i < n_rows}
    if bad:
        symbol, i = next(iter(bad.items()))
        raise InputError(path, f"vocabulary id {i} for {symbol} is outside its {n_rows} rows",
                         place=key)
    if len({vocab[s] for s in alphabet.BASES}) < len(alphabet.BASES):
        raise InputError(path, f"A C G T N must have different ids, got {vocab}", place=key)
    rows = [vocab[s] for s in alphabet.BASES]
    if "MASK" in vocab:
        if vocab["MASK"] in rows:
            raise InputError(path, f"MASK must have an id of its own, got {vocab}", place=key)
        return rows + [vocab["MASK"]]
    spare = next((i for i in range(n_rows) if i not in rows), None)
    if spare is None:
        raise InputError(path, f"{n_rows} vocabulary rows leave none for MASK", place=key)
    return rows + [spare]


def complement_agrees(vocab: dict[str, int], complement: list[int]) -> bool:
    """Whether a source complement map (source id -> id) complements A C G T N (MASK) as
    genossm's alphabet does under ``vocab``."""
    def comp(i):
        return complement[i] if 0 <= i < len(complement) else None
    for symbol, code in zip(SYMBOLS, alphabet.COMPLEMENT.tolist(), strict=True):
        if symbol in vocab and comp(vocab[symbol]) != vocab.get(SYMBOLS[code]):
            return False
    return True


def plain_json(value):
    """``value`` with non-finite floats (Python's json writes inf as Infinity) as strings, so
    that it is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_json(v) for v in value]
    return value
