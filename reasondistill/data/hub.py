"""Benchmarks from the Hugging Face Hub: where each benchmark of the papers lives and how its
columns map onto our records.

``DATA`` is the table: benchmark name -> :class:`HubSpec` (Hub dataset id, config, split, the
field mapping and the task kind: ``math``, ``code``, ``choice`` or ``instruct``). It holds every
benchmark the four papers evaluate. :func:`hub_table_markdown` renders it for the README.

Where a benchmark comes from (the loaders of ``data/benchmarks.py`` and ``eval/*_eval.py`` call
:func:`locate` and then :func:`load_located`):

1. a local file in the data directory (``--data-dir`` / ``$REASONDISTILL_DATA_DIR``) under the
   name the local loader expects (``gsm8k_test.jsonl``, ``code/humaneval.jsonl``, ``mmlu/``, ...;
   for a name that only the Hub table knows, ``<name>.jsonl`` for math and ``<task>/<name>.jsonl``
   otherwise, one JSON object per line with the Hub dataset's columns). The data directory keeps
   precedence: nothing is downloaded when the file is there.
2. else a local copy of the Hub dataset under ``$REASONDISTILL_HUB_MIRROR`` (or ``mirror=``):
   ``<mirror>/<hub id>/<config or "default">/<split>.parquet`` (also ``.jsonl``, ``.json``,
   ``.csv`` or ``<split>-*.parquet`` shards), or a snapshot folder ``<mirror>/<hub id>/`` as
   ``hf download --repo-type dataset ID --local-dir <mirror>/ID`` writes it. Read with
   ``datasets.load_dataset`` like the Hub itself.
3. else the Hub: ``datasets.load_dataset(hub_id, config, split=split)`` (its cache first).

Offline: ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` set to 1 (read at
call time, so setting them after ``datasets`` was imported still counts), or a Hub endpoint that
does not answer one quick request, make ``datasets`` run in its offline mode (its cache only);
``datasets`` and ``huggingface_hub`` read those variables once, at import, so the loader switches
their module flags for the duration of the call. A benchmark that cannot be had is a
:class:`~reasondistill.data.benchmarks.DataError` naming the Hub id, config and split and the
three ways to prepare it ahead. ``datasets`` missing: a ``DataError`` saying
``pip install datasets``.

Field mapping: each record field has a tuple of candidate columns, the first present wins (a
candidate ``"A+B"`` joins columns A and B, SVAMP's ``Body+Question``); a required field with no
column present is a ``DataError`` naming the columns the data has. Records have the layout the
local loaders produce:

- math: ``id``, ``question``, ``answer`` (str, or a list of str), ``source``, ``solution`` when the
  answer came out of a worked solution, plus extras (``subject``, ``level``, ...);
- code: ``task_id``, ``id``, ``prompt``, ``entry_point``, ``test`` (defines ``check(candidate)``;
  ``code_eval.build_program`` runs ``prompt + completion + test + check(entry_point)`` in the
  sandbox), ``canonical_solution``, ``source``. HumanEval+'s Hub ``test`` is EvalPlus's own
  check over the base and the extra (plus) inputs; MBPP+'s ``test`` (its plus inputs) and
  ``test_imports`` become the test program the same way; MBPP's ``test_list`` asserts go into a
  ``check``; an MBPP prompt is the reference code's imports and the entry point's signature with
  the description and first assert as docstring, and its ``canonical_solution`` is the whole
  reference program (a full program: ``evaluate_solutions(..., extract=False)`` runs it after
  the prompt, which it redefines);
- choice: ``id``, ``question``, ``choices``, ``answer`` (letter), ``answer_index``, ``subject``,
  ``source`` (``choice_eval.load_choice_file``'s layout);
- instruct: ``id``, ``instruction``, ``reference``, ``source`` (+ ``dataset``, ``generator``).

Column names marked ``# unverified`` below come from dataset cards of copies, other projects'
loaders or the local files of the same origin, not from the Hub dataset itself (no network here);
the candidate lists cover the alternatives seen.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import logging
import os
import random
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from .records import (DATA_DIR_ENV, DataError, _convert_answer, _join_question, answer_index,
                      iter_json_objects, resolve_data_dir, resolve_named_file)

__all__ = [
    "DATA",
    "MIRROR_ENV",
    "TASKS",
    "HubSpec",
    "Located",
    "hub_names",
    "hub_table_markdown",
    "load_hub_benchmark",
    "load_located",
    "locate",
    "offline_requested",
]

logger = logging.getLogger(__name__)

MIRROR_ENV = "REASONDISTILL_HUB_MIRROR"
"""A folder holding local copies of Hub datasets (see the module docstring for its layout)."""

TASKS = ("math", "code", "choice", "instruct")
LETTERS = string.ascii_uppercase
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
_TRUE = {"1", "ON", "YES", "TRUE"}
PROBE_TIMEOUT = 5.0
"""Seconds the one reachability request to the Hub endpoint may take before the Hub counts as offline."""


@dataclass(frozen=True)
class HubSpec:
    """One benchmark on the Hub and how its columns map onto a record."""

    task: str
    """``math``, ``code``, ``choice`` or ``instruct``."""
    hub_id: str
    config: str | None
    """The dataset's config (subset); None for its default (only) one."""
    split: str
    """A split, or several joined with ``+`` (read as one)."""
    fields: Mapping[str, tuple[str, ...]]
    """Required record field (or converter input) -> candidate columns, the first present wins."""
    extras: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Optional fields, copied when a candidate column is present."""
    shape: str = "plain"
    """How rows become records beyond the field mapping: ``plain``, or for code ``humaneval``,
    ``mbpp``, ``mbpp_plus``, for choice ``gpqa`` (correct + incorrect answers), ``agieval``."""
    local: str = ""
    """File (or folder) in the data directory the local loader reads; default ``<name>.jsonl``
    (math) or ``<task>/<name>.jsonl`` (rows with the Hub's columns)."""
    data_files: str | None = None
    """A file of the Hub repository read with the ``json`` builder instead of the repository's
    configs (AlpacaEval: its repository still holds a loading script, which ``datasets`` >= 4
    refuses)."""
    gated: bool = False
    """The dataset's terms must be accepted on its Hub page and a token given (``hf auth login``)."""
    rows: int | None = None
    """Rows of the split (informative)."""


def _f(**kw: str | tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    return {k: (v,) if isinstance(v, str) else tuple(v) for k, v in kw.items()}


_OLYMPIAD_EXTRAS = _f(solution="solution", subject="subfield", answer_type="answer_type", unit="unit",
                      is_multiple_answer="is_multiple_answer")

DATA: dict[str, HubSpec] = {
    # ---- math ---------------------------------------------------------------------------------
    "gsm8k": HubSpec("math", "openai/gsm8k", "main", "test", _f(question="question", answer="answer"),
                     local="gsm8k_test.jsonl", rows=1319),
    "gsm8k_train": HubSpec("math", "openai/gsm8k", "main", "train", _f(question="question", answer="answer"),
                           local="gsm8k_train.jsonl", rows=7473),
    "math500": HubSpec("math", "HuggingFaceH4/MATH-500", None, "test",
                       _f(question="problem", answer="answer"),
                       _f(id="unique_id", solution="solution", subject="subject", level="level"),
                       local="math500.jsonl", rows=500),
    # unverified: math-ai/minervamath's columns (the local copy of the same 272 problems has
    # problem/solution/type/idx; other Hub copies have question/answer)
    "minerva_math": HubSpec("math", "math-ai/minervamath", None, "test",
                            _f(question=("problem", "question"), answer=("answer", "solution")),
                            _f(id=("idx", "id"), solution="solution", subject="type"),
                            local="minerva_math.jsonl", rows=272),
    # the config is the 675 English open-ended text-only competition-math problems
    "olympiadbench": HubSpec("math", "Hothan/OlympiadBench", "OE_TO_maths_en_COMP", "train",
                             _f(question="question", answer="final_answer"), {**_f(id="id"), **_OLYMPIAD_EXTRAS},
                             local="olympiadbench.jsonl", rows=675),
    # unverified: columns of the one JSONL file (assumed those of our local copy of the same file)
    "gaokao2023en": HubSpec("math", "MARIO-Math-Reasoning/Gaokao2023-Math-En", None, "train",
                            _f(question=("question", "problem"), answer="answer"), _f(id="id", origin="source"),
                            local="gaokao2023en.jsonl", rows=385),
    # train+test: the 1000 problems the papers evaluate (the Hub splits them 700/300)
    "svamp": HubSpec("math", "ChilleD/SVAMP", None, "train+test",
                     _f(question=("Body+Question", "question_concat"), answer="Answer"),
                     _f(id="ID", equation="Equation", type="Type"), local="svamp.jsonl", rows=1000),
    # unverified: math-ai/amc23's column names
    "amc23": HubSpec("math", "math-ai/amc23", None, "test", _f(question=("problem", "question"), answer="answer"),
                     _f(id="id", url="url"), local="amc23.jsonl", rows=40),
    # unverified: math-ai/aime24's column names (its answer may only be the \boxed{} of `solution`)
    "aime24": HubSpec("math", "math-ai/aime24", None, "test",
                      _f(question=("problem", "question"), answer=("answer", "solution")),
                      _f(id="id", solution="solution", url="url"), local="aime24.jsonl", rows=30),
    # unverified: math-ai/aime25's column names
    "aime25": HubSpec("math", "math-ai/aime25", None, "test",
                      _f(question=("problem", "question"), answer=("answer", "solution")),
                      _f(id="id", solution="solution"), rows=30),
    # unverified: the split name (CMATH has validation and test); columns as in derived copies
    "cmath": HubSpec("math", "weitianwen/cmath", None, "test", _f(question="question", answer="golden"),
                     _f(id="id", grade="grade", reasoning_step="reasoning_step"), rows=1098),
    # ---- code ---------------------------------------------------------------------------------
    "humaneval": HubSpec("code", "openai/openai_humaneval", None, "test",
                         _f(task_id="task_id", prompt="prompt", entry_point="entry_point", test="test"),
                         _f(canonical_solution="canonical_solution"), shape="humaneval",
                         local="code/humaneval.jsonl", rows=164),
    # `test` is EvalPlus's check(candidate) over the base and the plus inputs
    "humaneval_plus": HubSpec("code", "evalplus/humanevalplus", None, "test",
                              _f(task_id="task_id", prompt="prompt", entry_point="entry_point", test="test"),
                              _f(canonical_solution="canonical_solution"), shape="humaneval", rows=164),
    # config "full": the 500 test problems of the MBPP paper ("sanitized" names the columns
    # prompt / test_imports, also accepted)
    "mbpp": HubSpec("code", "google-research-datasets/mbpp", "full", "test",
                    _f(task_id="task_id", text=("text", "prompt"), code="code", tests="test_list"),
                    _f(setup=("test_setup_code", "test_imports")), shape="mbpp", rows=500),
    # unverified: whether `test` defines check() or asserts at module level (both handled)
    "mbpp_plus": HubSpec("code", "evalplus/mbppplus", None, "test",
                         _f(task_id="task_id", text=("prompt", "text"), code="code", tests="test_list", plus="test"),
                         _f(setup="test_imports"), shape="mbpp_plus", rows=378),
    # ---- multiple choice ----------------------------------------------------------------------
    "mmlu": HubSpec("choice", "cais/mmlu", "all", "test", _f(question="question", choices="choices", answer="answer"),
                    _f(subject="subject"), local="mmlu", rows=14042),
    "mmlu_pro": HubSpec("choice", "TIGER-Lab/MMLU-Pro", None, "test",
                        _f(question="question", choices="options", answer=("answer_index", "answer")),
                        _f(id="question_id", subject="category"), rows=12032),
    "arc_challenge": HubSpec("choice", "allenai/ai2_arc", "ARC-Challenge", "test",
                             _f(question="question", choices="choices", answer="answerKey"), _f(id="id"),
                             rows=1172),
    "gpqa_diamond": HubSpec("choice", "Idavidrein/gpqa", "gpqa_diamond", "train",
                            _f(question="Question", correct="Correct Answer", incorrect_1="Incorrect Answer 1",
                               incorrect_2="Incorrect Answer 2", incorrect_3="Incorrect Answer 3"),
                            _f(id="Record ID", subject=("Subdomain", "High-level domain")), shape="gpqa",
                            gated=True, rows=198),
    # AGIEval's SAT-Math (Zhong et al., the papers' citation), four options, graded by letter.
    # unverified: columns query/choices/gold (as lm-evaluation-harness's agieval tasks read them)
    "sat_math": HubSpec("choice", "dmayhem93/agieval-sat-math", None, "test",
                        _f(question=("query", "question"), choices=("choices", "options"),
                           answer=("gold", "answer", "label")), shape="agieval", rows=220),
    # ---- instruction following ------------------------------------------------------------------
    "alpaca_eval": HubSpec("instruct", "tatsu-lab/alpaca_eval", "alpaca_eval", "eval",
                           _f(instruction="instruction", reference="output"),
                           _f(id="id", dataset="dataset", generator="generator"),
                           local="instruct/alpaca_eval.jsonl", data_files="alpaca_eval.json", rows=805),
}


def _local_file(name: str, spec: HubSpec) -> str:
    return spec.local or (f"{name}.jsonl" if spec.task == "math" else f"{spec.task}/{name}.jsonl")


def hub_names(task: str | None = None) -> list[str]:
    """The names in ``DATA`` (of one task kind), sorted."""
    return sorted(n for n, s in DATA.items() if task is None or s.task == task)


# --------------------------------------------------------------------------------------------
# Where a benchmark comes from
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Located:
    """The outcome of :func:`locate`."""

    where: str
    """``local`` (the local loader reads ``path``), ``hub_file`` (``path`` holds rows with the
    Hub's columns) or ``hub`` (the mirror or the Hub)."""
    path: Path | None = None
    reason: str = ""
    """Why there is no local copy (``hub``)."""
    data_dir_given: bool = False
    """A data directory was given (argument or environment), so the Hub is a fallback worth a warning."""


def locate(name: str, task: str, local_names: Mapping[str, str], data_dir: str | os.PathLike | None = None, *,
           kind: str = "benchmark", path_hint: str = "") -> Located:
    """Where benchmark ``name`` of ``task`` is read from: its file in the data directory (a
    ``local_names`` entry -> the local loader; a Hub-only name -> rows in the Hub's schema), else
    the Hub table.

    Raises:
        DataError: a name in neither ``local_names`` nor ``DATA[task]`` (listing all known names,
            and saying so when the name is another task's); a local-only name without its file
            (the local loader's error: no data directory, or the file missing).
    """
    spec = DATA.get(name)
    if spec is not None and spec.task != task:
        spec = None
    if name not in local_names and spec is None:
        known = sorted(set(local_names) | set(hub_names(task)))
        msg = f"unknown {kind} {name!r}; valid names: {', '.join(known)}{path_hint}"
        if name in DATA:
            other = DATA[name].task
            msg += f" ({name!r} is a {other} benchmark: --task {other})"
        else:
            others = "; ".join(f"{t}: {', '.join(hub_names(t))}" for t in TASKS if t != task)
            msg += f" (other tasks' benchmarks: {others})"
        raise DataError(msg)
    rel = local_names.get(name) or _local_file(name, spec)  # type: ignore[arg-type]
    given = data_dir is not None or bool(os.environ.get(DATA_DIR_ENV))
    try:
        folder = resolve_data_dir(data_dir)
    except DataError as e:
        if spec is None:
            raise
        return Located("hub", reason=str(e), data_dir_given=given)
    path = folder / rel
    if path.exists():
        return Located("local" if name in local_names else "hub_file", path, data_dir_given=given)
    if spec is None:
        raise DataError(f"{kind} {name!r}: file {path} not found")
    return Located("hub", reason=f"{rel} is not in the data directory {folder}", data_dir_given=given)


def local_file_or_records(name_or_path, task: str, local_names: Mapping[str, str], data_dir=None, *,
                          kind: str, limit: int | None = None):
    """For a loader that reads one JSONL file: ``(path, source, None)`` for a local file (a path,
    or a name found in the data directory), ``(None, name, records)`` for a name read from the
    Hub (or its mirror)."""
    name = str(name_or_path)
    if not os.path.exists(name) and not os.path.splitext(name)[1]:  # a benchmark name, not a file
        located = locate(name, task, local_names, data_dir, kind=kind, path_hint=", or a path to a .jsonl file")
        if located.where != "local":
            return None, name, load_located(name, located, limit)
        return located.path, name, None
    path, source = resolve_named_file(name_or_path, local_names, data_dir, kind=kind)
    return path, source, None


def load_located(name: str, located: Located, limit: int | None = None) -> list[dict]:
    """The records of a benchmark :func:`locate` did not send to its local loader."""
    spec = DATA[name]
    if located.where == "hub_file":
        assert located.path is not None
        rows = (row for _, _, row in iter_json_objects(located.path, None if spec.task == "choice" else limit))
        return _convert(name, spec, rows, str(located.path), limit)
    if located.data_dir_given:
        logger.warning("benchmark %r: %s; loading %s from the Hugging Face Hub", name, located.reason, spec.hub_id)
    try:
        return load_hub_benchmark(name, limit=limit)
    except DataError as e:
        if not located.reason:
            raise
        raise DataError(f"{e}\n(no local copy: {located.reason})") from e


# --------------------------------------------------------------------------------------------
# Loading through `datasets`
# --------------------------------------------------------------------------------------------
def offline_requested() -> bool:
    """``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` is set to a true
    value now, or ``datasets`` started in offline mode."""
    if any(os.environ.get(v, "").strip().upper() in _TRUE for v in _OFFLINE_VARS):
        return True
    try:
        import datasets.config
    except ImportError:
        return False
    return bool(getattr(datasets.config, "HF_HUB_OFFLINE", False))


@contextlib.contextmanager
def _offline_mode(on: bool) -> Iterator[None]:
    """``datasets`` and ``huggingface_hub`` in offline mode for the block (both read their
    offline variables once, at import; their module flags are what they consult at run time).
    Not thread-safe: another thread's Hub call during the block is offline too."""
    if not on:
        yield
        return
    import datasets.config as dcfg
    import huggingface_hub.constants as hcst

    targets = [(dcfg, "HF_HUB_OFFLINE"), (dcfg, "HF_DATASETS_OFFLINE"), (hcst, "HF_HUB_OFFLINE")]
    saved = [(mod, attr, getattr(mod, attr)) for mod, attr in targets if hasattr(mod, attr)]
    for mod, attr, _ in saved:
        setattr(mod, attr, True)
    try:
        yield
    finally:
        for mod, attr, value in saved:
            setattr(mod, attr, value)


def _hub_unreachable(timeout: float = PROBE_TIMEOUT) -> str | None:
    """None when the Hub endpoint answers one request (any HTTP status), else why not. Without
    this, an unreachable Hub costs ``huggingface_hub``'s five retries (about 25 s) per dataset."""
    import huggingface_hub
    from huggingface_hub import constants

    try:
        huggingface_hub.get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception as e:  # noqa: BLE001 - DNS failure, refused connection, timeout, proxy error
        return f"{constants.ENDPOINT} does not answer ({type(e).__name__}: {e})"
    return None


def _coords(spec: HubSpec) -> str:
    return f"{spec.hub_id} (config {spec.config or 'default'!r}, split {spec.split!r})"


def _load_call(spec: HubSpec) -> str:
    if spec.data_files:
        return (f"datasets.load_dataset('json', data_files={{'{spec.split}': "
                f"'hf://datasets/{spec.hub_id}/{spec.data_files}'}}, split='{spec.split}')")
    cfg = f", '{spec.config}'" if spec.config else ""
    return f"datasets.load_dataset('{spec.hub_id}'{cfg}, split='{spec.split}')"


def _how_to_prepare(name: str, spec: HubSpec) -> str:
    cfg = spec.config or "default"
    gated = (" It is gated: accept its terms on https://huggingface.co/datasets/" + spec.hub_id +
             " and log in first (`hf auth login`, or set HF_TOKEN).") if spec.gated else ""
    return (f"To use it without network, prepare it ahead on a machine that has network.{gated} Either\n"
            f"  - run python -c \"import datasets; {_load_call(spec)}\", copy the Hugging Face cache "
            f"(~/.cache/huggingface, or $HF_HOME) to this machine and set HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1;\n"
            f"  - or run `hf download --repo-type dataset {spec.hub_id} --local-dir MIRROR/{spec.hub_id}` "
            f"(`huggingface-cli download` with an older huggingface_hub), or save the split as "
            f"MIRROR/{spec.hub_id}/{cfg}/{spec.split.split('+')[0]}.parquet, and set {MIRROR_ENV}=MIRROR;\n"
            f"  - or put {_local_file(name, spec)} in the benchmark data directory (--data-dir, or "
            f"${DATA_DIR_ENV}).")


_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}


def _split_files(folder: Path, split: str) -> list[Path]:
    for ext in _BUILDERS:
        if (folder / f"{split}{ext}").is_file():
            return [folder / f"{split}{ext}"]
    return sorted(folder.glob(f"{split}-*.parquet"))


def _mirror_args(spec: HubSpec, mirror: Path) -> tuple[tuple, dict] | None:
    """``load_dataset`` arguments that read ``spec`` from the mirror folder, or None."""
    base = mirror / spec.hub_id
    folder = base / (spec.config or "default")
    files = {part: _split_files(folder, part) for part in spec.split.split("+")}
    if all(files.values()):
        exts = {p.suffix for ps in files.values() for p in ps}
        if len(exts) == 1:
            builder = _BUILDERS[exts.pop()]
            return (builder,), {"data_files": {k: [str(p) for p in v] for k, v in files.items()}, "split": spec.split}
    if spec.data_files and (base / spec.data_files).is_file():
        builder = _BUILDERS.get(Path(spec.data_files).suffix, "json")
        return (builder,), {"data_files": {spec.split: str(base / spec.data_files)}, "split": spec.split}
    if base.is_dir() and not spec.data_files and any(base.iterdir()):
        return (str(base), spec.config), {"split": spec.split}
    return None


def _hub_args(spec: HubSpec) -> tuple[tuple, dict]:
    if spec.data_files:
        url = f"hf://datasets/{spec.hub_id}/{spec.data_files}"
        return (_BUILDERS.get(Path(spec.data_files).suffix, "json"),), {"data_files": {spec.split: url},
                                                                        "split": spec.split}
    return (spec.hub_id, spec.config), {"split": spec.split}


def _is_connection_error(e: BaseException) -> bool:
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (ConnectionError, TimeoutError)) or type(e).__name__ in (
                "OfflineModeIsEnabled", "LocalEntryNotFoundError", "ConnectError", "ConnectTimeout"):
            return True
        e = e.__cause__ or e.__context__
    return False


