"""Code-generation evaluation: HumanEval-style functional correctness, pass@1 and pass@k.

Protocol (validity_calibrated_distillation.md §10.3, "Code Generation"): the model completes each
problem's prompt (a function signature and docstring), greedy decoding by default; the
completion is executed against the problem's own tests and a problem counts as solved when
every assertion of ``check(entry_point)`` holds. Pass@1 is the share of solved problems
(greedy), or with ``samples = n > 1`` the mean over samples, and pass@k uses the unbiased
estimator of Chen et al. (2021): ``1 - C(n - c, k) / C(n, k)`` per problem, averaged.

Pieces
------
- :func:`load_code_benchmark`: HumanEval's JSONL (``task_id``, ``prompt``, ``entry_point``,
  ``test``, optional ``canonical_solution``) or any JSONL in that schema.
- :func:`extract_code`: the code inside a completion. A fenced block (```` ```python ````
  preferred, else any fence; an unterminated fence at the end counts) that defines the entry
  point at top level is a *full program*; any other fenced block, or an unfenced completion,
  is a *continuation* of the prompt. An unfenced continuation is cut at the first HumanEval
  stop sequence (``\\ndef ``, ``\\nclass ``, ``\\nif __name__``, ``\\nprint(``, ``\\n#``), i.e.
  where the model leaves the function body at top level. One exception: an unfenced
  completion that *starts* with the entry point's definition (or imports/decorators before
  it, as chat models write without fences) is a full program, cut at those stop sequences
  except ``\\ndef `` (so its helper functions stay).
- :func:`build_program`: ``prompt + code + "\\n" + test + "\\ncheck(entry_point)\\n"`` for a
  continuation; for a full program, the prompt (a complete function with only a docstring
  body, which also brings the prompt's imports and helper functions) followed by the model's
  definition, which replaces it, then the tests.
- every program runs in ``eval/sandbox.py`` (separate process, time/memory/process limits,
  no network, see its docstring for what is and is not guaranteed); a program passes only if
  it runs to its end with exit status 0.
- :class:`CodeTask` is the ``code`` task of ``eval/base.py`` (:class:`CodeEvalConfig`, its
  settings: ``reasondistill eval code``); :func:`evaluate_code` runs it: generation on the
  shared loop, execution of one batch overlapping generation of the next. :func:`evaluate_solutions` executes given
  completions (no model): the canonical solutions must all pass, which is how the harness is
  tested.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import ClassVar, Sequence

from ..data.benchmarks import DataError, iter_json_objects, require_fields
from ..errors import ConfigError
from .base import EvalConfig, Task, chat_messages, evaluate_task, length_stats
from .sandbox import run_program

__all__ = [
    "CODE_BENCHMARKS",
    "CodeEvalConfig",
    "CodeTask",
    "STOP_SEQUENCES",
    "build_program",
    "evaluate_code",
    "evaluate_solutions",
    "extract_code",
    "load_code_benchmark",
    "pass_at_k",
    "summarize_code",
]

CODE_BENCHMARKS = {"humaneval": "code/humaneval.jsonl"}
"""Benchmark name -> file path relative to the data directory."""

REQUIRED_FIELDS = ("task_id", "prompt", "entry_point", "test")

STOP_SEQUENCES = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")
"""Where an unfenced continuation ends (the HumanEval convention: leaving the body at top level)."""

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)(?:\n[ \t]*```|\Z)", re.DOTALL)
_PY_TAGS = {"python", "py", "python3", "py3"}

CHAT_INSTRUCTION = ("Complete the following Python function. Answer with the complete function "
                    "in one ```python code block.\n\n```python\n{prompt}```")


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
def load_code_benchmark(path_or_name: str | os.PathLike, data_dir: str | os.PathLike | None = None,
                        limit: int | None = None) -> list[dict]:
    """Load a code benchmark by name or any JSONL file in the HumanEval schema.

    ``"humaneval"`` reads ``code/humaneval.jsonl`` of ``data_dir`` (or ``$REASONDISTILL_DATA_DIR``)
    when it is there; otherwise, and for the names only the Hub table knows (``humaneval_plus``,
    ``mbpp``, ``mbpp_plus``: ``data.hub.DATA``), the benchmark comes from its Hugging Face Hub
    dataset (``data.hub.load_hub_benchmark``: EvalPlus's extra tests are in ``test``, so they run
    through the same sandbox).

    Records keep every field of the row and gain ``id`` (= ``task_id``) and ``source``.

    Raises:
        DataError (a ``ValueError``): unknown name (listing the known ones), missing file, data
            that cannot be had from the Hub, a line that is not a JSON object, or a row missing a
            required field or with a non-string one; the message names the file and the 1-based line.
    """
    from ..data import hub

    path, source, from_hub = hub.local_file_or_records(path_or_name, "code", CODE_BENCHMARKS, data_dir,
                                                       kind="code benchmark", limit=limit)
    if from_hub is not None:
        return from_hub
    records: list[dict] = []
    for where, _, row in iter_json_objects(path, limit):
        require_fields(row, REQUIRED_FIELDS, where, nonempty_str=True)
        if not re.fullmatch(r"[A-Za-z_]\w*", row["entry_point"]):
            raise DataError(f"{where}: entry_point {row['entry_point']!r} is not a Python identifier")
        records.append({**row, "id": row["task_id"], "source": source})
    return records


# --------------------------------------------------------------------------------------------
# Completions -> programs
# --------------------------------------------------------------------------------------------
def _last_def(prompt: str) -> str | None:
    names = re.findall(r"^def\s+([A-Za-z_]\w*)\s*\(", prompt, re.MULTILINE)
    return names[-1] if names else None


def _defines(code: str, name: str | None) -> bool:
    """``code`` defines function ``name`` at top level (column 0, plain or async)."""
    return bool(name) and re.search(rf"^(?:async\s+)?def\s+{re.escape(name)}\s*\(", code, re.MULTILINE) is not None


def _fenced_blocks(text: str) -> list[tuple[str, str]]:
    return [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(text)]


def _cut_at_stop(text: str, stops: Sequence[str] = STOP_SEQUENCES) -> str:
    cut = len(text)
    for s in stops:
        i = text.find(s)
        if i != -1:
            cut = min(cut, i)
    return text[:cut]


def _extract(completion: str, prompt: str, entry_point: str | None) -> tuple[str, bool]:
    """(code, is_full_program)."""
    name = entry_point or _last_def(prompt)
    blocks = _fenced_blocks(completion)
    if blocks:
        py = [code for tag, code in blocks if tag in _PY_TAGS]
        every = [code for _, code in blocks]
        for group in (py, every):
            for code in group:
                if _defines(code, name):
                    return code.rstrip() + "\n", True
        code = (py or every)[0]
        return code.rstrip() + "\n", False
    if _defines(completion, name) and re.match(rf"\n*(?:(?:from|import)\s|@|def\s+{re.escape(name)}\b|async\s)",
                                               completion):
        # an unfenced full definition (a chat answer without fences): keep it whole, cut after
        return _cut_at_stop(completion.lstrip("\n"), [s for s in STOP_SEQUENCES if s != "\ndef "]), True
    return _cut_at_stop(completion), False


def extract_code(completion: str, prompt: str, entry_point: str | None = None) -> str:
    """The code in ``completion`` (see the module docstring for the rules).

    ``entry_point`` defaults to the last top-level ``def`` of ``prompt`` (HumanEval's entry
    point is always the last function of its prompt). A fenced block that defines it is
    returned as is (a full program); anything else is a continuation of ``prompt``.
    """
    return _extract(completion, prompt, entry_point)[0]


def build_program(record: dict, completion: str, *, extract: bool = True) -> str:
    """The program that tests ``completion`` on ``record`` (a :func:`load_code_benchmark` row).

    Continuation: ``prompt + code + "\\n" + test + "\\ncheck(entry_point)\\n"``. Full program (a
    fenced block defining the entry point): the prompt, then the block (its definition replaces
    the prompt's docstring-only one; the prompt's imports and helpers stay available), then
    the tests. ``extract=False`` uses ``completion`` verbatim as a continuation.
    """
    prompt, entry = record["prompt"], record["entry_point"]
    if extract:
        code, full = _extract(completion, prompt, entry)
    else:
        code, full = completion, False
    tail = "\n" + record["test"] + f"\ncheck({entry})\n"
    if not full:
        return prompt + code + tail
    try:  # the prompt on its own is a complete module (a function whose body is its docstring)
        compile(prompt, "<prompt>", "exec")
        head = prompt.rstrip() + "\n\n\n"
    except SyntaxError:  # keep only its imports
        head = "".join(line + "\n" for line in prompt.splitlines() if re.match(r"(?:from|import)\s", line))
    return head + code + tail


# --------------------------------------------------------------------------------------------
# pass@k
# --------------------------------------------------------------------------------------------
def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with ``n`` samples of which ``c`` are correct:
    ``1 - C(n-c, k) / C(n, k)``, computed as ``1 - prod_{i=n-c+1}^{n} (1 - k/i)`` (no big
    binomials, no overflow)."""
    if not (isinstance(n, int) and isinstance(c, int) and isinstance(k, int)):
        raise TypeError("n, c and k must be integers")
    if n < 1 or not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need n >= 1, 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def _ks(samples: int) -> list[int]:
    return sorted({1, samples} | ({10} if samples >= 10 else set()))


