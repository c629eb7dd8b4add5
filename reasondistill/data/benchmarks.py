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

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from .records import (DATA_DIR_ENV, DataError, _convert_answer, _join_question,  # noqa: F401
                      iter_json_objects, require_fields, resolve_data_dir, resolve_named_file)

__all__ = [
    "DataError",
    "BenchmarkSpec",
    "BENCHMARKS",
    "DATA_DIR_ENV",
    "load_jsonl",
    "load_benchmark",
    "resolve_data_dir",
]

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
