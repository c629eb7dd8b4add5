"""Math evaluation: accuracy of the boxed answer, and divergence from a teacher.

- Greedy decoding gives pass@1; ``samples=k`` draws k answers per question at ``temperature``
  and reports avg@k (mean accuracy over all answers) and pass@k (any answer correct).
- With a teacher, every answer gets the mean per-token KL(student || teacher) over the
  student's *own* generated tokens (full shared vocabulary, temperature 1), and the summary
  reports its mean, standard deviation and the constraint-satisfaction rate: the share of
  answers whose mean per-token KL is at most ``kl_budget`` (constrained_mdp_distillation.md §4.1,
  where d = 0.35).

``evaluate`` is what the CLI, the demo and the comparison reports call.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from ..models import render_prompt
from ..rewards import extract_answer, is_correct
from ..rollout import generate
from ..signals import mean_kl_per_row


def _kl_per_row(model, teacher, roll, shared_vocab: int | None, max_logit_elems: int = 2**26) -> torch.Tensor:
    """(N,) mean per-token KL(student || teacher) over each row's generated tokens, in float32
    (``signals.mean_kl_per_row``), a few rows at a time so that a real vocabulary (151,936)
    never needs [N, C, V] logits."""
    C = max(1, roll.completion_ids.shape[1])
    V = model.get_output_embeddings().weight.shape[0]
    rows = max(1, max_logit_elems // (C * V))
    return torch.cat([mean_kl_per_row(model, teacher, roll.select(slice(a, a + rows)), shared_vocab).cpu()
                      for a in range(0, len(roll), rows)])


def eval_records(benchmark: str, data_dir: str | None = None, limit: int | None = None, seed: int = 0) -> list[dict]:
    """The records of a benchmark by name: ``arith`` (the embedded task's held-out split, ``limit``
    problems, default 400, drawn with ``seed``) or one of ``data.benchmarks.BENCHMARKS``."""
    if benchmark == "arith":
        from ..tasks import arith

        return arith.generate("test", limit or 400, seed=seed)
    from ..data.benchmarks import load_benchmark

    return load_benchmark(benchmark, data_dir, limit=limit)


def chat_messages(question: str, system: str | None = None) -> list[dict]:
    """The conversation of one question: an optional system message and the user's."""
    return ([{"role": "system", "content": system}] if system is not None else []) + \
        [{"role": "user", "content": question}]


def _render(tokenizer, prompt) -> str:
    """A local model's prompt text: a conversation through the chat template (``render_prompt``),
    a string as it is (already rendered, or a raw continuation)."""
    if isinstance(prompt, str):
        return prompt
    system = next((m["content"] for m in prompt if m["role"] == "system"), None)
    return render_prompt(tokenizer, next(m["content"] for m in prompt if m["role"] == "user"), system=system)


def generate_batches(model, tokenizer, records: list, make_prompt, *, samples: int = 1, temperature: float = 0.0,
                     top_p: float = 1.0, max_new_tokens: int = 64, batch_size: int = 64, seed: int = 0,
                     progress: bool = False, desc: str = "eval"):
    """Yield ``(chunk, roll, texts)`` for consecutive batches of ``records``, every evaluation's
    sampling loop: prompts from ``make_prompt(record)`` (a conversation from ``chat_messages``, or
    an already rendered string), ``samples`` answers each, one generator seeded with ``seed`` for
    the whole run; greedy unless ``samples > 1`` or ``temperature > 0`` (several samples at
    temperature 0 are drawn at 1.0). ``model`` may be an ``eval.api_model.APIModel``: then the
    conversations go to the endpoint and ``roll`` is an ``APIBatch`` (``lengths``, ``truncated``,
    ``group_index``, ``errors``)."""
    from .api_model import APIModel

    if samples < 1:
        raise ValueError("samples must be >= 1")
    do_sample = samples > 1 or temperature > 0
    if samples > 1 and temperature <= 0:
        temperature = 1.0
    gen = torch.Generator().manual_seed(seed)
    batches = range(0, len(records), batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=desc, unit="batch")
    for start in batches:
        chunk = records[start: start + batch_size]
        prompts = [make_prompt(r) for r in chunk]
        if isinstance(model, APIModel):
            if any(isinstance(p, str) for p in prompts):
                raise ValueError("an API model answers conversations, not raw prompts (code: use --chat)")
            texts, batch = model.generate(prompts, samples=samples, temperature=temperature if do_sample else 0.0,
                                          top_p=top_p, max_new_tokens=max_new_tokens, seed=seed + start)
            yield chunk, batch, texts
            continue
        roll = generate(model, tokenizer, [_render(tokenizer, p) for p in prompts], num_generations=samples,
                        max_new_tokens=max_new_tokens, temperature=temperature if do_sample else 1.0, top_p=top_p,
                        do_sample=do_sample, generator=gen)
        yield chunk, roll, roll.texts(tokenizer)