def load_hub_benchmark(name: str, limit: int | None = None, cache_dir: str | os.PathLike | None = None, *,
                       mirror: str | os.PathLike | None = None) -> list[dict]:
    """Load benchmark ``name`` of ``DATA`` with ``datasets``: from the mirror folder (``mirror``,
    else ``$REASONDISTILL_HUB_MIRROR``) when it holds the dataset, else from the Hub (or the
    ``datasets`` cache, ``cache_dir`` or ``$HF_DATASETS_CACHE``), and map its rows onto records.

    ``limit``: the first ``limit`` rows (choice: spread over subjects round-robin, as the local
    loader spreads over subject files).

    Raises:
        DataError: unknown name (listing the known ones); ``datasets`` not installed; the dataset
            unavailable (offline, not cached, gated, unknown config or split: the message names the
            Hub id, config and split and how to prepare it ahead); a required column missing (the
            columns found); a row that does not convert.
    """
    spec = DATA.get(name)
    if spec is None:
        raise DataError(f"unknown Hub benchmark {name!r}; known: {', '.join(hub_names())}")
    try:
        import datasets
    except ImportError as e:
        raise DataError(f"benchmark {name!r} comes from the Hugging Face Hub dataset {_coords(spec)}, which needs "
                        f"the `datasets` package: pip install datasets (or put {_local_file(name, spec)} in the "
                        f"data directory, --data-dir or ${DATA_DIR_ENV})") from e
    offline = offline_requested()
    cache_dir = cache_dir or os.environ.get("HF_DATASETS_CACHE") or None
    mirror = mirror or os.environ.get(MIRROR_ENV) or None
    mirror_note = ""
    if mirror is not None:
        mirror_path = Path(mirror).expanduser()
        found = _mirror_args(spec, mirror_path)
        if found is not None:
            args, kwargs = found
            where = f"{_coords(spec)} from the mirror {mirror_path}"
            with _offline_mode(True):  # local files: nothing to fetch
                ds = _call_load(datasets, name, spec, args, {**kwargs, "cache_dir": cache_dir}, where, True, "",
                                from_mirror=True)
            return _records_from_dataset(name, spec, ds, where, limit)
        mirror_note = f" (nothing for it under {MIRROR_ENV}={mirror_path})"
    why_offline = "offline mode is on (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)" if offline else ""
    if not offline:
        unreachable = _hub_unreachable()
        if unreachable:
            offline, why_offline = True, unreachable
    args, kwargs = _hub_args(spec)
    with _offline_mode(offline):
        ds = _call_load(datasets, name, spec, args, {**kwargs, "cache_dir": cache_dir}, _coords(spec), offline,
                        why_offline + mirror_note)
    return _records_from_dataset(name, spec, ds, _coords(spec), limit)


