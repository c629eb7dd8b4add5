"""ABKD (Wang et al., ICML 2025): token-level alpha-beta divergence D_AB(teacher || student) on a fixed dataset.

The VCRD paper's ABKD baseline (Tables 1-3, 6): ``kd``'s data and teacher pass with the per-token
loss ``losses.alpha_beta_divergence(alpha, beta)``; alpha = 1, beta = 0 is forward KL (``kd``)
and alpha = 0, beta = 1 reverse KL (tested). The VCRD paper gives no alpha, beta; the defaults
here, alpha = beta = 0.5, are the midpoint of the segment between those two corners, not ABKD's
tuned per-task values: set them. Normalised by the step's completion tokens. Deviation: plain
path only (``loss_chunk_size=0``): the chunked divergences do not include this kind.

    reasondistill train abkd alpha=0.5 beta=0.5
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import losses
from ..config import ConfigError, TrainConfig
from . import sft


@dataclass
class Config(TrainConfig):
    alpha: float = 0.5
    """ABKD's alpha (1 with beta 0: forward KL)."""
    beta: float = 0.5
    """ABKD's beta (1 with alpha 0: reverse KL)."""
    temperature: float = 1.0
    """Softmax temperature of both models' logits inside the divergence."""
    completion_field: str = "solution"
    """Record field used as the completion."""

    def validate(self):
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if self.loss_chunk_size:
            raise ConfigError("abkd needs loss_chunk_size=0 (the chunked divergences have no alpha-beta kind)")


prepare = sft.prepare


def loss(ctx, micro, totals: dict):
    cfg = ctx.cfg
    batch = micro.batch.to(ctx.device)
    mask = batch.completion_mask
    p = ctx.signals(batch)
    d = losses.alpha_beta_divergence(p.student_logits(), p.teacher_logits(), cfg.alpha, cfg.beta, cfg.temperature)
    return losses.masked_sum(d, mask) / totals["tokens"], {"abkd/divergence": losses.masked_mean(d.detach(), mask).item()}


required_fields = sft.required_fields
