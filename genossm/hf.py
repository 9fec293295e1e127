"""Hugging Face Transformers in and out (issue 12): ``export`` writes a genossm model directory as
a Transformers directory, ``read_hf`` reads such directories (genossm's or Transformers' own)
back as a ``genossm.convert.checkpoint.Checkpoint`` (config, GenoSSM state dict, source record),
the ``hf`` format of ``genossm convert``.

An exported directory holds

    config.json             a MambaConfig (model_type "mamba", MambaForCausalLM) for Mamba-1
                            models, a Mamba2Config ("mamba2", Mamba2ForCausalLM) for Mamba-2
                            models, with every field that changes what the model computes set
                            explicitly, and a "genossm_export" marker
    model.safetensors       the weights under Transformers' names (``backbone.embeddings.weight``,
                            ``backbone.layers.{i}.{norm,mixer.*}``, ``backbone.norm_f.weight``);
                            the LM head is tied (``tie_word_embeddings``) and, as Transformers'
                            own ``save_pretrained`` writes it, not stored
    tokenizer.json          a character-level ``tokenizers`` tokenizer (WordLevel over A C G T N
    tokenizer_config.json   [MASK] = ids 0..5, genossm's codes): one token per character, lower
    special_tokens_map.json case read as upper case and the IUPAC ambiguity letters as N, as
                            genossm's alphabet reads sequence; any other character is an error,
                            as it is for genossm; no special tokens added
    README.md               a model card saying it came from genossm

Everything is written as plain JSON and safetensors: exporting needs neither ``transformers`` nor
``tokenizers`` (loading the result does: the optional ``hf`` extra). The mask token is spelled
``[MASK]``, not ``MASK``: M, A, S and K are all sequence letters, and an added token ``MASK``
would turn that 4-letter DNA word into one token.

What the mapping relies on (Transformers 5.24, ``models/mamba`` and ``models/mamba2``): the
blocks are genossm's, h + mixer(rmsnorm(h)), final rmsnorm, tied head, every norm with
``layer_norm_epsilon``; MambaMixer has mamba_ssm's (and genossm's Mamba1Mixer's) tensors and
applies no dt limit; Mamba2Mixer's in_proj packs z, xBC, dt as genossm does, its scan applies
``dt_bias``, softplus and then ``clamp(time_step_limit)`` (genossm's dt_limit), and its
``MambaRMSNormGated`` is rmsnorm(y · silu(z)) (gate before the norm: mamba_ssm's
norm_before_gate=False) **over n_groups groups of intermediate_size / n_groups channels**, where
genossm's gated norm always normalises all d_inner channels together. The two agree only with one
group. (Earlier Transformers releases normalised over all intermediate_size channels whatever
n_groups, as genossm does and mamba_ssm does not; a Mamba-2 export needs the release pinned in
the ``hf`` extra.) The chunked torch scan pads a ragged length to a whole chunk; any chunk_size
gives the same numbers. ``rescale_prenorm_residual`` is written false whatever genossm's (an
initialisation setting): with it true, Transformers 5.24 rescales the *loaded* out_proj weights
(``_init_weights`` divides them in place by sqrt(num_hidden_layers)); read_hf ignores it.

What Transformers cannot represent is refused with an ``InputError`` naming the model directory
and the config field: a mixer Transformers has no model for (s4d), sliding-window attention
blocks (attention_every), a model that is not causal (bidirectional, rc_equivariant) or not a
next-token model (objective "mlm"), a Mamba-2 model with more than one group (above), a dt
limit (genossm's dt_limit_min > 0 or dt_limit_max): MambaMixer clamps no dt, and Mamba2Mixer
clamps it in a whole-sequence pass but not in its one-token cached step (``generate`` would
compute another model), and a vocabulary other than genossm's. Reading, a Transformers
time_step_limit becomes genossm's dt_limit: genossm then computes the whole-sequence pass.

``read_hf`` reads MambaForCausalLM and Mamba2ForCausalLM directories (``model.safetensors``, or
``pytorch_model.bin`` read with ``weights_only=True``) with genossm.convert's checks and
one-line errors. Whose token ids mean which base is a separate question: a
genossm export's tokenizer.json says it; for any other checkpoint the map is given (``vocab``,
``--vocab A=ID,C=ID,G=ID,T=ID,N=ID[,MASK=ID]``). The MASK row comes from the map, else from the
first source id the map leaves unused (genossm.convert's rule: the A C G T N logit columns equal
the source's).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

import genossm
from genossm import alphabet
from genossm.convert.checkpoint import (
    CONFIG_NAME,
    PICKLE_NAME,
    SAFETENSORS_NAME,
    SYMBOLS,
    Checkpoint,
    float32_state,
    mixer_shapes,
    model_config,
    plain_json,
    read_backbone,
    read_config,
    read_weights,
    vocab_rows,
)
from genossm.errors import InputError
from genossm.fileio import OutputKind, StagedOutputs, atomic_write, claim_outputs
from genossm.model.config import DT_INITS, ModelConfig
from genossm.model.directory import ModelDir
from genossm.model.lm import GenoSSM

TOKENIZER_NAME = "tokenizer.json"
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
SPECIAL_TOKENS_NAME = "special_tokens_map.json"
README_NAME = "README.md"
SHARDED_INDEX = "model.safetensors.index.json"
MARKER = "genossm_export"          # config.json key that marks a directory genossm exported
MASK_TOKEN = "[MASK]"
TOKENS = tuple(alphabet.BASES) + (MASK_TOKEN,)               # the exported tokenizer's strings
# model_type -> (genossm mixer, architecture)
MODEL_TYPES = {"mamba": ("mamba1", "MambaForCausalLM"), "mamba2": ("mamba2", "Mamba2ForCausalLM")}
_INFINITY = {"__float__": "Infinity"}   # how Transformers 5 writes inf in a config (strict JSON)


def _is_hf_export(path) -> bool:
    try:
        info = json.loads((Path(path) / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and isinstance(info.get(MARKER), dict)


HF_DIR = OutputKind("a Hugging Face directory exported by genossm", _is_hf_export)


# ----------------------------------------------------------------------------------- export

def export(model_dir, output, *, force: bool = False) -> Path:
    """Write the genossm model directory ``model_dir`` as a Transformers directory ``output``
    (see the module docstring) and return ``output``; InputError for what Transformers cannot
    compute the same way. ``claim_outputs`` policy: an existing output only with ``force`` (and
    only one genossm exported), never over or inside the input; written whole or not at all."""
    src, output = Path(model_dir), Path(output)
    claim_outputs([(output, HF_DIR)], inputs=[src], force=force)
    model = ModelDir(src).load_model()
    config = hf_config(model.config, src, dtype=model.embedding.weight.dtype)
    tensors = hf_state_dict(model, src)
    files = {CONFIG_NAME: config, **tokenizer_files()}
    with StagedOutputs() as staged:   # a whole directory or none; --force replaces it whole
        tmp = staged.directory(output)
        from safetensors.torch import save_file
        atomic_write(tmp / SAFETENSORS_NAME,
                     lambda p: save_file(tensors, p, metadata={"format": "pt"}))
        for name, content in files.items():
            text = json.dumps(content, indent=2, allow_nan=False) + "\n"
            atomic_write(tmp / name, lambda p, text=text: Path(p).write_text(text, "utf-8"))
        card = model_card(model.config, src.resolve().name)
        atomic_write(tmp / README_NAME, lambda p: Path(p).write_text(card, "utf-8"))
    return output


def _refuse(model_dir, field: str, message: str):
    raise InputError(model_dir, f"cannot export to Hugging Face Transformers: {message}",
                     place=f"model.{field}")


def hf_config(config: ModelConfig, model_dir=None, *, dtype=torch.float32) -> dict:
    """The Transformers config.json (a dict) that computes what ``config`` does; InputError
    naming ``model_dir`` and the field for what it cannot."""
    if config.mixer not in ("mamba1", "mamba2"):
        _refuse(model_dir, "mixer", f"mixer {config.mixer!r}: Transformers has Mamba-1 "
                                    "(MambaForCausalLM) and Mamba-2 (Mamba2ForCausalLM) only")
    if config.attention_every:
        _refuse(model_dir, "attention_every", "sliding-window attention blocks (a hybrid): "
                                              "Transformers' Mamba models have SSM blocks only")
    if config.bidirectional or config.rc_equivariant:
        field = "bidirectional" if config.bidirectional else "rc_equivariant"
        _refuse(model_dir, field, "not a causal model (MambaForCausalLM and Mamba2ForCausalLM "
                                  "read left to right only)")
    if config.objective != "clm":
        _refuse(model_dir, "objective", f"objective {config.objective!r}: Transformers' causal "
                                        "LMs predict the next token (objective 'clm')")
    if config.vocab_size != alphabet.VOCAB_SIZE:
        _refuse(model_dir, "vocab_size", f"vocabulary of {config.vocab_size}, not genossm's "
                                         f"{alphabet.VOCAB_SIZE}")
    if config.dt_limit_min > 0 or config.dt_limit_max is not None:
        why = ("Transformers' Mamba-1 (MambaMixer) clamps no dt" if config.mixer == "mamba1"
               else "Transformers' Mamba2 applies time_step_limit in a whole-sequence pass but "
                    "not in its one-token cached step, so generation would compute another model")
        _refuse(model_dir, "dt_limit_min" if config.dt_limit_min > 0 else "dt_limit_max",
                f"a dt limit ({config.dt_limit_min}, {config.dt_limit_max}): {why}")
    common = {
        "vocab_size": alphabet.VOCAB_SIZE,
        "hidden_size": config.d_model,
        "state_size": config.d_state,
        "num_hidden_layers": config.n_layer,
        "expand": config.expand,
        "conv_kernel": config.d_conv,
        "use_bias": False,
        "use_conv_bias": config.conv_bias,
        "hidden_act": "silu",
        "layer_norm_epsilon": config.norm_eps,
        "residual_in_fp32": True,     # no effect in float32; genossm's residual under autocast
        "tie_word_embeddings": True,
        "pad_token_id": None,         # genossm's vocabulary has no pad, bos or eos token
        "bos_token_id": None,
        "eos_token_id": None,
        "use_cache": True,
        # Must be false: Transformers 5.24's _init_weights divides out_proj.weight by
        # sqrt(num_hidden_layers) in place, after the weights were loaded, when it is true.
        "rescale_prenorm_residual": False,
        # initialisation only (fine-tuning from the export starts as genossm would)
        "initializer_range": config.initializer_range,
        "time_step_min": config.dt_min,
        "time_step_max": config.dt_max,
        "time_step_floor": config.dt_init_floor,
    }
    if config.mixer == "mamba1":
        specific = {"model_type": "mamba", "architectures": ["MambaForCausalLM"],
                    "intermediate_size": config.d_inner,
                    "time_step_rank": config.resolved_dt_rank,
                    "time_step_scale": config.dt_scale,
                    "time_step_init_scheme": config.dt_init}
    else:
        if config.n_groups != 1:
            _refuse(model_dir, "n_groups",
                    f"{config.n_groups} groups: Transformers' Mamba2 gated RMSNorm normalises "
                    "each of n_groups groups of channels apart, genossm's all d_inner channels "
                    "together (the same only with one group)")
        specific = {"model_type": "mamba2", "architectures": ["Mamba2ForCausalLM"],
                    "num_heads": config.n_heads,
                    "head_dim": config.headdim,
                    "n_groups": 1,
                    "chunk_size": config.chunk_size,
                    "time_step_limit": [0.0, _INFINITY],   # none (refused above)
                    # not Mamba2Config fields in Transformers 5 (which always gates before the
                    # norm); set for older readers, whose defaults say otherwise
                    "norm_before_gate": False,
                    "rms_norm": True}
    return {**specific, **common, "dtype": str(dtype).removeprefix("torch."),
            MARKER: {"genossm_version": genossm.__version__, "mixer": config.mixer}}


def hf_state_dict(model: GenoSSM, model_dir=None) -> dict[str, torch.Tensor]:
    """``model``'s tensors under Transformers' names (the tied head not stored)."""
    config = model.config
    names = {"embedding.weight": "backbone.embeddings.weight",
             "norm_f.weight": "backbone.norm_f.weight"}
    for i in range(config.n_layer):
        names[f"layers.{i}.norm.weight"] = f"backbone.layers.{i}.norm.weight"
        for key in mixer_shapes(config):
            names[f"layers.{i}.mixer.{key}"] = f"backbone.layers.{i}.mixer.{key}"
    state = model.state_dict()
    extra = sorted(set(state) - set(names) - set(model.tied_names()))
    if extra:
        raise InputError(model_dir, "cannot export to Hugging Face Transformers: a part "
                                    "Transformers' Mamba models do not have", place=extra[0])
    return {hf: state[name].detach().to("cpu").contiguous().clone()
            for name, hf in names.items()}


def tokenizer_files() -> dict[str, dict]:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json of the character-level
    tokenizer (module docstring): ``AutoTokenizer`` loads it as a PreTrainedTokenizerFast."""
    mask = {"content": MASK_TOKEN, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": True}
    lower = [{"type": "Replace", "pattern": {"String": base.lower()}, "content": base}
             for base in "ACGT"]
    ambiguous = alphabet.IUPAC_AMBIGUOUS + "N"
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": alphabet.MASK, **mask}],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Replace",
             "pattern": {"Regex": f"[{ambiguous}{ambiguous.lower()}]"}, "content": "N"},
            *lower]},
        # every character its own piece ([\s\S]: newlines too, which then fail like any other
        # non-sequence character)
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": r"[\s\S]"},
                          "behavior": "Isolated", "invert": False},
        "post_processor": None,
        "decoder": {"type": "Fuse"},
        # no unk token in the vocabulary: a character genossm refuses is an error here too
        "model": {"type": "WordLevel", "vocab": {t: i for i, t in enumerate(TOKENS)},
                  "unk_token": "[UNK]"},
    }
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "mask_token": MASK_TOKEN,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": {str(alphabet.MASK): mask},
    }
    return {TOKENIZER_NAME: tokenizer, TOKENIZER_CONFIG_NAME: tokenizer_config,
            SPECIAL_TOKENS_NAME: {"mask_token": MASK_TOKEN}}


