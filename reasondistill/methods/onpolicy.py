"""Shared machinery of the on-policy RL distillation methods of constrained_mdp_distillation.md
§4.1: ``cmdp``, ``gkd_rl``, ``gkd_grpo`` (``lmbda=0`` is the GRPO baseline) and ``minillm``.

Not a method itself. The paper re-implements every baseline "under the same GRPO framework ...
the batch size and its composition is the same"; here that framework is this file, and a
method is only a per-token *reward builder* (plus, for cmdp and minillm, one differentiable
extra term). Per optimizer step, identically for every method:

1. ``prepare`` (no grad): ``per_device_train_batch_size`` prompts, each answered
   ``num_generations`` times by the current student (paper: 8 x 8); every answer graded
   (1 if the boxed answer is correct, else 0; Appendix D.2).
2. ``rl_loss``: one student forward (with grad) and one teacher forward (no grad) on the
   rollouts give, at every generated token, the sampled token's log-prob and the step cost
   C_t = KL(pi_theta(.|s_t) || mu(.|s_t)) over the full shared vocabulary (eq. 7), the teacher
   floored at ``teacher_prob_floor`` (Appendix A). Both at the sampling ``temperature``
   (FIELD_NOTES: one temperature for sampling and loss; at the default 1.0 this is exactly the
   KL that ``reasondistill eval --teacher`` reports).
3. The method's ``token_rewards`` turns (task reward, detached C_t, ...) into r_t ``(N, C)``;
   for the first ``bootstrap_steps`` steps every method is replaced by KL distillation alone,
   the exact on-policy reverse-KL loss (Appendix D.4: "to bootstrap all methods, we apply KL
   distillation alone ... (even with GRPO lambda = 0)"). A KL used as a *reward* is by default the
   sampled-token log-ratio log mu(a_t) - log pi(a_t) (``kl_reward``): the full-vocabulary C_t
   depends on the state only, so its score-function gradient misses the direct dependence of
   the KL on theta (the term that CMDP adds explicitly as term (II)); with it, gkd_rl's KL
   rose from 0.61 to 2.6 in 120 steps on the embedded task instead of falling.
4. Advantages: ``sequence`` (default; each row's summed reward through
   ``losses.group_advantages``, broadcast over its tokens) or ``process`` (rewards normalised
   over all counted tokens of the group, then reward-to-go with ``gamma``:
   ``losses.process_advantages``).
5. The clipped surrogate (``losses.policy_gradient_loss``, one update per generation batch so
   the ratio is 1 in value) aggregated by ``loss_type``, plus the method's extra term
   aggregated the same way, both with the global normaliser of the optimizer step.

Because the student logits of step 2 are the sampling policy's (one update per batch), the
step cost needs no separate forward pass in ``prepare``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import losses
from ..config import TrainConfig
from ..rewards import accuracy_reward
from ..rollout import generate
from .grpo import normalizer

NEEDS_TEACHER = True


@dataclass
class OnPolicyConfig(TrainConfig):
    learning_rate: float = 1e-5
    """Peak learning rate (the paper's AdamW 1e-5 for 1.5B-3B models); the tiny embedded models
    need 1e-4 to 3e-4 (configs/cmdp_embedded.yaml uses 3e-4 after the bootstrap)."""
    per_device_train_batch_size: int = 8
    """Prompts per micro-batch, each answered num_generations times (paper: 8 questions)."""
    num_generations: int = 8
    """Answers sampled per prompt, the group (paper: 8)."""
    temperature: float = 1.0
    """Sampling temperature; also divides both models' logits for the log-probs and the step KL."""
    top_p: float = 1.0
    """Nucleus sampling for the rollouts."""
    loss_type: str = "dapo"
    """Aggregation of the surrogate (and the extra term): grpo, dapo or dr_grpo (TRL's names)."""
    epsilon: float = 0.2
    """Clip range of the importance ratio (lower; also upper unless epsilon_high is set)."""
    epsilon_high: float | None = None
    """Upper clip range (default: epsilon)."""
    advantage: str = "sequence"
    """``sequence`` (default): each row's summed reward -> group advantages; ``process``: per-token
    rewards normalised over the group's counted tokens, advantage = reward-to-go (see cmdp.py for
    the measurement behind the default)."""
    gamma: float = 1.0
    """Discount of the reward-to-go (paper: 1)."""
    teacher_prob_floor: float = 1e-6
    """Mass floor/V given to every token of the teacher's distribution in the step KL, so it
    stays finite (Appendix A's probability floor); 0 disables."""
    bootstrap_steps: int = 0
    """First N optimizer steps are KL distillation alone for every method (Appendix D.4): the
    exact gradient of the mean per-token KL(pi_theta || mu) on the student's own rollouts
    (on-policy GKD with beta = 1), no task reward, no policy-gradient term."""
    kl_reward: str = "sampled"
    """How a KL *reward* (gkd_rl, gkd_grpo) estimates -C_t: ``sampled``, the
    log-ratio of the sampled token log mu(a_t) - log pi(a_t) (unbiased, and its score function
    carries the direct gradient of the KL); ``full``, minus the full-vocabulary C_t, a state-only
    reward whose policy gradient misses the direct term (measured: the KL *rose*)."""
    loss_chunk_size: int = 0
    """>0: step KL and log-probs from hidden states this many tokens at a time (real vocabularies)."""

    def validate(self):
        if self.loss_type not in losses.LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {losses.LOSS_TYPES}, got {self.loss_type!r}")
        if self.advantage not in ("process", "sequence"):
            raise ValueError(f"advantage must be process or sequence, got {self.advantage!r}")
        if self.num_generations < 2:
            raise ValueError("num_generations must be >= 2 for group advantages")
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")
        if not 0.0 <= self.teacher_prob_floor < 1.0:
            raise ValueError(f"teacher_prob_floor must be in [0, 1), got {self.teacher_prob_floor}")
        if self.kl_reward not in ("sampled", "full"):
            raise ValueError(f"kl_reward must be sampled or full, got {self.kl_reward!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


def prepare(ctx, examples: list[dict]) -> dict:
    """Roll out num_generations answers per prompt with the current student and grade them."""
    cfg = ctx.cfg
    roll = generate(ctx.policy, ctx.tokenizer, ctx.prompt_ids([e["question"] for e in examples]),
                    num_generations=cfg.num_generations, max_new_tokens=cfg.max_completion_length,
                    temperature=cfg.temperature, top_p=cfg.top_p, generator=ctx.generator)
    answers = [examples[i]["answer"] for i in roll.group_index.tolist()]
    task = torch.tensor(accuracy_reward(roll.texts(ctx.tokenizer), answer=answers), dtype=torch.float32)  # (N,)
    return {"batch": roll, "task_reward": task, "num_tokens": int(roll.completion_mask.sum()),
            "num_rows": len(roll)}


def at_last_token(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N,) per-answer values -> (N, C): the value at each row's last counted token, 0 elsewhere
    (the sparse task reward of Appendix D.2)."""
    m = mask.bool()  # (N, C)
    pos = torch.arange(m.shape[1], device=m.device).expand_as(m)  # (N, C)
    last = torch.where(m, pos, -1).max(-1, keepdim=True).values  # (N, 1)
    return torch.where((pos == last) & m, values.to(torch.float32).reshape(-1, 1).to(m.device), 0.0)


def kl_reward(cfg, out: dict, mask: torch.Tensor) -> torch.Tensor:
    """(N, C) per-token estimate of -C_t (see ``kl_reward`` in the config), 0 at padding."""
    r = out["teacher_logp"] - out["logp"] if cfg.kl_reward == "sampled" else -out["step_kl"]
    return torch.where(mask.bool(), r, 0.0)


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, cfg, totals: dict) -> torch.Tensor:
    """Sum ``per_token`` (N, C) over counted tokens, normalised exactly like the surrogate of
    ``loss_type`` with the step's global totals (so accumulation does not change it)."""
    m = mask.to(per_token.dtype)
    if cfg.loss_type == "grpo":  # mean over each row's tokens, then over the step's rows
        return losses.masked_mean(per_token, m, -1).sum() / totals["rows"]
    return losses.masked_sum(per_token, m) / normalizer(cfg, totals)


def advantages(cfg, rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, C) per-token rewards -> (N, C) process advantages or (N,) sequence advantages."""
    if cfg.advantage == "process":
        return losses.process_advantages(rewards, mask, cfg.num_generations, gamma=cfg.gamma)
    row = losses.masked_sum(rewards, mask, -1)  # (N,) the row's summed reward
    return losses.group_advantages(row, cfg.num_generations, scale="group")


def rl_loss(ctx, micro: dict, totals: dict, token_rewards, extra_loss=None, advantage_fn=None):
    """The shared loss: ``token_rewards(ctx, micro, out, mask) -> (rewards (N, C), metrics)``
    with ``out`` = ``ctx.policy_and_teacher(...)`` detached; ``extra_loss(ctx, micro, out, mask,
    totals) -> (loss, metrics)`` differentiable (``out`` with grad); ``advantage_fn(cfg, rewards,
    mask)`` replaces ``advantages`` (minillm)."""
    cfg = ctx.cfg
    batch = micro["batch"].to(ctx.device)
    mask = batch.completion_mask
    out = ctx.policy_and_teacher(batch, temperature=cfg.temperature, teacher_floor=cfg.teacher_prob_floor)
    det = {k: v.detach() for k, v in out.items()}
    m = mask.bool()
    bootstrap = ctx.step < cfg.bootstrap_steps
    if bootstrap:  # KL distillation alone, the same for every method: the exact on-policy reverse KL
        total, metrics, stats = aggregate(out["step_kl"], mask, cfg, totals), {}, {}
        rewards = kl_reward(cfg, det, mask)  # for the logged reward only
    else:
        rewards, metrics = token_rewards(ctx, micro, det, mask)
        adv = (advantage_fn or advantages)(cfg, rewards, mask)
        logp = out["logp"]
        total, stats = losses.policy_gradient_loss(
            logp, logp.detach(), adv, mask, loss_type=cfg.loss_type, epsilon_low=cfg.epsilon,
            epsilon_high=cfg.epsilon_high if cfg.epsilon_high is not None else cfg.epsilon,
            normalizer=normalizer(cfg, totals), max_completion_length=cfg.max_completion_length)
        if extra_loss is not None:
            extra, extra_metrics = extra_loss(ctx, micro, out, mask, totals)
            total = total + extra
            metrics |= extra_metrics
    with torch.no_grad():
        kl, fm = det["step_kl"], m.float()
        row_kl = losses.masked_mean(kl, fm, -1)  # (N,) the eval's per-answer KL
        task = micro["task_reward"]
        metrics |= {"reward/task_mean": task.mean().item(),
                    "reward/token_sum_mean": losses.masked_sum(rewards, fm, -1).mean().item(),
                    "kl/step_mean": losses.masked_mean(kl, fm).item(),
                    "kl/row_mean": row_kl.mean().item(),
                    "bootstrap": float(bootstrap),
                    "completions/mean_length": fm.sum(1).mean().item(),
                    "completions/truncated_share": batch.truncated.float().mean().item(),
                    **{f"pg/{k}": v for k, v in stats.items()}}
        budget = getattr(cfg, "budget", None)
        if budget is not None and getattr(cfg, "budget_mode", "length_normalized") == "length_normalized":
            metrics["kl/feasible_share"] = (row_kl <= budget).float().mean().item()  # CS of the samples
    return total, metrics


def required_fields(cfg) -> tuple[str, ...]:
    return ("question", "answer")
