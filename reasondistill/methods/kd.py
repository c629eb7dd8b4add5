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
from ..config import TrainConfig
from . import sft

NEEDS_TEACHER = True


@dataclass
class Config(TrainConfig):
    temperature: float = 1.0
    """Softmax temperature applied to student and teacher logits inside the KL."""
    sft_weight: float = 0.0
    """Weight of the extra cross-entropy term on the dataset completion (0: pure KD)."""
    completion_field: str = "solution"
    """Record field used as the completion."""
    loss_chunk_size: int = 0
    """>0: compute the KL from hidden states this many tokens at a time (never both models'
    full [B, T, V] float32 logits at once; for real vocabularies). 0: plain logits."""

    def validate(self):
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


prepare = sft.prepare


def loss(ctx, micro: dict, totals: dict):
    batch = micro["batch"].to(ctx.device)
    kl = ctx.token_divergence(batch, "forward_kl", temperature=ctx.cfg.temperature)  # (B, C)
    mask = batch.completion_mask.to(kl.dtype)
    total = (kl * mask).sum() / totals["tokens"]
    metrics = {"kd/forward_kl": ((kl.detach() * mask).sum() / mask.sum().clamp(min=1)).item()}
    if ctx.cfg.sft_weight:
        logp = losses.sampled_token_logprobs(ctx.student_logits(batch), batch.completion_ids)  # (B, C)
        nll = -(logp * mask).sum() / totals["tokens"]
        total = total + ctx.cfg.sft_weight * nll
        metrics["kd/nll"] = nll.item()
    return total, metrics

required_fields = sft.required_fields
