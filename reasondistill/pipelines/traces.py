"""``reasondistill generate``: teacher traces for every bank problem over an API (sft_then_grpo_api_teachers.md §3.2).

One chat request per problem, the user message being the template (default
``templates/teacher_trace.txt``: Box 1, with the paper's ``$\\{question\\}$`` written
``{question}``) filled with the question; the paper's settings are the defaults: temperature
0.2, 8,192 max tokens, 360 s timeout. Requests, retries, rate limits, resumability and the
exactly-once guarantee are :mod:`reasondistill.api.jobs`'s (shared with ``judge``).

Each result line of ``TRACES.jsonl`` holds the bank problem (``id``, ``question``,
``final_answer``, ``source``, ``meta``; the bank's own ``reasoning`` stays in the bank) and the
teacher's answer: ``reasoning``, ``generated_answer``, ``response`` (the raw text),
``finish_reason``, ``parse`` (how the answer was found), ``parse_error`` (None, or why no answer
could be read: the trace is still recorded, it was paid for, and ``judge`` skips it),
``model``, ``usage``, ``attempts``, ``time``.

Parsing (:func:`parse_response`). Box 1 asks for "the final answer on a new line, in the EXACT
format: <final_answer>", which reads two ways: ``<final_answer>`` is (a) a tag to wrap the
answer in, or (b) a placeholder for the answer itself. Both are accepted, in this order:

1. ``<final_answer>X</final_answer>`` anywhere (the last one): X is the answer, the text before
   the tag the reasoning (``parse = "tag"``);
2. a last line starting with ``<final_answer>`` (a tag never closed): the rest of that line
   (``parse = "open_tag"``);
3. else the last non-empty line is the answer and the lines before it the reasoning
   (``parse = "last_line"``). A ``\\boxed{}`` in the answer is reduced to its content and a
   leading "Final answer:" is dropped, since the judge compares answers, not formats.

A parse failure is an empty response, a response of one line (no reasoning), an empty tag, or
a response cut at ``max_tokens`` (``finish_reason == "length"``: its last line is mid-reasoning).

Two teachers are two runs with two output files (the paper's Table 4.1 has both).
"""

from __future__ import annotations

import os
import re
import urllib.parse
from pathlib import Path
from typing import Any

from ..api.jobs import ChatRequester, JobReport, iter_items, now_iso, run_job
from ..data.records import DataError
from ..eval.pairwise import fill, load_template
from ..rewards import extract_boxed

__all__ = ["DEFAULT_TEMPLATE", "api_key_from_env", "generate", "parse_response", "render_prompt"]

DEFAULT_TEMPLATE = "teacher_trace.txt"
_CLOSED = re.compile(r"<final_answer>(.*?)</final_answer>", re.DOTALL | re.IGNORECASE)
_OPEN = re.compile(r"^\s*<final_answer>\s*(.*)$", re.IGNORECASE)
_LEAD = re.compile(r"^\s*(?:\*\*)?\s*(?:the\s+)?final\s+answer\s*(?:is)?\s*[:\-]?\s*(?:\*\*)?\s*", re.IGNORECASE)


def _clean_answer(text: str) -> str:
    ans = _LEAD.sub("", text.strip()).strip()
    boxed = extract_boxed(ans)
    if boxed is not None:
        return boxed.strip()
    if len(ans) >= 2 and ans[0] == ans[-1] == "$":
        ans = ans.strip("$").strip()
    return ans


def parse_response(text: str | None, finish_reason: str | None = None) -> dict:
    """``{"reasoning", "generated_answer", "parse", "parse_error"}`` of a teacher response (rules:
    module docstring); never raises."""
    out: dict[str, Any] = {"reasoning": None, "generated_answer": None, "parse": None, "parse_error": None}
    text = text or ""
    if finish_reason == "length":
        out["parse_error"] = "the response stopped at max_tokens (finish_reason 'length')"
        return out
    if not text.strip():
        out["parse_error"] = "empty response"
        return out
    tags = list(_CLOSED.finditer(text))
    if tags:
        last = tags[-1]
        answer, reasoning, how = _clean_answer(last.group(1)), text[: last.start()].strip(), "tag"
    else:
        lines = [ln for ln in text.strip().splitlines()]
        while lines and not lines[-1].strip():
            lines.pop()
        m = _OPEN.match(lines[-1])
        if m:
            answer, how = _clean_answer(m.group(1)), "open_tag"
        else:
            answer, how = _clean_answer(lines[-1]), "last_line"
        reasoning = "\n".join(lines[:-1]).strip()
    out["parse"] = how
    if not answer:
        out["parse_error"] = f"no answer found ({how})"
    elif not reasoning:
        out["parse_error"] = f"no reasoning before the answer ({how})"
    out["reasoning"], out["generated_answer"] = reasoning or None, answer or None
    return out