def summarize_code(rows: list[dict], samples: int = 1, wall: float | None = None) -> dict:
    """Summary of per-sample rows (``task_id``, ``passed``, ``status``): pass@1 (the mean over
    all samples), unbiased pass@k for k in {1, samples, 10 if samples >= 10}, status counts."""
    by_task: dict = {}
    for r in rows:
        by_task.setdefault(r["task_id"], []).append(bool(r["passed"]))
    counts = {s: sum(r["status"] == s for r in rows) for s in ("passed", "failed", "timeout", "error")}
    out: dict = {"num_tasks": len(by_task), "samples": samples, "num_programs": len(rows),
                 "pass@1": sum(r["passed"] for r in rows) / max(1, len(rows))}
    for k in _ks(samples):
        vals = [pass_at_k(len(v), sum(v), k) for v in by_task.values() if len(v) >= k]
        if k != 1:
            out[f"pass@{k}"] = sum(vals) / max(1, len(vals))
    out.update({"num_passed": counts["passed"], "num_failed": counts["failed"],
                "num_timeouts": counts["timeout"], "num_errors": counts["error"]})
    out.update(length_stats(rows, wall))
    return out


def _row(rec: dict, sample: int, completion: str, result, extra: dict | None = None) -> dict:
    code, full = _extract(completion, rec["prompt"], rec["entry_point"])
    row = {"task_id": rec["task_id"], "sample": sample, "completion": completion, "code": code,
           "full_program": full, "status": result.status, "passed": bool(result.passed),
           "detail": result.detail, "seconds": round(result.seconds, 4)}
    row.update(extra or {})
    return row


