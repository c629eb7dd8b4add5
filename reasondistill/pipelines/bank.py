"""``reasondistill bank``: heterogeneous math sources -> one question bank (sft_then_grpo_api_teachers.md §3.1, Table 3.1).

Every source is read by an *adapter* into rows of the one target layout, one JSON object per
line of the output::

    {"id": "math-q-00001", "question": "...", "final_answer": "...", "reasoning": "...",
     "source": "numina", "meta": {"source": "olympiads"}}

``reasoning`` is present only where the source has one (GSM8K's worked solution before
``####``, NuminaMath's and MATH's solution before the last ``\\boxed{}``). ``meta`` keeps the
source's own metadata columns under their own names (Table 3.1's "metadata"; NuminaMath's
sub-source is its ``source`` column, so it is ``meta.source`` while the top-level ``source`` is
the bank's name for the input).

Inputs (``--input SPEC``, repeatable; ``SPEC`` is ``KIND:PATH`` or a benchmark name):

- ``gsm8k:FILE`` (the paper's "OpenAIMath": 7,473 GSM8K train problems): ``question``;
  ``answer`` = worked solution ending ``\\n#### N``; the answer is what follows ``####``
  (thousands separators dropped), the reasoning what precedes it.
- ``numina:FILE`` / ``math:FILE`` (Parquet, JSONL or JSON): ``problem``; ``solution``, whose last
  ``\\boxed{}`` is the answer and whose text before that box the reasoning. Two readings of
  "all the preceding text": (a) the text before the last ``\\boxed`` command (default; a dangling
  ``$`` / ``\\(`` / ``\\[`` that opened the box's math is dropped with it), (b) the solution with
  only the box cut out. NuminaMath keeps ``meta.source`` (its nine sub-sources, to stratify by),
  MATH keeps ``level``, ``type``, ``subject``, ``unique_id``.
- ``jeebench:FILE`` (its ``dataset.json``, a JSON array): ``question``; ``gold``; only rows with
  ``subject == math`` (the paper's 236 of 515); ``description``, ``index``, ``subject``, ``type``
  kept in ``meta``.
- a benchmark name (``gsm8k``, ``gsm8k_train``, ``math500``, ``aime24``, ... any math benchmark
  of ``data/benchmarks.py`` / ``data/hub.py``), also written ``benchmark:NAME``: read from the
  data directory (``--data-dir`` / ``$REASONDISTILL_DATA_DIR``) by ``load_benchmark`` (else its
  Hub dataset), answers converted by its rules; a worked ``solution`` gives the reasoning.
- ``jsonl:FILE``, ``json:FILE``, ``parquet:FILE`` (or a plain path: kind from the extension):
  the generic adapter. Field mapping ``--field question=COLUMN`` / ``final_answer=COLUMN`` /
  ``reasoning=COLUMN`` / ``id=COLUMN`` (defaults: ``question`` or ``problem``; ``final_answer``,
  ``answer`` or ``gold``; ``reasoning``; ``id``); a column that holds a worked solution is
  reduced to its answer by the project's one answer rule (``data.records._convert_answer``:
  the last ``\\boxed{}``, else ``#### N``) and, without a mapped reasoning column, the rest of the
  solution becomes the reasoning. ``--meta COL,COL`` (or ``*``: every unmapped column) fills
  ``meta``.
- ``hub:DATASET_ID`` (or ``hub:FOLDER``): a Hugging Face dataset through
  ``datasets.load_dataset(ID, --config, split=--split)``, with the generic field mapping; the
  offline rules of ``data/hub.py`` apply (``HF_HUB_OFFLINE=1`` uses the cache only; an
  unreachable Hub gives a message saying how to fetch it ahead).

Per input, after it: ``--name NAME`` (the bank's ``source``; default the adapter's name, the
benchmark name or the file stem), ``--field``, ``--meta``, ``--where COL=V1|V2`` /
``--where COL!=V`` (all must hold; compared as stripped, case-insensitive strings; rows that
fail are counted as ``filtered``), ``--split``, ``--config``.

Then, in this order (each step counted in the summary):

1. bad rows (a line that is not JSON, a non-object item, a missing or non-text field, a
   solution without its answer marker) are reported with file and line (or Parquet/Hub row)
   and skipped: printed to stderr and listed in the summary, never silently dropped;
2. entries whose question or final answer is empty are dropped (``empty``, locations listed);
3. questions are de-duplicated case-insensitively (``casefold`` after collapsing runs of
   whitespace; "strict deduplication regardless of letter case"), the first occurrence in
   input order winning (``duplicates``, counted against the dropped row's source);
4. ``--per-source N`` (every source) or ``--per-source NAME=N`` caps a source at N, a seeded
   random sample, stratified by ``--stratify-field`` (a ``meta`` key) when given, e.g.
   NuminaMath's 3,000 balanced over its nine sub-sources;
5. ids ``math-q-00001``, ... are assigned in that order (input order, then file order);
6. ``--total N`` stratifies the bank by source (and ``--stratify-field``) down to N,
   proportionally (largest remainders), ids kept: the paper's 4,125 -> 3,000.

Deterministic: the same inputs and ``--seed`` give the same file byte for byte (each source is
sampled with its own generator seeded by ``(seed, source)``, so adding a source does not change
another source's sample). The output is written atomically; ``BANK.summary.json`` beside it
holds the counts, the bad rows and the settings.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import sys
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from ..data.records import DataError, _convert_answer, iter_json_objects, require_fields
from ..rewards import _box_contents

__all__ = [
    "ADAPTERS",
    "BadRow",
    "Source",
    "SourceReport",
    "build_bank",
    "dedupe_key",
    "parse_input",
    "split_solution",
    "stratified_sample",
    "write_jsonl_atomic",
]

ID_PREFIX = "math-q-"
ID_WIDTH = 5
MAX_PRINTED_BAD = 20
"""Bad rows printed to stderr (all of them are in the summary file)."""

GENERIC_KINDS = ("jsonl", "json", "parquet", "hub")
ADAPTERS = ("gsm8k", "numina", "math", "jeebench", "benchmark", *GENERIC_KINDS)
_EXT_KIND = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet"}

# record field -> candidate columns (first present wins), per adapter
_GENERIC_FIELDS = {"question": ("question", "problem"), "final_answer": ("final_answer", "answer", "gold"),
                   "reasoning": ("reasoning",), "id": ("id",)}
_ADAPTER_FIELDS = {
    "gsm8k": {"question": ("question",), "final_answer": ("answer",)},
    "numina": {"question": ("problem",), "final_answer": ("solution",)},
    "math": {"question": ("problem",), "final_answer": ("solution",), "id": ("unique_id",)},
    "jeebench": {"question": ("question",), "final_answer": ("gold",), "id": ("index",)},
}
_ADAPTER_META = {"gsm8k": [], "numina": ["source"], "math": ["level", "type", "subject", "unique_id"],
                 "jeebench": ["description", "index", "subject", "type"]}
_ADAPTER_WHERE = {"jeebench": ["subject=math"]}
_ANSWER_RULE = {"gsm8k": "gsm8k", "numina": "boxed", "math": "boxed"}
"""Adapters whose answer column must be a worked solution with this marker (else a bad row)."""


class _BadRow(Exception):
    """A row that cannot become a bank entry (internal: caught, reported, counted)."""


@dataclass
class BadRow:
    where: str
    """``FILE, line N`` (JSONL, JSON array), ``FILE, row N`` (Parquet, Hub): 1-based."""
    message: str


@dataclass
class Source:
    """One ``--input`` and its options (see the module docstring)."""

    kind: str
    path: str
    """File, benchmark name, Hub id or dataset folder."""
    name: str | None = None
    fields: dict[str, str] = field(default_factory=dict)
    """Record field (question, final_answer, reasoning, id) -> column."""
    where: list[str] = field(default_factory=list)
    meta: list[str] | None = None
    """Columns kept in ``meta``; None: the adapter's default; ``["*"]``: every unmapped column."""
    split: str = "train"
    config: str | None = None

    @property
    def label(self) -> str:
        """The bank's ``source`` for this input: ``--name``, else the benchmark name, the named
        adapter (``gsm8k``, ``numina``, ``math``, ``jeebench``) or the file / folder stem."""
        if self.name:
            return self.name
        if self.kind == "benchmark":
            return self.path
        if self.kind in _ADAPTER_FIELDS:
            return self.kind
        return Path(self.path.rstrip("/")).stem or self.path