def model_card(config: ModelConfig, name: str) -> str:
    """README.md of an export."""
    cls = "MambaForCausalLM" if config.mixer == "mamba1" else "Mamba2ForCausalLM"
    kind = "Mamba-1" if config.mixer == "mamba1" else "Mamba-2"
    return (
        "---\nlibrary_name: transformers\ntags:\n- genossm\n- dna\n- mamba\n---\n\n"
        f"# {name}\n\n"
        f"Exported by genossm {genossm.__version__} (`genossm export`) from the genossm model "
        f"directory `{name}`: a causal {kind} DNA language model ({config.n_layer} layers, "
        f"d_model {config.d_model}, d_state {config.d_state}) whose logits at position t "
        "predict the token at t+1.\n\n"
        "Tokens: one per nucleotide, A=0 C=1 G=2 T=3 N=4 [MASK]=5 (genossm's codes). Lower "
        "case reads as upper case and the IUPAC ambiguity letters (RYSWKMBDHV) as N, as genossm "
        "reads sequence; any other character is an error. No special tokens are added.\n\n"
        "```python\n"
        f"from transformers import AutoTokenizer, {cls}\n\n"
        "tokenizer = AutoTokenizer.from_pretrained(PATH)\n"
        f"model = {cls}.from_pretrained(PATH)\n"
        'logits = model(**tokenizer("ACGTACGTNN", return_tensors="pt")).logits\n'
        "```\n")


