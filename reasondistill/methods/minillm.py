"""MiniLLM baseline of constrained_mdp_distillation.md §4.1 (Gu et al. 2024), on the shared GRPO machinery.

On-policy reverse-KL minimisation that accounts for the long-term effect of each token:
per-token reward r_t = log mu(a_t|s_t) - log pi_theta(a_t|s_t) (sampled tokens, teacher
floored); the policy gradient splits (MiniLLM eq. 5) into

- the long-term part: grad log pi(a_t) times the *future* return R_{t+1} = sum_{u>t} gamma^(u-t-1) r_u,
  divided by the number of future tokens when ``length_normalize`` (MiniLLM's length
  normalisation, against a bias toward short answers);
- the single-step part: grad E_{a~pi(.|s_t)}[r_t] = -grad KL(pi_theta(.|s_t) || mu(.|s_t)),
  computed exactly over the full vocabulary (the loss adds the differentiable step KL).

The task reward is ignored. Deviations, as the paper substitutes "PPO with a GRPO-based update":
the long-term returns are standardised over the counted tokens of the prompt's group (a group
baseline instead of MiniLLM's value-free baseline), then fed to the shared clipped surrogate;
no teacher-mixed sampling and no pre-training loss (MiniLLM's other two tricks).

    reasondistill train minillm num_generations=8 learning_rate=1e-5
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import losses
from ..config import ConfigError
from .onpolicy import (OnPolicyConfig, aggregate, finalize_step, prepare, required_fields,  # noqa: F401
                       rl_loss, setup)


@dataclass
class Config(OnPolicyConfig):
    length_normalize: bool = True
    """Divide the future return R_{t+1} by the number of future tokens (MiniLLM's normalisation)."""
    single_step: bool = True
    """Add the single-step term (the exact gradient of the expected current-token reward)."""

    def validate(self):
        super().validate()
        # minillm has its own advantage (future return) and reward (sampled log-ratio)
        if self.advantage != "sequence" or self.kl_reward != "sampled":
            raise ConfigError("minillm computes its own advantages and reward: advantage and kl_reward do not apply")


def token_rewards(ctx, micro, out: dict, mask: torch.Tensor):
    m = mask.bool()
    r = torch.where(m, out["teacher_logp"] - out["logp"], 0.0)  # (N, C) log mu - log pi
    return r, {"minillm/token_reward": losses.masked_mean(r, mask).item()}


def future_return_advantages(cfg, rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, C) R_{t+1} (strictly after t; per future token if ``length_normalize``), standardised
    over the counted tokens of the prompt's group."""
    m = mask.to(rewards.dtype)
    future = torch.where(m != 0, losses.reward_to_go(rewards, m, cfg.gamma) - rewards, 0.0) / cfg.gamma  # R_{t+1}
    if cfg.length_normalize:
        left = m.flip(-1).cumsum(-1).flip(-1) - m  # (N, C) counted tokens after t
        future = torch.where(left > 0, future / left.clamp(min=1), 0.0)
    return losses.group_token_standardize(future, mask, cfg.num_generations)


def single_step_loss(ctx, micro, out: dict, mask: torch.Tensor, totals: dict):
    if not ctx.cfg.single_step:
        return out["step_kl"].new_zeros(()), {}
    term = aggregate(out["step_kl"], mask, ctx.cfg, totals)
    return term, {"minillm/single_step": term.item()}


def loss(ctx, micro, totals: dict):
    return rl_loss(ctx, micro, totals, token_rewards, extra_loss=single_step_loss,
                   advantage_fn=future_return_advantages)
