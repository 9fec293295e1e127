"""Read Caduceus and PlantCaduceus checkpoints (kuleshov-group/caduceus ``CaduceusForMaskedLM``
or ``Caduceus``) as ``save_pretrained`` writes them.

The architecture, in genossm's terms (docs/design.md, "Published models"): Mamba-1 mixers
(the config's ``ssm_cfg``), objective mlm; ``bidirectional`` with strategy "add" is genossm's
bidirectional block, with ``bidirectional_weight_tie`` sharing in_proj and out_proj between
the forward and reverse mixers (``bidirectional_sharing`` "projections"; otherwise "none");
``rcps`` is ``rc_equivariant``, and an RCPS model with ``fused_add_norm`` computes with the
strands traded before every block (``rc_strand_swap``), as the official fused path does.
``residual_in_fp32`` changes nothing in float32.

The weights file leaves out what ``save_pretrained`` sees as shared: the reverse mixers'
in_proj and out_proj and the LM head (tied to the embedding). They are re-tied here; when a
file has them they must equal what they are tied to.

Vocabulary: the Caduceus tokenizer's ids (A 7, C 8, G 9, T 10, N 11, MASK 3) or PlantCaduceus's
(lower-case a 3, c 4, g 5, t 6, N read as UNK 2, MASK 1), chosen by which of them the config's
vocabulary and complement map fit; ``vocab`` gives another map.
"""

from __future__ import annotations

from pathlib import Path

from genossm.convert.checkpoint import (
    CONFIG_NAME,
    SYMBOLS,
    Checkpoint,
    check_shapes,
    check_tied,
    complement_agrees,
    float32_state,
    mixer_fields,
    mixer_shapes,
    model_config,
    plain_json,
    read_config,
    read_weights,
    vocab_rows,
)
from genossm.errors import InputError

#: Published tokenizers' ids for genossm's symbols.
VOCABULARIES = {
    "caduceus": {"A": 7, "C": 8, "G": 9, "T": 10, "N": 11, "MASK": 3},
    "plantcaduceus": {"A": 3, "C": 4, "G": 5, "T": 6, "N": 2, "MASK": 1},
}
_FIELDS = ("d_model", "n_layer", "vocab_size", "ssm_cfg", "rms_norm", "residual_in_fp32",
           "fused_add_norm", "pad_vocab_size_multiple", "norm_epsilon", "initializer_cfg",
           "bidirectional", "bidirectional_strategy", "bidirectional_weight_tie", "rcps",
           "complement_map")
# What transformers' PretrainedConfig writes beside a model's own fields; none changes what
# the model computes.
_TRANSFORMERS_FIELDS = ("model_type", "architectures", "auto_map", "torch_dtype", "dtype",
                        "transformers_version", "_name_or_path", "pad_token_id", "bos_token_id",
                        "eos_token_id", "tie_word_embeddings", "return_dict",
                        "output_hidden_states", "use_cache")
_UNTIED_EMBEDDINGS = "tie_word_embeddings"


def _model_config(cfg: dict, path: Path):
    def refuse(field, message):
        raise InputError(path, message, place=field)

    unknown = sorted(set(cfg) - set(_FIELDS) - set(_TRANSFORMERS_FIELDS))
    if unknown:
        refuse(unknown[0], "unknown Caduceus config field")
    for field in ("d_model", "n_layer", "vocab_size"):
        if not isinstance(cfg.get(field), int) or isinstance(cfg.get(field), bool) \
                or cfg[field] <= 0:
            refuse(field, f"must be a positive integer, got {cfg.get(field)!r}")
    if not cfg.get("rms_norm", True):
        refuse("rms_norm", "LayerNorm models (rms_norm false) are not supported")
    if cfg.get(_UNTIED_EMBEDDINGS, True) is False:
        refuse(_UNTIED_EMBEDDINGS, "an LM head untied from the embedding is not supported")
    bidirectional = bool(cfg.get("bidirectional", True))
    if bidirectional and cfg.get("bidirectional_strategy", "add") != "add":
        refuse("bidirectional_strategy", f"{cfg['bidirectional_strategy']!r} is not supported "
                                         "(only 'add')")
    rcps = bool(cfg.get("rcps", False))
    fields = mixer_fields(cfg.get("ssm_cfg") or {}, "Mamba1", cfg["d_model"], path)
    sharing = "projections" if cfg.get("bidirectional_weight_tie", True) else "none"
    return model_config(
        path, "ssm_cfg", d_model=cfg["d_model"], n_layer=cfg["n_layer"],
        norm_eps=float(cfg.get("norm_epsilon", 1e-5)), objective="mlm",
        bidirectional=bidirectional, bidirectional_sharing=sharing, rc_equivariant=rcps,
        rc_strand_swap=rcps and bool(cfg.get("fused_add_norm", True)), **fields)


