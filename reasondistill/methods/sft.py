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
from ..config import ConfigError, TrainConfig
from ..rollout import encode_pairs
from .base import Micro


@dataclass
class Config(TrainConfig):
    teacher: str | None = None
    """Unused by SFT (no teacher is loaded)."""
    completion_field: str = "solution"
    """Record field used as the completion (a teacher trace for SeqKD)."""

    def validate(self):
        if self.max_completion_length < 2:
            raise ConfigError("max_completion_length must be >= 2 (room for a token and EOS)")


def prepare(ctx, examples: list[dict]) -> Micro:
    cfg = ctx.cfg
    batch = encode_pairs(ctx.tokenizer, ctx.render([e["question"] for e in examples]),
                         [e[cfg.completion_field] for e in examples], cfg.max_prompt_length,
                         cfg.max_completion_length)
    return Micro.of(batch)


def loss(ctx, micro, totals: dict):
    batch = micro.batch.to(ctx.device)
    p = ctx.signals(batch)
    mask = batch.completion_mask
    nll = -losses.masked_sum(p.student_logp(), mask) / totals["tokens"]  # (B, C) summed
    with torch.no_grad():
        acc = losses.masked_mean((p.student_argmax() == batch.completion_ids).float(), mask)
    return nll, {"sft/token_accuracy": acc.item()}


def required_fields(cfg) -> tuple[str, ...]:
    return ("question", cfg.completion_field)
