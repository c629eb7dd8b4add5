"""The shared on-policy RL stack: ``grpo``, and the RL distillation methods of
constrained_mdp_distillation.md §4.1 (``cmdp``, ``gkd_rl``, ``gkd_grpo`` whose ``lmbda=0`` is
GRPO, ``minillm``).

Not a method itself. The paper re-implements every baseline "under the same GRPO framework ...
the batch size and its composition is the same"; here that framework is this file, and a
method is only a per-token *reward builder* (plus, for cmdp and minillm, one differentiable
extra term). Per generation batch, identically for every method:

1. ``prepare`` (no grad): ``per_device_train_batch_size`` prompts, each answered
   ``num_generations`` times by the current student; every answer graded (1 if the boxed
   answer is correct, else 0; Appendix D.2; plus ``format_weight`` x the format reward), or with
   ``reward=hybrid`` by the pipeline paper's hybrid reward (local check, Box 5 judge when undecided).
2. ``rl_loss``: one student forward (with grad) and, for a method with a teacher, one teacher
   forward (no grad) through ``ctx.signals`` give at every generated token the sampled token's
   log-prob and the step cost C_t = KL(pi_theta(.|s_t) || mu(.|s_t)) over the shared
   vocabulary (eq. 7), the teacher floored at ``teacher_prob_floor`` (Appendix A). Both at the
   sampling ``temperature`` (FIELD_NOTES: one temperature for sampling and loss; at the
   default 1.0 this is exactly the KL that ``reasondistill eval --teacher`` reports).
3. The method's ``token_rewards`` turns (task reward, detached C_t, ...) into r_t ``(N, C)``;
   for the first ``bootstrap_steps`` steps every method is replaced by KL distillation alone,
   the exact on-policy reverse-KL loss (Appendix D.4: "to bootstrap all methods, we apply KL
   distillation alone ... (even with GRPO lambda = 0)"). A KL used as a *reward* is by default the
   sampled-token log-ratio log mu(a_t) - log pi(a_t) (``kl_reward``): the full-vocabulary C_t
   depends on the state only, so its score-function gradient misses the direct dependence of
   the KL on theta (the term that CMDP adds explicitly as term (II)); with it, gkd_rl's KL
   rose instead of falling on the embedded task.
4. Advantages: ``sequence`` (default; each row's summed reward through
   ``losses.group_advantages`` with ``scale_rewards``, broadcast over its tokens) or
   ``process`` (rewards normalised over all counted tokens of the group, then reward-to-go
   with ``gamma``: ``losses.process_advantages``).
5. The clipped surrogate (``losses.policy_gradient_loss``) with the optional k3 KL to the
   initial student (``beta``), aggregated by ``loss_type``, plus the method's extra term
   aggregated the same way (``aggregate``), with the global normaliser of the optimizer step.

``num_iterations`` (the engine) reuses a generation batch for several optimizer steps. The
rewards, advantages and the sampling policy's log-probs are computed on the first update,
when the parameters are still the sampling policy's, and kept in ``micro.extras``; so the
first update has ratio exactly 1 and later ones clip with ``epsilon`` / ``epsilon_high``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch

from .. import losses
from ..config import ConfigError, TrainConfig
from ..api.answer_judge import AnswerJudge
from ..rewards import accuracy_reward, format_reward, hybrid_rewards
from ..rollout import generate
from .base import Max, Micro


@dataclass
class OnPolicyConfig(TrainConfig):
    REWARD_NEEDS_TEACHER: ClassVar[bool] = True
    """Whether the method's reward reads the teacher's forward (so it exists only inside the loss)."""

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
    """Aggregation of the surrogate (and the extra term): grpo, dapo or dr_grpo (TRL's names), or
    group_tokens (each group's token sum over its counted tokens, then the mean over groups: eq. 4
    of the TGPO paper)."""
    epsilon: float = 0.2
    """Clip range of the importance ratio (lower; also upper unless epsilon_high is set)."""
    epsilon_high: float | None = None
    """Upper clip range (default: epsilon; DAPO's clip-higher uses 0.28)."""
    scale_rewards: str = "group"
    """Sequence advantages: divide by the group's reward std (group), the whole step's (batch,
    only for rewards known before the loss: grpo) or not at all (none, Dr. GRPO)."""
    beta: float = 0.0
    """Weight of the k3 KL to the initial student, the model as training started (0: no reference kept)."""
    reward: str = "accuracy"
    """The task reward of ``prepare``: ``accuracy`` (default): correctness_weight x (1 if the
    boxed answer is correct) + format_weight x ``rewards.format_reward`` (one boxed answer after
    the reasoning); ``hybrid``: the pipeline paper's reward (sft_then_grpo_api_teachers.md §3.4,
    ``rewards.hybrid_rewards``): correctness by the local rules, the Box 5 judge
    (``judge_base_url`` / ``judge_model``) asked only when they cannot decide, plus
    format_weight x the ``<think>`` / ``<answer>`` tag score 1.0 / 0.5 / 0.0 (paper: 0.8 and 0.2)."""
    correctness_weight: float = 1.0
    """Weight of the correctness reward (the paper's hybrid reward: 0.8)."""
    format_weight: float = 0.0
    """Weight of the format reward added to the correctness reward (the paper's hybrid reward: 0.2)."""
    tag_format_mode: str = "pair"
    """reward=hybrid: a tag counts as present when its pair ``<think>...</think>`` is (``pair``) or
    when either of its tags is (``any``); the paper's "includes the tag" reads both ways."""
    judge_base_url: str | None = None
    """reward=hybrid: the Box 5 judge's OpenAI-compatible API root (none: undecided answers score 0)."""
    judge_model: str | None = None
    """reward=hybrid: the judge's model id (the paper: Gemini 2.5 Pro)."""
    judge_template: str | None = None
    """reward=hybrid: a judge prompt file with {question}, {ref}, {pred_ans} (default: Box 5,
    templates/pipeline_answer_judge.txt)."""
    judge_api_key_env: str | None = "OPENAI_API_KEY"
    """reward=hybrid: environment variable holding the judge's key (never logged)."""
    judge_concurrency: int = 4
    """reward=hybrid: judge requests in flight at most (one batch per generation batch)."""
    judge_rpm: float | None = None
    """reward=hybrid: at most this many judge requests per minute."""
    judge_tpm: float | None = None
    """reward=hybrid: at most this many judge tokens per minute."""
    judge_timeout: float = 120.0
    """reward=hybrid: seconds per judge attempt."""
    judge_max_retries: int = 3
    """reward=hybrid: retries per judge request (the openai SDK's backoff)."""
    judge_cache: str | None = "judge_cache.jsonl"
    """reward=hybrid: verdict cache by content, a JSONL file (relative: inside output_dir), so a
    resumed run never pays twice; none: in memory only."""
    advantage: str = "sequence"
    """``sequence`` (default): each row's summed reward -> group advantages; ``process``: per-token
    rewards normalised over the group's counted tokens, advantage = reward-to-go (see cmdp.py for
    the measurement behind the default); ``token``: each token's reward is its advantage, no
    group normalisation and no reward-to-go (op_distill: the per-token log-ratio)."""
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

    def validate(self):
        choices = {"loss_type": losses.LOSS_TYPES, "advantage": ("process", "sequence", "token"),
                   "kl_reward": ("sampled", "full"), "scale_rewards": ("group", "batch", "none")}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ConfigError(f"{name} must be one of {', '.join(valid)}, got {getattr(self, name)!r}")
        if self.num_generations < 2:
            raise ConfigError("num_generations must be >= 2 for group advantages")
        if not 0.0 < self.gamma <= 1.0:
            raise ConfigError(f"gamma must be in (0, 1], got {self.gamma}")
        if not 0.0 <= self.teacher_prob_floor < 1.0:
            raise ConfigError(f"teacher_prob_floor must be in [0, 1), got {self.teacher_prob_floor}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if self.beta < 0:
            raise ConfigError(f"beta must be >= 0, got {self.beta}")
        if self.reward not in ("accuracy", "hybrid"):
            raise ConfigError(f"reward must be accuracy or hybrid, got {self.reward!r}")
        if self.tag_format_mode not in ("pair", "any"):
            raise ConfigError(f"tag_format_mode must be pair or any, got {self.tag_format_mode!r}")
        if bool(self.judge_base_url) != bool(self.judge_model):
            raise ConfigError("judge_base_url and judge_model go together (reward=hybrid's Box 5 judge)")
        if self.bootstrap_steps % self.num_iterations:
            raise ConfigError(f"bootstrap_steps={self.bootstrap_steps} must be a multiple of num_iterations="
                              f"{self.num_iterations}: the first policy-gradient update of a generation batch "
                              f"records the sampling policy's log-probs")
        if self.scale_rewards == "batch" and self.REWARD_NEEDS_TEACHER:
            raise ConfigError("scale_rewards=batch needs every reward of the step before the first loss; this "
                              "method's reward comes from the teacher forward inside the loss: use group or none")


def prepare(ctx, examples: list[dict]) -> Micro:
    """Roll out num_generations answers per prompt with the current student and grade them."""
    cfg = ctx.cfg
    roll = generate(ctx.policy, ctx.tokenizer, ctx.prompt_ids([e["question"] for e in examples]),
                    num_generations=cfg.num_generations, max_new_tokens=cfg.max_completion_length,
                    temperature=cfg.temperature, top_p=cfg.top_p, generator=ctx.generator)
    texts = roll.texts(ctx.tokenizer)
    rows = [examples[i] for i in roll.group_index.tolist()]
    answers = [r["answer"] for r in rows]
    if cfg.reward == "hybrid":  # the judge sees the problem itself, not the prompt around it ("problem" when given)
        scores, parts = hybrid_rewards(texts, answers, [r.get("problem") or r["question"] for r in rows],
                                       answer_judge(ctx), correctness_weight=cfg.correctness_weight,
                                       format_weight=cfg.format_weight, format_mode=cfg.tag_format_mode)
        return Micro.of(roll, task_reward=torch.tensor(scores, dtype=torch.float32), reward_parts=parts)
    task = cfg.correctness_weight * torch.tensor(accuracy_reward(texts, answer=answers), dtype=torch.float32)  # (N,)
    if cfg.format_weight:
        task = task + cfg.format_weight * torch.tensor([format_reward(t) for t in texts], dtype=torch.float32)
    return Micro.of(roll, task_reward=task)


def answer_judge(ctx):
    """reward=hybrid: the run's one Box 5 judge (``api.answer_judge.AnswerJudge``), made on first use, or
    None without ``judge_base_url``."""
    cfg = ctx.cfg
    if not cfg.judge_base_url:
        return None
    if "answer_judge" not in ctx.extras:
        from pathlib import Path

        from ..models import resolve_prompt_template

        cache = cfg.judge_cache
        if cache and not Path(cache).is_absolute():
            cache = str(Path(cfg.output_dir) / cache)
        template = resolve_prompt_template(cfg.judge_template) if cfg.judge_template else None
        ctx.extras["answer_judge"] = AnswerJudge(
            cfg.judge_base_url, cfg.judge_model, template=template, api_key_env=cfg.judge_api_key_env,
            concurrency=cfg.judge_concurrency, rpm=cfg.judge_rpm, tpm=cfg.judge_tpm, timeout=cfg.judge_timeout,
            max_retries=cfg.judge_max_retries, cache_path=cache if ctx.accelerator.is_main_process or not cache
            else f"{cache}.{ctx.accelerator.process_index}")
    return ctx.extras["answer_judge"]


def finalize_step(ctx, micros: list[Micro]) -> None:
    """``scale_rewards=batch``: the reward std of the whole step (every micro-batch and process,
    as TRL's over its generation batch), so accumulation does not change the advantages."""
    if ctx.cfg.scale_rewards != "batch":
        return
    rewards = torch.cat([m.extras["task_reward"] for m in micros]).to(ctx.device)
    if ctx.accelerator.num_processes > 1:
        rewards = ctx.accelerator.gather(rewards)
    std = rewards.std() if rewards.numel() > 1 else rewards.new_zeros(())
    for m in micros:
        m.extras["reward_std"] = std.cpu()


def setup(ctx) -> None:
    """``beta > 0``: keep the student as training started as the KL reference. With LoRA no copy
    is needed: the loaded model (an adapter folder loads merged) with the adapter switched off
    *is* that model, never the bare base model under an SFT adapter (TRL #3194)."""
    if ctx.cfg.beta > 0 and not ctx.cfg.use_peft:
        ref = copy.deepcopy(ctx.policy).eval().requires_grad_(False)
        ctx.extras["ref"] = ref.to(ctx.device)  # setup runs before accelerate moves the student


def reference_logp(ctx, batch) -> torch.Tensor:
    """(N, C) log-probs of the completion tokens under the KL reference (no grad)."""
    with torch.no_grad():
        if not ctx.cfg.use_peft:
            return ctx.signals(batch, temperature=ctx.cfg.temperature, student=ctx.extras["ref"]).student_logp()
        policy, was_training = ctx.policy, ctx.policy.training
        policy.eval()
        try:
            with policy.disable_adapter():
                return ctx.signals(batch, temperature=ctx.cfg.temperature, student=policy).student_logp()
        finally:
            policy.train(was_training)


def required_fields(cfg) -> tuple[str, ...]:
    return ("question", "answer")


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


def normalizer(cfg, totals: dict):
    return losses.loss_normalizer(cfg.loss_type, totals["tokens"], totals["rows"], cfg.max_completion_length,
                                  cfg.num_generations)


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, cfg, totals: dict) -> torch.Tensor:
    """Sum ``per_token`` (N, C) over counted tokens, normalised exactly like the surrogate of
    ``loss_type`` with the step's global totals (so accumulation does not change it)."""
    return losses.aggregate_loss(per_token, mask, cfg.loss_type, normalizer(cfg, totals), cfg.num_generations)


def advantages(cfg, rewards: torch.Tensor, mask: torch.Tensor, reward_std=None) -> torch.Tensor:
    """(N, C) per-token rewards -> (N, C) process or token advantages, or (N,) sequence advantages."""
    if cfg.advantage == "token":
        return torch.where(mask.bool(), rewards, 0.0)
    if cfg.advantage == "process":
        return losses.process_advantages(rewards, mask, cfg.num_generations, gamma=cfg.gamma)
    row = losses.masked_sum(rewards, mask, -1)  # (N,) the row's summed reward
    if cfg.scale_rewards == "batch":
        return losses.group_advantages(row, cfg.num_generations, scale="none") / (reward_std.to(row) + 1e-4)
    return losses.group_advantages(row, cfg.num_generations, scale=cfg.scale_rewards)


def rl_loss(ctx, micro: Micro, totals: dict, token_rewards, extra_loss=None, advantage_fn=None,
            extra_signals=None):
    """The shared loss: ``token_rewards(ctx, micro, out, mask) -> (rewards (N, C), metrics)``
    with ``out`` = {logp, and with a teacher step_kl, teacher_logp} detached; ``extra_loss(ctx,
    micro, out, mask, totals) -> (loss, metrics)`` differentiable (``out`` with grad);
    ``advantage_fn(cfg, rewards, mask)`` replaces ``advantages`` (minillm); ``extra_signals(pass)
    -> dict`` adds (N, C) quantities of the same ``signals.TokenPass`` to ``out`` (TGPO's
    log-prob of the teacher's argmax)."""
    cfg = ctx.cfg
    batch = micro.batch.to(ctx.device)
    mask = batch.completion_mask
    p = ctx.signals(batch, temperature=cfg.temperature, teacher_floor=cfg.teacher_prob_floor)
    out = {"teacher_logp": p.teacher_logp()} if ctx.teacher is not None else {}  # (N, C); the teacher runs first
    out["logp"] = p.student_logp()  # (N, C) with grad
    if ctx.teacher is not None:
        out["step_kl"] = p.divergence("reverse_kl")  # (N, C) with grad
    if extra_signals is not None:
        out |= extra_signals(p)
    det = {k: v.detach() for k, v in out.items()}
    fm = mask.float()
    bootstrap = ctx.step < cfg.bootstrap_steps
    if bootstrap:  # KL distillation alone, the same for every method: the exact on-policy reverse KL
        total, metrics, stats = aggregate(out["step_kl"], mask, cfg, totals), {}, {}
        rewards = kl_reward(cfg, det, mask)  # for the logged reward only
    else:
        if "advantages" not in micro.extras:  # first update on this generation batch: the sampling policy
            rewards, metrics = token_rewards(ctx, micro, det, mask)
            adv = advantage_fn(cfg, rewards, mask) if advantage_fn else advantages(
                cfg, rewards, mask, micro.extras.get("reward_std"))
            micro.extras |= {"advantages": adv, "rewards": rewards, "reward_metrics": metrics}
        micro.extras.setdefault("old_logp", det["logp"])  # the parameters are still the sampling policy's
        rewards = micro.extras.get("rewards")  # absent when prepare gave the advantages itself
        metrics = dict(micro.extras.get("reward_metrics", {}))
        ref_logp = reference_logp(ctx, batch) if cfg.beta > 0 else None
        total, stats = losses.policy_gradient_loss(
            out["logp"], micro.extras["old_logp"], micro.extras["advantages"], mask, loss_type=cfg.loss_type,
            epsilon_low=cfg.epsilon, epsilon_high=cfg.epsilon_high if cfg.epsilon_high is not None else cfg.epsilon,
            ref_logprobs=ref_logp, beta=cfg.beta, normalizer=normalizer(cfg, totals),
            max_completion_length=cfg.max_completion_length, group_size=cfg.num_generations)
        if extra_loss is not None:
            extra, extra_metrics = extra_loss(ctx, micro, out, mask, totals)
            total = total + extra
            metrics |= extra_metrics
    with torch.no_grad():
        task, n_tok = micro.extras["task_reward"], fm.sum().item()
        metrics |= {"reward/task_mean": task.mean().item(),
                    "reward/task_std": task.std().item() if task.numel() > 1 else 0.0,
                    "bootstrap": float(bootstrap),
                    "completions/mean_length": fm.sum(1).mean().item(),
                    "completions/max_length": Max(fm.sum(1).max().item()),
                    "policy/entropy": (losses.masked_sum(p.student_entropy(), fm).item(), n_tok),
                    "completions/truncated_share": batch.truncated.float().mean().item(),
                    # shares of the step's counted tokens, exact under accumulation and several processes
                    **{f"pg/{k}": (v * n_tok, n_tok) for k, v in stats.items()}}
        if rewards is not None:
            metrics["reward/token_sum_mean"] = losses.masked_sum(rewards, fm, -1).mean().item()
        if "step_kl" in det:
            metrics |= {"kl/step_mean": losses.masked_mean(det["step_kl"], fm).item(),
                        "kl/row_mean": losses.masked_mean(det["step_kl"], fm, -1).mean().item()}
    return total, metrics