def _sandbox_kwargs(timeout: float, memory_mb: int, sandbox: dict | None) -> dict:
    return {"timeout": timeout, "memory_mb": memory_mb, **(sandbox or {})}


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------
def evaluate_solutions(records: list[dict], completions_per_record, *, workers: int = 2, timeout: float = 10.0,
                       memory_mb: int = 1024, extract: bool = True, sandbox: dict | None = None,
                       progress: bool = False) -> tuple[list[dict], dict]:
    """Execute given completions, no model: ``completions_per_record[i]`` is a string or a list
    of strings (samples) for ``records[i]``. Returns (rows, summary) as :func:`evaluate_code`.

    ``sandbox`` passes further :func:`~reasondistill.eval.sandbox.run_program` arguments.
    """
    if len(completions_per_record) != len(records):
        raise ValueError(f"{len(records)} records but {len(completions_per_record)} completion lists")
    t0 = time.time()
    jobs = []
    for rec, comps in zip(records, completions_per_record):
        comps = [comps] if isinstance(comps, str) else list(comps)
        jobs += [(rec, j, c) for j, c in enumerate(comps)]
    samples = max((j + 1 for _, j, _ in jobs), default=1)
    kw = _sandbox_kwargs(timeout, memory_mb, sandbox)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(run_program, build_program(rec, c, extract=extract), **kw) for rec, _, c in jobs]
        results = futures
        if progress:
            from tqdm.auto import tqdm

            results = tqdm(futures, desc="execute", unit="program")
        rows = [_row(rec, j, c, fut.result()) for (rec, j, c), fut in zip(jobs, results)]
    return rows, summarize_code(rows, samples, wall=time.time() - t0)


