"""S4D mixer (``ModelConfig.mixer = "s4d"``): Mamba-1's block with its selective scan replaced by
a diagonal linear time-invariant SSM (S4D; Gu et al. 2022, "On the parameterization and
initialization of diagonal state space models"), so that the comparison with Mamba-1 and
Mamba-2 is about the SSM alone. Data flow for an input u (b, l, d_model), d_inner =
expand·d_model:

    in_proj(u) -> x, z (d_inner each)
    x -> causal depthwise conv (width d_conv; d_conv 1 turns it into a scale) -> SiLU
    y = S4D(x)   per channel: d_state/2 complex modes, A, B, C and the step dt fixed per
                 channel (learned, not functions of the input)
    out_proj(y · SiLU(z))

The SSM (genossm.ops.s4d): a whole sequence from the start is one FFT long convolution with the
kernel computed from (dt, A, B, C), O(L log L), which is how a model trains; a sequence read in
pieces carrying a state (``GenoSSM.stream``, checkpoint segments) goes through the same SSM as
a chunked recurrence of ``chunk_size`` positions, which the tests hold equal to the convolution
and both to a plain float64 loop over time. ``scan_backend`` "ref" runs that loop instead (a
check, slow).

Choices:

- complex diagonal A, S4D-Lin initialisation A_m = -1/2 + iπm (m = 0 .. d_state/2 - 1): each
  mode is a damped oscillation, so a channel's kernel can carry periodic structure — in DNA the
  3-base codon period and the ~10.5-base helical period of nucleosome positioning signals —
  which a real diagonal A (sums of decaying exponentials, S4D-Real) represents only with many
  modes; S4D-Lin rather than S4D-Inv because the two score alike in the S4D paper and Lin's
  frequencies, evenly spaced, do not depend on d_state. Re A = -exp(A_log) stays negative.
- the state holds d_state real numbers per channel (d_state/2 complex modes, their conjugates
  implicit), the same memory as a Mamba-1 state of that d_state; d_state must be even.
- B initialised to 1, C complex normal, dt log-uniform in [dt_min, dt_max] (S4D's), D = 1.
  A, B and dt are kept out of weight decay (S4's practice); C, a projection, is not.
- complex parameters are stored as real tensors with a trailing (real, imaginary) axis of 2, so
  the weights file is plain safetensors.

Streaming state: conv_state (b, d_conv-1, d_inner) the last conv inputs, ssm_state
(b, d_inner, d_state/2, 2) the complex state as (real, imaginary), both float32 (float64 for a
float64 model).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from genossm.model.config import ModelConfig
from genossm.model.mamba2 import causal_conv
from genossm.ops.s4d import s4d_conv, s4d_recurrent, s4d_ref


def _at_least_float32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))


class S4DMixer(nn.Module):
    """The S4D sequence mixer of one block (unidirectional, causal)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d_inner, modes = cfg.d_inner, cfg.d_state // 2
        self.in_proj = nn.Linear(cfg.d_model, 2 * d_inner, bias=False)
        self.conv1d = nn.Conv1d(d_inner, d_inner, cfg.d_conv, groups=d_inner,
                                bias=cfg.conv_bias)
        self.log_dt = nn.Parameter(torch.empty(d_inner))
        self.A_log = nn.Parameter(torch.empty(d_inner, modes))      # Re A = -exp(A_log)
        self.A_imag = nn.Parameter(torch.empty(d_inner, modes))     # Im A
        self.B = nn.Parameter(torch.empty(d_inner, modes, 2))       # (real, imaginary)
        self.C = nn.Parameter(torch.empty(d_inner, modes, 2))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, cfg.d_model, bias=False)
        for p in (self.log_dt, self.A_log, self.A_imag, self.B, self.D):
            p._no_weight_decay = True
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self):
        """S4D-Lin: A_m = -1/2 + iπm; B = 1; C complex normal (variance 1); dt log-uniform in
        [dt_min, dt_max]; D = 1."""
        cfg = self.cfg
        d_inner, modes = self.A_log.shape
        u = torch.rand(d_inner)
        self.log_dt.copy_(u * (math.log(cfg.dt_max) - math.log(cfg.dt_min))
                          + math.log(cfg.dt_min))
        self.A_log.fill_(math.log(0.5))
        self.A_imag.copy_(math.pi * torch.arange(modes, dtype=torch.float32).expand(d_inner, -1))
        self.B.copy_(torch.stack([torch.ones(d_inner, modes), torch.zeros(d_inner, modes)], -1))
        self.C.normal_(0.0, math.sqrt(0.5))
        self.D.fill_(1.0)

    @staticmethod
    def state_shapes(cfg: ModelConfig) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Per-row shapes of (conv_state, ssm_state): (d_conv-1, d_inner), (d_inner, d_state/2,
        2)."""
        return (cfg.d_conv - 1, cfg.d_inner), (cfg.d_inner, cfg.d_state // 2, 2)

    def ssm_parameters(self, dtype) -> tuple[torch.Tensor, ...]:
        """(dt, A, B, C, D) of genossm.ops.s4d in ``dtype`` (complex A, B, C)."""
        def complex_(p):
            return torch.view_as_complex(p.to(dtype).contiguous())
        A = torch.complex(-torch.exp(self.A_log.to(dtype)), self.A_imag.to(dtype))
        return (torch.exp(self.log_dt.to(dtype)), A, complex_(self.B), complex_(self.C),
                self.D.to(dtype))

    def forward(self, u, conv_state=None, ssm_state=None, *, return_state=False,
                backend=None):
        """u: (b, l, d_model) -> (b, l, d_model); with ``return_state`` also returns the new
        (conv_state, ssm_state). Missing states mean "start of sequence" (zeros)."""
        backend = backend or self.cfg.scan_backend
        if backend not in ("auto", "torch", "ref"):
            raise ValueError(f"the s4d mixer runs on backend auto, torch or ref, not {backend!r} "
                             "(its ops are torch: FFT convolution and a chunked recurrence)")
        x, z = self.in_proj(u).chunk(2, dim=-1)
        x, new_conv_state = causal_conv(x, self.conv1d, conv_state, return_state)
        x = F.silu(x)                                                 # (b, l, d_inner)
        # The SSM is not autocast: it computes in (at least) float32, its state is float32.
        with torch.autocast(u.device.type, enabled=False):
            x = _at_least_float32(x)
            params = self.ssm_parameters(x.dtype)
            state = None
            if ssm_state is not None:
                state = torch.view_as_complex(ssm_state.to(x.dtype).contiguous())
            if backend == "ref":
                y, state = s4d_ref(x, *params, initial_state=state, return_final_state=True)
            elif state is None and not return_state:
                y = s4d_conv(x, *params)                              # training: FFT
            else:
                y, state = s4d_recurrent(x, *params, initial_state=state,
                                         return_final_state=True, chunk_size=self.cfg.chunk_size)
            y = y * F.silu(z.to(y.dtype))
        y = self.out_proj(y.to(z.dtype))
        if return_state:
            return y, (new_conv_state, torch.view_as_real(state))
        return y
