"""The genome language model: config, Mamba-2-style blocks, LM, streaming state, model dir I/O."""

from genossm.model.config import ModelConfig
from genossm.model.io import load_model, read_model_info, save_model
from genossm.model.lm import (
    GenoSSM,
    ModelState,
    reverse_complement_logits,
    reverse_complement_tokens,
)
from genossm.model.mamba2 import Block, Mamba2Mixer, RMSNorm

__all__ = [
    "Block",
    "GenoSSM",
    "Mamba2Mixer",
    "ModelConfig",
    "ModelState",
    "RMSNorm",
    "load_model",
    "read_model_info",
    "reverse_complement_logits",
    "reverse_complement_tokens",
    "save_model",
]