# ------------------------------------------------------------------------------------- read

def read_hf(src_dir, vocab: dict[str, int] | None = None) -> Checkpoint:
    """A Transformers MambaForCausalLM or Mamba2ForCausalLM directory in genossm's terms:
    ``Checkpoint(config, state, source)``, the state with GenoSSM's names (float32, the tied
    head under both of its names). ``vocab`` maps genossm symbols (A C G T N, optionally MASK)
    to the source's token ids; without it the directory's character-level tokenizer.json (a
    genossm export's) gives them. InputError naming the file and the field or tensor for
    anything genossm cannot compute the same way."""
    src = Path(src_dir)
    raw = read_config(src)
    config, n_rows = _model_config(raw, src / CONFIG_NAME)
    vocab, where = _vocabulary(src, vocab)
    if not (src / SAFETENSORS_NAME).is_file() and not (src / PICKLE_NAME).is_file() \
            and (src / SHARDED_INDEX).is_file():
        raise InputError(src / SHARDED_INDEX, "sharded weights are not supported (save the "
                                              "model as one file)")
    path, tensors = read_weights(src)

    # Transformers' name; its load hook also takes mamba_ssm's "embedding."
    emb_key = next((k for k in ("backbone.embeddings.weight", "backbone.embedding.weight")
                    if k in tensors), "backbone.embeddings.weight")
    state = read_backbone(path, tensors, config, n_rows, emb_key, "tie_word_embeddings",
                          raw.get("tie_word_embeddings") is not False)
    rows = vocab_rows(vocab, n_rows, src / where if where == TOKENIZER_NAME else src, where)
    state["embedding.weight"] = state["embedding.weight"][rows]
    state = float32_state(state)
    state["lm_head.weight"] = state["embedding.weight"]
    source = {"format": "hf", "config": plain_json(raw),
              "vocab_rows": dict(zip(SYMBOLS, rows, strict=True))}
    return Checkpoint(config, state, source)


