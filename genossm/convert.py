"""Read checkpoints made by other code into ordinary genossm models (issue 12, first piece).

Supported so far: the official mamba_ssm ``MambaLMHeadModel`` with Mamba-1 or Mamba-2 layers,
as its ``save_pretrained`` writes it (``config.json`` = the MambaConfig, and
``model.safetensors`` or ``pytorch_model.bin``, the latter read only with
``torch.load(..., weights_only=True)``).

``read_mamba_ssm(src)`` maps the MambaConfig onto a ``ModelConfig`` and the weights onto
``GenoSSM``'s state-dict names; ``convert(src, output)`` writes the result as a genossm model
directory (``ModelDir.save_model``), with a "source" section saying where it came from.

What the mapping relies on (mamba_ssm ``modules/mamba2.py``, ``models/mixer_seq_simple.py``):
in_proj packs z, x, B, C, dt (the same order as genossm's z, xBC, dt); the gated RMSNorm is
rmsnorm(y * silu(z)) * w (norm_before_gate=False) over groups of d_ssm / ngroups channels,
which is genossm's RMSNorm over all of d_inner only when ngroups == 1; every norm's eps is
1e-5 (mamba_ssm's default norm_epsilon, not stored in the MambaConfig, and Mamba2's gated
norm); D and dt_bias are one per head. residual_in_fp32 and fused_add_norm change neither the
function nor float32 numbers. Mamba-1 layers (mamba_ssm ``modules/mamba_simple.py``) keep
their tensor names in genossm's Mamba1Mixer; dt_rank "auto" is ceil(d_model / 16), genossm's
dt_rank 0. Whatever genossm cannot compute the same way is refused with an ``InputError``
naming the file and the field or key.

Vocabulary: genossm's is A C G T N MASK (6 rows). Source ids 0..4 are taken as A C G T N (the
genossm codes); the MASK row is copied from the first source id after them (5), which a DNA
model with this id map never sees, so the A C G T N logit columns equal the source's. A softmax
over genossm's 6 columns is not the source's softmax over its (padded) vocabulary.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from genossm import alphabet
from genossm.errors import InputError
from genossm.fileio import StagedOutputs, claim_outputs
from genossm.model.config import ModelConfig
from genossm.model.directory import MODEL_DIR, ModelDir
from genossm.model.lm import GenoSSM

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
PICKLE_NAME = "pytorch_model.bin"
SOURCE_FORMAT = "mamba_ssm"
NORM_EPS = 1e-5       # mamba_ssm's norm_epsilon default and Mamba2's RMSNormGated eps
MASK_SOURCE_ID = alphabet.NUM_BASE_CODES   # source id whose embedding row becomes MASK's

# MambaConfig fields and what genossm can represent of each (None: any value).
_TOP_FIELDS = ("d_model", "d_intermediate", "n_layer", "vocab_size", "ssm_cfg", "attn_layer_idx",
               "attn_cfg", "rms_norm", "residual_in_fp32", "fused_add_norm",
               "pad_vocab_size_multiple", "tie_embeddings")
# Per layer kind (the MambaConfig's ssm_cfg.layer; mamba_ssm's default is Mamba1): the
# constructor arguments that must keep a value genossm computes with, those that do not change
# what a trained model computes, those mapped onto ModelConfig fields (with mamba_ssm 2.3.2's
# constructor defaults for what the ssm_cfg leaves out), and the mixer's tensors.
_LAYERS = {
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


def _mixer_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
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


def _read_config(path: Path) -> dict:
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path.parent, f"not a mamba_ssm checkpoint (no {CONFIG_NAME})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(path, f"not a readable JSON config ({e})") from None
    if not isinstance(cfg, dict):
        raise InputError(path, "not a JSON object")
    return cfg


def _model_config(cfg: dict, path: Path) -> ModelConfig:
    """The ModelConfig that computes what this MambaConfig does, or an InputError."""
    def refuse(field, message):
        raise InputError(path, message, place=field)

    if "model_type" in cfg or "architectures" in cfg:   # a Transformers config, not mamba_ssm's
        kind = cfg.get("model_type") or ", ".join(cfg.get("architectures") or [])
        refuse("model_type", f"a {kind} checkpoint; only the official mamba_ssm "
                             "MambaLMHeadModel format can be read so far")
    unknown = sorted(set(cfg) - set(_TOP_FIELDS))
    if unknown:
        refuse(unknown[0], "unknown MambaConfig field")
    for field in ("d_model", "n_layer", "vocab_size"):
        if not isinstance(cfg.get(field), int) or isinstance(cfg.get(field), bool) \
                or cfg[field] <= 0:
            refuse(field, f"must be a positive integer, got {cfg.get(field)!r}")
    if cfg.get("d_intermediate", 0):
        refuse("d_intermediate", f"MLP layers (d_intermediate {cfg['d_intermediate']}) are "
                                 "not supported")
    if cfg.get("attn_layer_idx"):
        refuse("attn_layer_idx", f"attention layers {cfg['attn_layer_idx']} are not supported")
    if not cfg.get("rms_norm", True):
        refuse("rms_norm", "LayerNorm models (rms_norm false) are not supported")
    ssm = cfg.get("ssm_cfg") or {}
    if not isinstance(ssm, dict):
        refuse("ssm_cfg", "not a JSON object")
    layer = ssm.get("layer", "Mamba1")
    if layer not in _LAYERS:
        refuse("ssm_cfg.layer", f"{layer} layers are not supported (Mamba1 and Mamba2 are)")
    kind = _LAYERS[layer]
    for key, want in kind["fixed"].items():
        if key in ssm and ssm[key] != want:
            refuse(f"ssm_cfg.{key}", f"{ssm[key]!r} is not supported (only {want!r})")
    if ssm.get("activation", "swish") not in ("swish", "silu"):
        refuse("ssm_cfg.activation", f"{ssm['activation']!r} is not supported (only swish)")
    unknown = sorted(set(ssm) - set(kind["fixed"]) - set(kind["ignored"]) - set(kind["mapped"]))
    if unknown:
        refuse(f"ssm_cfg.{unknown[0]}", f"unknown {layer} setting")
    values = {**kind["defaults"], **{k: ssm[k] for k in kind["mapped"] if k in ssm}}
    d_inner = values["expand"] * cfg["d_model"]
    if ssm.get("d_ssm") not in (None, d_inner):
        refuse("ssm_cfg.d_ssm", f"{ssm['d_ssm']} < expand*d_model ({d_inner}) adds an MLP "
                                "branch to in_proj; not supported")
    if values.get("ngroups", 1) != 1:
        # mamba_ssm normalises y*silu(z) in ngroups groups of d_inner/ngroups channels;
        # genossm's RMSNorm normalises all d_inner channels together.
        refuse("ssm_cfg.ngroups", f"{values['ngroups']} groups are not supported yet (the "
                                  "gated RMSNorm is grouped; genossm's is not)")
    if values.get("dt_rank") == "auto":
        values["dt_rank"] = 0          # ModelConfig's 0 is mamba_ssm's "auto"
    try:
        dt_lo, dt_hi = (float(v) for v in ssm.get("dt_limit", (0.0, math.inf)))
    except (TypeError, ValueError):
        refuse("ssm_cfg.dt_limit", f"not a (min, max) pair: {ssm['dt_limit']!r}")
    fields = {kind["mapped"][k]: v for k, v in values.items()}
    fields["mixer"] = kind["mixer"]
    try:
        return ModelConfig(d_model=cfg["d_model"], n_layer=cfg["n_layer"],
                           vocab_size=alphabet.VOCAB_SIZE, norm_eps=NORM_EPS,
                           dt_limit_min=dt_lo,
                           dt_limit_max=None if math.isinf(dt_hi) else dt_hi,
                           objective="clm", **fields)
    except (TypeError, ValueError) as e:
        raise InputError(path, str(e), place="ssm_cfg") from None


def _read_weights(src: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """(file, tensors) from model.safetensors, else pytorch_model.bin (weights only)."""
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
        except Exception as e:   # damaged bytes fail torch's unpickler in many ways
            raise InputError(path, "not a whole weights-only state dict; cut short or corrupt "
                                   f"({type(e).__name__})") from None
        if not isinstance(tensors, dict) or not all(
                isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items()):
            raise InputError(path, "not a state dict of tensors")
        return path, tensors
    raise InputError(src, f"no weights ({SAFETENSORS_NAME} or {PICKLE_NAME})")


def read_mamba_ssm(src_dir) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """A mamba_ssm MambaLMHeadModel checkpoint (Mamba-1 or Mamba-2 layers) as (ModelConfig,
    state dict with GenoSSM's names, float32); InputError naming the file and field/key for
    anything genossm cannot represent exactly."""
    src = Path(src_dir)
    cfg_path = src / CONFIG_NAME
    raw = _read_config(cfg_path)
    config = _model_config(raw, cfg_path)
    path, tensors = _read_weights(src)

    multiple = raw.get("pad_vocab_size_multiple", 1) or 1
    vocab = raw["vocab_size"] + (-raw["vocab_size"]) % multiple
    shapes = {"backbone.embedding.weight": (vocab, config.d_model),
              "backbone.norm_f.weight": (config.d_model,)}
    mixer = _mixer_shapes(config)
    for i in range(config.n_layer):
        shapes[f"backbone.layers.{i}.norm.weight"] = (config.d_model,)
        for key, shape in mixer.items():
            shapes[f"backbone.layers.{i}.mixer.{key}"] = shape
    for key, shape in shapes.items():
        if key not in tensors:
            raise InputError(path, "missing tensor", place=key)
        if tuple(tensors[key].shape) != shape:
            raise InputError(path, f"shape {tuple(tensors[key].shape)}, the config needs "
                                   f"{shape}", place=key)
    extra = sorted(set(tensors) - set(shapes) - {"lm_head.weight"})
    if extra:
        raise InputError(path, "unexpected tensor (a part genossm does not have)", place=extra[0])
    emb = tensors["backbone.embedding.weight"]
    head = tensors.get("lm_head.weight")
    if head is not None and (head.shape != emb.shape or not torch.equal(head, emb)):
        raise InputError(path, "an untied LM head (differs from backbone.embedding.weight) is "
                               "not supported", place="lm_head.weight")
    if head is None and raw.get("tie_embeddings", True) is False:
        raise InputError(path, "missing tensor (tie_embeddings is false)",
                         place="lm_head.weight")
    if vocab <= MASK_SOURCE_ID:
        raise InputError(path, f"{vocab} vocabulary rows: need ids 0..4 for A C G T N and an "
                               f"unused id {MASK_SOURCE_ID} for MASK",
                         place="backbone.embedding.weight")

    rows = list(range(alphabet.NUM_BASE_CODES)) + [MASK_SOURCE_ID]   # A C G T N, then MASK
    out = {"embedding.weight": emb[rows],
           "norm_f.weight": tensors["backbone.norm_f.weight"]}
    for key in shapes:
        if key.startswith("backbone.layers."):
            out[key.removeprefix("backbone.")] = tensors[key]
    out = {k: v.detach().to(torch.float32).clone().contiguous() for k, v in out.items()}
    out["lm_head.weight"] = out["embedding.weight"]
    return config, out


def convert(src_dir, output, *, force: bool = False) -> Path:
    """Write the mamba_ssm checkpoint in ``src_dir`` as a genossm model directory ``output``
    (``claim_outputs`` policy: an existing output only with ``force``, never over the input)."""
    src, output = Path(src_dir), Path(output)
    claim_outputs([(output, MODEL_DIR)], inputs=[src], force=force)
    config, state = read_mamba_ssm(src)
    model = GenoSSM(config)
    model.load_state_dict(state, strict=True)   # lm_head stays tied: one Parameter
    source = {"format": SOURCE_FORMAT, "path": str(src.resolve()),
              "config": _plain_json(_read_config(src / CONFIG_NAME)),
              "vocab_rows": {"A": 0, "C": 1, "G": 2, "T": 3, "N": 4, "MASK": MASK_SOURCE_ID}}
    with StagedOutputs() as staged:   # a whole directory or none; --force replaces it whole
        ModelDir(staged.path(output)).save_model(model.eval(), extra={"source": source})
    return output


def _plain_json(value):
    """``value`` with non-finite floats (Python's json writes dt_limit's inf as Infinity) as
    strings, so that it is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_json(v) for v in value]
    return value
