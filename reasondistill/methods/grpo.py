"""GRPO: group-relative policy optimisation (Shao et al. 2024) with TRL's knobs, on the shared
on-policy stack (``onpolicy.py``): GRPO is the reward builder "the task reward at the last token".

Per generation batch each prompt is answered ``num_generations`` times by the current student;
every answer gets a scalar reward (1 if the boxed answer is correct; ``format_weight``
optionally adds the format reward; ``reward=hybrid`` is the pipeline paper's 0.8 correctness +
0.2 tag format, the Box 5 judge asked only for answers the local check leaves undecided,
logged as ``reward/correct_mean``, ``reward/format_mean``, ``reward/undecided_share``); advantages are the rewards minus their group mean,
divided by the group std (``scale_rewards=group``), the batch std (``batch``) or nothing
(``none``, Dr. GRPO). The clipped surrogate with ratio exp(logp - logp_old) is aggregated by
``loss_type``: ``grpo`` (per-sequence token mean, then mean over sequences), ``dapo`` (sum over
all tokens / all tokens of the step) or ``dr_grpo`` (sum / (rows x max_completion_length)).
``beta > 0`` adds the k3 estimator of KL(student || reference), the reference being the student
as training started. ``num_iterations`` updates per generation batch (TRL's name): logp_old is
the sampling policy's log-prob, so the first update has ratio 1 and later ones clip. The
sampling temperature also divides the logits in the loss. Rows cut at
``max_completion_length`` keep their reward (logged as ``completions/truncated_share``).
``gkd_grpo lmbda=0`` is this method on the same machinery (tested: the same loss).

    reasondistill train grpo num_generations=8 learning_rate=5e-5 loss_type=dapo
    reasondistill train grpo student=runs/sft/final use_peft=true beta=0.1 reward=hybrid correctness_weight=0.8 \
        format_weight=0.2 judge_base_url=http://127.0.0.1:8000/v1 judge_model=NAME   # sft_then_grpo_api_teachers.md
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..config import ConfigError
from .onpolicy import OnPolicyConfig, at_last_token, finalize_step, prepare, required_fields, rl_loss, setup  # noqa: F401


@dataclass
class Config(OnPolicyConfig):
    REWARD_NEEDS_TEACHER: ClassVar[bool] = False

    teacher: str | None = None
    """Unused by GRPO (no teacher is loaded)."""
    learning_rate: float = 1e-6
    """Peak learning rate (TRL's GRPO default, for real models); the embedded task takes 5e-5 to
    1e-4 and collapses above that."""

    def validate(self):
        super().validate()
        if self.bootstrap_steps:
            raise ConfigError("bootstrap_steps is KL distillation to a teacher; grpo has none (use gkd_grpo lmbda=0)")


def token_rewards(ctx, micro, out: dict, mask: torch.Tensor):
    parts = micro.extras.get("reward_parts") or {}  # reward=hybrid: its two criteria and the judge's share
    n = max(1, int(mask.shape[0]))
    metrics = {"reward/correct_mean": parts["correct"], "reward/format_mean": parts["format"],
               "reward/undecided_share": (parts["undecided"], n), "reward/judge_failed_share": (parts["judge_failed"], n)} \
        if parts else {}
    return at_last_token(micro.extras["task_reward"], mask), metrics


def loss(ctx, micro, totals: dict):
    return rl_loss(ctx, micro, totals, token_rewards)
