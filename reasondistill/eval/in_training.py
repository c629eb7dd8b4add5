"""Evaluation during training (``eval_steps``): the numbers ``metric_for_best_model`` picks from.

- ``eval/accuracy``: greedy answers to the records' questions, graded like the training reward
  (``rewards.accuracy_reward``), over the records that have an ``answer``; with
  ``eval/truncated_share``, the share of those answers cut at ``max_completion_length`` (a
  length blow-up shows there before the accuracy falls);
- ``eval/loss`` and ``eval/token_accuracy``: teacher-forced on the records' ``solution``
  (mean NLL per completion token, and the share of completion tokens that are the student's
  argmax), over the records that have one: what an SFT run keeps its best checkpoint by.

Every process evaluates its own stride of the records and the sums are reduced, so several
processes agree on the best checkpoint.
"""

from __future__ import annotations

import torch

from .. import losses
from ..rewards import accuracy_reward
from ..rollout import encode_pairs

EVAL_BATCH = 64


def evaluate_in_training(ctx, records: list[dict]) -> dict:
    from .base import generate_batches

    cfg, acc = ctx.cfg, ctx.accelerator
    mine = records[acc.process_index::acc.num_processes]
    correct = graded = cut = nll = tokens = hits = 0.0
    was_training = ctx.model.training
    ctx.model.eval()
    with torch.no_grad():
        with_answer = [r for r in mine if r.get("answer") not in (None, "")]
        for chunk, roll, texts in generate_batches(ctx.policy, ctx.tokenizer, with_answer,
                                                lambda r: ctx.render([r["question"]])[0],
                                                max_new_tokens=cfg.max_completion_length, batch_size=EVAL_BATCH):
            correct += sum(accuracy_reward(texts, answer=[r["answer"] for r in chunk]))
            graded += len(chunk)
            cut += float(roll.truncated.sum())
        with_solution = [r for r in mine if r.get("solution") not in (None, "")]
        for a in range(0, len(with_solution), EVAL_BATCH):
            chunk = with_solution[a:a + EVAL_BATCH]
            batch = encode_pairs(ctx.tokenizer, ctx.render([r["question"] for r in chunk]),
                                 [r["solution"] for r in chunk], cfg.max_prompt_length,
                                 cfg.max_completion_length).to(ctx.device)
            p = ctx.signals(batch, student=ctx.policy)  # the unwrapped student, no teacher
            mask = batch.completion_mask
            nll -= float(losses.masked_sum(p.student_logp(), mask))
            hits += float(losses.masked_sum((p.student_argmax() == batch.completion_ids).float(), mask))
            tokens += float(mask.sum())
    ctx.model.train(was_training)
    if acc.num_processes > 1:
        sums = acc.reduce(torch.tensor([correct, graded, cut, nll, tokens, hits], dtype=torch.float64,
                                       device=acc.device), reduction="sum")
        correct, graded, cut, nll, tokens, hits = sums.tolist()
    out = {}
    if graded:
        out |= {"eval/accuracy": correct / graded, "eval/truncated_share": cut / graded}
    if tokens:
        out |= {"eval/loss": nll / tokens, "eval/token_accuracy": hits / tokens}
    return out


def improved(cfg, metrics: dict, best: dict | None) -> bool:
    """Whether ``metrics`` beat the best evaluation so far by ``metric_for_best_model``."""
    name = cfg.metric_for_best_model
    if name not in metrics:
        raise ValueError(f"metric_for_best_model={name!r} was not computed (the evaluation gave "
                         f"{sorted(metrics) or 'nothing'}): does the eval set have answers / solutions?")
    if best is None:
        return True
    greater = cfg.greater_is_better if cfg.greater_is_better is not None else not name.endswith("loss")
    return metrics[name] > best["value"] if greater else metrics[name] < best["value"]