def _complement_map(cfg: dict, n_rows: int, path: Path) -> list[int] | None:
    """The complement map the model computes with (id -> id over the padded vocabulary), or
    None when the config has none. As Caduceus builds its buffer: the config's values in the
    JSON's key order, then identity entries for the padding rows."""
    raw = cfg.get("complement_map")
    if raw is None:
        return None
    try:
        values = [int(v) for v in raw.values()]
    except (AttributeError, TypeError, ValueError):
        raise InputError(path, "not a map of ids to ids", place="complement_map") from None
    values += range(len(values), n_rows)
    if len(values) != n_rows or any(not 0 <= v < n_rows for v in values):
        raise InputError(path, f"does not map the {n_rows}-row vocabulary onto itself",
                         place="complement_map")
    return values


def _vocabulary(vocab, complement, n_rows, path) -> dict[str, int]:
    """``vocab``, or the one published vocabulary that the rows and complement map fit."""
    if vocab is not None:
        if complement is not None and not complement_agrees(vocab, complement):
            raise InputError(path, f"the complement map does not complement the --vocab ids "
                                   f"{vocab} as A<->T, C<->G", place="complement_map")
        return vocab
    fits = [name for name, ids in VOCABULARIES.items()
            if max(ids.values()) < n_rows
            and (complement is None or complement_agrees(ids, complement))]
    if len(fits) != 1:
        which = " and ".join(fits) if fits else "none of " + ", ".join(VOCABULARIES)
        raise InputError(path, f"cannot tell the vocabulary ({which} fits); give --vocab, e.g. "
                               "A=7,C=8,G=9,T=10,N=11,MASK=3", place="vocab_size")
    return VOCABULARIES[fits[0]]


def read_caduceus(src: Path, vocab: dict[str, int] | None = None) -> Checkpoint:
    """A Caduceus / PlantCaduceus checkpoint directory in genossm's terms."""
    src = Path(src)
    raw = read_config(src)
    cfg_path = src / CONFIG_NAME
    config = _model_config(raw, cfg_path)
    path, tensors = read_weights(src)
    multiple = raw.get("pad_vocab_size_multiple", 8) or 1
    n_rows = raw["vocab_size"] + (-raw["vocab_size"]) % multiple
    complement = _complement_map(raw, n_rows, cfg_path)
    vocab = _vocabulary(vocab, complement, n_rows, cfg_path)

    # the source's names: a CaduceusForMaskedLM ("caduceus.backbone.") or bare Caduceus
    prefix = "caduceus.backbone." if any(k.startswith("caduceus.") for k in tensors) \
        else "backbone."
    rcps = config.rc_equivariant
    wrap = ".submodule" if rcps else ""          # RCPSWrapper around mixers and unfused norms
    names, shapes, tied = {}, {}, {}   # mine -> theirs; theirs -> shape; alias -> theirs

    def add(mine, theirs, shape):
        names[mine], shapes[theirs] = theirs, shape

    def norm_name(stem):   # a fused norm is bare; an unfused RCPS norm is wrapped
        wrapped = f"{prefix}{stem}.submodule.weight"
        return wrapped if wrapped in tensors else f"{prefix}{stem}.weight"

    add("embedding.weight", prefix + "embeddings.word_embeddings"
        + (".embedding.weight" if rcps else ".weight"), (n_rows, config.d_model))
    add("norm_f.weight", norm_name("norm_f"), (config.d_model,))
    parts = [("mamba_fwd", "mixer")] + ([("mamba_rev", "mixer_rev")] if config.bidirectional
                                        else [])
    shared = ("in_proj.weight", "out_proj.weight") \
        if config.bidirectional and config.bidirectional_sharing == "projections" else ()
    for i in range(config.n_layer):
        add(f"layers.{i}.norm.weight", norm_name(f"layers.{i}.norm"), (config.d_model,))
        for part, mine in parts:
            for key, shape in mixer_shapes(config).items():
                theirs = f"{prefix}layers.{i}.mixer{wrap}.{part}.{key}"
                if mine == "mixer_rev" and key in shared:
                    tied[theirs] = names[f"layers.{i}.mixer.{key}"]
                else:
                    add(f"layers.{i}.{mine}.{key}", theirs, shape)
    check_shapes(path, tensors, shapes)
    head = "lm_head.lm_head.weight" if rcps else "lm_head.weight"
    tied[head] = names["embedding.weight"]
    for alias, source in tied.items():
        check_tied(path, tensors, alias, source, "untied weights")
    buffers = [prefix + "embeddings.word_embeddings.complement_map", "lm_head.complement_map"]
    for key in buffers:
        if key in tensors and complement is not None and tensors[key].tolist() != complement:
            raise InputError(path, "differs from the config's complement_map", place=key)
    extra = sorted(set(tensors) - set(shapes) - set(tied) - set(buffers))
    if extra:
        raise InputError(path, "unexpected tensor (a part genossm does not have)", place=extra[0])

    rows = vocab_rows(vocab, n_rows, path, names["embedding.weight"])
    state = {mine: tensors[theirs] for mine, theirs in names.items()}
    state["embedding.weight"] = state["embedding.weight"][rows]
    source = {"format": "caduceus", "config": plain_json(raw),
              "vocab_rows": dict(zip(SYMBOLS, rows, strict=True))}
    return Checkpoint(config, float32_state(state), source)
