"""KDRL baseline of teacher_guided_policy_optimization.md §4 (Xu et al. 2025): GRPO plus a
reverse-KL regulariser toward the teacher, on the shared on-policy stack (``onpolicy.py``).

The GRPO part is TGPO's eq. (4) (group-standardised verifier advantages, ``group_tokens``
aggregation, no reference KL). The regulariser is ``kd_coef`` times an estimate of
KL(pi_theta || mu) from the student's sampled tokens, ``losses.kl_estimate`` with
``kl_estimator`` = ``k2`` (default: 0.5 (log pi - log mu)^2, whose gradient is the exact
gradient of the reverse KL in expectation; KDRL's recommended choice) or ``k3``, aggregated like
the surrogate, with gradient through the student only (the teacher is floored by
``teacher_prob_floor`` so the estimate stays finite). ``kd_coef`` is KDRL's beta; the TGPO paper
does not give its value: the default 0.02 is a choice (say in the note what was run).

    reasondistill train kdrl teacher=embedded:teacher-cross kd_coef=0.02 kl_estimator=k2
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import losses
from ..config import ConfigError
from .onpolicy import aggregate, finalize_step, prepare, required_fields, rl_loss, setup  # noqa: F401
from .tgpo import token_rewards  # the verifier's reward at the last token
from .onpolicy import OnPolicyConfig


@dataclass
class Config(OnPolicyConfig):
    loss_type: str = "group_tokens"
    """The same aggregation as TGPO (eq. 4)."""
    kd_coef: float = 0.02
    """Weight of the reverse-KL regulariser toward the teacher."""
    kl_estimator: str = "k2"
    """``k2`` or ``k3`` estimator of KL(student || teacher) on the sampled tokens."""

    def validate(self):
        super().validate()
        if self.kl_estimator not in ("k2", "k3"):
            raise ConfigError(f"kl_estimator must be k2 or k3, got {self.kl_estimator!r}")
        if self.kd_coef < 0:
            raise ConfigError(f"kd_coef must be >= 0, got {self.kd_coef}")


def kd_term(ctx, micro, out: dict, mask: torch.Tensor, totals: dict):
    est = losses.kl_estimate(out["logp"], out["teacher_logp"], ctx.cfg.kl_estimator)  # (N, C) with grad
    est = torch.where(mask.bool(), est, 0.0)
    with torch.no_grad():
        m = mask.float()
        metrics = {"kdrl/kl_estimate": (losses.masked_sum(est.detach(), m).item(), m.sum().item())}
    return ctx.cfg.kd_coef * aggregate(est, mask, ctx.cfg, totals), metrics


def loss(ctx, micro, totals: dict):
    return rl_loss(ctx, micro, totals, token_rewards, extra_loss=kd_term)
