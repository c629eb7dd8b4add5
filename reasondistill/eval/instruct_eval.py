"""Instruction following: win rate against reference answers, judged pairwise in both orders.

Protocol (validity_calibrated_distillation.md §10.3, "Instruction following", and the judge
prompt of §10.3.1): the model answers every instruction with temperature 0.8, top-p 0.95 and at
most 512 new tokens; a judge model then compares each answer with the benchmark's reference
answer (AlpacaEval: the text-davinci-003 outputs) using the paper's pairwise prompt, and must
end with ``[[A]]``, ``[[B]]`` or ``[[C]]`` (tie). "To mitigate position bias" every pair is
judged in both orders (the model's answer as Response A, then as Response B) and the win rates
of the two orders are averaged.

Scoring (from the model's side): a win counts 1, a tie 0.5, a loss 0. For each order the win
rate is the mean score over that order's *parseable* verdicts; ``win_rate`` is the mean of the
two orders' rates (one order alone when the other has no parseable verdict; None when neither
has). A verdict that cannot be parsed, or a judge call that failed (HTTP error after the
client's retries, a prompt longer than the judge's context, a judge that raised), is never
fatal: it is counted in ``unparseable_verdicts`` (failed calls also in ``failed_judge_calls``)
and left out of the rates.

Pieces
------
- :func:`load_instruct_benchmark`: ``alpaca_eval`` (``instruct/alpaca_eval.jsonl`` of the data
  directory) or any JSONL with an instruction and a reference answer per line.
- :func:`generate_answers`: the model's answers, chat-rendered by ``models.render_prompt`` and
  sampled by ``rollout.generate``.
- :func:`judge_answers`: both orders through a judge of ``eval/pairwise.py`` (an
  OpenAI-compatible endpoint or a local Hugging Face model; see :func:`make_instruct_judge`),
  with the template ``templates/instruct_pairwise.txt`` (placeholders ``{question}``,
  ``{answer_a}``, ``{answer_b}``), sent as one user message.
- :func:`summarize_instruct`: the accounting above.
- :class:`InstructTask`: the ``instruct`` task of ``eval/base.py`` (answers on the shared loop,
  judged once all are written; :class:`InstructEvalConfig`, its settings: ``reasondistill eval
  instruct``); :func:`evaluate_instruct` runs it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar

from ..data.benchmarks import iter_json_objects, require_fields
from ..errors import ConfigError
from .base import EvalConfig, Task, chat_messages, evaluate_task, length_stats
from .pairwise import FIRST_SCORE, fill, load_template, make_judge, parse_verdict

__all__ = [
    "INSTRUCT_BENCHMARKS",
    "InstructEvalConfig",
    "InstructTask",
    "PAPER_SAMPLING",
    "evaluate_instruct",
    "generate_answers",
    "judge_answers",
    "load_instruct_benchmark",
    "load_instruct_template",
    "make_instruct_judge",
    "summarize_instruct",
]

INSTRUCT_BENCHMARKS = {"alpaca_eval": "instruct/alpaca_eval.jsonl"}
"""Benchmark name -> file path relative to the data directory."""

TEMPLATE_FILE = "instruct_pairwise.txt"
PLACEHOLDERS = ("{question}", "{answer_a}", "{answer_b}")
PAPER_SAMPLING = {"temperature": 0.8, "top_p": 0.95, "max_new_tokens": 512}
"""The paper's generation settings for the answers (§10.3)."""


