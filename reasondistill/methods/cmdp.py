"""CMDP distillation: maximise the task reward subject to a teacher-KL budget
(constrained_mdp_distillation.md, eq. (4) and §3.2).

Saute-style reward without state augmentation: the remaining budget z_t = d - sum_{u<t} C_u is
recomputed from the history, so the student needs no teacher at test time. Per generated token

    r_t = R (the task reward, at the last token)   while d - S_t >= 0
    r_t = -(n + phi_t)                              once the budget is spent,

with C_t = phi_t = KL(pi_theta(.|s_t) || mu(.|s_t)) over the full vocabulary (eq. 7, teacher
floored: Appendix A), through ``losses.cmdp_token_rewards``. The gradient is the paper's final
estimator (§3.2 / Appendix A): (I) the likelihood-ratio term with the reward-to-go of r_t (the
clipped GRPO surrogate of ``onpolicy.py``), plus (II) the explicit dependence of the penalty on
theta, ``-1{d - S_t <= epsilon} grad phi_theta(s_t)``: the loss adds the differentiable step
KL on the boundary and infeasible tokens, normalised like the surrogate (``boundary_term``).

Budget modes (``budget_mode``): ``sum`` is the paper's formal definition (d is the total KL of
an answer); ``length_normalized`` (default) sets D = d x (answer length), so a finished answer
is feasible iff its mean per-token KL <= d, which is how the paper *reports* constraint
satisfaction at d = 0.35.

Ablation: ``penalty_phi=false`` gives the fixed penalty -n of eq. (3) with no phi, and (as there is
then no explicit dependence) no term (II). The paper says it "would have great difficulty
satisfying a strict constraint": see the measurement below.

Default ``advantage=sequence`` (``onpolicy.py``), measured on the embedded task (same seed, 150
steps at lr 3e-4 after the shared KL-only bootstrap; greedy, 400 held-out problems):
sequence FAC 58.5%, CS@0.35 68.5%; process FAC 29.7%, CS 33.3%. From the un-bootstrapped
student at lr 1e-4 process also fell (FAC 44% -> 24.5%, CS 28% -> 11.5%). Why: in process mode
the penalties make the group's mean token reward strongly negative, so after normalisation every
*unpenalised* token carries a positive reward and the reward-to-go grows with the number of
tokens left: the advantage rewards length (or, once most tokens are penalised, brevity) far more
than correctness, and the student drifted. Sequence advantages compare whole answers (feasible
and correct > feasible > violating, the latter ordered by how much they overspent).

Term (II) keeps the paper's unit weight (``boundary_weight``) next to the *normalised* surrogate;
the paper's raw-reward gradient would weigh it about 1/std(rewards) less, GRPO's normalisation
leaves the balance a choice. Measured in the same setting as above: weight 5 gave FAC 52.5%,
CS 57.8% (weight 1: 58.5%, 68.5%), so 1 stays.

Deliberate deviations: (a) by default one update per generation batch (ratio 1 in value), as
TRL's GRPO with num_iterations=1 (``num_iterations`` > 1 reuses the batch, rewards fixed at
sampling time); (b) the KL-only bootstrap of Appendix D.4 is ``bootstrap_steps`` (steps,
not epochs); (c) the same temperature divides both models' logits in the step KL and the
log-probs (1.0 by default, where this is the paper's KL).

    reasondistill train cmdp budget=0.35 penalty=20 num_generations=8 learning_rate=1e-5
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import losses
from ..config import ConfigError
from .onpolicy import OnPolicyConfig, finalize_step, prepare, required_fields, rl_loss, setup  # noqa: F401


@dataclass
class Config(OnPolicyConfig):
    budget: float = 0.35
    """d: per generated token (``length_normalized``) or per answer (``sum``). Paper: 0.35."""
    budget_mode: str = "length_normalized"
    """``length_normalized`` (feasible iff mean per-token KL <= d) or ``sum`` (total KL <= d)."""
    penalty: float = 20.0
    """n, the fixed part of the penalty once the budget is spent (paper: 20)."""
    penalty_phi: bool = True
    """Add phi = the step KL to the penalty, -(n + phi) (eq. 4). false: the fixed -n of eq. (3)
    (the ablation), which also drops term (II)."""
    boundary_term: bool = True
    """Term (II) of §3.2: add the differentiable step KL on tokens with d - S_t <= boundary_epsilon."""
    boundary_weight: float = 1.0
    """Weight of term (II) relative to the normalised surrogate (the paper's is 1 in raw reward
    units; GRPO's normalisation of term (I) leaves its scale a choice: see the docstring)."""
    boundary_epsilon: float = 0.0
    """epsilon of term (II), in the units of the budget D (total KL for sum; d x length for
    length_normalized)."""

    def validate(self):
        super().validate()
        if self.budget_mode not in ("length_normalized", "sum"):
            raise ConfigError(f"budget_mode must be length_normalized or sum, got {self.budget_mode!r}")
        if self.penalty < 0:
            raise ConfigError(f"penalty must be >= 0, got {self.penalty}")


def token_rewards(ctx, micro, out: dict, mask: torch.Tensor):
    """Eq. (4) per token; with ``penalty_phi=false`` eq. (3): the same feasibility decisions
    (from the real step KL), but a fixed -n once the budget is spent."""
    cfg = ctx.cfg
    kl = out["step_kl"]  # (N, C) detached
    task = micro.extras["task_reward"].to(kl.device)  # (N,)
    rewards, violated = losses.cmdp_token_rewards(task, kl, mask, cfg.budget, cfg.penalty, cfg.budget_mode)
    if not cfg.penalty_phi:
        rewards = torch.where(violated, torch.full_like(rewards, -cfg.penalty), rewards)
    any_violation = violated.any(-1).float()  # (N,)
    feasible = {}
    if cfg.budget_mode == "length_normalized":  # the CS of the samples, as the eval reports it
        feasible["kl/feasible_share"] = (losses.masked_mean(kl, mask, -1) <= cfg.budget).float().mean().item()
    return rewards, feasible | {"cmdp/violated_share": any_violation.mean().item(),
                     "cmdp/violated_tokens": losses.masked_mean(violated.float(), mask).item(),
                     "cmdp/task_reward_kept": (task * (1 - any_violation)).mean().item()}


def boundary_loss(ctx, micro, out: dict, mask: torch.Tensor, totals: dict):
    """Term (II): + phi_theta(s_t) (differentiable) where d - S_t <= epsilon, aggregated like the surrogate."""
    from .onpolicy import aggregate

    cfg = ctx.cfg
    if not (cfg.boundary_term and cfg.penalty_phi):
        return out["step_kl"].new_zeros(()), {}
    slack = losses.cmdp_budget_slack(out["step_kl"].detach(), mask, cfg.budget, cfg.budget_mode)  # (N, C)
    on = ((slack <= cfg.boundary_epsilon) & mask.bool()).to(out["step_kl"].dtype)  # (N, C)
    term = cfg.boundary_weight * aggregate(out["step_kl"] * on, mask, cfg, totals)
    return term, {"cmdp/boundary_term": term.item(), "cmdp/boundary_tokens": losses.masked_mean(on, mask).item()}


def loss(ctx, micro, totals: dict):
    return rl_loss(ctx, micro, totals, token_rewards, extra_loss=boundary_loss)
