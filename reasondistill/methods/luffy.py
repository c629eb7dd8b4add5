"""LUFFY baseline of teacher_guided_policy_optimization.md §4 (Yan et al. 2025, "learning to
reason under off-policy guidance"): mixed-policy GRPO, on the shared on-policy stack.

Each group holds ``num_generations - 1`` of the student's own answers and one verified teacher
trace of the same question (the last row of the group), read from ``traces``, a file written
by ``reasondistill teacher-traces`` (the same file is the SFT baseline's dataset). All rows are
graded by the verifier and the group-standardised advantages are computed over the whole mixed
group, as in LUFFY. The objective, aggregated over every token of the group (``group_tokens``):

- the student's rows: the usual clipped surrogate ratio x A against the sampling policy;
- the teacher's row: no clipping and the policy-shaping transform f(x) = x / (x + gamma),
  gamma = ``shaping_gamma`` (0.1), of the off-policy ratio x = pi_theta(a_t) / pi_phi(a_t),
  times A (LUFFY eq. 6). f flattens the gradient of tokens the student already finds likely and
  boosts the low-probability ones.

pi_phi is ambiguous: LUFFY's paper writes the ratio against the behaviour policy, while its
code sets pi_phi = 1 because the traces come without log-probs. ``off_policy_ratio`` offers
both: ``teacher`` (default, what the TGPO issue asks: the teacher's own log-prob of the trace's
tokens, from the same teacher forward as every method, floored by ``teacher_prob_floor``) and
``one`` (LUFFY's code: x = pi_theta). The traces are re-encoded from their text with the
student's tokenizer, which is what the student would have to write.

The reward logged (``reward/task_mean``) includes the teacher rows, which are correct by
construction: the paper notes LUFFY's training reward is inflated this way.
``luffy/student_reward`` is the student rows' alone.

    reasondistill teacher-traces --teacher embedded:teacher-cross --dataset arith:size=2000 --output traces.jsonl
    reasondistill train luffy traces=traces.jsonl dataset=traces.jsonl teacher=embedded:teacher-cross
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import losses
from ..config import ConfigError
from ..rewards import accuracy_reward
from ..rollout import Rollout, encode_pairs, generate
from .base import Micro
from .onpolicy import OnPolicyConfig, advantages, aggregate, finalize_step, rl_loss, setup  # noqa: F401
from .tgpo import token_rewards


@dataclass
class Config(OnPolicyConfig):
    traces: str | None = None
    """JSONL of verified teacher traces (``reasondistill teacher-traces``): question, answer,
    solution. Training questions without a trace are refused before the first step."""
    loss_type: str = "group_tokens"
    """The same aggregation as TGPO (eq. 4), over on- and off-policy tokens alike."""
    shaping_gamma: float = 0.1
    """gamma of the policy-shaping transform x / (x + gamma) (LUFFY's 0.1)."""
    off_policy_ratio: str = "teacher"
    """pi_phi of the off-policy ratio: ``teacher`` (the teacher's log-prob of the trace) or
    ``one`` (LUFFY's code: the student's probability itself)."""

    def validate(self):
        super().validate()
        if not self.traces:
            raise ConfigError("luffy needs traces=FILE.jsonl (write it with `reasondistill teacher-traces`)")
        if self.off_policy_ratio not in ("teacher", "one"):
            raise ConfigError(f"off_policy_ratio must be teacher or one, got {self.off_policy_ratio!r}")
        if self.shaping_gamma <= 0:
            raise ConfigError(f"shaping_gamma must be > 0, got {self.shaping_gamma}")
        if self.advantage != "sequence":
            raise ConfigError("luffy uses sequence advantages over the mixed group: advantage must be sequence")


def required_fields(cfg) -> tuple[str, ...]:
    return ("question", "answer")


def _traces(ctx) -> dict[str, str]:
    if "traces" not in ctx.extras:
        from ..data.benchmarks import load_jsonl

        rows = load_jsonl(ctx.cfg.traces, "question", "answer", extras={"solution": "solution"})
        ctx.extras["traces"] = {r["question"]: r["solution"] for r in rows if r.get("solution")}
    return ctx.extras["traces"]


def prepare(ctx, examples: list[dict]) -> Micro:
    """G - 1 student answers and the teacher's trace per prompt, the trace last in its group."""
    cfg, G = ctx.cfg, ctx.cfg.num_generations
    traces = _traces(ctx)
    missing = [e["question"] for e in examples if e["question"] not in traces]
    if missing:
        raise ConfigError(f"luffy: no teacher trace in {cfg.traces} for the training question {missing[0]!r}; "
                          f"train on the traces file itself (dataset={cfg.traces})")
    prompts = ctx.render([e["question"] for e in examples])
    own = generate(ctx.policy, ctx.tokenizer, ctx.prompt_ids([e["question"] for e in examples]),
                   num_generations=G - 1, max_new_tokens=cfg.max_completion_length, temperature=cfg.temperature,
                   top_p=cfg.top_p, generator=ctx.generator)
    off = encode_pairs(ctx.tokenizer, prompts, [traces[e["question"]] for e in examples], cfg.max_prompt_length,
                       cfg.max_completion_length)
    parts = []
    for i in range(len(examples)):
        parts += [own.select(slice(i * (G - 1), (i + 1) * (G - 1))), off.select([i])]
    batch = Rollout.cat(parts)
    batch.group_index = torch.arange(len(examples)).repeat_interleave(G)
    batch.num_generations, batch.temperature = G, own.temperature
    is_off = torch.zeros(len(examples), G, dtype=torch.bool)
    is_off[:, -1] = True
    texts = batch.texts(ctx.tokenizer)
    task = torch.tensor(accuracy_reward(texts, answer=[examples[i]["answer"] for i in batch.group_index.tolist()]),
                        dtype=torch.float32)
    return Micro.of(batch, task_reward=task, off_policy=is_off.reshape(-1))


def mixed_advantages(cfg, micro, rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Group advantages over the mixed group; the clipped surrogate gets the student rows' only
    (the teacher rows' go to ``off_policy_term`` through ``micro.extras``)."""
    a = advantages(cfg, rewards, mask, micro.extras.get("reward_std"))  # (N,)
    micro.extras["mixed_advantages"] = a
    return torch.where(micro.extras["off_policy"].to(a.device), 0.0, a)


def off_policy_term(ctx, micro, out: dict, mask: torch.Tensor, totals: dict):
    """-f(pi_theta / pi_phi) x A on the teacher rows' tokens, no clipping, aggregated like the surrogate."""
    cfg = ctx.cfg
    off = micro.extras["off_policy"].to(mask.device)  # (N,)
    a = micro.extras["mixed_advantages"].to(out["logp"])  # (N,)
    ref = out["teacher_logp"].detach() if cfg.off_policy_ratio == "teacher" else torch.zeros_like(out["logp"])
    x = torch.exp(torch.where(mask.bool(), out["logp"] - ref, 0.0))  # (N, C) off-policy ratio
    shaped = x / (x + cfg.shaping_gamma)
    per_token = torch.where(off.unsqueeze(-1) & mask.bool(), -shaped * a.unsqueeze(-1), 0.0)
    with torch.no_grad():
        m_off = (off.unsqueeze(-1) & mask.bool()).float()
        task = micro.extras["task_reward"]
        metrics = {"luffy/shaping_mean": (losses.masked_sum(shaped.detach(), m_off).item(), m_off.sum().item()),
                   "luffy/student_reward": (task[~micro.extras["off_policy"]].sum().item(),
                                            float((~micro.extras["off_policy"]).sum())),
                   "luffy/teacher_reward": (task[micro.extras["off_policy"]].sum().item(),
                                            float(micro.extras["off_policy"].sum()))}
    return aggregate(per_token, mask, cfg, totals), metrics


def loss(ctx, micro, totals: dict):
    return rl_loss(ctx, micro, totals, token_rewards, extra_loss=off_policy_term,
                   advantage_fn=lambda cfg, r, mask: mixed_advantages(cfg, micro, r, mask))