def length_stats(rows: list[dict], wall: float | None = None) -> dict:
    """``mean_tokens`` and ``truncated_share`` over the rows that carry ``num_tokens``, and
    ``wall_seconds``: the tail every evaluation summary shares."""
    out: dict = {}
    tok = [r["num_tokens"] for r in rows if "num_tokens" in r]
    if tok:
        out["mean_tokens"] = sum(tok) / len(tok)
        out["truncated_share"] = sum(bool(r.get("truncated")) for r in rows) / len(tok)
    if wall is not None:
        out["wall_seconds"] = wall
    return out


def evaluate(model, tokenizer, records: list[dict], *, samples: int = 1, temperature: float = 0.0,
             top_p: float = 1.0, max_new_tokens: int = 64, batch_size: int = 64, teacher=None,
             kl_budget: float | None = 0.35, shared_vocab: int | None = None, seed: int = 0,
             system: str | None = None, progress: bool = False,
             question_template: str | None = None) -> tuple[list[dict], dict]:
    """Evaluate ``model`` on ``records`` (dicts with id, question, answer); returns (rows, summary).
    ``question_template`` (with ``{question}``) wraps each question into the user message (e.g. the
    pipeline paper's Box 6 prompt, ``eval.selection.PIPELINE_BOX6``)."""
    if question_template is not None and "{question}" not in question_template:
        raise ValueError("question_template must contain {question}")

    def user(q: str) -> str:
        return q if question_template is None else question_template.replace("{question}", q)

    from .api_model import APIModel

    if teacher is not None and isinstance(model, APIModel):
        raise ValueError("the KL to a teacher needs the answers' token ids: evaluate a local model for it")

    rows: list[dict] = []
    t0 = time.time()
    for chunk, roll, texts in generate_batches(
            model, tokenizer, records, lambda r: chat_messages(user(r["question"]), system),
            samples=samples, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
            batch_size=batch_size, seed=seed, progress=progress):
        kls = _kl_per_row(model, teacher, roll, shared_vocab).tolist() if teacher is not None else None
        lengths = roll.lengths.tolist()
        for j, text in enumerate(texts):
            rec = chunk[roll.group_index[j].item()]
            row = {"id": rec.get("id"), "sample": j % samples, "question": rec["question"], "gold": rec["answer"],
                   "output": text, "extracted": extract_answer(text), "correct": bool(is_correct(text, rec["answer"])),
                   "num_tokens": int(lengths[j]), "truncated": bool(roll.truncated[j])}
            if getattr(roll, "errors", None) and roll.errors[j]:
                row["api_error"] = roll.errors[j]
            if kls is not None:
                row["kl"] = kls[j]
            rows.append(row)
    return rows, summarize(rows, samples, kl_budget, wall=time.time() - t0)


def summarize(rows: list[dict], samples: int = 1, kl_budget: float | None = 0.35, wall: float | None = None) -> dict:
    n_q = len({r["id"] for r in rows}) if rows else 0
    acc = sum(r["correct"] for r in rows) / max(1, len(rows))
    out = {"num_questions": n_q, "samples": samples, "accuracy": acc,
           "mean_tokens": sum(r["num_tokens"] for r in rows) / max(1, len(rows)),
           "truncated_share": sum(r["truncated"] for r in rows) / max(1, len(rows))}
    if samples > 1:
        by_q: dict = {}
        for r in rows:
            by_q.setdefault(r["id"], []).append(r["correct"])
        out["avg@k"] = acc
        out["pass@k"] = sum(any(v) for v in by_q.values()) / max(1, len(by_q))
    else:
        out["pass@1"] = acc
    kls = [r["kl"] for r in rows if "kl" in r]
    if kls:
        mean = sum(kls) / len(kls)
        out["kl_mean"] = mean
        out["kl_std"] = math.sqrt(sum((k - mean) ** 2 for k in kls) / max(1, len(kls) - 1)) if len(kls) > 1 else 0.0
        if kl_budget is not None:
            out["kl_budget"] = kl_budget
            out["constraint_satisfaction"] = sum(k <= kl_budget for k in kls) / len(kls)
    failures = sum(1 for r in rows if r.get("api_error"))
    if failures:  # requests that failed after their retries: graded wrong, counted here
        out["api_failures"] = failures
    if wall is not None:
        out["wall_seconds"] = wall
    return out


def write_results(out_dir: str | Path, rows: list[dict], summary: dict, prefix: str = "eval") -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    per = out / f"{prefix}_examples.jsonl"
    with per.open("w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    summ = out / f"{prefix}_summary.json"
    summ.write_text(json.dumps(summary, indent=2) + "\n")
    return per, summ