# --------------------------------------------------------------------------------------------
# Data and template
# --------------------------------------------------------------------------------------------
def load_instruct_benchmark(name_or_path: str | os.PathLike, data_dir: str | os.PathLike | None = None,
                            limit: int | None = None, *, instruction_field: str = "instruction",
                            reference_field: str = "output", id_field: str = "id") -> list[dict]:
    """Load ``alpaca_eval`` or a JSONL file whose rows hold ``instruction_field`` and
    ``reference_field`` (non-empty strings).

    ``alpaca_eval`` reads ``instruct/alpaca_eval.jsonl`` of ``data_dir`` (or
    ``$REASONDISTILL_DATA_DIR``) when it is there, else its Hugging Face Hub dataset
    (``data.hub.load_hub_benchmark``; the field arguments apply to files only).

    Records: ``id`` (``id_field`` when present, else ``"<file stem>-<line>"``), ``instruction``,
    ``reference``, ``source``, plus ``dataset`` and ``generator`` when the row has them.

    Raises:
        DataError (a ``ValueError``) naming the file and the 1-based line, an unknown name (listing
        the known ones), or data that cannot be had from the Hub.
    """
    from ..data import hub

    path, source, from_hub = hub.local_file_or_records(name_or_path, "instruct", INSTRUCT_BENCHMARKS, data_dir,
                                                       kind="instruction benchmark", limit=limit)
    if from_hub is not None:
        return from_hub
    records: list[dict] = []
    for where, line_no, row in iter_json_objects(path, limit):
        require_fields(row, (instruction_field, reference_field), where, nonempty_str=True)
        rid = row.get(id_field)
        rec = {"id": str(rid) if rid not in (None, "") else f"{path.stem}-{line_no}",
               "instruction": row[instruction_field], "reference": row[reference_field], "source": source}
        for extra in ("dataset", "generator"):
            if extra in row:
                rec[extra] = row[extra]
        records.append(rec)
    return records


def load_instruct_template(path: str | os.PathLike | None = None) -> str:
    """The judge prompt: a file with ``{question}``, ``{answer_a}`` and ``{answer_b}``, or the
    packaged §10.3.1 prompt."""
    return load_template(path, default=TEMPLATE_FILE, placeholders=PLACEHOLDERS)


def make_instruct_judge(spec: str, model: str | None = None, *, max_tokens: int | None = None, workers: int = 4,
                        device: str = "cpu", **client_kw):
    """A judge of ``eval/pairwise.py``: an ``http(s)://.../v1`` endpoint (``model`` = its model
    name; ``client_kw`` go to ``api.client.ChatClient``: ``max_retries``, ``timeout``,
    ``backoff``, ...) or a local model folder / hub name / ``embedded:teacher`` (greedy).
    ``max_tokens``: the judge's reply length (default 1024 for an endpoint, 256 locally).
    The ``rule`` judge checks arithmetic steps and cannot judge free-form answers."""
    if spec == "rule":
        raise ValueError("the 'rule' judge only checks arithmetic steps; instruction following needs an "
                         "LLM judge: --judge http(s)://HOST:PORT/v1 --judge-model NAME, or a local model path")
    if spec.startswith(("http://", "https://")):
        return make_judge(spec, model=model, workers=workers, max_tokens=max_tokens or 1024, **client_kw)
    return make_judge(spec, max_new_tokens=max_tokens or 256, device=device)


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------
class InstructTask(Task):
    """Instructions with a reference answer: one answer each, then (with a ``judge``) both orders
    judged against the reference (:func:`judge_answers`) once every answer is written."""

    name = prefix = "instruct"
    desc = "answer"

    def __init__(self, judge=None, *, template: str | None = None, system: str | None = None,
                 judge_batch: int = 64):
        self.judge, self.template, self.system, self.judge_batch = judge, template, system, judge_batch

    @classmethod
    def load(cls, source, data_dir=None, first=None, **_):
        return load_instruct_benchmark(source, data_dir, limit=first)

    def prompt(self, record):
        return chat_messages(record["instruction"], self.system)

    def score(self, record, output, sample):
        row = {"id": record["id"], "instruction": record["instruction"], "reference": record["reference"],
               "output": output}
        row.update({k: record[k] for k in ("dataset", "generator") if k in record})
        return row

    def finish(self, rows, progress=False):
        if self.judge is None:
            return rows
        return judge_answers(self.judge, rows, self.template, judge_batch=self.judge_batch, progress=progress)

    def summarize(self, rows, samples):
        if self.judge is None:  # answers only (generate_answers)
            return {"num_instructions": len(rows)}
        return {**summarize_instruct(rows), "judge": getattr(self.judge, "name", type(self.judge).__name__)}