class CodeTask(Task):
    """HumanEval-style problems; each completion runs against the problem's tests in the sandbox
    while the next batch generates (the pool lives for the run: :meth:`session`). Prompts are the
    raw code prompts (the model continues the function), or with ``chat=True``
    :data:`CHAT_INSTRUCTION` as a chat instruction (with ``system``)."""

    name = prefix = "code"
    desc = "generate"

    def __init__(self, *, workers: int = 2, timeout: float = 10.0, memory_mb: int = 1024, chat: bool = False,
                 system: str | None = None, sandbox: dict | None = None):
        self.workers, self.chat, self.system = workers, chat, system
        self.sandbox = _sandbox_kwargs(timeout, memory_mb, sandbox)
        self._pool = None

    @classmethod
    def load(cls, source, data_dir=None, first=None, **_):
        return load_code_benchmark(source, data_dir, limit=first)

    @contextlib.contextmanager
    def session(self):
        with ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
            self._pool = pool
            try:
                yield
            finally:
                self._pool = None

    def prompt(self, record):
        return chat_messages(CHAT_INSTRUCTION.format(prompt=record["prompt"]), self.system) if self.chat \
            else record["prompt"]

    def score(self, record, output, sample):
        return {"task_id": record["task_id"], "sample": sample, "completion": output,
                "_run": (record, self._pool.submit(run_program, build_program(record, output), **self.sandbox))}

    def finish(self, rows, progress=False):
        out = []
        for r in rows:
            rec, fut = r.pop("_run")
            extra = {k: r[k] for k in ("num_tokens", "truncated", "api_error") if k in r}
            out.append(_row(rec, r["sample"], r["completion"], fut.result(), extra))
        return out

    def summarize(self, rows, samples):
        return summarize_code(rows, samples)


def evaluate_code(model, tokenizer, records: list[dict], *, samples: int = 1, temperature: float = 0.0,
                  top_p: float = 1.0, max_new_tokens: int = 512, batch_size: int = 16, workers: int = 2,
                  timeout: float = 10.0, memory_mb: int = 1024, seed: int = 0, chat: bool = False,
                  system: str | None = None, sandbox: dict | None = None,
                  progress: bool = False) -> tuple[list[dict], dict]:
    """Generate ``samples`` completions per record and execute each against its tests
    (:class:`CodeTask` on the loop of ``eval/base.py``).

    Greedy unless ``temperature > 0``; ``samples > 1`` with ``temperature == 0`` samples at 1.0.
    Generation of batch ``b+1`` overlaps the sandbox runs of batch ``b`` (``workers`` programs
    at a time).

    Returns:
        rows: one dict per sample, in record order: ``task_id``, ``sample``, ``completion``,
            ``code`` (what was executed after the prompt), ``full_program``, ``status``
            (passed/failed/timeout/error), ``passed``, ``detail``, ``seconds``, ``num_tokens``,
            ``truncated``.
        summary: :func:`summarize_code` (``pass@1``, ``pass@k``, ``num_timeouts``,
            ``num_errors``, ``wall_seconds``, ...).
    """
    task = CodeTask(workers=workers, timeout=timeout, memory_mb=memory_mb, chat=chat, system=system, sandbox=sandbox)
    return evaluate_task(task, model, tokenizer, records, samples=samples, temperature=temperature, top_p=top_p,
                         max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, progress=progress)


@dataclass
class CodeEvalConfig(EvalConfig):
    """``reasondistill eval code``: pass@1 / unbiased pass@k by sandboxed execution."""

    task: ClassVar[str] = "code"
    task_class: ClassVar[type[Task]] = CodeTask

    samples: int | None = None
    """n completions per problem: pass@1 is their mean, pass@k unbiased (default 1)."""
    timeout: float = 10.0
    """Seconds per program in the sandbox."""
    memory_mb: int = 1024
    """Memory limit per program in the sandbox (MiB)."""
    chat: bool = False
    """Ask through the chat template (CHAT_INSTRUCTION) instead of letting the model continue the raw
    prompt; always on with base_url (an endpoint answers conversations)."""

    def validate(self) -> None:
        super().validate()
        if self.timeout <= 0 or self.memory_mb < 1:
            raise ConfigError("timeout must be > 0 and memory_mb >= 1")
        if self.base_url and not self.chat:
            self.chat = True  # an endpoint answers conversations: the code prompt goes in as a chat instruction

    def make_task(self, model, tokenizer) -> CodeTask:
        return CodeTask(workers=self.workers or 2, timeout=self.timeout, memory_mb=self.memory_mb, chat=self.chat,
                        system=self.system)

    def summary_extras(self) -> dict:
        return {"chat": self.chat}
