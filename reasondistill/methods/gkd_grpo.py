"""GKD-GRPO baseline of constrained_mdp_distillation.md §4.1: the Lagrangian relaxation of eq. (1).

max E[R - lambda D(pi, mu)] with a fixed multiplier: per generated token
r_t = R 1{t = last} - lmbda * C_t, C_t = KL(pi_theta(.|s_t) || mu(.|s_t)) (full vocabulary,
teacher floored), with the shared advantages and clipped update of ``onpolicy.py``. The paper
sweeps lambda in {0.001, 0.01, 0.1, 1, 10} (``reasondistill compare`` does, see
``report/compare.py``); ``lmbda=0`` is the pure-reward GRPO baseline on the same machinery
(with ``advantage=sequence`` it is exactly ``grpo`` with ``scale_rewards=group``: tested).

    reasondistill train gkd_grpo lmbda=0.1 num_generations=8 learning_rate=1e-5
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .onpolicy import NEEDS_TEACHER, OnPolicyConfig, at_last_token, prepare, required_fields, rl_loss  # noqa: F401


@dataclass
class Config(OnPolicyConfig):
    lmbda: float = 0.1
    """lambda, the fixed weight of the step KL against the task reward (0: pure GRPO)."""

    def validate(self):
        super().validate()
        if self.lmbda < 0:
            raise ValueError(f"lmbda must be >= 0, got {self.lmbda}")


def token_rewards(ctx, micro: dict, out: dict, mask: torch.Tensor):
    kl = out["step_kl"]  # (N, C)
    task = at_last_token(micro["task_reward"], mask).to(kl.dtype)  # (N, C) R at the last token
    return torch.where(mask.bool(), task - ctx.cfg.lmbda * kl, 0.0), {}


def loss(ctx, micro: dict, totals: dict):
    return rl_loss(ctx, micro, totals, token_rewards)