def generate_answers(model, tokenizer, records: list[dict], *, temperature: float = 0.8, top_p: float = 0.95,
                     max_new_tokens: int = 512, batch_size: int = 16, seed: int = 0, system: str | None = None,
                     progress: bool = False) -> list[dict]:
    """One answer per record (greedy when ``temperature == 0``), unjudged: rows with ``id``,
    ``instruction``, ``reference``, ``output``, ``num_tokens``, ``truncated`` (and the record's
    ``dataset`` / ``generator``)."""
    return evaluate_task(InstructTask(system=system), model, tokenizer, records, temperature=temperature,
                         top_p=top_p, max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed,
                         progress=progress)[0]


# --------------------------------------------------------------------------------------------
# Judging and accounting
# --------------------------------------------------------------------------------------------
def _call_judge(judge, prompts: list[str], items: list[dict]) -> list:
    """The judge's replies, one per prompt; a judge that raises or answers the wrong number
    of prompts yields the error in every slot of this call (never raised)."""
    try:
        out = list(judge(prompts, items))
    except Exception as e:  # noqa: BLE001 - a failing judge must not end the evaluation
        return [e] * len(prompts)
    if len(out) != len(prompts):
        err = RuntimeError(f"the judge returned {len(out)} replies for {len(prompts)} prompts")
        return [err] * len(prompts)
    return out


def _reply_text(reply) -> str:
    return reply if isinstance(reply, str) else f"<judge call failed: {type(reply).__name__}: {reply}>"


def judge_answers(judge, rows: list[dict], template: str | None = None, *, judge_batch: int = 64,
                  progress: bool = False) -> list[dict]:
    """Judge every row's ``output`` against its ``reference`` in both orders.

    ``judge(prompts, items) -> list[str | Exception]`` is any judge of ``eval/pairwise.py`` (or
    a function with that signature); it is called with at most ``judge_batch`` prompts at a
    time, so a judge that crashes loses only that call's verdicts. Returns new rows with
    ``verdict_model_as_a`` / ``verdict_model_as_b`` (``"A"``/``"B"``/``"C"`` or None),
    ``failed_model_as_a`` / ``failed_model_as_b`` (the call failed), the judge's replies
    ``judge_model_as_a`` / ``judge_model_as_b``, and ``score`` (the model's mean over its
    parseable orders, None when neither parsed).
    """
    template = template if template is not None else load_instruct_template()
    prompts, items = [], []
    for r in rows:
        for a, b in ((r["output"], r["reference"]), (r["reference"], r["output"])):
            items.append({"question": r["instruction"], "answer_a": a, "answer_b": b})
            prompts.append(fill(template, {"question": r["instruction"], "answer_a": a, "answer_b": b}))
    step = max(2, judge_batch - judge_batch % 2)
    starts = range(0, len(prompts), step)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="judge", unit="call")
    replies: list = []
    for s in starts:
        replies += _call_judge(judge, prompts[s: s + step], items[s: s + step])
    out = []
    for k, r in enumerate(rows):
        first, second = replies[2 * k], replies[2 * k + 1]
        va, vb = parse_verdict(first), parse_verdict(second)
        scores = ([FIRST_SCORE[va]] if va else []) + ([1.0 - FIRST_SCORE[vb]] if vb else [])
        out.append({**r, "verdict_model_as_a": va, "verdict_model_as_b": vb,
                    "failed_model_as_a": not isinstance(first, str), "failed_model_as_b": not isinstance(second, str),
                    "score": sum(scores) / len(scores) if scores else None,
                    "judge_model_as_a": _reply_text(first), "judge_model_as_b": _reply_text(second)})
    return out


