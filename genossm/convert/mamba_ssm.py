"""Read the official mamba_ssm ``MambaLMHeadModel`` (Mamba-1 or Mamba-2 layers) as its
``save_pretrained`` writes it: ``config.json`` = the MambaConfig, and ``model.safetensors`` or
``pytorch_model.bin``.

What the mapping relies on (mamba_ssm ``modules/mamba2.py``, ``models/mixer_seq_simple.py``):
in_proj packs z, x, B, C, dt (the same order as genossm's z, xBC, dt); the gated RMSNorm is
rmsnorm(y * silu(z)) * w (norm_before_gate=False) over groups of d_ssm / ngroups channels,
which is genossm's RMSNorm over all of d_inner only when ngroups == 1; every norm's eps is
1e-5 (mamba_ssm's default norm_epsilon, not stored in the MambaConfig, and Mamba2's gated
norm); D and dt_bias are one per head. residual_in_fp32 and fused_add_norm change neither the
function nor float32 numbers. Mamba-1 layers (mamba_ssm ``modules/mamba_simple.py``) keep
their tensor names in genossm's Mamba1Mixer; dt_rank "auto" is ceil(d_model / 16), genossm's
dt_rank 0.

Vocabulary: by default source ids 0..4 are A C G T N (the genossm codes) and MASK's row is
copied from id 5, which a DNA model with this id map never reads, so the A C G T N logit
columns equal the source's; ``vocab`` gives another map.
"""

from __future__ import annotations

from pathlib import Path

from genossm.convert.checkpoint import (
    CONFIG_NAME,
    LAYERS,
    SYMBOLS,
    Checkpoint,
    float32_state,
    mixer_fields,
    model_config,
    plain_json,
    read_backbone,
    read_config,
    read_weights,
    vocab_rows,
)
from genossm.errors import InputError
from genossm.model.config import ModelConfig

NORM_EPS = 1e-5       # mamba_ssm's norm_epsilon default and Mamba2's RMSNormGated eps
DEFAULT_VOCAB = {"A": 0, "C": 1, "G": 2, "T": 3, "N": 4}

# MambaConfig fields (all of them; each is represented or refused below)
_TOP_FIELDS = ("d_model", "d_intermediate", "n_layer", "vocab_size", "ssm_cfg", "attn_layer_idx",
               "attn_cfg", "rms_norm", "residual_in_fp32", "fused_add_norm",
               "pad_vocab_size_multiple", "tie_embeddings")


def _model_config(cfg: dict, path: Path) -> ModelConfig:
    """The ModelConfig that computes what this MambaConfig does, or an InputError."""
    def refuse(field, message):
        raise InputError(path, message, place=field)

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
    layer = ssm.get("layer", "Mamba1") if isinstance(ssm, dict) else "Mamba1"
    if layer not in LAYERS:
        refuse("ssm_cfg.layer", f"{layer} layers are not supported (Mamba1 and Mamba2 are)")
    fields = mixer_fields(ssm, layer, cfg["d_model"], path)
    return model_config(path, "ssm_cfg", d_model=cfg["d_model"], n_layer=cfg["n_layer"],
                        norm_eps=NORM_EPS, objective="clm", **fields)


def read_mamba_ssm(src: Path, vocab: dict[str, int] | None = None) -> Checkpoint:
    """A mamba_ssm MambaLMHeadModel checkpoint directory in genossm's terms."""
    src = Path(src)
    raw = read_config(src)
    config = _model_config(raw, src / CONFIG_NAME)
    path, tensors = read_weights(src)

    multiple = raw.get("pad_vocab_size_multiple", 1) or 1
    n_rows = raw["vocab_size"] + (-raw["vocab_size"]) % multiple
    state = read_backbone(path, tensors, config, n_rows, "backbone.embedding.weight",
                          "tie_embeddings", raw.get("tie_embeddings", True) is not False)
    rows = vocab_rows(vocab or DEFAULT_VOCAB, n_rows, path, "backbone.embedding.weight")
    state["embedding.weight"] = state["embedding.weight"][rows]
    source = {"format": "mamba_ssm", "config": plain_json(raw),
              "vocab_rows": dict(zip(SYMBOLS, rows, strict=True))}
    return Checkpoint(config, float32_state(state), source)
