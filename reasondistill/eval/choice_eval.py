"""Multiple-choice evaluation (MMLU-style) with shuffled options.

Protocol (teacher_guided_policy_optimization.md §4, "Benchmarks and Metrics"): out-of-domain
multiple-choice benchmarks are scored by accuracy of the chosen letter, and the options are
shuffled to mitigate position bias and contamination (a model that memorised "the answer to
this question is C" gains nothing). The shuffle here is deterministic per (seed, record id),
so a run is reproducible and two models evaluated with the same seed see the same orders;
change the seed to average over orders.

- :func:`load_choice_file`: headerless MMLU CSV (question, options A.., answer letter) or JSONL
  with configurable fields (``question``, ``choices`` list, ``answer`` as letter, 0-based index
  or the option's text). Records: ``id``, ``question``, ``choices``, ``answer`` (letter),
  ``answer_index``, ``subject`` (the file stem without ``_test``/``_val``/``_dev``), ``source``.
- :func:`shuffle_options`: permutes the options and remaps the answer letter.
- :func:`format_prompt`: question, lettered options, and an instruction to end with
  "The answer is (X)".
- :func:`extract_choice`: the chosen letter from free text, or None (counted as
  *unparseable*, and wrong). Priority: the last ``\\boxed{}``; the last "answer is / answer:"
  phrase; "option X is correct"; a reply that starts with the letter ("C.", "(C)", "C)");
  a line holding only a letter. Lower-case letters are accepted ("Answer: c") except where they
  read as an article ("the answer is a prime").
- :func:`evaluate_choice`: chat-rendered prompts (``models.render_prompt``), greedy by
  default, accuracy, unparseable count and per-subject accuracy.
"""

from __future__ import annotations

import csv
import hashlib
import os
import random
import re
import string
import time
from pathlib import Path
from typing import Sequence

from ..data.benchmarks import DataError, iter_json_objects, require_fields
from .math_eval import length_stats

__all__ = [
    "DEFAULT_INSTRUCTION",
    "evaluate_choice",
    "extract_choice",
    "format_prompt",
    "load_choice_file",
    "load_choice_files",
    "shuffle_options",
    "summarize_choice",
]

LETTERS = string.ascii_uppercase
DEFAULT_INSTRUCTION = ('Answer with the letter of the correct option. End your reply with '
                       '"The answer is (X)", where X is that letter.')
_SPLIT_SUFFIXES = ("_test", "_val", "_validation", "_dev", "_train")


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
def _subject_from_stem(stem: str) -> str:
    for suf in _SPLIT_SUFFIXES:
        if stem.endswith(suf) and len(stem) > len(suf):
            return stem[: -len(suf)]
    return stem


def _letter_index(value: str, n: int) -> int | None:
    m = re.fullmatch(r"\s*[\(\[]?\s*([A-Za-z])\s*[\)\]]?\s*\.?\s*", value)
    if m:
        i = LETTERS.index(m.group(1).upper())
        return i if i < n else None
    return None


def _answer_index(value, choices: list[str], where: str) -> int:
    n = len(choices)
    if isinstance(value, bool):
        raise DataError(f"{where}: answer {value!r} is neither a letter nor an option index")
    if isinstance(value, int):
        if 0 <= value < n:
            return value
        raise DataError(f"{where}: answer index {value} out of range for {n} options (0-based)")
    if isinstance(value, str):
        i = _letter_index(value, n)
        if i is not None:
            return i
        hits = [j for j, c in enumerate(choices) if c.strip() == value.strip()]
        if len(hits) == 1:
            return hits[0]
        raise DataError(f"{where}: answer {value!r} is not one of the letters {LETTERS[:n]} "
                        f"(nor the text of exactly one option)")
    raise DataError(f"{where}: answer {value!r} is neither a letter nor an option index")


