"""The basics every benchmark loader shares (a leaf module: ``benchmarks`` and ``hub`` both
build on it): the data-directory rule, the error type, answer conversion, JSONL reading."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..rewards import extract_boxed


DATA_DIR_ENV = "REASONDISTILL_DATA_DIR"


class DataError(ValueError):
    """A data file or benchmark request that cannot be loaded; the message says where and why."""


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


def iter_json_objects(path: str | os.PathLike, limit: int | None = None, errors: list | None = None):
    """Yield ``(where, line_no, row)`` for each JSON object line of ``path`` (blank lines skipped),
    at most ``limit`` of them; ``where`` is ``"{path}, line {n}"`` for error messages.

    Raises ``DataError`` naming the file and the 1-based line for a file that cannot be opened, a
    line that is not JSON, or one that is not an object. With ``errors`` (a list) a bad line is
    not raised but appended to it as ``(where, line_no, message)`` and skipped, so a caller that
    must report bad rows and go on (the question bank, a resumed API job whose last line a kill
    cut short) reads the same way as one that stops at the first."""
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
                if errors is None:
                    raise DataError(f"{where}: malformed JSON: {e}") from e
                errors.append((where, line_no, f"malformed JSON: {e}"))
                continue
            if not isinstance(row, dict):
                if errors is None:
                    raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
                errors.append((where, line_no, f"expected a JSON object, got {type(row).__name__}"))
                continue
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


LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def answer_index(value: Any, choices: list[str], where: str, labels: list[str] | None = None) -> int:
    """The 0-based index of a multiple-choice answer given as an index, a letter (``B``, ``(b)``,
    ``[B].``), one of the record's own ``labels`` (ARC's ``1``..``4``), or the text of exactly one
    option; a one-element list is unwrapped. ``DataError`` naming ``where`` otherwise."""
    n = len(choices)
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    if isinstance(value, bool):
        raise DataError(f"{where}: answer {value!r} is neither a letter nor an option index")
    if isinstance(value, int):
        if 0 <= value < n:
            return value
        raise DataError(f"{where}: answer index {value} out of range for {n} options (0-based)")
    if isinstance(value, str):
        v = value.strip()
        if labels and v in labels:
            return labels.index(v)
        m = re.fullmatch(r"[\(\[]?\s*([A-Za-z])\s*[\)\]]?\s*\.?", v)
        if m and LETTERS.index(m.group(1).upper()) < n:
            return LETTERS.index(m.group(1).upper())
        hits = [j for j, c in enumerate(choices) if c.strip() == v]
        if len(hits) == 1:
            return hits[0]
        raise DataError(f"{where}: answer {value!r} is not one of the letters {LETTERS[:n]} "
                        f"(nor an option's label or the text of exactly one option)")
    raise DataError(f"{where}: answer {value!r} is neither a letter nor an option index")


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
