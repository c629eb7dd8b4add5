"""GRPO: group-relative policy optimisation (Shao et al. 2024) with TRL's knobs.

Per optimizer step each prompt is answered ``num_generations`` times by the current student;
every answer gets a scalar reward from ``rewards.py`` (1 if the boxed answer is correct;
``format_weight`` optionally adds the format reward); advantages are the rewards minus their
group mean, divided by the group std (``scale_rewards=group``), the batch std (``batch``) or
nothing (``none``, Dr. GRPO). The clipped surrogate with ratio exp(logp - logp_old) is
aggregated by ``loss_type``: ``grpo`` (per-sequence token mean, then mean over sequences),
``dapo`` (sum over all tokens / all tokens of the step) or ``dr_grpo`` (sum / (rows x
max_completion_length)). ``beta > 0`` adds the k3 estimator of KL(student || reference) with the
reference being the initial student. One policy update per generation batch, so logp_old is
the detached current log-prob (the ratio is 1 in value but carries the gradient), exactly as
TRL does with ``num_iterations=1``. The sampling temperature also divides the logits in the
loss. Rows whose completion is cut at ``max_completion_length`` keep their reward (logged as
``completions/truncated_share``).

    reasondistill train grpo num_generations=8 learning_rate=5e-5 loss_type=dapo
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from .. import losses
from ..config import TrainConfig
from ..rewards import accuracy_reward, format_reward
from ..rollout import generate

NEEDS_TEACHER = False


@dataclass
class Config(TrainConfig):
    teacher: str | None = None
    """Unused by GRPO."""
    learning_rate: float = 1e-6
    """Peak learning rate (TRL's GRPO default, for real models); the embedded task takes 5e-5 to
    1e-4 and collapses above that."""
    per_device_train_batch_size: int = 8
    """Prompts per micro-batch (each answered num_generations times)."""
    num_generations: int = 8
    """Answers sampled per prompt (the group)."""
    temperature: float = 1.0
    """Sampling temperature, also applied to the logits in the loss."""
    top_p: float = 1.0
    """Nucleus sampling."""
    loss_type: str = "dapo"
    """grpo, dapo or dr_grpo (TRL's names and semantics)."""
    scale_rewards: str = "group"
    """Advantage scaling: group, batch or none."""
    epsilon: float = 0.2
    """Lower clip range of the importance ratio."""
    epsilon_high: float | None = None
    """Upper clip range (default: epsilon; DAPO uses 0.28)."""
    beta: float = 0.0
    """Weight of the k3 KL to the initial student (0: no reference model is kept)."""
    format_weight: float = 0.0
    """Weight of the format reward added to the correctness reward."""

    def validate(self):
        if self.loss_type not in ("grpo", "dapo", "dr_grpo"):
            raise ValueError(f"loss_type must be grpo, dapo or dr_grpo, got {self.loss_type!r}")
        if self.scale_rewards not in ("group", "batch", "none"):
            raise ValueError(f"scale_rewards must be group, batch or none, got {self.scale_rewards!r}")
        if self.num_generations < 2:
            raise ValueError("num_generations must be >= 2 for group advantages")


def setup(ctx) -> None:
    if ctx.cfg.beta > 0:
        ref = copy.deepcopy(ctx.policy).eval().requires_grad_(False)
        ctx.extras["ref"] = ref.to(ctx.device)  # setup runs before accelerate moves the student


def sample_and_score(ctx, examples: list[dict]):
    """Roll out ``num_generations`` answers per prompt and score them: (rollout, rewards (N,), texts)."""
    cfg = ctx.cfg
    roll = generate(ctx.policy, ctx.tokenizer, ctx.prompt_ids([e["question"] for e in examples]), num_generations=cfg.num_generations,
                    max_new_tokens=cfg.max_completion_length, temperature=cfg.temperature, top_p=cfg.top_p,
                    generator=ctx.generator)
    texts = roll.texts(ctx.tokenizer)
    answers = [examples[i]["answer"] for i in roll.group_index.tolist()]
    reward = torch.tensor(accuracy_reward(texts, answer=answers), dtype=torch.float32)
    if cfg.format_weight:
        reward = reward + cfg.format_weight * torch.tensor([format_reward(t) for t in texts])
    return roll, reward, texts


def prepare(ctx, examples: list[dict]) -> dict:
    cfg = ctx.cfg
    roll, reward, _ = sample_and_score(ctx, examples)
    # "batch" scaling needs the std over the whole optimizer step: finalize_step applies it
    scale = "none" if cfg.scale_rewards == "batch" else cfg.scale_rewards
    adv = losses.group_advantages(reward, cfg.num_generations, scale=scale)  # (N,)
    return {"batch": roll, "advantages": adv, "rewards": reward,
            "num_tokens": int(roll.completion_mask.sum()), "num_rows": roll.completion_ids.shape[0]}


def finalize_step(ctx, micros: list[dict]) -> None:
    """``scale_rewards=batch``: divide by the reward std of the whole step (every micro-batch and
    process, as TRL does over its generation batch), so accumulation does not change it."""
    if ctx.cfg.scale_rewards != "batch":
        return
    rewards = torch.cat([m["rewards"] for m in micros]).to(ctx.device)
    if ctx.accelerator.num_processes > 1:
        rewards = ctx.accelerator.gather(rewards)
    std = rewards.std() if rewards.numel() > 1 else rewards.new_zeros(())
    for m in micros:
        m["advantages"] = m["advantages"] / (std.cpu() + 1e-4)


def normalizer(cfg, totals: dict) -> float:
    if cfg.loss_type == "dapo":
        return totals["tokens"]
    if cfg.loss_type == "grpo":
        return totals["rows"]
    return totals["rows"] * cfg.max_completion_length


def loss(ctx, micro: dict, totals: dict):
    cfg = ctx.cfg
    from ..rollout import forward_logits

    batch = micro["batch"].to(ctx.device)
    logits = forward_logits(ctx.model, batch)  # (N, C, V)
    logp = losses.sampled_token_logprobs(logits, batch.completion_ids, temperature=cfg.temperature)  # (N, C)
    ref_logp = None
    if cfg.beta > 0:
        with torch.no_grad():
            ref_logp = losses.sampled_token_logprobs(forward_logits(ctx.extras["ref"], batch), batch.completion_ids,
                                                     temperature=cfg.temperature)
    pg, stats = losses.policy_gradient_loss(
        logp, logp.detach(), micro["advantages"].to(ctx.device), batch.completion_mask, loss_type=cfg.loss_type,
        epsilon_low=cfg.epsilon, epsilon_high=cfg.epsilon_high if cfg.epsilon_high is not None else cfg.epsilon,
        ref_logprobs=ref_logp, beta=cfg.beta, normalizer=normalizer(cfg, totals),
        max_completion_length=cfg.max_completion_length)
    r = micro["rewards"]
    metrics = {"reward/mean": r.mean().item(), "reward/std": r.std().item() if r.numel() > 1 else 0.0,
               "completions/mean_length": batch.completion_mask.sum(1).float().mean().item(),
               "completions/truncated_share": batch.truncated.float().mean().item(),
               **{f"grpo/{k}": v for k, v in stats.items()}}
    return pg, metrics


def required_fields(cfg) -> tuple[str, ...]:
    return ("question", "answer")
