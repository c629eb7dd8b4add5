"""GRPO++ baseline of teacher_guided_policy_optimization.md §4: GRPO with no KL penalty,
token-level normalisation and clip-higher (DAPO's asymmetric clip, upper range 0.28). A preset
of ``grpo``: the same reward, advantages and surrogate, other defaults.

    reasondistill train grpo_pp
"""

from __future__ import annotations

from dataclasses import dataclass

from .grpo import Config as GRPOConfig
from .grpo import finalize_step, loss, prepare, required_fields, setup, token_rewards  # noqa: F401


@dataclass
class Config(GRPOConfig):
    loss_type: str = "group_tokens"
    """Token-level normalisation within each group (the TGPO paper's eq. 4)."""
    epsilon_high: float | None = 0.28
    """Clip-higher: the upper clip range (DAPO)."""
    beta: float = 0.0
    """No KL penalty."""
