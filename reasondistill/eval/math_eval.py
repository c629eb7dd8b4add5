"""Math evaluation: accuracy of the final answer, and divergence from a teacher (the ``math``
task of ``eval/base.py``).

- Greedy decoding gives pass@1; ``samples=k`` draws k answers per question at ``temperature``
  and reports avg@k (mean accuracy over all answers) and pass@k (any answer correct).
- The answer is read by ``rewards.extract_answer`` (the last ``\\boxed{}``, the text after
  ``####``, or inside ``<answer>...</answer>``) and checked by ``rewards.is_correct``.
- With a teacher, every answer gets the mean per-token KL(student || teacher) over the
  student's *own* generated tokens (full shared vocabulary, temperature 1), and the summary
  reports its mean, standard deviation and the constraint-satisfaction rate: the share of
  answers whose mean per-token KL is at most ``kl_budget`` (constrained_mdp_distillation.md §4.1,
  where d = 0.35).

:class:`MathTask` is the task, :class:`MathEvalConfig` its settings (``reasondistill eval math``);
``evaluate`` runs the task on given records (what the demo and ``task build`` call).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from ..errors import ConfigError
from ..rewards import extract_answer, is_correct
from .base import (EvalConfig, Task, chat_messages, evaluate_task, generate_batches,  # noqa: F401 (re-exported)
                   length_stats, write_results)


def _kl_per_row(model, teacher, roll, shared_vocab: int | None, max_logit_elems: int = 2**26) -> torch.Tensor:
    """(N,) mean per-token KL(student || teacher) over each row's generated tokens, in float32
    (``signals.mean_kl_per_row``), a few rows at a time so that a real vocabulary (151,936)
    never needs [N, C, V] logits."""
    C = max(1, roll.completion_ids.shape[1])
    V = model.get_output_embeddings().weight.shape[0]
    rows = max(1, max_logit_elems // (C * V))
    import torch

    from ..signals import mean_kl_per_row

    return torch.cat([mean_kl_per_row(model, teacher, roll.select(slice(a, a + rows)), shared_vocab).cpu()
                      for a in range(0, len(roll), rows)])


class MathTask(Task):
    """Questions with a final answer (``id``, ``question``, ``answer``); rows ``id``, ``sample``,
    ``question``, ``gold``, ``output``, ``extracted``, ``correct`` (+ ``kl`` with a teacher).
    ``question_template`` (with ``{question}``) wraps each question into the user message (e.g.
    the pipeline paper's Box 6 prompt, ``eval.selection.PIPELINE_BOX6``)."""

    name = "math"
    prefix = "eval"

    def __init__(self, *, teacher=None, kl_budget: float | None = 0.35, shared_vocab: int | None = None,
                 system: str | None = None, question_template: str | None = None):
        if question_template is not None and "{question}" not in question_template:
            raise ValueError("question_template must contain {question}")
        self.teacher, self.kl_budget, self.shared_vocab = teacher, kl_budget, shared_vocab
        self.system, self.question_template = system, question_template

    @classmethod
    def load(cls, source, data_dir=None, first=None, *, question_field=None, answer_field=None, **_):
        """A benchmark of ``data.benchmarks.BENCHMARKS`` by name, or a JSONL file with the given
        field names (``arith``, which is generated rather than read, is ``base.load_records``'s)."""
        from ..data.benchmarks import load_benchmark, load_jsonl

        if question_field or answer_field:
            if not (question_field and answer_field):
                raise ConfigError("a math data file needs question_field and answer_field")
            return load_jsonl(source, question_field, answer_field, limit=first)
        return load_benchmark(source, data_dir, limit=first)

    def check(self, model) -> None:
        from .api_model import APIModel

        if self.teacher is not None and isinstance(model, APIModel):
            raise ValueError("the KL to a teacher needs the answers' token ids: evaluate a local model for it")

    def prompt(self, record):
        q = record["question"]
        return chat_messages(q if self.question_template is None else self.question_template.replace("{question}", q),
                             self.system)

    def batch_fields(self, model, batch):
        if self.teacher is None:
            return None
        return [{"kl": v} for v in _kl_per_row(model, self.teacher, batch, self.shared_vocab).tolist()]

    def score(self, record, output, sample):
        return {"id": record.get("id"), "sample": sample, "question": record["question"], "gold": record["answer"],
                "output": output, "extracted": extract_answer(output), "correct": bool(is_correct(output,
                                                                                                  record["answer"]))}

    def summarize(self, rows, samples):
        return summarize(rows, samples, self.kl_budget)


@dataclass
class MathEvalConfig(EvalConfig):
    """``reasondistill eval math``: final-answer accuracy (pass@1, avg@k / pass@k), with a teacher
    the KL and constraint satisfaction."""

    task: ClassVar[str] = "math"
    task_class: ClassVar[type[Task]] = MathTask

    question_field: str | None = None
    """With data: the question field (comma-separated fields are joined)."""
    answer_field: str | None = None
    """With data: the final-answer field."""
    question_template: str | None = None
    """The user message, with {question} (the pipeline preset uses the paper's Box 6)."""
    samples: int | None = None
    """k answers per question: avg@k and pass@k (default 1)."""
    teacher: str | None = None
    """Report per-example KL(student||teacher) on the student's own answers, and CS."""
    kl_budget: float = 0.35
    """d of constraint satisfaction (the share of answers with mean per-token KL <= d)."""
    tokenizer_compat: str = "strict"
    """With teacher: strict, or shared_ids (a teacher with the same ids but another template / EOS)."""

    def validate(self) -> None:
        super().validate()
        if self.data and not (self.question_field and self.answer_field):
            raise ConfigError("eval math with data needs question_field and answer_field (--question-field, "
                              "--answer-field)")
        if self.benchmark and (self.question_field or self.answer_field):
            raise ConfigError("question_field / answer_field are for data files; a benchmark has its own")
        if self.tokenizer_compat not in ("strict", "shared_ids"):
            raise ConfigError(f"tokenizer_compat must be strict or shared_ids, got {self.tokenizer_compat!r}")
        if self.question_template is not None and "{question}" not in self.question_template:
            raise ConfigError("question_template must contain {question}")

    def load_options(self) -> dict:
        return {"question_field": self.question_field, "answer_field": self.answer_field} if self.data else {}

    def make_task(self, model, tokenizer, *, teacher=None, shared_vocab: int | None = None) -> MathTask:
        """With ``teacher`` (a model object) given, it is used as it is (``shared_vocab`` too);
        else ``self.teacher`` is loaded and its tokenizer checked against ``tokenizer``."""
        if teacher is None and self.teacher:
            from ..models import assert_compatible, load_model, load_tokenizer, resolve_model
            from .api_model import APIModel
            from .base import resolved_device

            if isinstance(model, APIModel):
                raise ValueError("the KL to a teacher needs the answers' token ids: evaluate a local model for it")
            path = resolve_model(self.teacher)
            teacher = load_model(path, dtype=self.dtype, device=resolved_device(self.device))
            shared_vocab = assert_compatible(tokenizer, load_tokenizer(path), model.get_input_embeddings().weight.shape[0],
                                             teacher.get_input_embeddings().weight.shape[0],
                                             mode=self.tokenizer_compat).shared_vocab
        return MathTask(teacher=teacher, kl_budget=self.kl_budget, shared_vocab=shared_vocab, system=self.system,
                        question_template=self.question_template)

    def summary_extras(self) -> dict:
        return {"teacher": self.teacher, "question_template": self.question_template}


def evaluate(model, tokenizer, records: list[dict], *, samples: int = 1, temperature: float = 0.0,
             top_p: float = 1.0, max_new_tokens: int = 64, batch_size: int = 64, teacher=None,
             kl_budget: float | None = 0.35, shared_vocab: int | None = None, seed: int = 0,
             system: str | None = None, progress: bool = False,
             question_template: str | None = None) -> tuple[list[dict], dict]:
    """Evaluate ``model`` on ``records`` (dicts with id, question, answer): :class:`MathTask` on
    the loop of ``eval/base.py``; returns (rows, summary)."""
    task = MathTask(teacher=teacher, kl_budget=kl_budget, shared_vocab=shared_vocab, system=system,
                    question_template=question_template)
    return evaluate_task(task, model, tokenizer, records, samples=samples, temperature=temperature, top_p=top_p,
                         max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, progress=progress)


def summarize(rows: list[dict], samples: int = 1, kl_budget: float | None = 0.35, wall: float | None = None) -> dict:
    """Accuracy (pass@1, or avg@k and pass@k), the KL statistics and CS at ``kl_budget`` when the
    rows carry ``kl``, and the shared tail (``length_stats``)."""
    n_q = len({r["id"] for r in rows}) if rows else 0
    acc = sum(r["correct"] for r in rows) / max(1, len(rows))
    out = {"num_questions": n_q, "samples": samples, "accuracy": acc}
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
    out.update(length_stats(rows, wall))
    return out