def _record(question, choices, answer, rid, subject, source, where) -> dict:
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"{where}: empty or non-string question")
    if len(choices) < 2:
        raise DataError(f"{where}: need at least 2 options, got {len(choices)}")
    if len(choices) > len(LETTERS):
        raise DataError(f"{where}: at most {len(LETTERS)} options are supported, got {len(choices)}")
    choices = [str(c) for c in choices]
    idx = _answer_index(answer, choices, where)
    return {"id": rid, "question": question, "choices": choices, "answer": LETTERS[idx], "answer_index": idx,
            "subject": subject, "source": source}


def load_choice_file(path: str | os.PathLike, *, question_field: str = "question", choices_field: str = "choices",
                     answer_field: str = "answer", id_field: str | None = None, subject_field: str | None = None,
                     subject: str | None = None, limit: int | None = None) -> list[dict]:
    """Load a multiple-choice file.

    ``.csv``: no header; each row is question, two or more options, answer letter (MMLU's
    ``*_test.csv``: four options). Quoted fields may span lines; errors give the row's first
    line. Anything else is JSON Lines with the given field names; ``choices`` is a list (or a
    dict letter -> text), ``answer`` a letter ("C", "c", "(C)"), a 0-based index, or the text of
    one option.

    ``subject``: default the ``subject_field`` of the row, else the file stem without a
    ``_test``/``_val``/``_dev`` suffix. ``id``: ``id_field`` if given and present, else
    ``"{subject}-{line}"``.

    Raises:
        DataError (a ``ValueError``) naming the file and the 1-based line: wrong column count,
        a missing field, an answer that is not one of the option letters, malformed JSON.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"multiple-choice file {path} not found")
    file_subject = subject or _subject_from_stem(path.stem)
    source = path.stem
    records: list[dict] = []
    with open(path, encoding="utf-8", newline="") as fh:
        if path.suffix.lower() == ".csv":
            reader = csv.reader(fh)
            end = 0
            while limit is None or len(records) < limit:
                start = end + 1
                try:
                    row = next(reader)
                except StopIteration:
                    break
                except csv.Error as e:
                    raise DataError(f"{path}, line {start}: malformed CSV: {e}") from e
                end = reader.line_num
                if not row or all(not c.strip() for c in row):
                    continue
                where = f"{path}, line {start}"
                if len(row) < 4:
                    raise DataError(f"{where}: expected question, at least 2 options and the answer letter "
                                    f"(>= 4 columns), got {len(row)} column(s)")
                records.append(_record(row[0], row[1:-1], row[-1].strip(), f"{file_subject}-{start}",
                                       file_subject, source, where))
        else:
            for where, line_no, row in iter_json_objects(path, limit):
                require_fields(row, (question_field, choices_field, answer_field), where)
                choices = row[choices_field]
                if isinstance(choices, dict):
                    keys = sorted(choices)
                    choices = [choices[k] for k in keys]
                if not isinstance(choices, list):
                    raise DataError(f"{where}: field {choices_field!r} must be a list of options")
                subj = subject or (str(row[subject_field]) if subject_field and row.get(subject_field) else
                                   file_subject)
                rid = row.get(id_field) if id_field else None
                rid = str(rid) if rid not in (None, "") else f"{subj}-{line_no}"
                records.append(_record(row[question_field], choices, row[answer_field], rid, subj, source, where))
    return records


def load_choice_files(paths: str | os.PathLike | Sequence[str | os.PathLike], *,
                      limit_per_file: int | None = None, **kwargs) -> list[dict]:
    """Load several files, or every ``*.csv``/``*.jsonl`` of a folder (sorted by name)."""
    if isinstance(paths, (str, os.PathLike)):
        p = Path(paths).expanduser()
        paths = sorted(q for q in p.iterdir() if q.suffix.lower() in (".csv", ".jsonl")) if p.is_dir() else [p]
        if not paths:
            raise DataError(f"no .csv or .jsonl files in {p}")
    out: list[dict] = []
    for p in paths:
        out += load_choice_file(p, limit=limit_per_file, **kwargs)
    return out


# --------------------------------------------------------------------------------------------
# Shuffling and prompting
# --------------------------------------------------------------------------------------------
def shuffle_options(record: dict, seed: int = 0) -> dict:
    """A copy of ``record`` with its options in a random order fixed by (``seed``, record id).

    ``choices[i]`` of the result is option ``permutation[i]`` of the input; ``answer`` and
    ``answer_index`` point at the same option text as before; ``original_answer`` keeps the
    input's letter. The order does not depend on the process, the platform or the record's
    position in the list (SHA-256 of the seed and the id seeds the generator).
    """
    n = len(record["choices"])
    rid = record.get("id")
    key = f"{seed}\x00{rid if rid is not None else record['question']}".encode("utf-8")
    rng = random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "big"))
    perm = list(range(n))
    rng.shuffle(perm)
    new_index = perm.index(record["answer_index"])
    return {**record, "choices": [record["choices"][p] for p in perm], "answer_index": new_index,
            "answer": LETTERS[new_index], "permutation": perm, "original_answer": record["answer"]}


def format_prompt(record: dict, instruction: str | None = DEFAULT_INSTRUCTION) -> str:
    """The question, one ``"X. option"`` line per option, then ``instruction``."""
    lines = [record["question"].strip(), ""]
    lines += [f"{LETTERS[i]}. {str(c).strip()}" for i, c in enumerate(record["choices"])]
    if instruction:
        lines += ["", instruction]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------
def _boxed_contents(text: str) -> list[str]:
    """Contents of every ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces balanced)."""
    out = []
    for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            out.append(text[m.end(): i - 1])
    return out


def _unlatex(s: str) -> str:
    prev = None
    while prev != s:
        prev = s
        s = re.sub(r"\\(?:text|textbf|mathrm|mathbf|mathit|textrm)\s*\{([^{}]*)\}", r"\1", s)
    return s.replace("$", "")


def _article(text: str, m: re.Match, group: int = 1) -> bool:
    """A lower-case 'a' (or any lower-case letter) followed by a word reads as prose."""
    letter = m.group(group)
    return letter.islower() and re.match(r"\s+[A-Za-z]", text[m.end(group):]) is not None


def extract_choice(text: str, n_options: int = 4, choices: Sequence[str] | None = None) -> str | None:
    """The option letter chosen in ``text`` (upper case), or None when no letter among the first
    ``n_options`` is clearly given. With ``choices``, a ``\\boxed{}`` holding an option's text
    also counts. See the module docstring for the order of the rules."""
    if not text or n_options < 1:
        return None
    letters = LETTERS[:n_options]
    cls = f"[{letters}{letters.lower()}]"
    t = text.replace("**", "").replace("__", "")

    def ok(letter: str) -> str:
        return letter.upper()

    # 1. the last \boxed{...}
    for content in reversed(_boxed_contents(t)):
        c = _unlatex(content).strip()
        m = re.fullmatch(rf"\(?\s*(?:option\s*|choice\s*)?\(?({cls})\)?\s*(?:[.:)]\s*.*)?", c, re.I | re.S)
        if m:
            return ok(m.group(1))
        if choices:
            hits = [i for i, o in enumerate(choices[:n_options]) if _unlatex(str(o)).strip() == c]
            if len(hits) == 1:
                return letters[hits[0]]
    flat = _unlatex(t)
    # 2. "the answer is (C)", "Answer: c", "final answer: option B"
    pat = re.compile(rf"answer\s*(?:is|would be|should be|will be|=|:)?\s*[:\-]?\s*(?:option|choice)?\s*[:\-]?\s*"
                     rf"[\(\[]?\s*({cls})\s*[\)\]]?(?![A-Za-z0-9])", re.I)
    hits = [m for m in pat.finditer(flat) if not _article(flat, m)]
    if hits:
        return ok(hits[-1].group(1))
    # 3. "option C is correct"
    pat = re.compile(rf"(?:option|choice)\s*[\(\[]?\s*({cls})\s*[\)\]]?\s*(?:is\s+)?(?:the\s+)?(?:correct|right|true)",
                     re.I)
    hits = list(pat.finditer(flat))
    if hits:
        return ok(hits[-1].group(1))
    # 4. a reply that starts with the letter: "C", "C.", "(C)", "C) 42", "C: ..."
    s = flat.strip()
    m = re.match(rf"[\(\[]\s*({cls})\s*[\)\]]|({cls})(?:\s*[.:)]|\s*$)", s)
    if m:
        return ok(m.group(1) or m.group(2))
    # 5. the last line holding only a letter
    lines = [ln for ln in re.findall(rf"^[ \t]*[\(\[]?\s*({cls})\s*[\)\]]?[.:]?[ \t]*$", flat, re.M)]
    if lines:
        return ok(lines[-1])
    return None


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------
def summarize_choice(rows: list[dict], wall: float | None = None) -> dict:
    """Accuracy, unparseable answers, per-subject accuracy and letter distributions."""
    n = len(rows)
    out: dict = {
        "num_questions": n,
        "accuracy": sum(r["correct"] for r in rows) / max(1, n),
        "num_unparseable": sum(r["extracted"] is None for r in rows),
        "chance_accuracy": sum(1 / len(r["choices"]) for r in rows) / max(1, n),
    }
    out["unparseable_share"] = out["num_unparseable"] / max(1, n)
    subjects: dict = {}
    for r in rows:
        if r.get("subject") is not None:
            subjects.setdefault(r["subject"], []).append(r)
    if subjects:
        out["per_subject"] = {s: {"num_questions": len(v), "accuracy": sum(x["correct"] for x in v) / len(v),
                                  "num_unparseable": sum(x["extracted"] is None for x in v)}
                              for s, v in sorted(subjects.items())}
    out["gold_letter_counts"] = {k: sum(r["gold"] == k for r in rows) for k in sorted({r["gold"] for r in rows})}
    preds = sorted({r["extracted"] for r in rows if r["extracted"] is not None})
    out["predicted_letter_counts"] = {k: sum(r["extracted"] == k for r in rows) for k in preds}
    out.update(length_stats(rows, wall))
    return out


def evaluate_choice(model, tokenizer, records: list[dict], *, seed: int = 0, shuffle: bool = True,
                    max_new_tokens: int = 32, batch_size: int = 32, progress: bool = False, system: str | None = None,
                    temperature: float = 0.0, top_p: float = 1.0,
                    instruction: str | None = DEFAULT_INSTRUCTION) -> tuple[list[dict], dict]:
    """Ask ``model`` every question (options shuffled per (seed, id) when ``shuffle``) and grade
    the extracted letter. Greedy unless ``temperature > 0`` (TGPO's evaluation samples at 0.6).

    Returns:
        rows: ``id``, ``subject``, ``question``, ``choices`` (as shown), ``permutation``,
            ``gold`` (letter as shown), ``output``, ``extracted`` (letter or None),
            ``correct``, ``num_tokens``, ``truncated``.
        summary: :func:`summarize_choice` plus ``seed`` and ``shuffle``.
    """
    from ..models import render_prompt
    from .math_eval import generate_batches

    t0 = time.time()
    shown = [shuffle_options(r, seed) if shuffle else {**r, "permutation": list(range(len(r["choices"])))}
             for r in records]
    rows: list[dict] = []
    for chunk, roll, texts in generate_batches(
            model, tokenizer, shown, lambda r: render_prompt(tokenizer, format_prompt(r, instruction), system=system),
            temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed,
            progress=progress):
        lengths = roll.completion_mask.sum(1).tolist()
        for j, text in enumerate(texts):
            rec = chunk[j]
            got = extract_choice(text, len(rec["choices"]), rec["choices"])
            rows.append({"id": rec["id"], "subject": rec.get("subject"), "question": rec["question"],
                         "choices": rec["choices"], "permutation": rec["permutation"], "gold": rec["answer"],
                         "output": text, "extracted": got, "correct": got == rec["answer"],
                         "num_tokens": int(lengths[j]), "truncated": bool(roll.truncated[j])})
    summary = summarize_choice(rows, wall=time.time() - t0)
    summary.update(seed=seed, shuffle=shuffle)
    return rows, summary