@dataclass
class SourceReport:
    """What happened to one source's rows."""

    name: str
    inputs: list[str] = field(default_factory=list)
    rows: int = 0
    """Rows read (good or bad)."""
    bad: int = 0
    filtered: int = 0
    empty: int = 0
    duplicates: int = 0
    kept: int = 0
    """After de-duplication."""
    capped: int = 0
    """Dropped by ``--per-source``."""
    in_bank: int = 0
    """Rows with an id (before ``--total``)."""
    written: int = 0


def parse_input(spec: str, data_dir: str | os.PathLike | None = None) -> Source:
    """A ``--input`` value as a :class:`Source`: ``KIND:PATH`` with a known kind, a benchmark
    name, or a path whose extension names the kind. ``DataError`` listing the choices otherwise."""
    from ..data.benchmarks import BENCHMARKS
    from ..data.hub import hub_names

    kind, sep, rest = spec.partition(":")
    if sep and kind in ADAPTERS and rest:
        return Source(kind, rest)
    names = set(BENCHMARKS) | set(hub_names("math"))
    if spec in names and not os.path.exists(spec):
        return Source("benchmark", spec)
    ext = Path(spec).suffix.lower()
    if ext in _EXT_KIND and os.path.exists(spec):
        return Source(_EXT_KIND[ext], spec)
    raise DataError(f"--input {spec!r}: expected KIND:PATH with KIND one of {', '.join(ADAPTERS)}, a math "
                    f"benchmark name ({', '.join(sorted(names))}), or an existing .jsonl/.json/.parquet file")


