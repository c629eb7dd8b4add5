"""The one task interface of every evaluation, the one per-row loop that runs it, and the one
``EvalConfig`` that ``reasondistill eval`` and ``reasondistill compare`` build it from.

A :class:`Task` (math, code, choice, instruct: ``eval.tasks.eval_config_class(name).task``) says, in the
spirit of nanochat's ``tasks/common.py`` and lm-evaluation-harness's ``Task``:

- ``load(source, data_dir, first)``: its records, from a benchmark name or a file;
- ``prompt(record)``: what the model is asked (a conversation from :func:`chat_messages`, or an
  already rendered string that a local model continues as it is);
- ``score(record, output, sample)``: the row of one output, graded;
- ``summarize(rows, samples)``: the task's metrics over all rows;

and may override ``prepare`` (the records as shown, e.g. shuffled options), ``check`` (refuse a
model it cannot evaluate before anything runs), ``session`` (resources held for the run, e.g.
the sandbox's worker pool), ``batch_fields`` (per-output fields that need the batch's token ids,
e.g. the KL to a teacher), ``finish`` (work over all rows, e.g. waiting for the programs or
judging the answers) and ``outputs`` (what replaces sampling, e.g. likelihood scoring).

:func:`evaluate_task` is the loop every task runs on: sampling (:func:`generate_batches`: a
local model or an OpenAI-compatible endpoint, ``samples`` answers each, one seeded generator,
a progress bar), one ``score`` per output with the generation's ``num_tokens`` / ``truncated``
/ ``api_error``, then the summary with ``task``, ``benchmark``, the sampling settings and the
tail every summary shares (:func:`length_stats`: mean length, truncated share, API failures,
wall clock).

:class:`EvalConfig` holds the settings every task shares; each task module adds its own fields
in a subclass (``MathEvalConfig``, ``CodeEvalConfig``, ``ChoiceEvalConfig``,
``InstructEvalConfig``). They are built by ``config.build_config`` like the training configs
(documented fields, a YAML file, ``key=value`` overrides, unknown keys listed with a
suggestion); building one also applies its ``preset`` and the task's default sampling. Which
records a config reads is decided in one place, :func:`load_records`; :func:`run_eval` is what
``reasondistill eval TASK`` runs.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ..errors import ConfigError

__all__ = ["EvalConfig", "Task", "chat_messages", "evaluate_task", "generate_batches",
           "length_stats", "load_eval_model", "load_records", "run_eval", "write_results", "EVAL_TASKS"]

EVAL_TASKS = ("math", "code", "choice", "instruct")


# --------------------------------------------------------------------------------------------
# Prompts and sampling
# --------------------------------------------------------------------------------------------
def chat_messages(question: str, system: str | None = None) -> list[dict]:
    """The conversation of one question: an optional system message and the user's."""
    return ([{"role": "system", "content": system}] if system is not None else []) + \
        [{"role": "user", "content": question}]


def _render(tokenizer, prompt) -> str:
    """A local model's prompt text: a conversation through the chat template (``render_prompt``),
    a string as it is (already rendered, or a raw continuation)."""
    from ..models import render_prompt

    if isinstance(prompt, str):
        return prompt
    system = next((m["content"] for m in prompt if m["role"] == "system"), None)
    return render_prompt(tokenizer, next(m["content"] for m in prompt if m["role"] == "user"), system=system)