def _call_load(datasets, name: str, spec: HubSpec, args: tuple, kwargs: dict, where: str, offline: bool,
               why_offline: str, *, from_mirror: bool = False):
    try:
        return datasets.load_dataset(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - every failure of the download becomes one clear DataError
        detail = f"{type(e).__name__}: {e}".strip()
        if len(detail) > 600:
            detail = detail[:600] + " ..."
        text = str(e).lower()
        if from_mirror:
            head = f"benchmark {name!r}: cannot read the Hugging Face Hub dataset {where}"
        elif "gated" in text or "authenticated" in text or "ask for access" in text:
            head = f"benchmark {name!r}: the Hugging Face Hub dataset {where} is gated and this machine has no access"
        elif offline or _is_connection_error(e):
            head = (f"benchmark {name!r} needs the Hugging Face Hub dataset {where}, which is not available "
                    f"offline{': ' + why_offline if why_offline else ''}")
        else:
            head = f"benchmark {name!r}: cannot load the Hugging Face Hub dataset {where}"
        raise DataError(f"{head} [{detail}].\n{_how_to_prepare(name, spec)}") from e


def _records_from_dataset(name: str, spec: HubSpec, ds, where: str, limit: int | None) -> list[dict]:
    if limit is not None and spec.task != "choice" and len(ds) > limit:
        ds = ds.select(range(limit))
    return _convert(name, spec, iter(ds), where, limit)


# --------------------------------------------------------------------------------------------
# Rows -> records
# --------------------------------------------------------------------------------------------
def _pick(row: Mapping[str, Any], candidates: Sequence[str]) -> str | None:
    """The first candidate whose column(s) the row has (``A+B``: both)."""
    for c in candidates:
        if all(part in row for part in c.split("+")):
            return c
    return None


def _value(row: Mapping[str, Any], column: str) -> Any:
    parts = column.split("+")
    if len(parts) == 1:
        return row[column]
    return _join_question([str(row[p]) if row[p] is not None else "" for p in parts])


def _fields(spec: HubSpec, row: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Field -> value for the required fields and the extras present (missing extras absent)."""
    out: dict[str, Any] = {}
    for key, cands in spec.fields.items():
        col = _pick(row, cands)
        if col is None:
            raise DataError(f"{where}: no column for {key!r} (tried {', '.join(cands)}); "
                            f"columns found: {', '.join(row) or '(none)'}")
        out[key] = _value(row, col)
    for key, cands in spec.extras.items():
        col = _pick(row, cands)
        if col is not None and key not in out:
            out[key] = _value(row, col)
    return out


def _convert(name: str, spec: HubSpec, rows: Iterable[Mapping[str, Any]], where: str,
             limit: int | None) -> list[dict]:
    convert = {"math": _math_record, "code": _code_record, "choice": _choice_record,
               "instruct": _instruct_record}[spec.task]
    records = [convert(name, spec, row, i, f"{where}, row {i + 1}") for i, row in enumerate(rows)]
    if spec.task == "choice" and limit is not None:
        records = _round_robin(records, limit)
    return records


def _rid(value: Any, name: str, i: int) -> str:
    return str(value) if value is not None and str(value) != "" else f"{name}-{i + 1}"


def _math_record(name: str, spec: HubSpec, row: Mapping[str, Any], i: int, where: str) -> dict:
    f = _fields(spec, row, where)
    answer, solution = _convert_answer(f.pop("answer"))
    question = f.pop("question")
    rec: dict[str, Any] = {"id": _rid(f.pop("id", None), name, i),
                           "question": str(question) if question is not None else "", "answer": answer,
                           "source": name}
    if solution is not None:
        rec["solution"] = solution
    for k, v in f.items():
        rec.setdefault(k, v)
    return rec


def _instruct_record(name: str, spec: HubSpec, row: Mapping[str, Any], i: int, where: str) -> dict:
    f = _fields(spec, row, where)
    for k in ("instruction", "reference"):
        if not isinstance(f[k], str) or not f[k].strip():
            raise DataError(f"{where}: field {k!r} must be a non-empty string, got {f[k]!r:.80}")
    rec = {"id": _rid(f.pop("id", None), name, i), "instruction": f.pop("instruction"),
           "reference": f.pop("reference"), "source": name}
    rec.update(f)
    return rec


# ---- code -------------------------------------------------------------------------------------
def _check_from_asserts(setup: str, asserts: Sequence[str]) -> str:
    """A test program whose ``check(candidate)`` runs MBPP's asserts (they call the function by
    its name, defined before the test in ``build_program``'s program)."""
    body = "".join(f"    {line}\n" for a in asserts for line in str(a).splitlines() if line.strip()) or "    pass\n"
    head = setup.rstrip() + "\n\n\n" if setup.strip() else ""
    return head + "def check(candidate):\n" + body


def _setup_text(value: Any) -> str:
    if value is None:
        return ""
    return "\n".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _mbpp_entry_point(code: str, tests: Sequence[str], where: str) -> str:
    defined = re.findall(r"^(?:async\s+)?def\s+([A-Za-z_]\w*)\s*\(", code, re.MULTILINE)
    for t in tests:
        for called in re.findall(r"([A-Za-z_]\w*)\s*\(", str(t)):
            if called in defined:
                return called
    if defined:
        return defined[-1]
    raise DataError(f"{where}: cannot tell the entry point: the reference code defines no function")


def _signature(code: str, entry: str) -> tuple[str | None, str]:
    """(the ``def`` line of ``entry`` in the reference code, its top-level imports) via ``ast``."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return None, ""
    imports = "".join((ast.get_source_segment(code, n) or "") + "\n" for n in tree.body
                      if isinstance(n, (ast.Import, ast.ImportFrom)))
    for n in tree.body:
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == entry:
            head = "async def" if isinstance(n, ast.AsyncFunctionDef) else "def"
            ret = f" -> {ast.unparse(n.returns)}" if n.returns else ""
            return f"{head} {n.name}({ast.unparse(n.args)}){ret}:", imports
    return None, imports


def _mbpp_prompt(text: str, example: str | None, code: str, entry: str) -> str:
    """A HumanEval-style prompt: the reference code's imports and the entry point's signature,
    with the description and the first assert as its docstring (so a model continues the body,
    as on HumanEval); only the docstring when the signature cannot be read."""
    desc = text.strip().strip('"').strip().replace('"""', "'''")  # a prompt already in quotes too
    if example and "assert" not in desc:
        desc += "\n" + example.strip()
    header, imports = _signature(code, entry)
    if header is None:
        return '"""\n' + desc + '\n"""\n'
    doc = "".join(f"    {line}\n" if line.strip() else "\n" for line in desc.splitlines())
    return (imports + "\n" if imports else "") + header + '\n    """\n' + doc + '    """\n'


def _code_record(name: str, spec: HubSpec, row: Mapping[str, Any], i: int, where: str) -> dict:
    f = _fields(spec, row, where)
    if spec.shape == "humaneval":
        if "plus_input" in row:
            raise DataError(f"{where}: this is EvalPlus's release file (a plus_input column): its `test` holds only "
                            f"the base tests; use the Hub dataset {spec.hub_id}, whose `test` runs the base and the "
                            f"plus inputs")
        rec = {**row, **f}
    else:
        tests = [str(t) for t in (f["tests"] or [])]
        task_id = str(f["task_id"])
        task_id = task_id if "/" in task_id else f"Mbpp/{task_id}"
        code = str(f["code"])
        setup = _setup_text(f.get("setup"))
        if spec.shape == "mbpp_plus":
            plus = str(f["plus"])
            test = (setup.rstrip() + "\n\n" if setup.strip() else "") + plus.rstrip() + "\n"
            if not re.search(r"^def\s+check\s*\(", plus, re.MULTILINE):
                test += "\n\ndef check(candidate):\n    pass  # the assertions above ran when the test was loaded\n"
        else:
            test = _check_from_asserts(setup, tests)
        entry = _mbpp_entry_point(code, tests, where)
        rec = {"task_id": task_id, "prompt": _mbpp_prompt(str(f["text"]), tests[0] if tests else None, code, entry),
               "entry_point": entry, "test": test, "canonical_solution": code, "text": str(f["text"]),
               "test_list": tests}
    for k in ("task_id", "prompt", "entry_point", "test"):
        if not isinstance(rec.get(k), str) or not rec[k].strip():
            raise DataError(f"{where}: field {k!r} must be a non-empty string, got {rec.get(k)!r:.80}")
    if not re.fullmatch(r"[A-Za-z_]\w*", rec["entry_point"]):
        raise DataError(f"{where}: entry_point {rec['entry_point']!r} is not a Python identifier")
    rec["id"] = rec["task_id"]
    rec["source"] = name
    return rec


# ---- multiple choice --------------------------------------------------------------------------
_OPTION_LABEL = re.compile(r"^\s*\(?\s*([A-Z])\s*[\).:]\s*")


def _strip_labels(choices: list[str]) -> list[str]:
    """Remove "(A)" / "A." / "A)" prefixes when every option carries its own letter in order."""
    ms = [_OPTION_LABEL.match(c) for c in choices]
    if all(m and m.group(1) == LETTERS[j] for j, m in enumerate(ms)):
        return [c[m.end():].strip() for c, m in zip(choices, ms)]  # type: ignore[union-attr]
    return choices


def _choice_record(name: str, spec: HubSpec, row: Mapping[str, Any], i: int, where: str) -> dict:
    f = _fields(spec, row, where)
    rid = _rid(f.get("id"), name, i)
    labels = None
    if spec.shape == "gpqa":
        correct = str(f["correct"]).strip()
        options = [correct] + [str(f[f"incorrect_{k}"]).strip() for k in (1, 2, 3)]
        # the Hub lists the correct answer first: a fixed permutation per record id, so the stored
        # order carries no position hint (evaluate_choice shuffles again per seed)
        seed = int.from_bytes(hashlib.sha256(f"{name}\x00{rid}".encode()).digest()[:8], "big")
        perm = list(range(len(options)))
        random.Random(seed).shuffle(perm)
        choices = [options[p] for p in perm]
        index = perm.index(0)
    else:
        raw = f["choices"]
        if isinstance(raw, Mapping) and "text" in raw:  # ARC: {"text": [...], "label": [...]}
            labels = [str(x).strip() for x in raw.get("label") or []] or None
            raw = raw["text"]
        elif isinstance(raw, Mapping):
            keys = sorted(raw)
            raw = [raw[k] for k in keys]
        if not isinstance(raw, (list, tuple)):
            raise DataError(f"{where}: the options must be a list, got {type(raw).__name__}")
        choices = _strip_labels([str(c) for c in raw])
        index = answer_index(f["answer"], choices, where, labels)
    question = f["question"]
    if spec.shape == "agieval" and isinstance(question, str):
        # AGIEval's query: "Q: <question> Answer Choices: (A)... \nA: Among A through D, the answer is"
        question = re.sub(r"^\s*Q:\s*", "", question)
        question = re.split(r"\s*Answer Choices:", question, maxsplit=1)[0].strip()
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"{where}: empty or non-string question")
    if not 2 <= len(choices) <= len(LETTERS):
        raise DataError(f"{where}: need 2 to {len(LETTERS)} options, got {len(choices)}")
    subject = str(f["subject"]) if f.get("subject") not in (None, "") else name
    return {"id": rid, "question": question, "choices": choices, "answer": LETTERS[index], "answer_index": index,
            "subject": subject, "source": name}


def _round_robin(records: list[dict], limit: int) -> list[dict]:
    """At most ``limit`` records taken one subject at a time (subjects in order of appearance)."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r["subject"], []).append(r)
    lists = list(groups.values())
    out = [recs[k] for k in range(max(map(len, lists), default=0)) for recs in lists if k < len(recs)]
    return out[:limit]


# --------------------------------------------------------------------------------------------
# README table
# --------------------------------------------------------------------------------------------
def _fields_cell(spec: HubSpec) -> str:
    def cands(cs: tuple[str, ...]) -> str:
        return " or ".join(f"`{c}`" for c in cs)

    parts = [f"{k} ← {cands(v)}" for k, v in spec.fields.items()]
    if "id" in spec.extras:
        parts.append(f"id ← {cands(spec.extras['id'])}")
    if spec.data_files:
        parts.append(f"file `{spec.data_files}`")
    return "; ".join(parts)


def hub_table_markdown() -> str:
    """The Markdown table of ``DATA`` (name, Hub id, config, split, fields, task) for the README."""
    lines = ["| name | Hub id | config | split | fields | task |", "|---|---|---|---|---|---|"]
    for name, s in DATA.items():
        hub = f"`{s.hub_id}`" + (" (gated)" if s.gated else "")
        lines.append(f"| {name} | {hub} | {s.config or '(default)'} | {s.split} | {_fields_cell(s)} | {s.task} |")
    return "\n".join(lines) + "\n"
