"""ModelConfig: every architecture hyper-parameter in one dataclass that round-trips through JSON.

Only scalars (int, float, bool, str, None) are stored, so ``config.json`` is plain JSON (no
``Infinity``, no tuples): an open dt limit is ``dt_limit_max = None``. A config written before
a field existed loads with that field's default (``mixer = "mamba2"``,
``bidirectional_sharing = "mixer"``, ``rc_strand_swap = False``, ``attention_every = 0``: what
models computed then).

The stack: ``n_layer`` pre-norm residual blocks, each with the mixer ``mixer`` ("mamba2",
"mamba1" or "s4d"), except that with ``attention_every`` k > 0 every k-th block (blocks k-1,
2k-1, ...; ``layer_mixer``) is a sliding-window attention block instead (genossm.model.attention):
a hybrid such as Jamba's or Samba's, ``attention_every: 4`` giving "mmmA mmmA".
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from genossm import alphabet

OBJECTIVES = ("clm", "mlm")
MIXERS = ("mamba1", "mamba2", "s4d")
DT_INITS = ("random", "constant")
BIDIRECTIONAL_SHARING = ("mixer", "projections", "none")
SCAN_BACKENDS = ("auto", "ref", "torch", "triton")


@dataclass
class ModelConfig:
    # the mixer: "mamba2" (Mamba2Mixer, SSD heads), "mamba1" (Mamba1Mixer, mamba_ssm's Mamba,
    # usually with d_state 16) or "s4d" (S4DMixer: Mamba-1's block around a linear
    # time-invariant diagonal SSM, d_state/2 complex modes per channel, d_state even); headdim
    # and n_groups are Mamba-2's, dt_rank and dt_init Mamba-1's
    mixer: str = "mamba2"
    # sliding-window attention blocks in the stack (genossm.model.attention): every
    # attention_every-th block (0: none) attends to the last attention_window positions (its
    # own included; bidirectional models: attention_window - 1 either side) with
    # attention_heads heads of d_model/attention_heads channels and rotary positions
    attention_every: int = 0
    attention_window: int = 1024
    attention_heads: int = 4
    # sizes
    d_model: int = 256            # residual width (per strand when rc_equivariant)
    n_layer: int = 8
    d_state: int = 64             # SSM state size n
    headdim: int = 32             # p; heads = expand * d_model // headdim
    expand: int = 2               # d_inner = expand * d_model
    n_groups: int = 1             # B/C groups g; must divide the number of heads
    d_conv: int = 4               # causal depthwise conv width over xBC (Mamba-1: over x)
    dt_rank: int = 0              # Mamba-1 rank of dt (x_proj -> dt_proj); 0: ceil(d_model/16)
    conv_bias: bool = True
    chunk_size: int = 256         # scan chunk length (torch/triton backends)
    vocab_size: int = alphabet.VOCAB_SIZE
    # what the model is
    objective: str = "clm"        # "clm": logits[t] predict token t+1; "mlm": predict token t
    bidirectional: bool = False   # a forward and a reversed mixer in every block (summed)
    # ... what they share: "mixer" all weights (one mixer reads both ways), "projections" only
    # in_proj and out_proj (Caduceus's bidirectional_weight_tie), "none" nothing
    bidirectional_sharing: str = "mixer"
    rc_equivariant: bool = False  # reverse-complement equivariance by parameter sharing
    # the strands trade places before every block (what the official Caduceus code's fused
    # add+norm RCPS path computes, e.g. Caduceus-PS and PlantCaduceus; lm.py's docstring)
    rc_strand_swap: bool = False
    # how it runs
    gradient_checkpointing: bool = False  # recompute each block in backward (when training)
    checkpoint_segment_length: int = 65536  # ... in segments of this many positions (0: whole)
    scan_backend: str = "auto"
    # numerics and initialisation
    norm_eps: float = 1e-5
    dt_min: float = 1e-3          # softplus(dt_bias) is initialised log-uniform in [dt_min, dt_max]
    dt_max: float = 1e-1
    dt_init_floor: float = 1e-4
    dt_init: str = "random"       # Mamba-1 dt_proj.weight: "random" uniform ±std, "constant" std,
    dt_scale: float = 1.0         # ... with std = dt_rank^-0.5 · dt_scale
    dt_limit_min: float = 0.0     # clamp of dt after softplus; dt_limit_max None = no upper clamp
    dt_limit_max: float | None = None
    A_init_min: float = 1.0       # -A = exp(A_log) initialised uniform in [A_init_min, A_init_max]
    A_init_max: float = 16.0
    initializer_range: float = 0.02   # std of the embedding (= tied head) initialisation
    rescale_prenorm_residual: bool = True  # out_proj init scaled by 1/sqrt(n_layer)

    def __post_init__(self):
        self.validate()

    # derived sizes -----------------------------------------------------------------------
    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def n_heads(self) -> int:
        return self.d_inner // self.headdim

    @property
    def resolved_dt_rank(self) -> int:
        """Mamba-1 rank of dt: dt_rank, or ceil(d_model/16) when it is 0 (mamba_ssm's "auto")."""
        return self.dt_rank or math.ceil(self.d_model / 16)

    @property
    def conv_dim(self) -> int:
        """Channels of xBC, the part of in_proj's output that goes through the conv."""
        return self.d_inner + 2 * self.n_groups * self.d_state

    def layer_mixer(self, layer: int) -> str:
        """The mixer of block ``layer`` (0-based): "attention" for every attention_every-th
        block, ``mixer`` otherwise."""
        every = self.attention_every
        return "attention" if every and (layer + 1) % every == 0 else self.mixer

    @property
    def causal(self) -> bool:
        """True when the output at position t depends only on tokens <= t (streamable)."""
        return not (self.bidirectional or self.rc_equivariant)

    # checks ----------------------------------------------------------------------------
    def validate(self) -> None:
        def need(ok: bool, msg: str):
            if not ok:
                raise ValueError(f"invalid ModelConfig: {msg}")

        for name in ("d_model", "n_layer", "d_state", "headdim", "expand", "n_groups",
                     "d_conv", "chunk_size"):
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool) and value > 0,
                 f"{name} must be a positive integer, got {value!r}")
        need(self.mixer in MIXERS, f"mixer must be one of {MIXERS}, got {self.mixer!r}")
        need(isinstance(self.dt_rank, int) and not isinstance(self.dt_rank, bool)
             and self.dt_rank >= 0, f"dt_rank must be an integer >= 0, got {self.dt_rank!r}")
        need(self.bidirectional_sharing in BIDIRECTIONAL_SHARING,
             f"bidirectional_sharing must be one of {BIDIRECTIONAL_SHARING}, "
             f"got {self.bidirectional_sharing!r}")
        need(self.rc_equivariant or not self.rc_strand_swap,
             "rc_strand_swap needs rc_equivariant")
        need(self.dt_init in DT_INITS, f"dt_init must be one of {DT_INITS}, got {self.dt_init!r}")
        need(self.dt_scale > 0, f"dt_scale must be > 0, got {self.dt_scale!r}")
        need(isinstance(self.checkpoint_segment_length, int)
             and self.checkpoint_segment_length >= 0,
             "checkpoint_segment_length must be an integer >= 0")
        for name in ("attention_every", "attention_window", "attention_heads"):
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool)
                 and value >= (0 if name == "attention_every" else 1),
                 f"{name} must be an integer >= {0 if name == 'attention_every' else 1}, "
                 f"got {value!r}")
        if self.attention_every:
            need(self.attention_every <= self.n_layer,
                 f"attention_every ({self.attention_every}) is more than n_layer "
                 f"({self.n_layer}): no block would be attention")
            need(self.d_model % self.attention_heads == 0
                 and self.d_model // self.attention_heads % 2 == 0,
                 f"attention_heads ({self.attention_heads}) must divide d_model "
                 f"({self.d_model}) into heads of an even width (rotary positions rotate "
                 "channel pairs)")
        if self.mixer == "s4d":
            need(self.d_state % 2 == 0,
                 f"the s4d mixer needs an even d_state (d_state/2 complex modes), "
                 f"got {self.d_state}")
            need(self.scan_backend != "triton",
                 "the s4d mixer has no triton backend (its ops are torch: an FFT convolution "
                 "and a chunked recurrence); scan_backend auto, torch or ref")
        need(self.objective in OBJECTIVES,
             f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        need(self.scan_backend in SCAN_BACKENDS,
             f"scan_backend must be one of {SCAN_BACKENDS}, got {self.scan_backend!r}")
        need(self.vocab_size == alphabet.VOCAB_SIZE,
             f"vocab_size must be the alphabet's VOCAB_SIZE ({alphabet.VOCAB_SIZE}), "
             f"got {self.vocab_size}")
        if self.mixer == "mamba2":  # heads and groups are Mamba-2's
            need(self.d_inner % self.headdim == 0,
                 f"expand*d_model ({self.d_inner}) must be a multiple of headdim "
                 f"({self.headdim})")
            need(self.n_heads % self.n_groups == 0,
                 f"n_groups ({self.n_groups}) must divide the number of heads ({self.n_heads})")
        # A causal LM whose output at t sees tokens after t would be handed its own target.
        need(self.objective != "clm" or self.causal,
             "objective 'clm' needs a causal model: bidirectional and rc_equivariant "
             "(whose reverse strand reads right to left) are for objective 'mlm'")
        need(0 < self.dt_min <= self.dt_max, "need 0 < dt_min <= dt_max")
        need(self.dt_limit_max is None or self.dt_limit_max > self.dt_limit_min,
             "dt_limit_max must be None or greater than dt_limit_min")
        need(0 < self.A_init_min <= self.A_init_max, "need 0 < A_init_min <= A_init_max")

    # JSON round trip ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        """Build from a dict as written by to_dict; unknown keys are an error (a typo in a
        config file must not silently fall back to a default)."""
        if not isinstance(d, dict):
            raise TypeError(f"ModelConfig.from_dict needs a dict, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig key(s): {', '.join(unknown)} "
                             f"(known: {', '.join(sorted(known))})")
        return cls(**d)

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)
