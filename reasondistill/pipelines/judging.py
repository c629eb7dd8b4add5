"""``reasondistill judge`` and ``reasondistill filter``: LLM-judge scoring of teacher traces and
the "perfect sample" selection (sft_then_grpo_api_teachers.md §3.2, Box 2).

``judge`` sends each parsed trace of ``TRACES.jsonl`` to a judge model with the template
``templates/judge_triplet.txt`` (Box 2; the paper's ``{"input_json"}`` is read as the
placeholder ``{input_json}``, filled with the JSON object ``{"question", "final_answer",
"reasoning", "generated_answer"}``, the four inputs the paper names, under the names its rules
use). Requests, retries, rate limits, resumability and exactly-once are
:mod:`reasondistill.api.jobs`'s, as for ``generate``. Traces whose answer could not be parsed
(``parse_error``) are not sent (counted as ``unparsed``): there is nothing to compare.

Verdict parsing (:func:`parse_verdict`): *strict* first, the whole reply is one JSON object
with ``is_correct`` 0 or 1 and ``reasoning_quality`` an integer 1..10 (``parse = "strict"``);
else a *tolerant fallback* (``parse = "fallback"``): a JSON object inside the reply (a
``json`` code fence, prose around it), then ``key: value`` pairs by pattern; booleans count as
0/1 and integral floats or numeric strings as integers. A reply with neither, or with values
out of range, is a *judge error*: an error line (``error_type = "malformed_verdict"``, the raw
reply kept in ``judge_response``), never a crash, and the trace is judged again by the next run.

Each verdict line holds the trace (``id``, ``question``, ``final_answer``, ``source``, ``meta``,
``reasoning``, ``generated_answer``, ``teacher_model``), the scores (``is_correct``,
``reasoning_quality``), ``parse``, ``judge_response``, ``judge_model``, ``usage``,
``attempts``, ``time``.

``filter`` keeps the verdicts with ``is_correct >= min_correct`` and ``reasoning_quality >=
min_quality`` (the paper: 1 and 10, "perfect samples") and stratifies them by source (and
optionally a ``meta`` field) down to ``n`` (the paper: 1,000) with the bank's
:func:`~reasondistill.pipelines.bank.stratified_sample`, deterministic for a seed.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

from ..api.jobs import ChatRequester, ItemFailed, JobReport, now_iso, read_results, run_job
from ..data.records import DataError
from ..eval.pairwise import fill, load_template
from .bank import stratified_sample, write_jsonl_atomic
from .traces import api_key_from_env

__all__ = ["DEFAULT_TEMPLATE", "VerdictError", "filter_verdicts", "judge", "parse_verdict", "render_prompt"]

DEFAULT_TEMPLATE = "judge_triplet.txt"
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)
_PAIR = {
    "is_correct": re.compile(r"[\"']?is_correct[\"']?\s*[:=]\s*[\"']?(true\b|false\b|[01](?:\.0+)?(?![\d.]))", re.IGNORECASE),
    "reasoning_quality": re.compile(r"[\"']?reasoning_quality[\"']?\s*[:=]\s*[\"']?(\d+(?:\.0+)?)(?![\d.])", re.IGNORECASE),
}


class VerdictError(ValueError):
    """A judge reply that holds no usable verdict."""


def _as_int(value: Any, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool):
        value = int(value)
    elif isinstance(value, str):
        v = value.strip().lower()
        if v in ("true", "false"):
            value = int(v == "true")
        else:
            try:
                value = float(v)
            except ValueError:
                raise VerdictError(f"{name} is {value!r}, not a number") from None
    if isinstance(value, float):
        if not value.is_integer():
            raise VerdictError(f"{name} is {value!r}, not an integer")
        value = int(value)
    if not isinstance(value, int):
        raise VerdictError(f"{name} is {value!r}, not a number")
    if not lo <= value <= hi:
        raise VerdictError(f"{name} is {value}, outside {lo}..{hi}")
    return value


def _from_object(obj: Any) -> dict:
    if not isinstance(obj, dict):
        raise VerdictError(f"the JSON is a {type(obj).__name__}, not an object")
    missing = [k for k in ("is_correct", "reasoning_quality") if k not in obj]
    if missing:
        raise VerdictError(f"the JSON object lacks {', '.join(missing)}")
    return {"is_correct": _as_int(obj["is_correct"], "is_correct", 0, 1),
            "reasoning_quality": _as_int(obj["reasoning_quality"], "reasoning_quality", 1, 10)}


def _json_objects(text: str):
    dec = json.JSONDecoder()
    for m in re.finditer(r"\{", text):
        try:
            obj, _ = dec.raw_decode(text, m.start())
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            yield obj


def parse_verdict(text: str | None) -> tuple[dict, str]:
    """``({"is_correct", "reasoning_quality"}, "strict" | "fallback")`` of a judge reply (rules:
    module docstring); :class:`VerdictError` saying what is wrong otherwise."""
    if not text or not text.strip():
        raise VerdictError("empty reply")
    strict_problem = None
    try:
        return _from_object(json.loads(text.strip())), "strict"
    except json.JSONDecodeError:
        strict_problem = "the reply is not one JSON object"
    except VerdictError as e:
        strict_problem = str(e)
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    last_problem = strict_problem
    for chunk in candidates:
        for obj in _json_objects(chunk):
            if "is_correct" in obj or "reasoning_quality" in obj:
                try:
                    return _from_object(obj), "fallback"
                except VerdictError as e:
                    last_problem = str(e)
    hits = {k: pat.findall(text) for k, pat in _PAIR.items()}
    if all(hits.values()):
        try:
            return {"is_correct": _as_int(hits["is_correct"][-1], "is_correct", 0, 1),
                    "reasoning_quality": _as_int(hits["reasoning_quality"][-1], "reasoning_quality", 1, 10)}, "fallback"
        except VerdictError as e:
            last_problem = str(e)
    raise VerdictError(f"no verdict with is_correct (0/1) and reasoning_quality (1-10): {last_problem}")


def render_prompt(template: str, trace: dict) -> str:
    payload = {"question": trace.get("question"), "final_answer": trace.get("final_answer"),
               "reasoning": trace.get("reasoning"), "generated_answer": trace.get("generated_answer")}
    return fill(template, {"input_json": json.dumps(payload, ensure_ascii=False)})


def judge(traces: str | os.PathLike, output: str | os.PathLike, *, base_url: str, model: str,
          api_key_env: str | None = "OPENAI_API_KEY", template: str | os.PathLike | None = None,
          temperature: float | None = 0.0, max_tokens: int | None = 1024, timeout: float = 360.0,
          concurrency: int = 8, max_retries: int = 5, rpm: float | None = None, tpm: float | None = None,
          limit: int | None = None, json_mode: bool = False, extra_body: dict | None = None,
          progress: bool = True, fsync: bool = False, rate_window: float = 60.0,
          backoff: float = 0.5) -> tuple[JobReport, dict]:
    """Judge the parsed traces of ``traces`` (the first ``limit``), appending verdicts to
    ``output`` (module docstring). ``json_mode`` asks for ``response_format={"type":
    "json_object"}`` (not every server has it; off by default, the strict-then-tolerant parse
    does not need it). Returns the run's report and ``{"traces", "unparsed", "trace_errors"}``
    (how many traces were read, skipped for a parse error, and error-only ids in the traces)."""
    tmpl = load_template(template, DEFAULT_TEMPLATE, ("{input_json}",))
    rows, skipped = read_results(traces)
    parsed = [r for r in rows if not r.get("parse_error") and r.get("generated_answer") is not None]
    info = {"traces": len(rows), "unparsed": len(rows) - len(parsed), "trace_errors": skipped["failed_ids"]}
    if limit is not None:
        parsed = parsed[:limit]
    requester = ChatRequester(base_url, model, api_key=api_key_from_env(api_key_env, base_url), timeout=timeout,
                              max_retries=max_retries, concurrency=concurrency, rpm=rpm, tpm=tpm,
                              window=rate_window, backoff=backoff, extra_body=extra_body)
    response_format = {"type": "json_object"} if json_mode else None

    def work(trace: dict, req: ChatRequester) -> dict:
        res = req.chat([{"role": "user", "content": render_prompt(tmpl, trace)}], temperature=temperature,
                       max_tokens=max_tokens, response_format=response_format)
        try:
            verdict, how = parse_verdict(res.text)
        except VerdictError as e:
            raise ItemFailed(f"malformed verdict: {e}", error_type="malformed_verdict", attempts=res.attempts,
                             extra={"judge_response": res.text, "usage": res.usage}) from None
        return {"question": trace.get("question"), "final_answer": trace.get("final_answer"),
                "source": trace.get("source"), "meta": trace.get("meta", {}), "reasoning": trace.get("reasoning"),
                "generated_answer": trace.get("generated_answer"), "teacher_model": trace.get("model"),
                **verdict, "parse": how, "judge_response": res.text, "judge_model": res.model or model,
                "usage": res.usage, "attempts": res.attempts, "time": now_iso()}

    try:
        report = run_job("judge", parsed, work, requester, output, concurrency=concurrency, progress=progress,
                         fsync=fsync)
    finally:
        requester.close()
    return report, info


def filter_verdicts(verdicts: str | os.PathLike, output: str | os.PathLike, *, min_correct: int = 1,
                    min_quality: int = 10, n: int | None = None, stratify_field: str | None = None,
                    seed: int = 0) -> dict:
    """Write the kept verdicts (module docstring) to ``output`` atomically, in the verdict file's
    order; returns the counts ``{"verdicts", "kept", "written", "by_source": {source: [kept,
    written]}, ...}`` (also written to ``<output stem>.summary.json``)."""
    rows, skipped = read_results(verdicts)
    bad = [r["id"] for r in rows if not (isinstance(r.get("is_correct"), int) and isinstance(r.get("reasoning_quality"), int))]
    if bad:
        raise DataError(f"{verdicts}: {len(bad)} result lines lack integer is_correct / reasoning_quality "
                        f"(first: id {bad[0]!r}); is this a verdicts file?")
    kept = [r for r in rows if r["is_correct"] >= min_correct and r["reasoning_quality"] >= min_quality]
    if n is not None:
        if n < 0:
            raise ValueError(f"-n must be >= 0, got {n}")
        key = (lambda r: (r.get("source"),)) if not stratify_field else \
            (lambda r: (r.get("source"), str((r.get("meta") or {}).get(stratify_field))))
        chosen = [kept[i] for i in stratified_sample(kept, n, key, seed=f"{seed}/filter")]
    else:
        chosen = kept
    drop = ("judge_response", "usage", "attempts", "time", "parse")
    written = write_jsonl_atomic(output, ({k: v for k, v in r.items() if k not in drop} for r in chosen))
    kept_by, chosen_by = Counter(r.get("source") for r in kept), Counter(r.get("source") for r in chosen)
    summary = {"verdicts": len(rows), "judge_errors": skipped["failed_ids"], "kept": len(kept), "written": written,
               "min_correct": min_correct, "min_quality": min_quality, "n": n, "seed": seed,
               "stratify_field": stratify_field, "output": str(output),
               "by_source": {s: [kept_by[s], chosen_by.get(s, 0)] for s in sorted(kept_by, key=str)}}
    Path(output).with_suffix(".summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
