"""Checkpoints made by other code, read into ordinary genossm models (docs/design.md,
"Published models").

Formats (``FORMATS``), each detected from the source directory's ``config.json`` or named with
``source_format`` (the ``--from`` option):

- ``mamba_ssm``: the official ``MambaLMHeadModel``, Mamba-1 or Mamba-2 layers
  (:mod:`genossm.convert.mamba_ssm`);
- ``caduceus``: Caduceus and PlantCaduceus (:mod:`genossm.convert.caduceus`);
- ``hf``: Hugging Face Transformers ``MambaForCausalLM`` / ``Mamba2ForCausalLM``
  (:mod:`genossm.hf`).

``read_checkpoint`` gives a ``Checkpoint`` (config, state dict, source record); ``build_model``
makes the GenoSSM of one; ``convert`` writes it as a model directory that records where it came
from (the ``genossm convert`` command); ``score``, ``embed`` and ``evaluate`` read a source
directory directly through ``runtime.open_model``.

Contract (tests/test_convert*.py): on genossm codes the converted model's A C G T N logit
columns equal the source model's logits for those tokens at every position (float32, CPU).
"""

from __future__ import annotations

from pathlib import Path

from genossm.errors import InputError

FORMATS = ("caduceus", "mamba_ssm", "hf")
_HF_TYPES = ("mamba", "mamba2")
# (torch and the readers are imported where used: the CLI imports this module for FORMATS)


def detect_format(src: Path) -> str:
    """The format of a checkpoint directory, from its config.json; an InputError for a genossm
    model directory or an architecture genossm does not read."""
    from genossm.convert.checkpoint import CONFIG_NAME, read_config

    cfg = read_config(src)
    path = src / CONFIG_NAME
    if "model" in cfg and "format" in cfg:
        raise InputError(src, "already a genossm model directory")
    kind = cfg.get("model_type")
    archs = cfg.get("architectures") or []
    if kind == "caduceus" or any(str(a).startswith("Caduceus") for a in archs):
        return "caduceus"
    if kind in _HF_TYPES:
        return "hf"
    if kind is None and not archs and "d_model" in cfg and "n_layer" in cfg:
        return "mamba_ssm"
    what = kind or ", ".join(map(str, archs)) or "unknown"
    raise InputError(path, f"a {what} checkpoint: genossm reads {', '.join(FORMATS)} "
                           "checkpoints (Caduceus, PlantCaduceus, mamba_ssm and Transformers "
                           "Mamba / Mamba-2 LMs)", place="model_type" if kind else None)


def read_checkpoint(src, source_format: str | None = None,
                    vocab: dict[str, int] | str | None = None):
    """A checkpoint directory in genossm's terms. ``vocab``: genossm symbol -> source id (or
    the ``--vocab`` text), for a vocabulary other than the format's published one. Returns a
    ``genossm.convert.checkpoint.Checkpoint``."""
    from genossm.convert.checkpoint import parse_vocab

    src = Path(src)
    if isinstance(vocab, str):
        vocab = parse_vocab(vocab)
    source_format = source_format or detect_format(src)
    if source_format == "caduceus":
        from genossm.convert.caduceus import read_caduceus
        checkpoint = read_caduceus(src, vocab)
    elif source_format == "mamba_ssm":
        from genossm.convert.mamba_ssm import read_mamba_ssm
        checkpoint = read_mamba_ssm(src, vocab)
    elif source_format == "hf":
        from genossm.hf import read_hf
        checkpoint = read_hf(src, vocab)
    else:
        raise InputError(None, f"--from: unknown format {source_format!r} "
                               f"(one of {', '.join(FORMATS)})")
    checkpoint.source["path"] = str(src.resolve())
    return checkpoint


def build_model(checkpoint, device="cpu"):
    """The GenoSSM of a ``Checkpoint``, in eval mode on ``device``."""
    import torch

    from genossm.model.lm import GenoSSM

    model = GenoSSM(checkpoint.config)
    state = dict(checkpoint.state)
    for alias, name in model.tied_names().items():   # a tied tensor is read once
        state.setdefault(alias, state[name])
    model.load_state_dict(state, strict=True)   # tied tensors stay one Parameter
    return model.to(torch.device(device)).eval()


def convert(src_dir, output, *, source_format: str | None = None,
            vocab: dict[str, int] | str | None = None, trained_length: int | None = None,
            force: bool = False) -> Path:
    """Write the checkpoint in ``src_dir`` as a genossm model directory ``output``
    (``claim_outputs`` policy: an existing output only with ``force``, never over the input);
    its config.json gets a "source" section saying where it came from, and the sequence length
    it was trained on when given (checkpoints do not record it; score and embed refuse longer
    windows for a model that reads them whole)."""
    if trained_length is not None and trained_length < 1:
        raise InputError(None, f"--trained-length must be positive, got {trained_length}")
    from genossm.fileio import StagedOutputs, claim_outputs
    from genossm.model.directory import MODEL_DIR, ModelDir

    src, output = Path(src_dir), Path(output)
    claim_outputs([(output, MODEL_DIR)], inputs=[src], force=force)
    checkpoint = read_checkpoint(src, source_format, vocab)
    if trained_length is not None:
        checkpoint.source["trained_length"] = trained_length
    model = build_model(checkpoint)
    with StagedOutputs() as staged:   # a whole directory or none; --force replaces it whole
        ModelDir(staged.path(output)).save_model(model, extra={"source": checkpoint.source})
    return output