def _float(value) -> float:
    """A config number; Transformers 5 writes inf as {"__float__": "Infinity"}."""
    if isinstance(value, dict) and set(value) == {"__float__"}:
        value = value["__float__"]
    if isinstance(value, bool):
        raise ValueError("a boolean")
    return float(value)


def _model_config(raw: dict, path: Path) -> tuple[ModelConfig, int]:
    """(the ModelConfig that computes what this Transformers config does, the number of
    vocabulary rows), or an InputError naming the field."""
    def refuse(field, message):
        raise InputError(path, message, place=field)

    model_type = raw.get("model_type")
    if model_type is None:
        refuse("model_type", "not a Transformers config (no model_type); a mamba_ssm "
                             "checkpoint is read by genossm convert")
    if model_type not in MODEL_TYPES:
        refuse("model_type", f"a {model_type} model; only mamba (MambaForCausalLM) and mamba2 "
                             "(Mamba2ForCausalLM) are supported")
    mixer, architecture = MODEL_TYPES[model_type]
    wrong = [a for a in raw.get("architectures") or [] if a != architecture]
    if wrong:
        refuse("architectures", f"{wrong[0]} is not supported (only {architecture})")

    def integer(field, default=None):
        value = raw.get(field, default)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            refuse(field, f"must be a positive integer, got {value!r}")
        return value

    # Transformers' defaults where a field is absent (MambaConfig / Mamba2Config, 5.24)
    d_model = integer("hidden_size", 768 if mixer == "mamba1" else 4096)
    rows = integer("vocab_size", 50280 if mixer == "mamba1" else 32768)
    expand = raw.get("expand", 2)
    if isinstance(expand, float) and expand.is_integer():
        expand = int(expand)
    if not isinstance(expand, int) or isinstance(expand, bool) or expand <= 0:
        refuse("expand", f"must be a positive integer, got {expand!r}")
    if raw.get("use_bias", False):
        refuse("use_bias", "biases in in_proj and out_proj are not supported")
    if raw.get("hidden_act", "silu") not in ("silu", "swish"):
        refuse("hidden_act", f"{raw['hidden_act']!r} is not supported (only silu)")
    fields = {
        "mixer": mixer, "d_model": d_model, "expand": expand,
        "n_layer": integer("num_hidden_layers", 32 if mixer == "mamba1" else 64),
        "d_state": integer("state_size", 16 if mixer == "mamba1" else 128),
        "d_conv": integer("conv_kernel", 4),
        "conv_bias": bool(raw.get("use_conv_bias", True)),
        "objective": "clm",
    }
    numbers = {"norm_eps": ("layer_norm_epsilon", 1e-5),
               "dt_min": ("time_step_min", 1e-3), "dt_max": ("time_step_max", 0.1),
               "dt_init_floor": ("time_step_floor", 1e-4),
               "initializer_range": ("initializer_range", 0.1)}
    if mixer == "mamba1":
        numbers["dt_scale"] = ("time_step_scale", 1.0)
        rank = raw.get("time_step_rank", "auto")
        fields["dt_rank"] = 0 if rank == "auto" else integer("time_step_rank")
        if raw.get("time_step_init_scheme", "random") in DT_INITS:   # initialisation only
            fields["dt_init"] = raw.get("time_step_init_scheme", "random")
    else:
        heads, headdim = integer("num_heads", 128), integer("head_dim", 64)
        if heads * headdim != expand * d_model:
            refuse("num_heads", f"num_heads * head_dim ({heads} * {headdim}) is not "
                                f"expand * hidden_size ({expand * d_model})")
        groups = integer("n_groups", 8)
        if groups != 1:
            refuse("n_groups", f"{groups} groups are not supported (Transformers' gated RMSNorm "
                               "is grouped; genossm's is not)")
        fields.update(headdim=headdim, n_groups=1, chunk_size=integer("chunk_size", 256))
        limit = raw.get("time_step_limit", [0.0, _INFINITY])
        try:
            lo, hi = (_float(v) for v in limit)
        except (TypeError, ValueError):
            refuse("time_step_limit", f"not a (min, max) pair: {limit!r}")
        if math.isnan(lo) or math.isnan(hi):
            refuse("time_step_limit", f"not a (min, max) pair: {limit!r}")
        fields.update(dt_limit_min=max(lo, 0.0), dt_limit_max=None if math.isinf(hi) else hi)
    for name, (field, default) in numbers.items():
        try:
            fields[name] = _float(raw.get(field, default))
        except (TypeError, ValueError):
            refuse(field, f"not a number: {raw.get(field)!r}")
    return model_config(path, None, **fields), rows


