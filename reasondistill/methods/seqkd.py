"""SeqKD (Kim & Rush 2016): ``sft`` on the prepared teacher rollouts, the VCRD paper's SeqKD baseline.

The completion-only cross-entropy of ``methods/sft.py`` (same loss, same normalisation) where
the completion of each prompt is the teacher rollout y^T of the offline stage
(``reasondistill prepare``; ``rollouts=`` or, empty, prepared into the run directory first, as
``vcrd`` does), read as token ids, so SeqKD, DistiLLM-2 and VCRD train on the same teacher
responses. The teacher is loaded (it is needed to prepare and to check the file's identity)
but never run by the loss.

    reasondistill train seqkd rollouts=runs/vcrd/rollouts.jsonl
"""

from __future__ import annotations

from dataclasses import dataclass

from . import sft, vcrd
from .base import Micro


@dataclass
class Config(sft.Config):
    teacher: str | None = "embedded:teacher"
    """The teacher whose prepared rollouts are the completions."""
    rollouts: str | None = None
    """Prepared rollouts (``reasondistill prepare``); empty: prepare into output_dir/rollouts.jsonl first."""
    rollout_temperature: float = 1.0
    """Sampling temperature of the prepared rollouts (0 = greedy); part of the file's identity."""


def setup(ctx) -> None:
    ctx.extras["rollouts"] = vcrd.ensure_rollouts(ctx)


def prepare(ctx, examples: list[dict]) -> Micro:
    from ..data.rollouts import rollout_from_ids

    tok = ctx.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids, truncated = vcrd._cached(ctx, examples, "teacher")
    return Micro.of(rollout_from_ids(ctx.prompt_ids([e["question"] for e in examples]), ids, truncated, pad))


loss = sft.loss


def required_fields(cfg) -> tuple[str, ...]:
    return ("question",)
