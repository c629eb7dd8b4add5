"""One entry point for the evaluations beyond math, shared by ``reasondistill eval --task`` and
``reasondistill compare``: load a task's records by benchmark name or file, run the task's
evaluation, and return (rows, summary) with ``task`` and ``benchmark`` in the summary.

- ``code``: HumanEval-style pass@1 / pass@k by execution (``eval/code_eval.py``;
  validity_calibrated_distillation.md §10.3, greedy by default);
- ``choice``: multiple choice with seeded option shuffling (``eval/choice_eval.py``;
  teacher_guided_policy_optimization.md §4);
- ``instruct``: win rate against reference answers by a pairwise judge in both orders
  (``eval/instruct_eval.py``; §10.3 and §10.3.1, sampling at temperature 0.8, top-p 0.95).

Default sampling per task: greedy (temperature 0, top-p 1) except ``instruct`` (the paper's
0.8 / 0.95); an explicit ``temperature`` / ``top_p`` overrides it.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..data.benchmarks import DataError

__all__ = ["CHOICE_BENCHMARKS", "TASKS", "load_choice_records", "load_task_records", "run_task"]

TASKS = ("math", "code", "choice", "instruct")
CHOICE_BENCHMARKS = {"mmlu": "mmlu"}
"""Multiple-choice benchmark name -> folder (or file) relative to the data directory."""


def load_choice_records(source: str | os.PathLike, data_dir: str | os.PathLike | None = None,
                        limit: int | None = None) -> list[dict]:
    """A multiple-choice file, a folder of them, or a benchmark name: ``mmlu`` (the data
    directory's ``mmlu/`` when it is there), or any choice benchmark of the Hub table
    (``data.hub.DATA``: mmlu, mmlu_pro, arc_challenge, gpqa_diamond, sat_math), read from its
    Hugging Face Hub dataset when the data directory does not hold it.

    ``limit`` caps the total, spread over the files round-robin (file 1's first question,
    file 2's first, ..., then the second of each), so a small limit still covers every subject
    (from the Hub: over the subjects, the same way).
    """
    from ..data import hub
    from .choice_eval import load_choice_file

    name = str(source)
    if not os.path.exists(name) and not os.path.splitext(name)[1] and "/" not in name and os.sep not in name:
        located = hub.locate(name, "choice", CHOICE_BENCHMARKS, data_dir, kind="multiple-choice benchmark",
                             path_hint=", or a .csv/.jsonl file or a folder of them")
        if located.where != "local":
            return hub.load_located(name, located, limit)
        path = located.path
    else:
        path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".csv", ".jsonl"))
        if not files:
            raise DataError(f"no .csv or .jsonl files in {path}")
    elif path.is_file():
        files = [path]
    else:
        raise DataError(f"multiple-choice data {path} not found (a .csv/.jsonl file, a folder of them, "
                        f"or one of: {', '.join(sorted(set(CHOICE_BENCHMARKS) | set(hub.hub_names('choice'))))})")
    per_file = None if limit is None else -(-limit // len(files))
    lists = [load_choice_file(f, limit=per_file) for f in files]
    out = [recs[k] for k in range(max(map(len, lists))) for recs in lists if k < len(recs)]
    return out if limit is None else out[:limit]


def load_task_records(task: str, source: str | os.PathLike, data_dir: str | os.PathLike | None = None,
                      limit: int | None = None) -> list[dict]:
    """Records of ``task`` (code, choice or instruct) from a benchmark name or a file."""
    if task == "code":
        from .code_eval import load_code_benchmark

        return load_code_benchmark(source, data_dir, limit=limit)
    if task == "choice":
        return load_choice_records(source, data_dir, limit=limit)
    if task == "instruct":
        from .instruct_eval import load_instruct_benchmark

        return load_instruct_benchmark(source, data_dir, limit=limit)
    raise ValueError(f"unknown task {task!r} here; valid: code, choice, instruct (math has eval/math_eval.py)")


def run_task(task: str, model, tokenizer, records: list[dict], *, benchmark: str | None = None, judge=None,
             template: str | None = None, samples: int = 1, temperature: float | None = None,
             top_p: float | None = None, max_new_tokens: int = 512, batch_size: int = 16, workers: int = 2,
             timeout: float = 10.0, seed: int = 0, shuffle: bool = True, chat: bool = False,
             system: str | None = None, progress: bool = False, scoring: str = "generate",
             loglik_target: str = "letter") -> tuple[list[dict], dict]:
    """Evaluate ``model`` on ``records`` for ``task``; the summary gains ``task`` and ``benchmark``.

    ``judge`` (instruct only) is a judge of ``eval/pairwise.py`` (see
    ``instruct_eval.make_instruct_judge``); ``workers`` / ``timeout`` bound the code sandbox
    (programs at a time, seconds per program); ``chat`` renders code prompts as a chat
    instruction instead of a raw continuation.
    """
    if task == "instruct":
        from .instruct_eval import PAPER_SAMPLING, evaluate_instruct

        if judge is None:
            raise ValueError("the instruct task needs a judge (an endpoint URL or a local model)")
        rows, summary = evaluate_instruct(
            model, tokenizer, records, judge, template=template,
            temperature=PAPER_SAMPLING["temperature"] if temperature is None else temperature,
            top_p=PAPER_SAMPLING["top_p"] if top_p is None else top_p, max_new_tokens=max_new_tokens,
            batch_size=batch_size, seed=seed, system=system, progress=progress)
    elif task == "code":
        from .code_eval import evaluate_code

        rows, summary = evaluate_code(model, tokenizer, records, samples=samples, temperature=temperature or 0.0,
                                      top_p=top_p or 1.0, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                      workers=workers, timeout=timeout, seed=seed, chat=chat, system=system,
                                      progress=progress)
    elif task == "choice":
        from .choice_eval import evaluate_choice

        rows, summary = evaluate_choice(model, tokenizer, records, seed=seed, shuffle=shuffle,
                                        max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress,
                                        system=system, temperature=temperature or 0.0, top_p=top_p or 1.0,
                                        scoring=scoring, loglik_target=loglik_target)
    else:
        raise ValueError(f"unknown task {task!r} here; valid: code, choice, instruct (math has eval/math_eval.py)")
    summary = {"task": task, "benchmark": benchmark, **summary}
    return rows, summary
