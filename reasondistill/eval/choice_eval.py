"""Multiple-choice evaluation (MMLU-style) with shuffled options, scored by generation or by
likelihood.

Protocol (teacher_guided_policy_optimization.md §4, "Benchmarks and Metrics"): out-of-domain
multiple-choice benchmarks are scored by accuracy of the chosen letter, and the options are
shuffled to mitigate position bias and contamination (a model that memorised "the answer to
this question is C" gains nothing). The shuffle here is deterministic per (seed, record id),
so a run is reproducible and two models (or two scorings) evaluated with the same seed see
the same orders; change the seed to average over orders.

Two scorings (:func:`evaluate_choice`):

- ``scoring="generate"`` (default): the model writes an answer and :func:`extract_choice`
  reads the letter; what it cannot read is counted *unparseable* (and wrong). This measures
  the model as a user meets it, format-following included.
- ``scoring="loglik"``: the standard of lm-evaluation-harness. Nothing is generated or
  parsed: each option's continuation (its letter, or its text normalised by length) is scored
  by its log-likelihood after the prompt, and the best-scored option is the answer. Every
  question gets an answer, so a model that cannot follow the answer format is still measured
  on what it knows.

- :func:`load_choice_file`: headerless MMLU CSV (question, options A.., answer letter) or JSONL
  with configurable fields (``question``, ``choices`` list, ``answer`` as letter, 0-based index
  or the option's text). Records: ``id``, ``question``, ``choices``, ``answer`` (letter),
  ``answer_index``, ``subject`` (the file stem without ``_test``/``_val``/``_dev``), ``source``.
  :func:`load_choice_records`: a file, a folder of them or a benchmark name (local, else the Hub).
- :func:`shuffle_options`: permutes the options and remaps the answer letter.
- :func:`format_prompt`: question, lettered options, and an instruction (generation: end with
  "The answer is (X)").
- :func:`extract_choice`: the chosen letter from free text, or None; its docstring lists the
  rules (the last explicit answer statement wins; negated mentions never count).
- :func:`loglik_requests`: the prompt and the per-option continuations that loglik scores.
- :class:`ChoiceTask`: the ``choice`` task of ``eval/base.py`` (either scoring on the shared
  loop; :class:`ChoiceEvalConfig`, its settings: ``reasondistill eval choice``);
  :func:`evaluate_choice` runs it: accuracy, unparseable count and per-subject accuracy.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import os
import random
import re
import string
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Sequence

from ..data.benchmarks import DataError, iter_json_objects, require_fields
from ..data.records import answer_index
from ..errors import ConfigError
from .base import EvalConfig, Task, chat_messages, evaluate_task, length_stats

__all__ = [
    "ANSWER_PREFIX",
    "CHOICE_BENCHMARKS",
    "ChoiceEvalConfig",
    "ChoiceTask",
    "DEFAULT_INSTRUCTION",
    "LOGLIK_INSTRUCTION",
    "LOGLIK_TARGETS",
    "SCORINGS",
    "evaluate_choice",
    "extract_choice",
    "format_prompt",
    "load_choice_file",
    "load_choice_files",
    "load_choice_records",
    "loglik_requests",
    "shuffle_options",
    "summarize_choice",
]

LETTERS = string.ascii_uppercase
DEFAULT_INSTRUCTION = ('Answer with the letter of the correct option. End your reply with '
                       '"The answer is (X)", where X is that letter.')
LOGLIK_INSTRUCTION = "Answer with the letter of the correct option."
"""What the loglik letter prompt asks for (no "The answer is (X)" form: the reply is scored, not read)."""
ANSWER_PREFIX = "Answer:"
"""Written at the start of the reply before every loglik continuation (``" B"``, ``" 42"``)."""
SCORINGS = ("generate", "loglik")
LOGLIK_TARGETS = ("letter", "text")
_SPLIT_SUFFIXES = ("_test", "_val", "_validation", "_dev", "_train")


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
def _subject_from_stem(stem: str) -> str:
    for suf in _SPLIT_SUFFIXES:
        if stem.endswith(suf) and len(stem) > len(suf):
            return stem[: -len(suf)]
    return stem


def _record(question, choices, answer, rid, subject, source, where) -> dict:
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"{where}: empty or non-string question")
    if len(choices) < 2:
        raise DataError(f"{where}: need at least 2 options, got {len(choices)}")
    if len(choices) > len(LETTERS):
        raise DataError(f"{where}: at most {len(LETTERS)} options are supported, got {len(choices)}")
    choices = [str(c) for c in choices]
    idx = answer_index(answer, choices, where)
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


CHOICE_BENCHMARKS = {"mmlu": "mmlu"}
"""Multiple-choice benchmark name -> folder (or file) relative to the data directory."""


def load_choice_records(source: str | os.PathLike, data_dir: str | os.PathLike | None = None,
                        limit: int | None = None) -> list[dict]:
    """A multiple-choice file, a folder of them, or a benchmark name: ``mmlu`` (the data
    directory's ``mmlu/`` when it is there), or any choice benchmark of the Hub table
    (``data.hub.DATA``: mmlu, mmlu_pro, arc_challenge, gpqa_diamond, sat_math), read from its
    Hugging Face Hub dataset when the data directory does not hold it.

    ``limit`` caps the total, spread over the files round-robin (file 1's first question,
    file 2's first, ..., then the second of each), so a small limit still covers every subject
    (from the Hub: over the subjects, the same way).
    """
    from ..data import hub

    name = str(source)
    if not os.path.exists(name) and not os.path.splitext(name)[1] and "/" not in name and os.sep not in name:
        located = hub.locate(name, "choice", CHOICE_BENCHMARKS, data_dir, kind="multiple-choice benchmark",
                             path_hint=", or a .csv/.jsonl file or a folder of them")
        if located.where != "local":
            return hub.load_located(name, located, limit)
        path = located.path
    else:
        path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".csv", ".jsonl"))
        if not files:
            raise DataError(f"no .csv or .jsonl files in {path}")
    elif path.is_file():
        files = [path]
    else:
        raise DataError(f"multiple-choice data {path} not found (a .csv/.jsonl file, a folder of them, "
                        f"or one of: {', '.join(sorted(set(CHOICE_BENCHMARKS) | set(hub.hub_names('choice'))))})")
    per_file = None if limit is None else -(-limit // len(files))
    lists = [load_choice_file(f, limit=per_file) for f in files]
    out = [recs[k] for k in range(max(map(len, lists))) for recs in lists if k < len(recs)]
    return out if limit is None else out[:limit]


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
# Extraction (scoring="generate")
# --------------------------------------------------------------------------------------------
def _boxed_contents(text: str) -> list[tuple[int, str]]:
    """(start, contents) of every ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces balanced)."""
    out = []
    for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            out.append((m.start(), text[m.end(): i - 1]))
    return out


def _unlatex(s: str) -> str:
    prev = None
    while prev != s:
        prev = s
        s = re.sub(r"\\(?:text|textbf|mathrm|mathbf|mathit|textrm)\s*\{([^{}]*)\}", r"\1", s)
    return s.replace("$", "")


def _norm_option(s: str) -> str:
    """An option's text or a stated answer, compared loosely: LaTeX wrappers, quotes, brackets
    and a final full stop dropped, spaces collapsed, case folded."""
    s = _unlatex(str(s)).strip().rstrip(".").strip()
    s = re.sub(r"^[\"'(\[]+|[\"')\]]+$", "", s).strip()
    return re.sub(r"\s+", " ", s).casefold()


def _option_by_text(text: str, choices: Sequence[str] | None, letters: str) -> str | None:
    """The letter of the one option whose text is ``text`` (see :func:`_norm_option`), else None."""
    if not choices:
        return None
    t = _norm_option(text)
    hits = [i for i, o in enumerate(choices[: len(letters)]) if t and _norm_option(o) == t]
    return letters[hits[0]] if len(hits) == 1 else None


# A mention of a letter that rejects it: "not A", "not option (A)", "neither A nor B", "rather than A" ...
_NEGATED_BEFORE = re.compile(r"(?:\bnot|n't|\bnever|\bneither|\bnor|\bexcept|\brather\s+than|\binstead\s+of)\s+"
                             r"(?:(?:option|choice|answer)\s+)?[\(\[]?\s*$", re.I)
# ... or "A is wrong", "(A) is clearly incorrect", "A is not", "A isn't", "A can't be".
_NEGATED_AFTER = re.compile(r"\s*[\)\]]?\s*(?:(?:is|was|seems|looks|appears|must\s+be)\s+(?:\w+\s+)?"
                            r"(?:not\b|wrong|incorrect|false|impossible|ruled\s+out|eliminated)|isn't|can't|cannot)",
                            re.I)
_COPULA = r"(?:is|was|would\s+be|should\s+be|must\s+be|will\s+be|=|:|-)"
_HEDGE = r"(?:(?:definitely|clearly|probably|likely|most\s+likely|certainly|obviously|indeed|then)\s+)?"


@functools.lru_cache(maxsize=None)
def _rules(n: int) -> dict:
    """The compiled rules of :func:`extract_choice` for ``n`` options (letter group 1 in each)."""
    up = LETTERS[:n]
    cls = f"[{up}{up.lower()}]"
    # a standalone letter, optionally bracketed: "C", "(c)", "[B]"; not part of a word ("Cats", "A's")
    L = rf"[\(\[]?\s*(?<![A-Za-z0-9'])({cls})(?![A-Za-z0-9'])\s*[\)\]]?"
    return {
        # explicit final-answer statements; the last one in the text wins
        "statements": [re.compile(p, re.I) for p in (
            # "the answer is (C)", "Answer: c", "My final answer: option D", "The correct option is (B).",
            # "Correct option: B", "the best choice would be D", "a good guess is B", "answer is definitely C"
            rf"\b(?:answer|option|choice|guess|pick|letter|bet)\s*{_COPULA}\s*[:\-]?\s*{_HEDGE}"
            rf"(?:(?:option|choice|letter)\s*[:\-]?\s*)?{L}",
            # "Option B is correct.", "C is the right answer", "(A) is my answer" ("is incorrect" does not match)
            rf"(?:\b(?:option|choice|letter|answer)\s*)?{L}\s+is\s+(?:the\s+|my\s+)?"
            rf"(?:correct|right|best|true|final|answer)\b",
            # "I choose B.", "I'll go with (A)", "we would pick C", "I think it's D"
            rf"\b(?:i|we)(?:'ll|'d|\s+(?:would|will|shall|must|can|now))?\s+"
            rf"(?:choose|pick|select|go\s+with|opt\s+for|say|think|believe)\s+(?:it(?:'s|\s+is)\s+)?"
            rf"(?:(?:option|choice|answer)\s+)?{L}",
        )],
        # an answer statement followed by an option's text instead of its letter: "The answer is 4."
        "stated_text": re.compile(rf"\b(?:answer|option|choice)\s*{_COPULA}\s*[:\-]?\s*([^\n]+)", re.I),
        # a conclusive sentence: "Both A and B are wrong, so C"
        "conclusive": re.compile(r"\b(?:so|therefore|thus|hence|consequently)\b([^.;!?\n]*)", re.I),
        # letters of a conclusive sentence: upper case, or lower case only in brackets "(c)"
        "bare_letter": re.compile(rf"(?<![A-Za-z0-9'])(?:\(([{up.lower()}])\)|([{up}]))(?![A-Za-z0-9'])"),
        # a line holding only a letter: "B", "(B).", "c"
        "letter_line": re.compile(rf"^[ \t]*[\(\[]?[ \t]*({cls})[ \t]*[\)\]]?[.:]?[ \t]*$", re.M),
        # a reply that starts with the letter: "C", "C.", "(C)", "B) 42", "C: because ..."
        "leading": re.compile(rf"[\(\[]\s*({cls})\s*[\)\]]|({cls})(?:\s*[.:)]|\s*$)"),
        # lines that start like an option ("A. 3", "B) 4"): two or more of them is the options echoed back
        "option_line": re.compile(rf"^\s*[\(\[]?([{up}])[\)\].:]\s", re.M),
    }


_WORD_AFTER = re.compile(r"\s+[A-Za-z]")
_LOWER_WORD_AFTER = re.compile(r"\s+(?!is\b)[a-z]")


def _is_word(text: str, end: int, letter: str, strict: bool = False) -> bool:
    """Does the letter ending at ``end`` read as a word rather than an option? A lower-case
    "a" or "i" followed by a word is the article or the pronoun ("the answer is a prime"), and
    so is an upper-case "I" followed by a lower-case word ("Answer: I don't know" with ten
    options); ``strict`` (sentences without an answer phrase) treats an upper-case "A" the same
    way ("so A student ..."). Before "is" those upper-case letters stay letters ("so A is right")."""
    if letter in "ai":
        return _WORD_AFTER.match(text, end) is not None
    if letter == "I" or (strict and letter == "A"):
        return _LOWER_WORD_AFTER.match(text, end) is not None
    return False


def _negated(text: str, start: int, end: int) -> bool:
    """Is the letter at ``text[start:end]`` rejected ("not A", "A is wrong")?"""
    return bool(_NEGATED_BEFORE.search(text[max(0, start - 40): start]) or _NEGATED_AFTER.match(text, end))


def extract_choice(text: str, n_options: int = 4, choices: Sequence[str] | None = None) -> str | None:
    """The option letter chosen in ``text`` (upper case), or None when none of the first
    ``n_options`` letters is clearly chosen (counted as *unparseable*, and wrong).

    Rule of thumb: an explicit final-answer statement wins, and of several the last one
    (models often correct themselves); without one, the last standalone letter of a conclusive
    sentence; a negated mention ("not A", "A is wrong", "A is incorrect", "neither A nor B")
    never counts. In order:

    1. Explicit statements, the last in the text: ``\\boxed{C}`` (also ``\\boxed{\\text{(C)}}``,
       ``\\boxed{C. 42}``); "the answer is (C)", "Answer: c", "My final answer: option D", "The
       correct option is (B)", "Correct option: B", "a good guess is B"; "Option B is correct",
       "C is the right answer"; "I choose B", "I'll go with (A)", "I think it's D". With
       ``choices``, a statement or a ``\\boxed{}`` holding one option's text ("The answer is
       4.") names that option.
    2. The last letter of the last conclusive sentence ("..., so C", "therefore (c)").
    3. The last line holding only a letter ("B", "(B).", "**C**").
    4. A reply that starts with the letter ("C.", "(C)", "B) 42"), unless the reply echoes the
       options back (two or more lines starting "A.", "B)", ...).
    5. With ``choices``, a reply that is exactly one option's text.

    Markdown emphasis and ``$``/``\\text{}`` wrappers are ignored. A lower-case "a" or "i"
    followed by a word is prose ("the answer is a prime"); other lower-case letters count
    where a letter is expected ("Answer: c", "(c)").
    """
    if not text or n_options < 1:
        return None
    n_options = min(n_options, len(LETTERS))
    letters = LETTERS[:n_options]
    rules = _rules(n_options)
    t = text.replace("**", "").replace("__", "")
    flat = _unlatex(t)

    # 1. explicit statements: (position, letter); of equal positions the first appended wins
    found: list[tuple[int, str]] = []
    for pos, content in _boxed_contents(t):
        c = _unlatex(content).strip()
        m = re.fullmatch(rf"\(?\s*(?:option\s*|choice\s*)?\(?([{letters}{letters.lower()}])\)?\s*(?:[.:)]\s*.*)?",
                         c, re.I | re.S)
        letter = m.group(1).upper() if m else _option_by_text(c, choices, letters)
        if letter:
            found.append((len(_unlatex(t[:pos])), letter))
    for pat in rules["statements"]:
        for m in pat.finditer(flat):
            if not (_is_word(flat, m.end(1), m.group(1)) or _negated(flat, m.start(1), m.end(1))):
                found.append((m.start(1), m.group(1).upper()))
    if choices:
        for m in rules["stated_text"].finditer(flat):
            letter = _option_by_text(m.group(1), choices, letters)
            if letter:
                found.append((m.start(1), letter))
    if found:
        return max(found, key=lambda f: f[0])[1]

    # 2. the last letter of the last conclusive sentence that names one
    for m in reversed(list(rules["conclusive"].finditer(flat))):
        off = m.start(1)
        hits = [b for b in rules["bare_letter"].finditer(m.group(1))
                if not _is_word(flat, off + b.end(), b.group(1) or b.group(2), strict=True)
                and not _negated(flat, off + b.start(), off + b.end())]
        if hits:
            return (hits[-1].group(1) or hits[-1].group(2)).upper()

    # 3. the last line holding only a letter
    lines = rules["letter_line"].findall(flat)
    if lines:
        return lines[-1].upper()

    # 4. a reply that starts with the letter (not an echo of the options list)
    s = flat.strip()
    m = rules["leading"].match(s)
    if m and len(set(rules["option_line"].findall(s))) < 2:
        return (m.group(1) or m.group(2)).upper()

    # 5. the whole reply is one option's text
    return _option_by_text(s, choices, letters) if s else None


# --------------------------------------------------------------------------------------------
# Likelihood scoring (scoring="loglik")
# --------------------------------------------------------------------------------------------
def loglik_requests(record: dict, target: str, tokenizer, system: str | None = None) -> tuple[str, list[str]]:
    """The rendered prompt and one continuation per option that ``scoring="loglik"`` scores.

    ``target="letter"``: the question with its lettered options and :data:`LOGLIK_INSTRUCTION`,
    chat-rendered as in generation, then :data:`ANSWER_PREFIX` as the start of the reply;
    continuations ``" A"``, ``" B"``, ... (the letter is the very next thing the model writes).

    ``target="text"``: the question alone (cloze form: no options listed, so the model cannot
    lean on copying a listed option and the option order plays no part in the scores), then
    :data:`ANSWER_PREFIX`; continuations ``" " + option text``.

    Each continuation starts with the space that separates it from the prefix, so a BPE
    tokenizer encodes it as the model saw such text in training (``" B"``, not ``" "`` + ``"B"``
    split across prompt and continuation).
    """
    if target == "letter":
        question = format_prompt(record, LOGLIK_INSTRUCTION)
        continuations = [f" {LETTERS[i]}" for i in range(len(record["choices"]))]
    elif target == "text":
        question = record["question"].strip()
        continuations = [f" {str(c).strip()}" for c in record["choices"]]
    else:
        raise ValueError(f"loglik_target must be one of {LOGLIK_TARGETS}, got {target!r}")
    from ..models import render_prompt

    return render_prompt(tokenizer, question, system=system) + ANSWER_PREFIX, continuations


def _loglik_outputs(model, tokenizer, shown: list[dict], target: str, batch_size: int, system: str | None,
                    progress: bool):
    """Yield ``(chunk, None, outputs)`` for :func:`~reasondistill.eval.base.evaluate_task`: every
    option of every question scored, ``batch_size`` (prompt, continuation) pairs per forward (the
    options of many questions share one forward; a question may straddle two), each question
    yielded once all its options are scored, as ``(option log-probs, option token counts)``."""
    from ..rollout import encode_pairs
    from ..signals import TokenPass

    if tokenizer.pad_token_id is None:  # encode_pairs pads with it (padding is masked: any id would do)
        raise ValueError("scoring='loglik' needs a tokenizer with a pad token; set tokenizer.pad_token "
                         "(e.g. to its EOS token) before evaluating")
    pairs = []  # (question index, option index, prompt, continuation)
    for q, rec in enumerate(shown):
        prompt, conts = loglik_requests(rec, target, tokenizer, system)
        pairs += [(q, j, prompt, c) for j, c in enumerate(conts)]
    sums: dict[tuple[int, int], float] = {}
    counts: dict[tuple[int, int], int] = {}
    starts = range(0, len(pairs), max(1, batch_size))
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=f"loglik ({target})", unit="batch")
    done = 0  # questions yielded so far
    was_training = model.training
    model.eval()
    try:
        import torch

        with torch.no_grad():
            for a in starts:
                chunk = pairs[a: a + max(1, batch_size)]
                # no truncation, no EOS: exactly prompt + continuation, in the rollout layout
                batch = encode_pairs(tokenizer, [p[2] for p in chunk], [p[3] for p in chunk], max_prompt=sys.maxsize,
                                     max_completion=sys.maxsize, add_eos=False)
                logp = TokenPass(batch, student=model).student_logp()  # (n, C), 0 off the continuation
                total = logp.double().sum(-1).cpu().tolist()
                n_tok = batch.completion_mask.sum(-1).tolist()
                for (q, j, _, _), v, k in zip(chunk, total, n_tok):
                    sums[q, j], counts[q, j] = v, int(k)
                complete = len(shown) if a + len(chunk) >= len(pairs) else chunk[-1][0] + (
                    chunk[-1][1] == len(shown[chunk[-1][0]]["choices"]) - 1)
                if complete > done:
                    qs = range(done, complete)
                    yield [shown[q] for q in qs], None, [
                        ([sums[q, j] for j in range(len(shown[q]["choices"]))],
                         [counts[q, j] for j in range(len(shown[q]["choices"]))]) for q in qs]
                    done = complete
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------
class ChoiceTask(Task):
    """Multiple choice: options shuffled per (``seed``, id) when ``shuffle``, then either the
    letter read from a generated answer (``scoring="generate"``) or the best-scored option by
    log-likelihood (``scoring="loglik"``); see :func:`evaluate_choice`."""

    name = prefix = "choice"

    def __init__(self, *, seed: int = 0, shuffle: bool = True, scoring: str = "generate",
                 loglik_target: str = "letter", system: str | None = None,
                 instruction: str | None = DEFAULT_INSTRUCTION):
        if scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")
        if loglik_target not in LOGLIK_TARGETS:
            raise ValueError(f"loglik_target must be one of {LOGLIK_TARGETS}, got {loglik_target!r}")
        self.seed, self.shuffle, self.scoring, self.loglik_target = seed, shuffle, scoring, loglik_target
        self.system, self.instruction = system, instruction

    @classmethod
    def load(cls, source, data_dir=None, first=None, **_):
        return load_choice_records(source, data_dir, limit=first)

    def prepare(self, records):
        return [shuffle_options(r, self.seed) if self.shuffle else {**r, "permutation": list(range(len(r["choices"])))}
                for r in records]

    def check(self, model) -> None:
        from .api_model import APIModel

        if self.scoring == "loglik" and isinstance(model, APIModel):
            raise ValueError("scoring=loglik needs the model's log-probabilities of given text; an endpoint is "
                             "evaluated with scoring=generate")

    def prompt(self, record):
        return chat_messages(format_prompt(record, self.instruction), self.system)

    def outputs(self, model, tokenizer, records, **sampling):
        if self.scoring == "generate":
            yield from super().outputs(model, tokenizer, records, **sampling)
            return
        if sampling["temperature"] > 0 or sampling["top_p"] < 1.0:
            raise ValueError("temperature/top_p apply to scoring='generate' only; scoring='loglik' samples nothing")
        yield from _loglik_outputs(model, tokenizer, records, self.loglik_target, sampling["batch_size"], self.system,
                                   sampling["progress"])

    def score(self, record, output, sample):
        row = {"id": record["id"], "subject": record.get("subject"), "question": record["question"],
               "choices": record["choices"], "permutation": record["permutation"], "gold": record["answer"]}
        if self.scoring == "generate":
            got = extract_choice(output, len(record["choices"]), record["choices"])
            return {**row, "output": output, "extracted": got, "predicted": got, "correct": got == record["answer"]}
        logprobs, counts = output
        if self.loglik_target == "text":  # mean log-prob per character of the continuation (see evaluate_choice)
            scores = [lp / len(f" {str(c).strip()}") for lp, c in zip(logprobs, record["choices"])]
        else:
            scores = list(logprobs)
        best = max(range(len(scores)), key=lambda j: scores[j])  # ties: the first option
        return {**row, "scoring": "loglik", "loglik_target": self.loglik_target, "option_logprobs": logprobs,
                "option_num_tokens": counts, "option_scores": scores, "predicted": LETTERS[best],
                "correct": LETTERS[best] == record["answer"]}

    def summarize(self, rows, samples):
        out = summarize_choice(rows)
        out.update(seed=self.seed, shuffle=self.shuffle, scoring=self.scoring)
        if self.scoring == "loglik":
            out["loglik_target"] = self.loglik_target
        return out


def _predicted(row: dict) -> str | None:
    """The graded letter of a row: ``predicted`` (both scorings), else ``extracted`` (older rows)."""
    return row["predicted"] if "predicted" in row else row.get("extracted")


def summarize_choice(rows: list[dict], wall: float | None = None) -> dict:
    """Accuracy, unparseable answers, per-subject accuracy and letter distributions."""
    n = len(rows)
    out: dict = {
        "num_questions": n,
        "accuracy": sum(r["correct"] for r in rows) / max(1, n),
        "num_unparseable": sum(_predicted(r) is None for r in rows),
        "chance_accuracy": sum(1 / len(r["choices"]) for r in rows) / max(1, n),
    }
    out["unparseable_share"] = out["num_unparseable"] / max(1, n)
    subjects: dict = {}
    for r in rows:
        if r.get("subject") is not None:
            subjects.setdefault(r["subject"], []).append(r)
    if subjects:
        out["per_subject"] = {s: {"num_questions": len(v), "accuracy": sum(x["correct"] for x in v) / len(v),
                                  "num_unparseable": sum(_predicted(x) is None for x in v)}
                              for s, v in sorted(subjects.items())}
    out["gold_letter_counts"] = {k: sum(r["gold"] == k for r in rows) for k in sorted({r["gold"] for r in rows})}
    preds = sorted({_predicted(r) for r in rows if _predicted(r) is not None})
    out["predicted_letter_counts"] = {k: sum(_predicted(r) == k for r in rows) for k in preds}
    out.update(length_stats(rows, wall))
    return out


def evaluate_choice(model, tokenizer, records: list[dict], *, seed: int = 0, shuffle: bool = True,
                    max_new_tokens: int = 32, batch_size: int = 32, progress: bool = False, system: str | None = None,
                    temperature: float = 0.0, top_p: float = 1.0,
                    instruction: str | None = DEFAULT_INSTRUCTION, scoring: str = "generate",
                    loglik_target: str = "letter") -> tuple[list[dict], dict]:
    """Ask ``model`` every question (options shuffled per (seed, id) when ``shuffle``; the same
    orders for both scorings) and grade the chosen letter.

    ``scoring="generate"`` (default): the model answers in free text, greedy unless
    ``temperature > 0`` (TGPO's evaluation samples at 0.6), and :func:`extract_choice` reads
    the letter; a reply it cannot read is *unparseable* and wrong. ``batch_size`` prompts per
    batch.

    ``scoring="loglik"``: no generation and no parsing, as in lm-evaluation-harness: each
    option's continuation is scored by the sum of its tokens' log-probabilities after the
    prompt (:func:`loglik_requests`), and the option with the highest score is the answer
    (never unparseable). ``loglik_target="letter"``: the continuation is the option's letter
    after a prompt listing the lettered options, scored by its plain sum (the continuations
    differ only in the letter, so their sums compare like with like). ``loglik_target="text"``: the
    continuation is the option's text after the bare question, scored by its mean log-prob
    *per character* (the sum divided by the continuation's length in characters, its leading
    space included): a plain sum favours short options, since every extra token can only
    lower it; a per-token mean depends on the tokenizer (a student and a teacher with
    different vocabularies would be normalised differently, and options split into many easy
    pieces, such as long numbers, would gain), while characters are the same for every model.
    ``batch_size`` (prompt, continuation) pairs per forward; ``max_new_tokens`` and
    ``instruction`` do not apply, and sampling settings are refused.

    Returns:
        rows: ``id``, ``subject``, ``question``, ``choices`` (as shown), ``permutation``,
            ``gold`` (letter as shown), ``predicted`` (the graded letter, or None), ``correct``;
            generate adds ``output``, ``extracted`` (= ``predicted``), ``num_tokens``,
            ``truncated``; loglik adds ``scoring``, ``loglik_target``, ``option_logprobs``
            (summed log-prob per option, in shown order), ``option_num_tokens`` and
            ``option_scores`` (what the argmax ranks: the sums, or their per-character means).
        summary: :func:`summarize_choice` plus ``seed``, ``shuffle``, ``scoring`` and, for
            loglik, ``loglik_target``.
    """
    task = ChoiceTask(seed=seed, shuffle=shuffle, scoring=scoring, loglik_target=loglik_target, system=system,
                      instruction=instruction)
    return evaluate_task(task, model, tokenizer, records, temperature=temperature, top_p=top_p,
                         max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, progress=progress)


@dataclass
class ChoiceEvalConfig(EvalConfig):
    """``reasondistill eval choice``: multiple-choice accuracy, options shuffled with ``seed``."""

    task: ClassVar[str] = "choice"
    task_class: ClassVar[type[Task]] = ChoiceTask

    shuffle: bool = True
    """Shuffle the options per (seed, question id); false keeps the file's order (--no-shuffle)."""
    scoring: str = "generate"
    """generate: the model writes an answer and its letter is read (what it cannot read counts
    wrong); loglik: the log-likelihood of each option after the prompt, no parsing
    (lm-evaluation-harness's standard; a local model only)."""
    loglik_target: str = "letter"
    """With scoring=loglik: score each option's letter, or its text (per-character mean)."""

    def validate(self) -> None:
        super().validate()
        if self.scoring not in SCORINGS:
            raise ConfigError(f"scoring must be one of {', '.join(SCORINGS)}, got {self.scoring!r}")
        if self.loglik_target not in LOGLIK_TARGETS:
            raise ConfigError(f"loglik_target must be one of {', '.join(LOGLIK_TARGETS)}, got {self.loglik_target!r}")

    def make_task(self, model, tokenizer) -> ChoiceTask:
        return ChoiceTask(seed=self.seed, shuffle=self.shuffle, scoring=self.scoring,
                          loglik_target=self.loglik_target, system=self.system)