def render_prompt(template: str, question: str) -> str:
    return fill(template, {"question": question})


def api_key_from_env(var: str | None, base_url: str) -> str | None:
    """The key in environment variable ``var`` (never printed). Unset or empty: None for a
    loopback endpoint (local servers need none), a ``ValueError`` naming the variable for any
    other host."""
    if not var:
        return None
    key = os.environ.get(var) or None
    host = urllib.parse.urlsplit(base_url.strip()).hostname
    if key is None and host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"the environment variable {var} (--api-key-env) holds no API key for {base_url}; "
                         f"set it, or name another variable")
    return key


def generate(bank: str | os.PathLike, output: str | os.PathLike, *, base_url: str, model: str,
             api_key_env: str | None = "OPENAI_API_KEY", template: str | os.PathLike | None = None,
             temperature: float | None = 0.2, max_tokens: int | None = 8192, top_p: float | None = None,
             seed: int | None = None, timeout: float = 360.0, concurrency: int = 8, max_retries: int = 5,
             rpm: float | None = None, tpm: float | None = None, limit: int | None = None,
             system: str | None = None, extra_body: dict | None = None, progress: bool = True,
             fsync: bool = False, rate_window: float = 60.0, backoff: float = 0.5) -> JobReport:
    """Teacher traces for the first ``limit`` (all when None) problems of ``bank``, appended to
    ``output`` (module docstring); returns the run's :class:`~reasondistill.api.jobs.JobReport`
    (``exit_code`` non-zero while some problem has no trace). ``DataError`` for a bank line that
    is not JSON, lacks ``id`` / ``question`` / ``final_answer``, or repeats an id."""
    tmpl = load_template(template, DEFAULT_TEMPLATE, ("{question}",))
    items = iter_items(bank, ("id", "question", "final_answer"), limit)
    if limit is not None and limit < 0:
        raise ValueError(f"--limit must be >= 0, got {limit}")
    requester = ChatRequester(base_url, model, api_key=api_key_from_env(api_key_env, base_url), timeout=timeout,
                              max_retries=max_retries, concurrency=concurrency, rpm=rpm, tpm=tpm,
                              window=rate_window, backoff=backoff, extra_body=extra_body)

    def work(item: dict, req: ChatRequester) -> dict:
        messages = ([{"role": "system", "content": system}] if system else []) + \
                   [{"role": "user", "content": render_prompt(tmpl, str(item["question"]))}]
        res = req.chat(messages, temperature=temperature, max_tokens=max_tokens, top_p=top_p, seed=seed)
        parsed = parse_response(res.text, res.finish_reason)
        return {"question": item["question"], "final_answer": item["final_answer"],
                "source": item.get("source"), "meta": item.get("meta", {}),
                **parsed, "response": res.text, "finish_reason": res.finish_reason,
                "model": res.model or model, "usage": res.usage, "attempts": res.attempts, "time": now_iso()}

    try:
        return run_job("generate", items, work, requester, output, concurrency=concurrency, progress=progress,
                       fsync=fsync)
    finally:
        requester.close()


def parse_counts(output: str | os.PathLike) -> dict:
    """How the result lines of a traces file were parsed: ``{"tag": n, "open_tag": n,
    "last_line": n, "parse_error": n}``."""
    from ..api.jobs import read_results

    rows, _ = read_results(output)
    counts = {"tag": 0, "open_tag": 0, "last_line": 0, "parse_error": 0}
    for r in rows:
        if r.get("parse_error"):
            counts["parse_error"] += 1
        elif r.get("parse") in counts:
            counts[r["parse"]] += 1
    return counts


def check_output_path(output: str | os.PathLike, inputs: list[str | os.PathLike]) -> None:
    """Refuse an output that is one of the inputs (appending to the bank would corrupt it)."""
    out = Path(output).resolve()
    for p in inputs:
        if Path(p).resolve() == out:
            raise DataError(f"the output {output} is also an input; choose another file")

