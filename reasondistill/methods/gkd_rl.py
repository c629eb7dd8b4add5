"""GKD baseline of constrained_mdp_distillation.md §4.1: on-policy reverse-KL distillation as RL.

"A distillation-only baseline whose objective is to minimize the reverse KL divergence
D_KL(pi_theta || mu), treating the negative per-step KL as an intrinsic reward. We use GRPO rather
than the REINFORCE-style update of Agarwal et al. (2024) for consistency." Per generated token
r_t = log mu(a_t|s_t) - log pi_theta(a_t|s_t), the sampled-token estimate of -KL(pi_theta || mu)
at s_t (teacher floored; ``kl_reward=full`` uses the exact full-vocabulary -C_t, a state-only
reward whose policy gradient misses the direct term: see ``onpolicy.py``); the task reward is
ignored; advantages and the clipped update are the shared ones of ``onpolicy.py`` (sequence
advantages by default). This is tinker-cookbook's "on-policy distillation = reverse KL as
per-token advantage".

Not to be confused with ``gkd`` (TRL's GKDTrainer semantics: the divergence itself is the loss).

    reasondistill train gkd_rl num_generations=8 learning_rate=1e-5
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .onpolicy import OnPolicyConfig, kl_reward, finalize_step, prepare, required_fields, rl_loss, setup  # noqa: F401


@dataclass
class Config(OnPolicyConfig):
    pass


def token_rewards(ctx, micro, out: dict, mask: torch.Tensor):
    return kl_reward(ctx.cfg, out, mask), {}


def loss(ctx, micro, totals: dict):
    return rl_loss(ctx, micro, totals, token_rewards)