def generate_batches(model, tokenizer, records: list, make_prompt, *, samples: int = 1, temperature: float = 0.0,
                     top_p: float = 1.0, max_new_tokens: int = 64, batch_size: int = 64, seed: int = 0,
                     progress: bool = False, desc: str = "eval"):
    """Yield ``(chunk, roll, texts)`` for consecutive batches of ``records``, every evaluation's
    sampling: prompts from ``make_prompt(record)`` (a conversation from ``chat_messages``, or an
    already rendered string), ``samples`` answers each, one generator seeded with ``seed`` for
    the whole run; greedy unless ``samples > 1`` or ``temperature > 0`` (several samples at
    temperature 0 are drawn at 1.0). ``model`` may be an ``eval.api_model.APIModel``: then the
    conversations go to the endpoint and ``roll`` is an ``APIBatch`` (``lengths``, ``truncated``,
    ``group_index``, ``errors``)."""
    from ..rollout import generate
    from .api_model import APIModel

    if samples < 1:
        raise ValueError("samples must be >= 1")
    do_sample = samples > 1 or temperature > 0
    if samples > 1 and temperature <= 0:
        temperature = 1.0
    import torch

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
    """The tail every evaluation summary shares: ``mean_tokens`` and ``truncated_share`` over the
    rows that carry ``num_tokens``, ``api_failures`` (requests to an endpoint that still failed
    after their retries: graded wrong, counted here) when there are any, and ``wall_seconds``."""
    out: dict = {}
    tok = [r["num_tokens"] for r in rows if "num_tokens" in r]
    if tok:
        out["mean_tokens"] = sum(tok) / len(tok)
        out["truncated_share"] = sum(bool(r.get("truncated")) for r in rows) / len(tok)
    failures = sum(1 for r in rows if r.get("api_error"))
    if failures:
        out["api_failures"] = failures
    if wall is not None:
        out["wall_seconds"] = wall
    return out


# --------------------------------------------------------------------------------------------
# The task interface and the loop
# --------------------------------------------------------------------------------------------
class Task:
    """One benchmark family. A subclass sets ``name`` (what the summary's ``task`` says) and
    ``prefix`` (the output files ``<prefix>_examples.jsonl`` / ``<prefix>_summary.json``) and
    implements ``load``, ``prompt``, ``score`` and ``summarize``. A toy task::

        class Echo(Task):
            name = prefix = "echo"

            @classmethod
            def load(cls, source, data_dir=None, first=None, **options):
                return [{"id": str(i), "text": t} for i, t in enumerate(source.split(","))][:first]

            def prompt(self, record):
                return chat_messages("Repeat: " + record["text"])

            def score(self, record, output, sample):
                return {"id": record["id"], "output": output, "correct": record["text"] in output}

            def summarize(self, rows, samples):
                return {"accuracy": sum(r["correct"] for r in rows) / max(1, len(rows))}

        rows, summary = evaluate_task(Echo(), model, tokenizer, Echo.load("a,b"))
    """

    name: ClassVar[str] = "task"
    prefix: ClassVar[str] = "task"
    desc: ClassVar[str] = "eval"
    """The progress bar's label."""

    @classmethod
    def load(cls, source, data_dir=None, first: int | None = None, **options) -> list[dict]:
        """The records of ``source`` (a benchmark name or a file), at most the ``first`` N in the
        source's order; ``options`` are the task's loading settings (math: the field names)."""
        raise NotImplementedError

    def prepare(self, records: list[dict]) -> list[dict]:
        """The records as the model is shown them (default: as they are)."""
        return records

    def check(self, model) -> None:
        """Raise ``ValueError`` when this task cannot evaluate ``model`` (before anything runs)."""

    def session(self):
        """A context manager held around the whole loop (default: nothing)."""
        return contextlib.nullcontext()

    def prompt(self, record: dict):
        """A conversation (``chat_messages``) or an already rendered prompt string."""
        raise NotImplementedError

    def outputs(self, model, tokenizer, records: list[dict], **sampling):
        """Yield ``(chunk, batch, outputs)``: what :meth:`score` grades. Default: sampled answers
        (:func:`generate_batches`); ``batch`` carries ``group_index``, ``lengths``, ``truncated``
        (and ``errors`` from an endpoint). A task that generates nothing yields ``batch=None``
        and one output per record of the chunk."""
        yield from generate_batches(model, tokenizer, records, self.prompt, desc=self.desc, **sampling)

    def batch_fields(self, model, batch) -> list[dict] | None:
        """Per-output fields that need the batch itself (default: none)."""
        return None

    def score(self, record: dict, output, sample: int) -> dict:
        """The row of one output (``sample`` = which of the record's answers it is)."""
        raise NotImplementedError

    def finish(self, rows: list[dict], progress: bool = False) -> list[dict]:
        """The rows after the whole run (default: as they are)."""
        return rows

    def summarize(self, rows: list[dict], samples: int) -> dict:
        """The task's metrics over ``rows``."""
        raise NotImplementedError


