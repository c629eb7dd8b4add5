"""Benchmark loaders: JSON Lines files in their publishers' schemas -> uniform records.

A *record* is a plain dict with at least

- ``id`` (str): the row's own id field when it has one, else ``"{file stem}-{line number}"``;
- ``question`` (str): the problem text;
- ``answer`` (str, or list of str where several answers are accepted: OlympiadBench);
- ``source`` (str): the benchmark name (or the file stem for ad-hoc files);

plus extras named per benchmark (``solution``, ``subject``, ``level``, ...).

``load_jsonl`` maps any schema by field names; ``BENCHMARKS`` holds the mapping of each known
benchmark and ``load_benchmark(name)`` loads one from a data directory given as an argument or
by the ``REASONDISTILL_DATA_DIR`` environment variable; a benchmark whose file is not there comes
from its Hugging Face Hub dataset (``data/hub.py``: the table of every benchmark the papers
evaluate, and how each Hub schema maps onto these records).

Answer conversion: a list stays a list (each item converted); a number becomes a string,
integers without ``.0`` (145.0 -> "145"); a string that holds a worked solution is reduced to
its answer, the last ``\\boxed{}`` (MATH, Minerva) or the ``#### N`` line (GSM8K, thousands
separators removed: "1,080" -> "1080"), and the full text is kept as ``solution``. Other strings
are kept as they are. Rows are never dropped: two Gaokao-2023-En rows have an empty answer in
the published file and load with ``answer == ""``.

Errors are ``DataError`` (a ``ValueError``) naming the file and the 1-based line number.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from reasondistill.rewards import extract_boxed

__all__ = [
    "DataError",
    "BenchmarkSpec",
    "BENCHMARKS",
    "DATA_DIR_ENV",
    "load_jsonl",
    "load_benchmark",
    "resolve_data_dir",
]

DATA_DIR_ENV = "REASONDISTILL_DATA_DIR"


class DataError(ValueError):
    """A data file or benchmark request that cannot be loaded; the message says where and why."""


@dataclass(frozen=True)
class BenchmarkSpec:
    """Where a benchmark lives and how its schema maps onto a record."""

    file: str
    """File name inside the data directory."""
    question_field: str | tuple[str, ...]
    """Field holding the question, or several fields joined in order (SVAMP: Body, Question)."""
    answer_field: str
    """Field holding the answer, or a worked solution whose final answer is extracted."""
    id_field: str | None = None
    """Field holding the row id; None -> "{file stem}-{line number}"."""
    extras: Mapping[str, str] = field(default_factory=dict)
    """Extra record keys -> the row field they are copied from (absent fields are skipped)."""
    rows: int | None = None
    """Number of rows in the published file (checked by the tests, informative otherwise)."""


BENCHMARKS: dict[str, BenchmarkSpec] = {
    "gsm8k": BenchmarkSpec("gsm8k_test.jsonl", "question", "answer", rows=1319),
    "gsm8k_train": BenchmarkSpec("gsm8k_train.jsonl", "question", "answer", rows=7473),
    "math500": BenchmarkSpec(
        "math500.jsonl",
        "problem",
        "answer",
        id_field="unique_id",
        extras={"solution": "solution", "subject": "subject", "level": "level"},
        rows=500,
    ),
    "aime24": BenchmarkSpec(
        "aime24.jsonl", "problem", "answer", id_field="id", extras={"solution": "solution", "url": "url"}, rows=30
    ),
    "amc23": BenchmarkSpec("amc23.jsonl", "problem", "answer", id_field="id", extras={"url": "url"}, rows=40),
    "minerva_math": BenchmarkSpec(
        "minerva_math.jsonl", "problem", "solution", id_field="idx", extras={"subject": "type"}, rows=272
    ),
    "svamp": BenchmarkSpec(
        "svamp.jsonl",
        ("Body", "Question"),
        "Answer",
        id_field="ID",
        extras={"equation": "Equation", "type": "Type"},
        rows=1000,
    ),
    "gaokao2023en": BenchmarkSpec(
        "gaokao2023en.jsonl", "question", "answer", id_field="id", extras={"origin": "source"}, rows=385
    ),
    "olympiadbench": BenchmarkSpec(
        "olympiadbench.jsonl",
        "question",
        "final_answer",
        id_field="id",
        extras={
            "solution": "solution",
            "subject": "subfield",
            "answer_type": "answer_type",
            "unit": "unit",
            "is_multiple_answer": "is_multiple_answer",
        },
        rows=675,
    ),
}


# --------------------------------------------------------------------------------------------


def _number_to_str(x: int | float) -> str:
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e16:
        return str(int(x))
    return str(x)


_GSM8K_RE = re.compile(r"####\s*([^\n]*)")
_THOUSANDS_RE = re.compile(r"^[-+]?\$?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")


def _answer_from_text(text: str) -> tuple[str, bool]:
    """(answer, was_a_worked_solution) for one answer string."""
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed, True
    hits = _GSM8K_RE.findall(text)
    if hits:
        ans = hits[-1].strip().rstrip(".").strip()
        if _THOUSANDS_RE.match(ans):
            ans = ans.replace(",", "")
        return ans, True
    return text.strip(), False


def _convert_answer(value: Any) -> tuple[str | list[str], str | None]:
    """(answer, solution text if the answer came out of a worked solution)."""
    if isinstance(value, (list, tuple)):
        return [_convert_answer(v)[0] for v in value], None  # type: ignore[misc]
    if isinstance(value, (int, float)):
        return _number_to_str(value), None
    if value is None:
        return "", None
    text = str(value)
    ans, worked = _answer_from_text(text)
    return ans, (text if worked else None)


def _join_question(parts: Sequence[str]) -> str:
    """Join question pieces with one space; a piece that does not end a sentence gets a period
    (SVAMP bodies such as '... organized into 93 groups' followed by 'How big is ...?')."""
    out = []
    pieces = [p.strip() for p in parts if p and p.strip()]
    for i, p in enumerate(pieces):
        if i < len(pieces) - 1 and not p.endswith((".", "?", "!", ":", ";")):
            p += "."
        out.append(p)
    return " ".join(out)


def _fields(spec: str | Sequence[str]) -> list[str]:
    if isinstance(spec, str):
        return [f.strip() for f in spec.split(",") if f.strip()]
    return [str(f) for f in spec]


def load_jsonl(
    path: str | os.PathLike,
    question_field: str | Sequence[str],
    answer_field: str | None,
    id_field: str | None = None,
    limit: int | None = None,
    *,
    extras: Mapping[str, str] | Sequence[str] = (),
    source: str | None = None,
) -> list[dict]:
    """Load a JSON Lines file of problems into records (see the module docstring).

    Args:
        path: the ``.jsonl`` file.
        question_field: a field name, a comma-separated list of names, or a list of names;
            several fields are joined in order (see ``_join_question``).
        answer_field: the answer field (a list, a number, a string, or a worked solution); None
            for data without answers (e.g. teacher traces for SFT): the answer is then "".
        id_field: the id field; None, or a row where it is missing/null, gives
            ``"{file stem}-{line number}"``.
        limit: stop after this many records.
        extras: extra fields to copy: a list of names, or a mapping record key -> row field.
            Missing extra fields are skipped, not errors.
        source: the record's ``source``; default the file stem.

    Raises:
        DataError: a line that is not a JSON object (file, line number and the JSON error), or
            a row without a question/answer field (field, file, line and the fields present).
    """
    path = Path(path)
    q_fields = _fields(question_field)
    if not q_fields:
        raise DataError(f"{path}: no question field given")
    extra_map = dict(extras) if isinstance(extras, Mapping) else {f: f for f in extras}
    stem = path.stem
    source = source or stem
    records: list[dict] = []
    for where, line_no, row in iter_json_objects(path, limit):
        require_fields(row, [*q_fields, *([answer_field] if answer_field else [])], where)
        question = _join_question([str(row[f]) if row[f] is not None else "" for f in q_fields])
        answer, solution = _convert_answer(row[answer_field]) if answer_field else ("", None)
        rid = row.get(id_field) if id_field else None
        rec: dict[str, Any] = {
            "id": str(rid) if rid is not None and str(rid) != "" else f"{stem}-{line_no}",
            "question": question,
            "answer": answer,
            "source": source,
        }
        if solution is not None:
            rec["solution"] = solution
        for key, f in extra_map.items():
            if f in row and key not in rec:
                rec[key] = row[f]
        records.append(rec)
    return records


def iter_json_objects(path: str | os.PathLike, limit: int | None = None):
    """Yield ``(where, line_no, row)`` for each JSON object line of ``path`` (blank lines skipped),
    at most ``limit`` of them; ``where`` is ``"{path}, line {n}"`` for error messages.

    Raises ``DataError`` naming the file and the 1-based line for a file that cannot be opened, a
    line that is not JSON, or one that is not an object."""
    try:
        fh = open(path, encoding="utf-8")
    except OSError as e:
        raise DataError(f"{path}: cannot open: {e.strerror or e}") from e
    n = 0
    with fh:
        for line_no, line in enumerate(fh, start=1):
            if limit is not None and n >= limit:
                break
            if not line.strip():
                continue
            where = f"{path}, line {line_no}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: malformed JSON: {e}") from e
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
            n += 1
            yield where, line_no, row


def require_fields(row: dict, names, where: str, nonempty_str: bool = False) -> None:
    """``DataError`` naming the place and the fields present when a field is missing (or, with
    ``nonempty_str``, not a non-empty string)."""
    for f in names:
        if f not in row:
            raise DataError(f"{where}: missing field {f!r}; fields present: {', '.join(row) or '(none)'}")
        if nonempty_str and (not isinstance(row[f], str) or not row[f].strip()):
            raise DataError(f"{where}: field {f!r} must be a non-empty string, got {row[f]!r:.80}")


def resolve_named_file(name_or_path, names: Mapping[str, str], data_dir=None, kind: str = "benchmark") -> tuple[Path, str]:
    """``(path, source)`` of a benchmark given by name (a key of ``names``, the file under the data
    directory) or by path to a ``.jsonl`` file (source = its stem); ``DataError`` otherwise."""
    name = str(name_or_path)
    if name in names and not os.path.exists(name):
        path, source = resolve_data_dir(data_dir) / names[name], name
    else:
        path = Path(name_or_path).expanduser()
        if not path.suffix and not path.exists():
            raise DataError(f"unknown {kind} {name!r}; valid names: {', '.join(names)}, or a path to a .jsonl file")
        source = path.stem
    if not path.is_file():
        raise DataError(f"{kind} file {path} not found")
    return path, source


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The benchmark data directory: the argument, else ``$REASONDISTILL_DATA_DIR``."""
    if data_dir is None:
        data_dir = os.environ.get(DATA_DIR_ENV) or None
    if data_dir is None:
        raise DataError(
            "no benchmark data directory: pass data_dir=... (or --data-dir on the command line) "
            f"or set the environment variable {DATA_DIR_ENV} to the folder holding the .jsonl files"
        )
    d = Path(data_dir).expanduser()
    if not d.is_dir():
        raise DataError(f"benchmark data directory {d} does not exist or is not a directory")
    return d


def load_benchmark(name: str, data_dir: str | os.PathLike | None = None, limit: int | None = None) -> list[dict]:
    """Load a math benchmark by name: one of ``BENCHMARKS`` from ``data_dir`` (or
    ``$REASONDISTILL_DATA_DIR``) when its file is there, else (or for a name only the Hub table
    ``data.hub.DATA`` knows: aime25, cmath, ...) from its Hugging Face Hub dataset
    (``data.hub.load_hub_benchmark``; offline, a ``DataError`` saying how to prepare it ahead).

    Raises:
        DataError: an unknown name (listing every known one), or data that cannot be had.
    """
    from . import hub

    located = hub.locate(name, "math", {k: s.file for k, s in BENCHMARKS.items()}, data_dir)
    if located.where != "local":
        return hub.load_located(name, located, limit)
    spec = BENCHMARKS[name]
    return load_jsonl(
        located.path,
        spec.question_field,
        spec.answer_field,
        id_field=spec.id_field,
        limit=limit,
        extras=spec.extras,
        source=name,
    )
