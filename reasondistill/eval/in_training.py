"""Evaluation during training (``eval_steps``): the numbers ``metric_for_best_model`` picks from.

- ``eval/accuracy``: greedy answers to the records' questions, graded like the training reward
  (``rewards.accuracy_reward``), over the records that have an ``answer``;
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
from ..rollout import encode_pairs, generate

EVAL_BATCH = 64


def evaluate_in_training(ctx, records: list[dict]) -> dict:
    from ..signals import TokenPass

    cfg, acc = ctx.cfg, ctx.accelerator
    mine = records[acc.process_index::acc.num_processes]
    correct = graded = nll = tokens = hits = 0.0
    was_training = ctx.model.training
    ctx.model.eval()
    with torch.no_grad():
        for a in range(0, len(mine), EVAL_BATCH):
            chunk = mine[a:a + EVAL_BATCH]
            with_answer = [r for r in chunk if r.get("answer") not in (None, "")]
            if with_answer:
                roll = generate(ctx.policy, ctx.tokenizer, ctx.prompt_ids([r["question"] for r in with_answer]),
                                max_new_tokens=cfg.max_completion_length, do_sample=False)
                correct += sum(accuracy_reward(roll.texts(ctx.tokenizer), answer=[r["answer"] for r in with_answer]))
                graded += len(with_answer)
            with_solution = [r for r in chunk if r.get("solution") not in (None, "")]
            if with_solution:
                batch = encode_pairs(ctx.tokenizer, ctx.render([r["question"] for r in with_solution]),
                                     [r["solution"] for r in with_solution], cfg.max_prompt_length,
                                     cfg.max_completion_length).to(ctx.device)
                p = TokenPass(batch, student=ctx.policy, chunk_size=cfg.loss_chunk_size, device=ctx.device)
                mask = batch.completion_mask
                nll -= float(losses.masked_sum(p.student_logp(), mask))
                hits += float(losses.masked_sum((p.student_argmax() == batch.completion_ids).float(), mask))
                tokens += float(mask.sum())
    ctx.model.train(was_training)
    if acc.num_processes > 1:
        sums = acc.reduce(torch.tensor([correct, graded, nll, tokens, hits], dtype=torch.float64, device=acc.device),
                          reduction="sum")
        correct, graded, nll, tokens, hits = sums.tolist()
    out = {}
    if graded:
        out["eval/accuracy"] = correct / graded
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