# --------------------------------------------------------------------------------------------
# reading rows: (where, row) pairs; bad lines go to `bad`
# --------------------------------------------------------------------------------------------
def _iter_json_array(path: Path, bad: list[BadRow]) -> Iterator[tuple[str, dict]]:
    """Items of a JSON file holding an array of objects, each with the line it starts on. A file
    whose first character is not ``[`` is read as JSON Lines. A syntax error breaks the whole
    file (the rest cannot be resynchronised): ``DataError`` with its line and column."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise DataError(f"{path}: cannot open: {e.strerror or e}") from e
    stripped = text.lstrip()
    if not stripped.startswith("["):
        errors: list = []
        for where, _, row in iter_json_objects(path, errors=errors):
            yield where, row
        bad.extend(BadRow(w, m) for w, _, m in errors)
        return
    dec = json.JSONDecoder()
    i = len(text) - len(stripped) + 1
    line, counted = 1, 0

    def line_at(pos: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, pos)
        counted = pos
        return line

    n = len(text)
    while True:
        while i < n and text[i] in " \t\r\n":
            i += 1
        if i < n and text[i] == "]":
            return
        try:
            obj, j = dec.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}, line {e.lineno}: malformed JSON array (column {e.colno}): {e.msg}") from e
        where = f"{path}, line {line_at(i)}"
        if isinstance(obj, dict):
            yield where, obj
        else:
            bad.append(BadRow(where, f"expected a JSON object, got {type(obj).__name__}"))
        i = j
        while i < n and text[i] in " \t\r\n":
            i += 1
        if i < n and text[i] == ",":
            i += 1
        elif i < n and text[i] == "]":
            return
        else:
            raise DataError(f"{path}, line {line_at(min(i, n))}: malformed JSON array: expected ',' or ']'")


def _iter_parquet(path: Path) -> Iterator[tuple[str, dict]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise DataError(f"{path}: reading Parquet needs pyarrow: pip install pyarrow (or 'reasondistill[hub]')") from e
    try:
        pf = pq.ParquetFile(path)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read as Parquet: {e}") from e
    k = 0
    for batch in pf.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            k += 1
            yield f"{path}, row {k}", row


def _iter_hub(src: Source) -> Iterator[tuple[str, dict]]:
    """Rows of a Hub dataset (or a local dataset folder) through ``datasets``, with the offline
    handling and the error message of ``data/hub.py``."""
    from ..data import hub

    try:
        import datasets
    except ImportError as e:
        raise DataError(f"--input hub:{src.path} needs the `datasets` package: pip install datasets") from e
    spec = hub.HubSpec("math", src.path, src.config, src.split, {})
    local = os.path.isdir(src.path)
    offline, why = local or hub.offline_requested(), ""
    if local:
        why = "a local folder"
    elif offline:
        why = "offline mode is on (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)"
    else:
        unreachable = hub._hub_unreachable()
        if unreachable:
            offline, why = True, unreachable
    where = f"{src.path} (config {src.config or 'default'!r}, split {src.split!r})"
    with hub._offline_mode(offline):
        ds = hub._call_load(datasets, f"hub:{src.path}", spec, (src.path, src.config),
                            {"split": src.split, "cache_dir": os.environ.get("HF_DATASETS_CACHE") or None},
                            where, offline, why, from_mirror=local)
    for k, row in enumerate(ds, start=1):
        yield f"hub:{where}, row {k}", dict(row)


def probe_source(src: Source, data_dir=None) -> None:
    """Raise ``DataError`` (naming the source) when ``src`` cannot be read here, e.g. a benchmark
    with no local file on an offline machine; read nothing more than its first row."""
    rows = _benchmark_entries(src, data_dir) if src.kind == "benchmark" else _rows(src, [])
    try:
        next(iter(rows), None)
    except DataError:
        raise
    except (OSError, ValueError) as e:
        raise DataError(f"--input {src.label()}: {e}") from e


def _rows(src: Source, bad: list[BadRow]) -> Iterator[tuple[str, dict]]:
    if src.kind == "hub":
        yield from _iter_hub(src)
        return
    path = Path(src.path).expanduser()
    if not path.is_file():
        raise DataError(f"--input {src.kind}:{src.path}: file {path} not found")
    kind = src.kind if src.kind in GENERIC_KINDS else _EXT_KIND.get(path.suffix.lower(), "jsonl")
    if kind == "parquet":
        yield from _iter_parquet(path)
    elif kind == "json":
        yield from _iter_json_array(path, bad)
    else:
        errors: list = []
        for where, _, row in iter_json_objects(path, errors=errors):
            yield where, row
        bad.extend(BadRow(w, m) for w, _, m in errors)


# --------------------------------------------------------------------------------------------
# rows -> entries
# --------------------------------------------------------------------------------------------
_OPENERS = ("$$", "$", "\\(", "\\[")


def split_solution(text: str, rule: str = "auto") -> tuple[str | None, str]:
    """``(reasoning, answer)`` of a worked solution. ``rule``: ``gsm8k`` (the text after the last
    ``####`` is the answer, the text before it the reasoning), ``boxed`` (the last ``\\boxed{}``
    is the answer, the text before that ``\\boxed`` the reasoning, a dangling math opener
    dropped), ``auto`` (the project's answer rule, ``data.records._convert_answer``: the box
    first, else ``####``). The answer is converted by ``_convert_answer`` in every case (one
    normaliser). ``_BadRow`` when the rule's marker is missing; ``auto`` without a marker gives
    ``(None, text)``."""
    if rule not in ("auto", "gsm8k", "boxed"):
        raise ValueError(f"rule must be auto, gsm8k or boxed, got {rule!r}")
    boxes = _box_contents(text)
    hash_at = text.rfind("####")
    if rule == "gsm8k" and hash_at < 0:
        raise _BadRow("no '#### answer' line in the worked solution")
    if rule == "boxed" and not boxes:
        raise _BadRow("no \\boxed{} answer in the solution")
    use_box = rule == "boxed" or (rule == "auto" and bool(boxes))
    if use_box:
        start = boxes[-1][0]
        reasoning = text[:start].rstrip()
        for opener in _OPENERS:
            if reasoning.endswith(opener):
                reasoning = reasoning[: -len(opener)].rstrip()
                break
        return reasoning or None, boxes[-1][2].strip()
    if hash_at >= 0:
        answer, _ = _convert_answer(text[hash_at:])
        return text[:hash_at].rstrip() or None, str(answer)
    return None, text.strip()


def _pick(row: dict, candidates: Sequence[str]) -> str | None:
    for c in candidates:
        if c in row:
            return c
    return None


def _matches(row: dict, conditions: Sequence[str]) -> bool:
    for cond in conditions:
        neg = "!=" in cond
        col, _, values = cond.partition("!=" if neg else "=")
        wanted = {v.strip().casefold() for v in values.split("|")}
        have = row.get(col.strip())
        hit = have is not None and str(have).strip().casefold() in wanted
        if hit == neg:
            return False
    return True


def _text(value: Any, name: str) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        raise _BadRow(f"field {name!r} must be text, got {type(value).__name__}")
    return str(value)


def _answer(value: Any) -> tuple[str | list[str], str | None]:
    """(final answer, the worked solution it came from or None), via the one answer rule."""
    answer, solution = _convert_answer(value)
    if isinstance(answer, list):
        answer = [str(a).strip() for a in answer if str(a).strip()]
    else:
        answer = str(answer).strip()
    return answer, solution


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return str(value)


def _entry_from_row(src: Source, row: dict, where: str) -> dict:
    """One row as ``{question, final_answer, reasoning?, meta}`` (``_BadRow`` when it cannot be)."""
    defaults = _ADAPTER_FIELDS.get(src.kind, _GENERIC_FIELDS)
    cols: dict[str, str | None] = {}
    for key in ("question", "final_answer", "reasoning", "id"):
        if key in src.fields:
            cols[key] = src.fields[key]
        else:
            cols[key] = _pick(row, defaults.get(key, ()))
    for key in ("question", "final_answer"):
        col = cols[key]
        if col is None:
            raise _BadRow(f"no column for {key!r} (tried {', '.join(defaults[key])}; map one with "
                          f"--field {key}=COLUMN); fields present: {', '.join(row) or '(none)'}")
        try:
            require_fields(row, [col], where)
        except DataError as e:
            raise _BadRow(str(e).removeprefix(f"{where}: ")) from None
    question = _text(row[cols["question"]], cols["question"]).strip()  # type: ignore[index]
    raw_answer = row[cols["final_answer"]]  # type: ignore[index]
    rule = _ANSWER_RULE.get(src.kind)
    reasoning: str | None = None
    if rule is not None:
        reasoning, final = split_solution(_text(raw_answer, cols["final_answer"]), rule)  # type: ignore[arg-type]
    else:
        final, solution = _answer(raw_answer)
        if solution is not None:
            reasoning, _ = split_solution(solution)
    if cols["reasoning"] and cols["reasoning"] in row:
        reasoning = _text(row[cols["reasoning"]], cols["reasoning"]).strip() or None
    entry: dict[str, Any] = {"question": question, "final_answer": final}
    if reasoning:
        entry["reasoning"] = reasoning
    meta_cols = src.meta if src.meta is not None else _ADAPTER_META.get(src.kind, [])
    if meta_cols == ["*"]:
        mapped = {c for c in cols.values() if c}
        meta_cols = [c for c in row if c not in mapped]
    meta = {c: _jsonable(row[c]) for c in meta_cols if c in row}
    if cols["id"] and row.get(cols["id"]) not in (None, "") and "source_id" not in meta:
        meta["source_id"] = _jsonable(row[cols["id"]])
    entry["meta"] = meta
    return entry


def _benchmark_entries(src: Source, data_dir) -> Iterator[tuple[str, dict]]:
    """A named benchmark through ``data.benchmarks.load_benchmark`` (its own field rules)."""
    from ..data.benchmarks import load_benchmark

    for k, rec in enumerate(load_benchmark(src.path, data_dir), start=1):
        solution = rec.get("solution")
        reasoning = split_solution(solution)[0] if isinstance(solution, str) else None
        answer = rec["answer"]
        final = [str(a).strip() for a in answer] if isinstance(answer, list) else str(answer).strip()
        meta = {k2: _jsonable(v) for k2, v in rec.items() if k2 not in ("id", "question", "answer", "source",
                                                                          "solution")}
        meta["source_id"] = rec["id"]
        entry: dict[str, Any] = {"question": str(rec["question"]).strip(), "final_answer": final, "meta": meta}
        if reasoning:
            entry["reasoning"] = reasoning
        yield f"{src.path} (benchmark), record {k}", entry


def _entries(src: Source, report: SourceReport, bad: list[BadRow], empty: list[str],
             data_dir) -> Iterator[tuple[str, dict]]:
    """The good, non-empty entries of one source; everything else counted in ``report``."""
    if src.kind == "benchmark":
        stream: Iterable[tuple[str, dict]] = _benchmark_entries(src, data_dir)
        convert: Callable[[str, dict], dict] | None = None
    else:
        stream, convert = (), lambda where, row: _entry_from_row(src, row, where)
    conditions = [*(_ADAPTER_WHERE.get(src.kind, []) if not src.where else []), *src.where]
    unreadable: list[BadRow] = []  # lines that are not JSON objects: rows too, bad ones
    if convert is not None:
        stream = _rows(src, unreadable)
    for where, row in stream:
        report.rows += 1
        if convert is not None:
            if conditions and not _matches(row, conditions):
                report.filtered += 1
                continue
            try:
                entry = convert(where, row)
            except _BadRow as e:
                bad.append(BadRow(where, str(e)))
                report.bad += 1
                continue
        else:
            entry = row
        answer = entry["final_answer"]
        if not entry["question"] or not answer or (isinstance(answer, list) and not any(answer)):
            report.empty += 1
            empty.append(where)
            continue
        yield where, entry
    report.rows += len(unreadable)
    report.bad += len(unreadable)
    bad.extend(unreadable)


# --------------------------------------------------------------------------------------------
# de-duplication and stratified sampling
# --------------------------------------------------------------------------------------------
_WS = re.compile(r"\s+")


def dedupe_key(question: str) -> str:
    """The key two questions share when they are duplicates: case-folded, whitespace runs
    collapsed to one space, ends stripped."""
    return _WS.sub(" ", question).strip().casefold()


def stratified_sample(items: Sequence[Any], n: int, key: Callable[[Any], Any], seed: Any) -> list[int]:
    """Indices (ascending) of ``n`` of ``items``, allocated to the strata ``key(item)`` in
    proportion to their sizes by largest remainders (ties: the larger stratum, then the stratum
    key's string), drawn at random within each stratum by ``random.Random(f"{seed}")``. All
    indices when ``n >= len(items)``. Deterministic for a seed; the strata are visited in sorted
    order of their keys' strings, so the input's order of strata does not matter."""
    if n < 0:
        raise ValueError(f"sample size must be >= 0, got {n}")
    if n >= len(items):
        return list(range(len(items)))
    strata: dict[Any, list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        strata[key(it)].append(i)
    order = sorted(strata, key=str)
    total = len(items)
    exact = {k: n * len(strata[k]) / total for k in order}
    quota = {k: math.floor(exact[k]) for k in order}
    left = n - sum(quota.values())
    for k in sorted(order, key=lambda k: (-(exact[k] - quota[k]), -len(strata[k]), str(k)))[:left]:
        quota[k] += 1
    rng = random.Random(str(seed))
    chosen: list[int] = []
    for k in order:
        chosen.extend(rng.sample(strata[k], quota[k]))
    return sorted(chosen)


def _stratum(entry: dict, stratify_field: str | None) -> tuple:
    if not stratify_field:
        return (entry["source"],)
    return (entry["source"], str(entry.get("meta", {}).get(stratify_field)))


# --------------------------------------------------------------------------------------------
# the bank
# --------------------------------------------------------------------------------------------
def write_jsonl_atomic(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    """Write ``rows`` as JSON Lines to ``path`` through a temporary file and a rename, so a
    reader never sees half a file; returns the number of rows."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, path)
    return n


def _parse_caps(per_source: Sequence[str | int] | None) -> tuple[int | None, dict[str, int]]:
    default, caps = None, {}
    for item in per_source or ():
        text = str(item)
        name, sep, num = text.rpartition("=")
        try:
            value = int(num)
        except ValueError:
            raise DataError(f"--per-source {text!r}: expected N or SOURCE=N with N an integer") from None
        if value < 0:
            raise DataError(f"--per-source {text!r}: N must be >= 0")
        if sep:
            caps[name] = value
        else:
            default = value
    return default, caps


def build_bank(sources: Sequence[Source | str], output: str | os.PathLike, *, per_source=None,
               total: int | None = None, stratify_field: str | None = None, seed: int = 0,
               data_dir: str | os.PathLike | None = None, id_prefix: str = ID_PREFIX,
               summary_path: str | os.PathLike | None = None, log: Callable[[str], None] | None = None) -> dict:
    """Build the question bank (module docstring) and write it to ``output``; returns the summary
    (also written to ``summary_path``, default ``<output stem>.summary.json``).

    ``per_source``: a list of ``N`` / ``"SOURCE=N"`` caps; ``total``: stratify down to this many.
    Raises ``DataError`` for an input that cannot be read at all (missing file, unknown kind,
    a broken JSON array, a cap naming no source); bad rows are counted, not raised.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    srcs = [parse_input(s, data_dir) if isinstance(s, str) else s for s in sources]
    if not srcs:
        raise DataError("bank: no --input given")
    default_cap, caps = _parse_caps(per_source)
    reports: dict[str, SourceReport] = {}
    bad: list[BadRow] = []
    empty: list[str] = []
    seen: dict[str, str] = {}
    entries: list[dict] = []
    for src in srcs:
        name = src.label
        rep = reports.setdefault(name, SourceReport(name))
        rep.inputs.append(f"{src.kind}:{src.path}")
        for where, entry in _entries(src, rep, bad, empty, data_dir):
            k = dedupe_key(entry["question"])
            if k in seen:
                rep.duplicates += 1
                continue
            seen[k] = where
            entries.append({"source": name, **entry, "_where": where})
            rep.kept += 1
    unknown = sorted(set(caps) - set(reports))
    if unknown:
        raise DataError(f"--per-source names {', '.join(unknown)}, which no input is called; sources: "
                        f"{', '.join(reports)}")
    # 4. per-source caps
    by_source: dict[str, list[int]] = defaultdict(list)
    for i, e in enumerate(entries):
        by_source[e["source"]].append(i)
    keep: set[int] = set()
    for name in sorted(by_source):
        idx = by_source[name]
        cap = caps.get(name, default_cap)
        if cap is None or cap >= len(idx):
            keep.update(idx)
            continue
        sub = [entries[i] for i in idx]
        picked = stratified_sample(sub, cap, lambda e: _stratum(e, stratify_field), seed=f"{seed}/{name}")
        keep.update(idx[j] for j in picked)
        reports[name].capped = len(idx) - cap
    bank = [e for i, e in enumerate(entries) if i in keep]
    # 5. ids
    for k, e in enumerate(bank, start=1):
        e["id"] = f"{id_prefix}{k:0{ID_WIDTH}d}"
        reports[e["source"]].in_bank += 1
    # 6. --total
    if total is not None:
        if total < 0:
            raise DataError(f"--total must be >= 0, got {total}")
        picked = stratified_sample(bank, total, lambda e: _stratum(e, stratify_field), seed=f"{seed}/total")
        bank = [bank[i] for i in picked]
    for e in bank:
        reports[e["source"]].written += 1
    keys = ("id", "question", "final_answer", "reasoning", "source", "meta")
    n = write_jsonl_atomic(output, ({k: e[k] for k in keys if k in e} for e in bank))
    for b in bad[:MAX_PRINTED_BAD]:
        log(f"bank: bad row skipped: {b.where}: {b.message}")
    if len(bad) > MAX_PRINTED_BAD:
        log(f"bank: ... and {len(bad) - MAX_PRINTED_BAD} more bad rows (all listed in the summary file)")
    summary = {
        "output": str(output),
        "written": n,
        "seed": seed,
        "per_source": list(per_source or []),
        "total": total,
        "stratify_field": stratify_field,
        "sources": {name: asdict(r) for name, r in reports.items()},
        "counts": {key: sum(getattr(r, key) for r in reports.values())
                   for key in ("rows", "bad", "filtered", "empty", "duplicates", "kept", "capped", "in_bank",
                               "written")},
        "bad_rows": [asdict(b) for b in bad],
        "empty_rows": empty,
    }
    spath = Path(summary_path) if summary_path else Path(output).with_suffix(".summary.json")
    spath.parent.mkdir(parents=True, exist_ok=True)
    spath.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return summary


def format_summary(summary: dict) -> str:
    """The per-source table the ``bank`` command prints."""
    cols = ("rows", "bad", "filtered", "empty", "duplicates", "capped", "in_bank", "written")
    name_w = max([len("source"), *(len(n) for n in summary["sources"])])
    lines = [f"{'source':<{name_w}}  " + "  ".join(f"{c:>10}" for c in cols)]
    for name, r in summary["sources"].items():
        lines.append(f"{name:<{name_w}}  " + "  ".join(f"{r[c]:>10}" for c in cols))
    c = summary["counts"]
    lines.append(f"{'total':<{name_w}}  " + "  ".join(f"{c[k]:>10}" for k in cols))
    lines.append(f"wrote {summary['written']} questions to {summary['output']}")
    return "\n".join(lines)
