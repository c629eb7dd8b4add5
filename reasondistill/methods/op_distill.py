"""OP-Distill baseline of teacher_guided_policy_optimization.md §4 (Lu & Thinking Machines 2025,
"on-policy distillation"), and the reverse-KL-only run of the paper's §2.3 / Figure 2.

The per-token reverse-KL log-ratio is the advantage: ``A_t = log mu(a_t|s_t) - log pi_theta(a_t|s_t)``
on the student's own sampled tokens (teacher floored by ``teacher_prob_floor``), with no task
reward, no group normalisation and no reward-to-go (``advantage=token``), fed to the shared
clipped surrogate. It is ``gkd_rl``'s reward with per-token instead of sequence advantages. The
task reward is still computed and logged (``reward/task_mean``), as the paper monitors it.

    reasondistill train op_distill teacher=embedded:teacher-cross
"""

from __future__ import annotations

from dataclasses import dataclass

from .gkd_rl import token_rewards  # noqa: F401  (the sampled-token log-ratio)
from .onpolicy import OnPolicyConfig, finalize_step, prepare, required_fields, rl_loss, setup  # noqa: F401


@dataclass
class Config(OnPolicyConfig):
    advantage: str = "token"
    """Per-token advantages: the log-ratio itself (tinker-cookbook's on-policy distillation)."""
    loss_type: str = "group_tokens"
    """The same aggregation as TGPO (eq. 4), so the comparison differs only in the signal."""


def loss(ctx, micro, totals: dict):
    return rl_loss(ctx, micro, totals, token_rewards)
