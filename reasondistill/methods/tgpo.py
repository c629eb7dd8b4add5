"""TGPO: teacher-guided policy optimization (teacher_guided_policy_optimization.md §3, eq. 6,
the paper's TGPO^D), on the shared on-policy stack (``onpolicy.py``).

Per generation batch each prompt is answered ``num_generations`` times by the current student
and every answer graded by the rule-based verifier (1 if the boxed answer is right). The loss
is the GRPO objective of eq. (4) plus ``w_t`` times the guidance term of eq. (3):

- eq. (4): outcome advantages ``A_i = (r_i - mu) / sigma`` over the group
  (``scale_rewards=group``), the importance ratio against the sampling policy (the platform's
  ``num_iterations``: 1 gives ratio 1, more reuse the batch and clip), no reference-model KL
  (``beta=0``), and ``loss_type=group_tokens``: each group's token sum divided by its counted
  tokens Z = sum_i |y_i|, then the mean over groups (``losses.aggregate_loss``);
- eq. (3): at every prefix y_{<t} of the student's own answer the teacher's argmax next token
  y^T_t (teacher forward without gradient); the guidance is the student's negative
  log-likelihood of it, averaged over the answer's tokens (1/|y|) and then over answers
  (``losses.tgpo_guidance_nll``; here through ``signals.TokenPass`` so the chunked path works
  too, and tested equal to it).

Eq. (6) as printed, ``J_GRPO + w J_Guidance``, adds an objective to be maximised to a term
that is already a *loss* (eq. 3 carries its own minus sign). The intended direction, which
§3.1's "maximizing the likelihood of this target token" states, is implemented: the loss
minimised is ``-J_GRPO + w_t * NLL``. Gradient flows through the student only.

Annealing (§3.2): ``w_t = max(w_init - decay * t, 0)`` (``losses.linear_anneal``), ``t`` the
optimizer step from 0 (so a resumed run continues the schedule exactly: the step is in every
checkpoint). The four schedules of Figure 5 are named in ``SCHEDULES``; ``schedule=paper`` is
TGPO-annealing, the default ``constant`` is the paper's TGPO row. The weight in force is logged
every step (``tgpo/guidance_weight``) with the guidance NLL and the share of sampled tokens
equal to the teacher's argmax (``tgpo/teacher_agreement``).

Deviations and choices: the temperature that divides the student's logits for the guidance
log-prob is the sampling temperature (one temperature for sampling and loss, FIELD_NOTES; the
argmax does not depend on it); the teacher's argmax is taken over the shared vocabulary
(``tokenizer_compat=shared_ids`` for a teacher of another family whose ids agree, as the
paper's Qwen3 / Qwen2.5-Math pair).

    reasondistill train tgpo teacher=embedded:teacher-cross schedule=paper
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .. import losses
from ..config import ConfigError
from .onpolicy import (OnPolicyConfig, aggregate, at_last_token, finalize_step, prepare,  # noqa: F401
                       required_fields, rl_loss, setup)

SCHEDULES = {
    "constant": (2e-3, 0.0),
    "aggressive": (2e-2, 1e-4),
    "continuous": (2e-3, 2e-3 / 300),
    "paper": (2e-3, 1e-5),
}
"""Figure 5's schedules as (w_init, decay): constant weight, aggressive annealing, continuous
annealing (reaching 0 at the paper's last step, 300) and the paper's (0 at step 200)."""


@dataclass
class Config(OnPolicyConfig):
    REWARD_NEEDS_TEACHER: ClassVar[bool] = False  # the reward is the verifier's; the teacher is in the guidance

    loss_type: str = "group_tokens"
    """Eq. (4): each group's token sum over Z = sum_i |y_i|, then the mean over groups."""
    learning_rate: float = 1e-6
    """Peak learning rate (the paper's constant 1e-6 for 7B); the embedded task takes ~1e-4."""
    lr_scheduler_type: str = "constant"
    """The paper keeps the learning rate constant."""
    schedule: str = "constant"
    """Guidance weight schedule: ``constant``, ``aggressive``, ``continuous`` or ``paper``
    (Figure 5, values in ``SCHEDULES``), or ``custom`` to use ``w_init`` and ``decay`` as given."""
    w_init: float = 2e-3
    """Initial guidance weight (used with ``schedule=custom``; the presets set their own)."""
    decay: float = 0.0
    """Guidance weight decrease per optimizer step (``schedule=custom``)."""
    map_teacher_stop: bool = True
    """Where the teacher's argmax is one of its own stop tokens, guide toward the student's EOS
    instead. A teacher of another family stops with another token (``tokenizer_compat=shared_ids``
    keeps each model's stop ids); taken literally, the guidance would teach the student a stop
    token that does not stop it, and its answers would run to the length cap."""

    def validate(self):
        super().validate()
        if self.schedule not in (*SCHEDULES, "custom"):
            raise ConfigError(f"schedule must be one of {', '.join((*SCHEDULES, 'custom'))}, got {self.schedule!r}")
        if self.schedule != "custom":
            if (self.w_init, self.decay) not in ((2e-3, 0.0), SCHEDULES[self.schedule]):
                raise ConfigError(f"schedule={self.schedule} sets w_init and decay to {SCHEDULES[self.schedule]}; "
                                  f"to choose them yourself set schedule=custom")
            self.w_init, self.decay = SCHEDULES[self.schedule]
        if self.w_init < 0 or self.decay < 0:
            raise ConfigError(f"w_init and decay must be >= 0, got {self.w_init}, {self.decay}")
        if self.beta:
            raise ConfigError("TGPO has no reference-model KL (eq. 4): set beta=0")


def guidance_targets(ctx, p) -> torch.Tensor:
    """(N, C) the teacher's argmax at every prefix; with ``map_teacher_stop`` a teacher stop token
    (its own EOS, e.g. ``<|endoftext|>`` for a teacher of another family) becomes the student's EOS."""
    target = p.teacher_argmax()  # (N, C) long, no grad
    stops = ctx.teacher_stop_ids or []
    eos = ctx.tokenizer.eos_token_id
    if ctx.cfg.map_teacher_stop and stops and eos is not None and set(stops) != {eos}:
        target = torch.where(torch.isin(target, torch.tensor(stops, device=target.device)), eos, target)
    return target


def guidance_signals(ctx):
    """``extra_signals`` for ``onpolicy.rl_loss``: the student's log-prob (with grad) of the
    guidance target at every prefix, and the target."""
    def signals(p) -> dict:
        target = guidance_targets(ctx, p)
        return {"guide_logp": p.student_logp(target), "guide_target": target}

    return signals


def agreement(out: dict, micro, mask: torch.Tensor) -> tuple[float, float]:
    """(sampled tokens equal to the teacher's argmax, counted tokens) of this micro-batch."""
    same = (micro.batch.completion_ids.to(mask.device) == out["guide_target"]).float()
    return losses.masked_sum(same, mask.float()).item(), mask.float().sum().item()


def token_rewards(ctx, micro, out: dict, mask: torch.Tensor):
    return at_last_token(micro.extras["task_reward"], mask), {}


def guidance_loss(ctx, micro, out: dict, mask: torch.Tensor, totals: dict):
    """w_t times eq. (3): per answer the mean NLL of the teacher's argmax, then the mean over the step's answers."""
    w = losses.linear_anneal(ctx.step, ctx.cfg.w_init, ctx.cfg.decay)
    nll = losses.aggregate_loss(-out["guide_logp"], mask, "grpo", totals["rows"])
    with torch.no_grad():
        rows = mask.shape[0]
        metrics = {"tgpo/guidance_weight": w, "tgpo/guidance_nll": (nll.item() * totals["rows"], rows),
                   "tgpo/teacher_agreement": agreement(out, micro, mask)}
    return w * nll, metrics


def loss(ctx, micro, totals: dict):
    return rl_loss(ctx, micro, totals, token_rewards, extra_loss=guidance_loss, extra_signals=guidance_signals(ctx))