def _vocabulary(src: Path, vocab) -> tuple[dict[str, int], str]:
    """(genossm symbol -> source id, where the map came from: "--vocab" or tokenizer.json)."""
    if vocab is None:
        vocab = tokenizer_vocab(src)
        if vocab is None:
            raise InputError(src, "no character-level tokenizer.json with tokens A C G T N "
                                  "(as genossm export writes): give the vocabulary map "
                                  "(--vocab A=ID,C=ID,G=ID,T=ID,N=ID[,MASK=ID])",
                             place="--vocab")
        return vocab, TOKENIZER_NAME
    if not isinstance(vocab, dict) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in vocab.values()):
        raise InputError(src, f"not a map of genossm symbols to token ids: {vocab!r}",
                         place="--vocab")
    unknown = sorted(set(vocab) - set(SYMBOLS))
    missing = [b for b in alphabet.BASES if b not in vocab]
    if unknown or missing:
        what = f"{unknown[0]!r} is not one of" if unknown else f"no id for {missing[0]} of"
        raise InputError(src, f"{what} {' '.join(SYMBOLS)}", place="--vocab")
    return vocab, "--vocab"


def tokenizer_vocab(src) -> dict[str, int] | None:
    """genossm symbol -> id from ``src``'s tokenizer.json when it is a character-level
    (WordLevel) tokenizer with tokens A C G T N (MASK from ``[MASK]`` or ``MASK`` when present);
    None otherwise."""
    path = Path(src) / TOKENIZER_NAME
    try:
        tokenizer = json.loads(path.read_text(encoding="utf-8"))
        model = tokenizer["model"]
        if model["type"] != "WordLevel":
            return None
        tokens = dict(model["vocab"])
        for added in tokenizer.get("added_tokens") or []:
            tokens.setdefault(added["content"], added["id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not all(isinstance(tokens.get(b), int) for b in alphabet.BASES):
        return None
    vocab = {b: tokens[b] for b in alphabet.BASES}
    mask = next((tokens[t] for t in (MASK_TOKEN, "MASK") if isinstance(tokens.get(t), int)),
                None)
    if mask is not None:
        vocab["MASK"] = mask
    return vocab