def evaluate_task(task: Task, model, tokenizer, records: list[dict], *, samples: int = 1,
                  temperature: float = 0.0, top_p: float = 1.0, max_new_tokens: int = 512, batch_size: int = 32,
                  seed: int = 0, progress: bool = False, benchmark: str | None = None) -> tuple[list[dict], dict]:
    """Run ``task`` on ``records``: every output scored, one row each, in record order; returns
    (rows, summary). The summary is ``task`` and ``benchmark``, the task's own metrics, the
    sampling settings (``temperature``, ``top_p``, ``max_new_tokens``, ``seed``, unless the task
    reports its own) and :func:`length_stats`."""
    task.check(model)
    t0 = time.time()
    shown = task.prepare(records)
    rows: list[dict] = []
    with task.session():
        for chunk, batch, outputs in task.outputs(model, tokenizer, shown, samples=samples, temperature=temperature,
                                                  top_p=top_p, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                                  seed=seed, progress=progress):
            extra = task.batch_fields(model, batch) if batch is not None else None
            lengths = batch.lengths.tolist() if batch is not None else None
            errors = getattr(batch, "errors", None)
            for j, out in enumerate(outputs):
                k = int(batch.group_index[j]) if batch is not None else j
                row = task.score(chunk[k], out, j % samples if batch is not None else 0)
                if batch is not None:
                    row["num_tokens"], row["truncated"] = int(lengths[j]), bool(batch.truncated[j])
                    if errors and errors[j]:
                        row["api_error"] = errors[j]
                if extra is not None:
                    row.update(extra[j])
                rows.append(row)
        rows = task.finish(rows, progress=progress)
    summary = {"task": task.name, "benchmark": benchmark, **task.summarize(rows, samples)}
    for key, value in (("temperature", temperature), ("top_p", top_p), ("max_new_tokens", max_new_tokens),
                       ("seed", seed)):
        summary.setdefault(key, value)
    summary.update(length_stats(rows, time.time() - t0))
    return rows, summary


