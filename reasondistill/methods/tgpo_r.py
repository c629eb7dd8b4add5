"""TGPO_R: TGPO's guidance as reward shaping (teacher_guided_policy_optimization.md §3.2, eq. 5),
on the shared on-policy stack (``onpolicy.py``).

Everything is TGPO's eq. (4) (group-standardised verifier advantages, ``loss_type=group_tokens``,
no reference KL) except that the guidance enters the advantage instead of the loss:
``A_hat_{i,t} = A_i + lambda * sg[log pi_theta(y^T_{i,t} | x, y_{i,<t})]``, y^T the teacher's
argmax at the student's own prefix. The shaping is computed once per generation batch, with
the sampling policy's parameters (the first update), and kept for the batch's later updates, as
the advantages are: a stop-gradient scalar, so the policy moves only through the score function
of its sampled tokens.

lambda (``shaping_lambda``) is not given in the paper. The default, 0.05, keeps the shaping a
minority of the advantage: sg[log pi(y^T)] is 0 where the student already puts all its mass on
the teacher's token and a few nats where it does not, while |A_i| is about 1 in a group with
both outcomes; with 0.05 a token the student gives probability e^-4 to the teacher's choice
shifts its advantage by 0.2. It is a choice, not a measurement of the paper's; sweep it with
``shaping_lambda=``.

    reasondistill train tgpo_r teacher=embedded:teacher-cross shaping_lambda=0.05
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import losses
from ..config import ConfigError
from .onpolicy import advantages, finalize_step, prepare, required_fields, rl_loss, setup  # noqa: F401
from .tgpo import Config as TGPOConfig
from .tgpo import agreement, guidance_signals, token_rewards


@dataclass
class Config(TGPOConfig):
    shaping_lambda: float = 0.05
    """lambda of eq. (5), the weight of sg[log pi(y^T)] added to every token's advantage."""

    def validate(self):
        super().validate()
        if self.shaping_lambda < 0:
            raise ConfigError(f"shaping_lambda must be >= 0, got {self.shaping_lambda}")
        if self.advantage != "sequence":
            raise ConfigError("tgpo_r shapes the sequence advantage A_i of eq. (5): advantage must be sequence")


def shaped_advantages(cfg, micro, rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, C) eq. (5): the row's group advantage plus lambda x the detached log-prob of the teacher's argmax."""
    a = advantages(cfg, rewards, mask, micro.extras.get("reward_std"))  # (N,)
    shaping = micro.extras["shaping"].to(a)  # (N, C), detached, 0 at padding
    return torch.where(mask.bool(), a.unsqueeze(-1) + cfg.shaping_lambda * shaping, 0.0)


def loss(ctx, micro, totals: dict):
    def rewards(ctx_, micro_, out, mask):
        micro_.extras["shaping"] = out["guide_logp"]  # detached (the sampling policy's)
        r, m = token_rewards(ctx_, micro_, out, mask)
        shaping = losses.masked_mean(out["guide_logp"], mask.float()).item()
        return r, m | {"tgpo_r/shaping_logp_mean": shaping, "tgpo/teacher_agreement": agreement(out, micro_, mask)}

    return rl_loss(ctx, micro, totals, rewards, extra_signals=guidance_signals(ctx),
                   advantage_fn=lambda cfg, r, mask: shaped_advantages(cfg, micro, r, mask))
