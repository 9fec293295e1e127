"""The genome language model: config, Mamba-2-style, Mamba-1 or S4D blocks (and sliding-window
attention blocks in a hybrid), LM, streaming state, and the model directory (``ModelDir``)."""

from genossm.model.attention import AttentionMixer
from genossm.model.config import ModelConfig
from genossm.model.directory import Checkpoint, ModelDir, TrainingInfo, last_record
from genossm.model.io import load_model, read_model_info, save_model
from genossm.model.lm import (
    GenoSSM,
    ModelState,
    StreamPiece,
    reverse_complement_logits,
    reverse_complement_tokens,
    strand_average,
)
from genossm.model.mamba1 import Mamba1Mixer
from genossm.model.mamba2 import Block, Mamba2Mixer, RMSNorm
from genossm.model.s4d import S4DMixer

__all__ = [
    "AttentionMixer",
    "Block",
    "Checkpoint",
    "GenoSSM",
    "Mamba1Mixer",
    "Mamba2Mixer",
    "ModelConfig",
    "ModelDir",
    "ModelState",
    "RMSNorm",
    "S4DMixer",
    "StreamPiece",
    "TrainingInfo",
    "last_record",
    "load_model",
    "read_model_info",
    "reverse_complement_logits",
    "reverse_complement_tokens",
    "save_model",
    "strand_average",
]