def write_results(out_dir: str | Path, rows: list[dict], summary: dict, prefix: str = "eval") -> tuple[Path, Path]:
    """``<prefix>_examples.jsonl`` (one row per line) and ``<prefix>_summary.json`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    per = out / f"{prefix}_examples.jsonl"
    with per.open("w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    summ = out / f"{prefix}_summary.json"
    summ.write_text(json.dumps(summary, indent=2) + "\n")
    return per, summ


# --------------------------------------------------------------------------------------------
# The config
# --------------------------------------------------------------------------------------------
_PRESET_KEYS = ("temperature", "top_p", "samples", "max_new_tokens", "limit", "sample_seed", "system",
                "question_template")


@dataclass
class EvalConfig:
    """Settings every evaluation task shares; a task's subclass adds its own fields."""

    task: ClassVar[str] = ""
    task_class: ClassVar[type[Task]] = Task
    default_sampling: ClassVar[tuple[float, float]] = (0.0, 1.0)
    """(temperature, top_p) when neither the user nor the preset sets them: greedy."""

    # --- the model under evaluation ---------------------------------------------------------
    model: str | None = None
    """Model folder, hub name or ``embedded:student``; or ``base_url`` instead."""
    base_url: str | None = None
    """Instead of ``model``: an OpenAI-compatible endpoint (``http(s)://HOST:PORT/v1``) as the model
    under evaluation (every task; choice with scoring=generate)."""
    api_model: str | None = None
    """With base_url: the model id at the endpoint."""
    api_key_env: str = "OPENAI_API_KEY"
    """With base_url: the environment variable holding the key (none sent when it is unset)."""
    api_timeout: float = 120.0
    """With base_url: seconds per read."""
    dtype: str = "float32"
    """Parameter dtype of a local model (and teacher): float32, bfloat16, float16."""
    device: str = "auto"
    """auto (cuda if available), cpu, cuda, cuda:1, ..."""

    # --- records ----------------------------------------------------------------------------
    benchmark: str | None = None
    """A benchmark name (math: gsm8k, math500, ..., or arith, the embedded task's held-out split;
    code: humaneval, mbpp, ...; choice: mmlu, ...; instruct: alpaca_eval): the data directory's
    file, else its Hugging Face Hub dataset. Or ``data`` instead."""
    data: str | None = None
    """Instead of ``benchmark``: a file (math: any JSONL with question_field/answer_field; code:
    the HumanEval schema; choice: a CSV/JSONL file or a folder of them; instruct: instruction,
    output)."""
    data_dir: str | None = None
    """Benchmark folder (else $REASONDISTILL_DATA_DIR)."""
    limit: int | None = None
    """A seeded random subsample of N records (sample_seed; recorded in the summary's
    ``selection``); for arith, how many problems are generated."""
    first: int | None = None
    """The first N records instead (the file's order); for arith, like limit."""
    sample_seed: int = 0
    """Seed of the limit subsample."""

    # --- generation -------------------------------------------------------------------------
    preset: str | None = None
    """A paper's evaluation protocol, filling what is left unset: pipeline, tgpo, tgpo-choice,
    vcrd, vcrd-code, vcrd-instruct (eval/selection.py)."""
    temperature: float | None = None
    """0 = greedy; default 0 (instruct: 0.8, the VCRD paper's)."""
    top_p: float | None = None
    """Nucleus sampling; default 1 (instruct: 0.95)."""
    max_new_tokens: int | None = None
    """Longest answer in tokens; default 512."""
    batch_size: int = 32
    """Prompts per generation batch (choice scoring=loglik: (prompt, option) pairs per forward)."""
    system: str | None = None
    """System prompt for every question (e.g. the answer format)."""
    seed: int = 0
    """Sampling seed (and arith's problems; choice: also the option shuffle)."""
    workers: int | None = None
    """Requests in flight to base_url (default 4); code: also programs run at once (default 2);
    instruct: also judge requests at once (default 4)."""

    # --- output -----------------------------------------------------------------------------
    output_dir: str = "runs/eval"
    """Where the per-example JSONL and the summary JSON are written."""
    progress: bool = True
    """Show progress bars."""

    def validate(self) -> None:
        """Called by ``config.build_config``: fill what the preset sets and was left unset (explicit
        values win), then the plain defaults, then check the combination."""
        from .selection import get_preset, preset_value

        preset = get_preset(self.preset)
        if preset and preset["task"] != self.task:
            raise ConfigError(f"preset {self.preset} is for eval {preset['task']}, not eval {self.task}")
        for key in _PRESET_KEYS:
            if not hasattr(self, key) or (key == "limit" and self.first is not None):
                continue  # a key of another task; --first replaces the preset's random subsample
            if key in ("temperature", "top_p") and getattr(self, "scoring", "generate") == "loglik":
                continue  # likelihood scoring samples nothing
            value = preset_value(preset, key, self.benchmark)
            if value is not None and getattr(self, key) in (None, {"sample_seed": 0}.get(key)):
                setattr(self, key, value)
        if preset.get("shuffle") is False and hasattr(self, "shuffle"):
            self.shuffle = False
        if getattr(self, "samples", 1) is None:
            self.samples = 1
        self.max_new_tokens = 512 if self.max_new_tokens is None else self.max_new_tokens
        if self.temperature is None:
            self.temperature = self.default_sampling[0]
        if self.top_p is None:
            self.top_p = self.default_sampling[1]
        if bool(self.benchmark) == bool(self.data):
            raise ConfigError(f"eval {self.task}: give exactly one of benchmark (--benchmark NAME) or data "
                              f"(--data FILE)")
        if self.limit is not None and self.first is not None:
            raise ConfigError("give limit (a seeded random subsample) or first (the first N), not both")
        for name in ("limit", "first"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if getattr(self, "samples", 1) < 1 or self.batch_size < 1 or self.max_new_tokens < 1:
            raise ConfigError("samples, batch_size and max_new_tokens must be >= 1")
        if self.base_url and self.model:
            raise ConfigError("give model (a local model) or base_url with api_model (an endpoint), not both")
        if self.base_url and not self.api_model:
            raise ConfigError("base_url needs api_model (the model id at the endpoint)")

    # --- what the run needs from the config ---------------------------------------------------
    @property
    def source(self) -> str:
        return str(self.benchmark or self.data)

    def load_options(self) -> dict:
        """Keyword arguments of the task's ``load`` (default: none)."""
        return {}

    def sampling(self) -> dict:
        """The loop's sampling settings (:func:`evaluate_task`)."""
        return {"samples": getattr(self, "samples", 1), "temperature": self.temperature, "top_p": self.top_p,
                "max_new_tokens": self.max_new_tokens, "batch_size": self.batch_size, "seed": self.seed}

    def make_task(self, model, tokenizer) -> Task:
        """The task these settings describe, for ``model`` (loading what it needs: a teacher, a judge)."""
        raise NotImplementedError

    def summary_extras(self) -> dict:
        """Settings of this task recorded in the summary beside the shared ones (default: none)."""
        return {}

    def model_label(self) -> str:
        return self.model or f"{self.api_model} at {self.base_url}"


def load_records(cfg: EvalConfig) -> tuple[list[dict], dict]:
    """``(records, selection)``: what an evaluation with ``cfg`` reads, and how it was chosen (the
    summary's ``selection``). The one selection rule: the embedded ``arith`` benchmark *generates*
    ``limit`` (or ``first``; default 400) problems seeded with ``seed`` (already a random draw); a
    benchmark or file is cut to its ``first`` N rows by the loader (multiple choice: spread over
    its subject files), or read whole and subsampled to a seeded random ``limit``
    (``selection.select_records``)."""
    from .selection import select_records

    if cfg.task == "math" and cfg.benchmark == "arith":
        from ..tasks import arith

        records = arith.generate("test", cfg.limit or cfg.first or 400, seed=cfg.seed)
        return records, {"num_records": len(records)}
    records = cfg.task_class.load(cfg.source, cfg.data_dir, first=cfg.first, **cfg.load_options())
    records, chosen = select_records(records, cfg.limit, cfg.first, cfg.sample_seed)
    if not records:
        raise ValueError(f"eval {cfg.task}: {cfg.source} holds no records")
    return records, chosen


def _require_model(cfg: EvalConfig) -> None:
    if bool(cfg.model) == bool(cfg.base_url):
        raise ConfigError(f"eval {cfg.task}: give model (--model PATH, a local model) or base_url "
                          f"(--base-url URL --api-model NAME, an endpoint)")


def load_eval_model(cfg: EvalConfig):
    """(model, tokenizer): the local model of ``cfg.model``, or the endpoint of ``cfg.base_url``
    (an ``APIModel``; tokenizer None)."""
    _require_model(cfg)
    if cfg.base_url:
        from .api_model import APIModel

        return APIModel(cfg.base_url, cfg.api_model, api_key_env=cfg.api_key_env, workers=cfg.workers or 4,
                        timeout=cfg.api_timeout), None
    from ..models import load_model, load_tokenizer, resolve_model

    path = resolve_model(cfg.model)
    return load_model(path, dtype=cfg.dtype, device=resolved_device(cfg.device)), load_tokenizer(path)


def resolved_device(device: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def run_eval(cfg: EvalConfig) -> tuple[list[dict], dict, tuple[Path, Path]]:
    """What ``reasondistill eval TASK`` does: the records (:func:`load_records`), the model, the
    task (with its teacher or judge), the loop, then ``<prefix>_examples.jsonl`` and
    ``<prefix>_summary.json`` in ``output_dir``. Returns (rows, summary, (examples, summary) paths)."""
    _require_model(cfg)  # before reading any data
    records, chosen = load_records(cfg)
    model, tokenizer = load_eval_model(cfg)
    task = cfg.make_task(model, tokenizer)
    import torch

    torch.manual_seed(cfg.seed)
    rows, summary = evaluate_task(task, model, tokenizer, records, **cfg.sampling(), progress=cfg.progress,
                                  benchmark=cfg.source)
    summary.update({"model": cfg.model_label(), "preset": cfg.preset, "selection": chosen, "limit": cfg.limit,
                    "system": cfg.system, **cfg.summary_extras()})
    paths = write_results(cfg.output_dir, rows, summary, prefix=task.prefix)
    return rows, summary, paths

