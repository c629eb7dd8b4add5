"""KD: token-level forward KL(teacher || student) on a fixed dataset, teacher logits on the fly.

The classic word-level knowledge distillation (Hinton et al. 2015; Kim & Rush 2016) that the
VCRD and TGPO papers list as the "KD" baseline: completions come from the dataset (ground
truth or teacher traces), the teacher scores every completion position under ``no_grad``,
and the student minimises KL(p_teacher || p_student) at temperature ``temperature`` (both
distributions use it), over the shared vocabulary only. Normalised by the completion tokens of
the whole optimizer step. ``sft_weight`` optionally adds the cross-entropy on the data.

    reasondistill train kd teacher=embedded:teacher temperature=1.0
"""

from __future__ import annotations

from dataclasses import dataclass


from .. import losses
from ..config import ConfigError, TrainConfig
from . import sft


@dataclass
class Config(TrainConfig):
    temperature: float = 1.0
    """Softmax temperature applied to student and teacher logits inside the KL."""
    sft_weight: float = 0.0
    """Weight of the extra cross-entropy term on the dataset completion (0: pure KD)."""
    completion_field: str = "solution"
    """Record field used as the completion."""

    def validate(self):
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")


prepare = sft.prepare


def loss(ctx, micro, totals: dict):
    cfg = ctx.cfg
    batch = micro.batch.to(ctx.device)
    mask = batch.completion_mask
    p = ctx.signals(batch, temperature=cfg.temperature)
    kl = p.divergence("forward_kl")  # (B, C)
    total = losses.masked_sum(kl, mask) / totals["tokens"]
    metrics = {"kd/forward_kl": losses.masked_mean(kl.detach(), mask).item()}
    if cfg.sft_weight:  # the data's cross-entropy at temperature 1
        p1 = p if cfg.temperature == 1.0 else ctx.signals(batch)
        nll = -losses.masked_sum(p1.student_logp(), mask) / totals["tokens"]
        total = total + cfg.sft_weight * nll
        metrics["kd/nll"] = nll.item()
    return total, metrics


required_fields = sft.required_fields
