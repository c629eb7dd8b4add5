"""SFT: completion-only cross-entropy on (prompt, worked solution) pairs.

When the completions are teacher traces this is sequence-level KD (SeqKD, Kim & Rush 2016),
the "SFT on teacher traces" baseline of every paper here. The loss is the summed token
negative log-likelihood of the completion (prompt tokens are never counted) divided by the
number of completion tokens of the whole optimizer step (all micro-batches, all processes),
so gradient accumulation does not change it.

    reasondistill train sft dataset=arith max_steps=300 learning_rate=1e-3
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import losses
from ..config import TrainConfig
from ..engine import encode_pairs

NEEDS_TEACHER = False


@dataclass
class Config(TrainConfig):
    teacher: str | None = None
    """Unused by SFT."""
    completion_field: str = "solution"
    """Record field used as the completion (a teacher trace for SeqKD)."""

    def validate(self):
        if self.max_completion_length < 2:
            raise ValueError("max_completion_length must be >= 2 (room for a token and EOS)")


def prepare(ctx, examples: list[dict]) -> dict:
    cfg = ctx.cfg
    batch = encode_pairs(ctx.tokenizer, ctx.render([e["question"] for e in examples]),
                         [e[cfg.completion_field] for e in examples], cfg.max_prompt_length,
                         cfg.max_completion_length)
    return {"batch": batch, "num_tokens": int(batch.completion_mask.sum()), "num_rows": len(examples)}


def loss(ctx, micro: dict, totals: dict):
    batch = micro["batch"].to(ctx.device)
    logits = ctx.student_logits(batch)  # (B, C, V)
    logp = losses.sampled_token_logprobs(logits, batch.completion_ids)  # (B, C)
    mask = batch.completion_mask.to(logp.dtype)
    nll = -(logp * mask).sum() / totals["tokens"]
    with torch.no_grad():
        acc = ((logits.argmax(-1) == batch.completion_ids).float() * mask).sum() / mask.sum().clamp(min=1)
    return nll, {"sft/token_accuracy": acc.item()}


def required_fields(cfg) -> tuple[str, ...]:
    return ("question", cfg.completion_field)