def summarize_instruct(rows: list[dict], wall: float | None = None) -> dict:
    """Win rate (both orders averaged, ties half, unparseable verdicts excluded) and the counts.

    ``wins`` / ``ties`` / ``losses`` count parseable verdicts from the model's side (two per
    instruction at most); ``unjudged`` counts instructions with no parseable verdict.
    """
    per_order: dict[str, list[float]] = {"a": [], "b": []}
    wins = ties = losses = unparseable = failed = unjudged = 0
    for r in rows:
        for side, verdict, fail in (("a", r["verdict_model_as_a"], r["failed_model_as_a"]),
                                    ("b", r["verdict_model_as_b"], r["failed_model_as_b"])):
            if verdict is None:
                unparseable += 1
                failed += bool(fail)
                continue
            score = FIRST_SCORE[verdict] if side == "a" else 1.0 - FIRST_SCORE[verdict]
            per_order[side].append(score)
            wins += score == 1.0
            ties += score == 0.5
            losses += score == 0.0
        unjudged += r["verdict_model_as_a"] is None and r["verdict_model_as_b"] is None
    rate = {side: (sum(v) / len(v) if v else None) for side, v in per_order.items()}
    both = [x for x in rate.values() if x is not None]
    n = len(rows)
    out: dict = {
        "task": "instruct",
        "num_instructions": n,
        "win_rate": sum(both) / len(both) if both else None,
        "win_rate_model_as_a": rate["a"],
        "win_rate_model_as_b": rate["b"],
        "wins": wins, "ties": ties, "losses": losses,
        "num_verdicts": 2 * n,
        "unparseable_verdicts": unparseable,
        "failed_judge_calls": failed,
        "unparseable_share": unparseable / (2 * n) if n else 0.0,
        "unjudged": unjudged,
    }
    out.update(length_stats(rows, wall))
    return out


def evaluate_instruct(model, tokenizer, records: list[dict], judge, *, template: str | None = None,
                      temperature: float = 0.8, top_p: float = 0.95, max_new_tokens: int = 512,
                      batch_size: int = 16, seed: int = 0, system: str | None = None, judge_batch: int = 64,
                      progress: bool = False) -> tuple[list[dict], dict]:
    """Answer every instruction (the paper's sampling by default), judge both orders, summarize
    (:class:`InstructTask` on the loop of ``eval/base.py``).

    Returns (rows of :func:`judge_answers`, :func:`summarize_instruct` plus ``judge`` and the
    generation settings).
    """
    if judge is None:
        raise ValueError("the instruct task needs a judge (an endpoint URL or a local model)")
    task = InstructTask(judge, template=template, system=system, judge_batch=judge_batch)
    return evaluate_task(task, model, tokenizer, records, temperature=temperature, top_p=top_p,
                         max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, progress=progress)


@dataclass
class InstructEvalConfig(EvalConfig):
    """``reasondistill eval instruct``: win rate against the reference answers, judged pairwise in
    both orders (the VCRD paper's §10.3.1 prompt)."""

    task: ClassVar[str] = "instruct"
    task_class: ClassVar[type[Task]] = InstructTask
    default_sampling: ClassVar[tuple[float, float]] = (PAPER_SAMPLING["temperature"], PAPER_SAMPLING["top_p"])

    judge: str | None = None
    """Required: an OpenAI-compatible endpoint (http(s)://HOST:PORT/v1, with judge_model) or a local
    model (folder, hub name, embedded:teacher)."""
    judge_model: str | None = None
    """With an endpoint judge: the model name at the endpoint."""
    judge_template: str | None = None
    """Judge prompt file with {question}, {answer_a}, {answer_b} (default: the packaged
    templates/instruct_pairwise.txt)."""
    judge_max_tokens: int | None = None
    """The judge's reply length (default 1024 at an endpoint, 256 locally)."""

    def validate(self) -> None:
        super().validate()
        if not self.judge:
            raise ConfigError("eval instruct needs a judge: --judge http(s)://HOST:PORT/v1 --judge-model NAME, "
                              "or --judge PATH (a local model)")

    def make_task(self, model, tokenizer, *, judge=None) -> InstructTask:
        """``judge`` (a judge of ``eval/pairwise.py``) is used as it is; else one is made from ``self.judge``."""
        from .base import resolved_device

        if judge is None:
            judge = make_instruct_judge(self.judge, self.judge_model, max_tokens=self.judge_max_tokens,
                                        workers=self.workers or 4, device=resolved_device(self.device))
        return InstructTask(judge, template=load_instruct_template(self.judge_template), system=self.system)
