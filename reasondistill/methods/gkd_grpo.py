"""GKD-GRPO baseline of constrained_mdp_distillation.md §4.1: the Lagrangian relaxation of eq. (1).

max E[R - lambda D(pi, mu)] with a fixed multiplier: per generated token
r_t = R 1{t = last} + lmbda * (log mu(a_t|s_t) - log pi_theta(a_t|s_t)), the KL part being gkd_rl's
reward (the sampled-token estimate of -KL(pi_theta || mu) at s_t; ``kl_reward=full`` for the exact
full-vocabulary -C_t), with the shared advantages and clipped update of ``onpolicy.py``. The paper
sweeps lambda in {0.001, 0.01, 0.1, 1, 10} (``reasondistill compare`` does, see
``pipelines/compare.py``); ``lmbda=0`` is the pure-reward GRPO baseline on the same machinery
(with ``advantage=sequence`` it is exactly ``grpo`` with ``scale_rewards=group``: tested).

    reasondistill train gkd_grpo lmbda=0.1 num_generations=8 learning_rate=1e-5
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import ConfigError
from .onpolicy import (OnPolicyConfig, at_last_token, kl_reward, finalize_step, prepare,  # noqa: F401
                       required_fields, rl_loss, setup)


@dataclass
class Config(OnPolicyConfig):
    lmbda: float = 0.1
    """lambda, the fixed weight of the step KL against the task reward (0: pure GRPO)."""

    def validate(self):
        super().validate()
        if self.lmbda < 0:
            raise ConfigError(f"lmbda must be >= 0, got {self.lmbda}")


def token_rewards(ctx, micro, out: dict, mask: torch.Tensor):
    task = at_last_token(micro.extras["task_reward"], mask).to(out["logp"].dtype)  # (N, C) R at the last token
    return torch.where(mask.bool(), task + ctx.cfg.lmbda * kl_reward(ctx.cfg, out, mask), 0.0), {}


def loss(ctx, micro, totals: dict):
    return rl_loss(ctx, micro, totals, token_rewards)
