"""Answer extraction, answer checking and reward functions for math reasoning.

Extraction (``extract_answer``), first rule that finds something wins:

1. the content of the *last* ``\\boxed{...}`` or ``\\fbox{...}`` (nested braces are matched;
   an unclosed or empty box is skipped in favour of an earlier one), or the short form
   ``\\boxed 5`` (the token up to the next space or ``$``);
2. the last GSM8K-style ``#### N`` line;
3. the content of the last ``<answer>...</answer>`` pair;
4. the rest of the sentence after the last "the answer is" / "the final answer is"
   (case-insensitive; an optional ``:``; a trailing period and ``$`` delimiters are removed).

Otherwise ``None``.

Checking (``is_correct(prediction_text, gold)``): the answer is extracted from the prediction
(none found -> ``False``). ``gold`` may be a string, a number or a list of them (any one
matching is enough: OlympiadBench). A gold string that is itself a worked solution (it holds a
``\\boxed{}`` or ``#### N``) is reduced to its answer first. Each (prediction, gold) pair is
compared by these rules in order; the first that decides wins:

1. normalised strings are equal. Normalisation drops ``$``/``\\(``/``\\[`` delimiters,
   ``\\left``/``\\right``, LaTeX spacing (``\\!``, ``\\,``, ``\\;``, ``~``), degree marks
   (``^\\circ``, ``^{\\circ}``, ``°``), ``\\displaystyle``, unwraps ``\\text{}``/``\\mbox{}``/
   ``\\textbf{}``/``\\mathrm{}``, maps ``\\dfrac``/``\\tfrac`` to ``\\frac``, drops a trailing
   ``.0`` and all whitespace;
2. multiple choice: when the gold is a single capital letter (``A``, ``(A)``, ``A.``,
   ``\\text{(A)}``), the prediction matches iff it is that letter in any of those forms (or
   starts with ``(A)``);
3. both sides read as plain numbers: equal within relative 1e-6 (absolute 1e-9 when one side
   is exactly 0, so that two tiny physical constants are not equal for being tiny). Readable
   numbers include ``1,000`` (commas only in groups of three), ``$18``, ``50\\%`` (a percentage
   also matches its value divided by 100), ``\\frac{1}{2}``, ``1/2``, ``-3``, ``2.5e-3``,
   ``1.2 \\times 10^{5}``, with trailing units removed when they are wrapped in
   ``\\text{}``/``\\mbox{}``/``\\mathrm{}`` or are plain words after a space (``5 cm``). Two
   readable numbers that differ are *not* correct (no further rules are tried);
4. math-verify (``parse`` of ``$answer$`` on both sides, then ``verify(gold, prediction)``):
   symbolic equality of expressions, sets, intervals, tuples, matrices and equations;
5. a prediction of the form ``x = value`` against a gold without ``=`` is retried as ``value``.

Safety: ``is_correct`` never raises (any internal error counts as ``False``) and is safe to
call from worker threads. math-verify's own timeouts use ``signal.alarm``, which only works on
the main thread (and cancels any alarm the caller had pending). On the main thread they are
used (``MATH_VERIFY_TIMEOUT_S``, rounded up to whole seconds, per parse and per comparison).
Off it they are switched off (``parsing_timeout=None``, ``timeout_seconds=None``) and the whole
math-verify step runs under a deadline of ``MATH_VERIFY_TIMEOUT_S`` enforced by a per-thread
profile hook (see ``_call_with_deadline``); a timed-out comparison counts as incorrect. Inputs
that could keep sympy inside one long C call are refused before they reach it: answers longer
than ``MAX_MATH_VERIFY_CHARS``, numeric power towers, exponents of 6+ digits, factorials of
5+ digit numbers. Both guards are best effort, but they keep reward workers from hanging.

Rewards: ``format_reward(text)`` and the TRL-style ``accuracy_reward(completions, answer,
**kwargs)`` / ``format_rewards(completions, **kwargs)``; see their docstrings. The pipeline
paper's hybrid reward (sft_then_grpo_api_teachers.md §3.4) is ``hybrid_rewards``: the
``<think>`` / ``<answer>`` tag format score (``tag_format_reward``), correctness by the local
rules with a third answer, undecided (``local_check``), and the Box 5 LLM judge
(``api.answer_judge.AnswerJudge``) asked only for the undecided answers.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import re
import sys
import threading
import time
from fractions import Fraction
from typing import Any, Iterable, Sequence

__all__ = [
    "extract_answer",
    "extract_boxed",
    "is_correct",
    "answers_match",
    "normalize_answer",
    "format_reward",
    "correctness_reward",
    "accuracy_reward",
    "format_rewards",
    "completion_text",
    "tag_format_reward",
    "tagged_answer",
    "local_check",
    "hybrid_rewards",
    "parse_binary_verdict",
]

MATH_VERIFY_TIMEOUT_S = 3
"""Seconds math-verify may spend on one (prediction, gold) comparison; see "Safety" above."""
MAX_MATH_VERIFY_CHARS = 400
"""Answers longer than this are compared as normalised strings only (never sent to sympy)."""

# --------------------------------------------------------------------------------------------
# extraction
# --------------------------------------------------------------------------------------------

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_GSM8K_RE = re.compile(r"####\s*([^\n]+)")
_ANSWER_TAG_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_ANSWER_IS_RE = re.compile(r"(?:final\s+)?answer\s+is\s*:?\s*", re.IGNORECASE)


def _matching_brace(text: str, open_idx: int) -> int:
    """Index of the ``}`` closing the ``{`` at ``open_idx``, or -1 if it is never closed."""
    depth = 0
    i = open_idx
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n and text[i + 1] in "{}":
            i += 2  # escaped brace \{ or \} does not count
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def _box_contents(text: str) -> list[tuple[int, int, str]]:
    """All well-formed, non-empty boxes as (start, end, content), in order of appearance."""
    found = []
    for m in _BOX_RE.finditer(text):
        j = m.end()
        while j < len(text) and text[j] in " \t":
            j += 1
        if j < len(text) and text[j] == "{":
            k = _matching_brace(text, j)
            if k < 0:
                continue
            content = text[j + 1 : k].strip()
            end = k + 1
        elif j > m.end():  # "\boxed 5": a space, then one token
            tok = re.match(r"[^\s$]+", text[j:])
            if not tok:
                continue
            content = tok.group(0)
            end = j + tok.end()
        else:
            continue
        if content:
            found.append((m.start(), end, content))
    return found


def extract_boxed(text: str) -> str | None:
    """Content of the last well-formed, non-empty ``\\boxed{}``/``\\fbox{}``; else ``None``."""
    boxes = _box_contents(text)
    return boxes[-1][2] if boxes else None


def _clean_tail(ans: str) -> str:
    ans = ans.strip()
    for _ in range(3):
        ans = ans.rstrip(" .")
        if len(ans) >= 2 and ans.startswith("$") and ans.endswith("$"):
            ans = ans.strip("$").strip()
        elif ans.endswith("$") and "$" not in ans[:-1]:
            ans = ans[:-1].strip()
    return ans.strip()


def extract_answer(text: str) -> str | None:
    """The final answer in a completion, by the rules in the module docstring; else ``None``."""
    if not isinstance(text, str) or not text:
        return None
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    hits = _GSM8K_RE.findall(text)
    if hits:
        ans = _clean_tail(hits[-1])
        if ans:
            return ans
    tags = _ANSWER_TAG_RE.findall(text)
    if tags:
        ans = tags[-1].strip()
        if ans:
            return ans
    last = None
    for m in _ANSWER_IS_RE.finditer(text):
        last = m
    if last is not None:
        rest = text[last.end() :]
        rest = rest.split("\n", 1)[0]
        # the sentence ends at a period followed by whitespace (not the one in 3.5)
        rest = re.split(r"\.\s", rest, maxsplit=1)[0]
        ans = _clean_tail(rest)
        if ans:
            return ans
    return None


# --------------------------------------------------------------------------------------------
# normalisation
# --------------------------------------------------------------------------------------------

_WRAPPERS = ("text", "textbf", "textrm", "mbox", "mathrm", "mathbf", "textit", "operatorname")


def _unwrap(s: str, names: Sequence[str] = _WRAPPERS) -> str:
    """Replace ``\\name{X}`` by ``X`` for the given macro names (nested braces respected)."""
    pattern = re.compile(r"\\(?:%s)\s*\{" % "|".join(names))
    for _ in range(20):
        m = pattern.search(s)
        if not m:
            break
        k = _matching_brace(s, m.end() - 1)
        if k < 0:
            break
        s = s[: m.start()] + s[m.end() : k] + s[k + 1 :]
    return s


def _strip_delimiters(s: str) -> str:
    s = s.strip()
    for _ in range(3):
        before = s
        if s.startswith("$") and s.endswith("$") and len(s) >= 2:
            s = s.strip("$").strip()
        for a, b in (("\\(", "\\)"), ("\\[", "\\]")):
            if s.startswith(a) and s.endswith(b):
                s = s[2:-2].strip()
        if s == before:
            break
    return s


def normalize_answer(s: Any) -> str:
    """A canonical string form of an answer, for string comparison (see module docstring)."""
    s = _number_to_str(s) if isinstance(s, (int, float)) else str(s)
    s = _strip_delimiters(s)
    s = s.replace("\\displaystyle", "")
    s = re.sub(r"\\(?:left|right)(?![A-Za-z])", "", s)
    s = re.sub(r"\\(?:big|Big|bigg|Bigg)(?![A-Za-z])", "", s)
    s = re.sub(r"\\[dt]frac(?![A-Za-z])", r"\\frac", s)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?", "", s)
    s = s.replace("°", "").replace("\\degree", "")
    s = re.sub(r"\\[!,;: ]", "", s)
    s = s.replace("~", "")
    s = _unwrap(s)
    s = s.replace("$", "")
    s = re.sub(r"\s+", "", s)
    s = re.sub(r"([\^_])\{(\w)\}", r"\1\2", s)  # x^{2} -> x^2, a_{1} -> a_1
    s = s.rstrip(".")
    s = re.sub(r"(?<![\d.])(\d+)\.0+$", r"\1", s)
    return s


def _number_to_str(x: int | float) -> str:
    if isinstance(x, bool):
        return str(int(x))
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e16:
        return str(int(x))
    return str(x)


# --------------------------------------------------------------------------------------------
# numbers
# --------------------------------------------------------------------------------------------

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_NUM_RE = re.compile(rf"^{_NUM}$")
_THOUSANDS_RE = re.compile(r"^[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_FRAC_RE = re.compile(r"^([-+]?)\\frac\{([^{}]+)\}\{([^{}]+)\}$")
_FRAC_SHORT_RE = re.compile(r"^([-+]?)\\frac(\d)(\d)$")
_SLASH_RE = re.compile(rf"^({_NUM})/({_NUM})$")
_SCI_RE = re.compile(rf"^({_NUM})(?:\\times|\\cdot|\*|x)10\^\{{?([-+]?\d+)\}}?$")
_UNIT_POWER = r"(?:\^\s*\{?\s*-?[1-3]\s*\}?)?"
_TRAILING_UNIT_WRAP_RE = re.compile(
    r"^(.*?)\s*(?:\\[,;!: ])?\s*\\(?:text|mbox|mathrm|textrm|rm)\s*\{([^{}]*)\}\s*%s\s*$" % _UNIT_POWER
)
_TRAILING_WORDS_RE = re.compile(r"^(.*?[\d}])\s+([A-Za-z][A-Za-z/ ]*%s)\s*$" % _UNIT_POWER)
_ONE_LETTER_UNITS = "mgsKLAVWJNh"
_CONJUNCTION_RE = re.compile(r"\b(?:or|and)\b", re.IGNORECASE)


def _strip_units(s: str) -> str:
    """Drop trailing units: ``10\\text{ cm}``, ``5 \\mbox{inches}``, ``3\\,\\mathrm{m}^2``,
    ``18 dollars``. Never drops a text that says "or"/"and" (``5 \\text{ or } 9``)."""
    for _ in range(3):
        m = _TRAILING_UNIT_WRAP_RE.match(s)
        if m and m.group(1).strip() and re.search(r"[A-Za-z]", m.group(2)) and not _CONJUNCTION_RE.search(m.group(2)):
            s = m.group(1)
            continue
        m = _TRAILING_WORDS_RE.match(s)
        if (
            m
            and not _CONJUNCTION_RE.search(m.group(2))
            and (re.match(r"[A-Za-z]{2}", m.group(2)) or m.group(2)[0] in _ONE_LETTER_UNITS)
        ):
            s = m.group(1)
            continue
        break
    return s.strip()


def _to_number(s: str) -> tuple[float, bool] | None:
    """(value, was_percentage) if ``s`` reads as one plain number, else ``None``."""
    s = _strip_delimiters(s.strip())
    if re.search(r"(?<!\\)\$", s[1:]):  # several math segments: "$48$, $384$"
        return None
    s = _strip_units(s)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?", "", s).replace("°", "")
    s = re.sub(r"\\[!,;: ]", "", s).replace("~", "")
    s = re.sub(r"\\(?:left|right)(?![A-Za-z])", "", s)
    s = re.sub(r"\\[dt]frac(?![A-Za-z])", r"\\frac", s)
    s = s.replace("\\$", "").replace("$", "")
    s = re.sub(r"\s+", "", s)
    pct = False
    if s.endswith("\\%") or s.endswith("%"):
        pct = True
        s = s[:-2] if s.endswith("\\%") else s[:-1]
    s = s.rstrip(".") if not s.endswith("..") else s
    if not s:
        return None
    m = re.match(r"^\((.*)\)$", s)
    if m and "," not in s:  # "(073)", but not the pair "(1,2)"
        s = m.group(1)
    if _THOUSANDS_RE.match(s):
        s = s.replace(",", "")
    try:
        if _NUM_RE.match(s):
            return float(s), pct
        m = _FRAC_RE.match(s) or _FRAC_SHORT_RE.match(s)
        if m:
            sign, a, b = m.groups()
            if _NUM_RE.match(a) and _NUM_RE.match(b) and float(b) != 0:
                v = float(Fraction(a) / Fraction(b)) if "e" not in (a + b).lower() else float(a) / float(b)
                return (-v if sign == "-" else v), pct
            return None
        m = _SLASH_RE.match(s)
        if m and float(m.group(2)) != 0:
            return float(m.group(1)) / float(m.group(2)), pct
        m = _SCI_RE.match(s)
        if m and abs(int(m.group(2))) < 300:
            return float(m.group(1)) * 10.0 ** int(m.group(2)), pct
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    return None


def _close(a: float, b: float) -> bool:
    """Relative tolerance 1e-6; the absolute 1e-9 only when one side is exactly 0 (so that
    physical constants such as 2.88e-19 and 1.3e-27 are not both "about zero")."""
    if a == 0.0 or b == 0.0:
        return abs(a - b) <= 1e-9
    return math.isclose(a, b, rel_tol=1e-6)


def _numbers_match(p: tuple[float, bool], g: tuple[float, bool]) -> bool:
    (pv, pp), (gv, gp) = p, g
    if pv.is_integer() and gv.is_integer() and max(abs(pv), abs(gv)) < 2**53 and pp == gp:
        return pv == gv  # integers are exact: 1234567 is not 1234568 (no relative tolerance)
    if _close(pv, gv):
        return True
    if pp != gp:  # "50%" vs "0.5"
        return _close(pv / 100.0, gv) if pp else _close(pv, gv / 100.0)
    return False


# --------------------------------------------------------------------------------------------
# multiple choice
# --------------------------------------------------------------------------------------------

_LETTER_RE = re.compile(r"^\(?([A-Z])\)?[.:]?$")
_LETTER_PREFIX_RE = re.compile(r"^\(([A-Z])\)")


def _choice_letter(norm: str, allow_prefix: bool = False) -> str | None:
    m = _LETTER_RE.match(norm)
    if m:
        return m.group(1)
    if allow_prefix:
        m = _LETTER_PREFIX_RE.match(norm)
        if m:
            return m.group(1)
    return None


# --------------------------------------------------------------------------------------------
# math-verify
# --------------------------------------------------------------------------------------------

_RISKY_RE = re.compile(
    r"\^\s*\{?\s*\(?\s*\d{6,}"  # 10^{123456}: one long C-level big-integer power
    r"|\^\s*\{?\s*\(?\s*\d+\s*(?:\^|\*\*)"  # numeric power towers 10^{10^{10}}
    r"|\*\*\s*\(?\s*\d+\s*(?:\^|\*\*)"  # 2**3**4
    r"|\d{5,}\s*!"  # 12345!
)


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class _Deadline(BaseException):
    """Raised inside math-verify by ``_call_with_deadline``; a BaseException so that
    math-verify's own ``except Exception`` handlers do not swallow it."""


_MATH_PACKAGES = ("sympy", "mpmath", "math_verify", "latex2sympy2_extended")
_math_dirs: tuple[str, ...] | None = None
_warm_lock = threading.Lock()
_warm = False


def _math_package_dirs() -> tuple[str, ...]:
    global _math_dirs
    if _math_dirs is None:
        import importlib
        import os

        dirs = []
        for name in _MATH_PACKAGES:
            mod = importlib.import_module(name)
            dirs.append(os.path.dirname(os.path.abspath(mod.__file__)) + os.sep)
        _math_dirs = tuple(dirs)
    return _math_dirs


_WARM_UP_PAIRS = (  # one of each kind whose first use makes sympy import or build things
    ("$(x+1)^2$", "$x^2+2x+1$"),
    ("$\\left( 3, \\frac{\\pi}{2} \\right)$", "$(3, \\pi/2)$"),
    ("$(3,4]$", "$[3,4]$"),
    ("$\\{1,2\\}$", "$\\{2,1\\}$"),
    ("$y=2x+5$", "$y=5+2x$"),
    ("$\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}$", "$\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}$"),
    ("$\\frac{\\sqrt{3}}{3}$", "$\\frac{1}{\\sqrt{3}}$"),
)


def _warm_up() -> None:
    """Import math-verify and run one parse/verify outside any deadline, once per process, so
    that imports and grammar set-up are never interrupted halfway."""
    global _warm
    if _warm:
        return
    with _warm_lock:
        if not _warm:
            from math_verify import parse, verify

            _quiet_math_verify()

            for gold, pred in _WARM_UP_PAIRS:
                verify(parse(gold, parsing_timeout=None), parse(pred, parsing_timeout=None), timeout_seconds=None)
            _math_package_dirs()
            _warm = True


def _call_with_deadline(fn, seconds: float):
    """Run ``fn()`` in this thread, aborting it once ``seconds`` have passed.

    Works off the main thread (no signals): a profile hook on this thread raises ``_Deadline``
    at the first entry into a Python function of sympy / mpmath / math-verify /
    latex2sympy after the deadline (never in import machinery, locks, logging or the ANTLR
    runtime, so that no lock is left held and no shared parser cache is left half-updated),
    and again every 50 ms should something swallow it.
    It cannot interrupt one long C call (a huge integer power), which is what ``_RISKY_RE``
    screens out beforehand.
    """
    clock = time.monotonic
    dirs = _math_package_dirs()
    state = {"armed": True, "next": clock() + seconds}
    generator_flags = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR

    def hook(frame, event, arg):
        if event == "call" and state["armed"] and clock() > state["next"]:
            code = frame.f_code
            if (
                code.co_name != "<module>"
                and not code.co_flags & generator_flags  # a raise there can be ignored
                and code.co_filename.startswith(dirs)
            ):
                state["next"] = clock() + 0.05  # if something swallows it, raise again later
                raise _Deadline()

    previous = sys.getprofile()
    sys.setprofile(hook)
    try:
        return fn()
    finally:
        state["armed"] = False
        sys.setprofile(previous)


@functools.lru_cache(maxsize=4096)
def _mv_parse_cached(s: str, timeout: int | None) -> tuple:
    from math_verify import parse

    return tuple(parse(s, parsing_timeout=timeout))


def _mv_parse(s: str, timeout: int | None) -> list:
    """math-verify's parse of ``s`` wrapped in ``$...$`` (a bare ``1+x`` would parse as ``1``).

    Cached: a gold answer is parsed once, not once per sampled completion. (A parse cut off
    by ``_call_with_deadline`` raises, so it is never cached.)"""
    s = s.strip()
    if not (s.startswith("$") or s.startswith("\\(") or s.startswith("\\[")):
        s = f"${s}$"
    return list(_mv_parse_cached(s, timeout))


def _math_verify_match(pred: str, gold: str) -> bool:
    """math-verify's verdict; False when it fails, times out or the input looks dangerous."""
    if len(pred) > MAX_MATH_VERIFY_CHARS or len(gold) > MAX_MATH_VERIFY_CHARS:
        return False
    if _RISKY_RE.search(pred) or _RISKY_RE.search(gold):
        return False
    main = _on_main_thread()
    timeout = max(1, math.ceil(MATH_VERIFY_TIMEOUT_S)) if main else None  # signal.alarm: whole s

    def run() -> bool:
        from math_verify import verify  # already imported by _warm_up

        g = _mv_parse(gold, timeout)
        p = _mv_parse(pred, timeout)
        if not g or not p:
            return False
        return bool(verify(g, p, timeout_seconds=timeout))

    try:
        _quiet_math_verify()
        if main:
            return run()
        _warm_up()
        return _call_with_deadline(run, MATH_VERIFY_TIMEOUT_S)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:  # noqa: BLE001 - math-verify's TimeoutException, _Deadline, anything
        return False


class _DropTimeoutNotices(logging.Filter):
    """Drops math-verify's 'timeout is disabled' / 'timeout during ...' warnings: this module
    handles timeouts itself and counts a timed-out comparison as incorrect."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("Timeout is disabled", "Timeout during"))


_FILTER_INSTALLED = False


def _quiet_math_verify() -> None:
    global _FILTER_INSTALLED
    if not _FILTER_INSTALLED:
        _FILTER_INSTALLED = True
        for name in ("math_verify.parser", "math_verify.grader", "math_verify.utils"):
            logging.getLogger(name).addFilter(_DropTimeoutNotices())


# --------------------------------------------------------------------------------------------
# checking
# --------------------------------------------------------------------------------------------


def _gold_strings(gold: Any) -> list[str]:
    items = list(gold) if isinstance(gold, (list, tuple, set)) else [gold]
    out = []
    for g in items:
        if g is None:
            continue
        if isinstance(g, (int, float)):
            out.append(_number_to_str(g))
            continue
        g = str(g)
        if "\\boxed" in g or "\\fbox" in g or "####" in g:
            g = extract_answer(g) or g
        if g.strip():
            out.append(g.strip())
    return out


_EQ_LHS_RE = re.compile(r"^\s*\\?[A-Za-z]\w*(?:_\{?\w+\}?)?(?:\([A-Za-z]\))?\s*=\s*(?!=)")


def answers_match(pred: str, gold: str) -> bool:
    """Compare two already-extracted answers (rules 1-5 of the module docstring)."""
    np_, ng = normalize_answer(pred), normalize_answer(gold)
    if not np_ or not ng:
        return False
    if np_ == ng:
        return True
    if re.fullmatch(r"[A-Za-z]{2,}", ng) and np_.lower() == ng.lower():  # "East" vs "east"
        return True
    gl = _choice_letter(ng)
    if gl is not None:
        return _choice_letter(np_, allow_prefix=True) == gl
    pn, gn = _to_number(pred), _to_number(gold)
    if pn is not None and gn is not None:
        return _numbers_match(pn, gn)
    if _math_verify_match(_strip_units(pred), _strip_units(gold)):
        return True
    if "=" not in gold:
        m = _EQ_LHS_RE.match(pred)
        if m and "=" not in pred[m.end() :]:
            return answers_match(pred[m.end() :], gold)
    return False


def is_correct(prediction_text: str, gold_answer: Any) -> bool:
    """Whether the answer extracted from ``prediction_text`` matches ``gold_answer``.

    ``gold_answer``: a string, an int/float, or a list of them (any may match). Never raises;
    safe to call from worker threads. See the module docstring for the rules.
    """
    try:
        pred = extract_answer(prediction_text)
        if pred is None:
            return False
        for g in _gold_strings(gold_answer):
            if answers_match(pred, g):
                return True
        return False
    except Exception:  # noqa: BLE001 - a grader must never take a training run down
        return False


# --------------------------------------------------------------------------------------------
# rewards
# --------------------------------------------------------------------------------------------

MIN_REASONING_CHARS = 10
"""``format_reward``: non-whitespace characters required before the box."""
MAX_TRAILING_CHARS = 40
"""``format_reward``: non-whitespace characters allowed after the box (``$.``, a short remark)."""


def format_reward(text: str) -> float:
    """1.0 if ``text`` reasons first and then gives exactly one final boxed answer, else 0.0.

    The rule: exactly one ``\\boxed``/``\\fbox`` occurrence, well-formed and non-empty; at
    least ``MIN_REASONING_CHARS`` non-whitespace characters before it; at most
    ``MAX_TRAILING_CHARS`` non-whitespace characters after it.
    """
    try:
        text = completion_text(text)
        if len(_BOX_RE.findall(text)) != 1:
            return 0.0
        boxes = _box_contents(text)
        if len(boxes) != 1:
            return 0.0
        start, end, _ = boxes[0]
        before = re.sub(r"\s+", "", text[:start])
        after = re.sub(r"\s+", "", text[end:])
        return 1.0 if len(before) >= MIN_REASONING_CHARS and len(after) <= MAX_TRAILING_CHARS else 0.0
    except Exception:  # noqa: BLE001
        return 0.0


def completion_text(completion: Any) -> str:
    """The text of one completion: a string, or TRL's conversational form (a list of
    ``{"role", "content"}`` messages, the last one being the model's), or one such message."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    if isinstance(completion, (list, tuple)) and completion:
        return completion_text(completion[-1])
    return "" if completion is None else str(completion)


def correctness_reward(completions: Sequence[Any], answers: Sequence[Any]) -> list[float]:
    """1.0 per completion whose extracted answer matches its gold answer, else 0.0."""
    if len(completions) != len(answers):
        raise ValueError(f"{len(completions)} completions but {len(answers)} answers")
    return [1.0 if is_correct(completion_text(c), a) else 0.0 for c, a in zip(completions, answers)]


def accuracy_reward(completions: Sequence[Any], answer: Sequence[Any], **kwargs: Any) -> list[float]:
    """TRL reward function: ``answer`` is the dataset's answer column, one entry per completion.

    Use as ``GRPOTrainer(reward_funcs=[accuracy_reward], ...)`` with a dataset that has an
    ``answer`` column.
    """
    return correctness_reward(completions, answer)


def format_rewards(completions: Iterable[Any], **kwargs: Any) -> list[float]:
    """TRL reward function applying ``format_reward`` to each completion."""
    return [format_reward(completion_text(c)) for c in completions]


# --------------------------------------------------------------------------------------------
# the pipeline paper's hybrid reward (sft_then_grpo_api_teachers.md §3.4, Box 5)
# --------------------------------------------------------------------------------------------
_THINK_PAIR_RE = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_ANSWER_PAIR_RE = re.compile(r"<answer>.*?</answer>", re.DOTALL | re.IGNORECASE)
_THINK_ANY_RE = re.compile(r"</?think>", re.IGNORECASE)
_ANSWER_ANY_RE = re.compile(r"</?answer>", re.IGNORECASE)
TAG_FORMAT_MODES = ("pair", "any")


def tag_format_reward(text: Any, mode: str = "pair") -> float:
    """The paper's format score: 1.0 when the output has both the ``<think>`` and the ``<answer>``
    tags, 0.5 when it has one of them, 0.0 when neither (§3.4, "Output Format Compliance").

    "Includes the tag" reads two ways; ``mode`` chooses: ``pair`` (default) counts a tag only
    as an opening tag followed later by its closing tag (``<think>...</think>``, as Box 4 asks);
    ``any`` counts an opening or a closing tag alone (the most lenient reading)."""
    if mode not in TAG_FORMAT_MODES:
        raise ValueError(f"tag format mode must be one of {', '.join(TAG_FORMAT_MODES)}, got {mode!r}")
    text = completion_text(text)
    think, answer = (_THINK_PAIR_RE, _ANSWER_PAIR_RE) if mode == "pair" else (_THINK_ANY_RE, _ANSWER_ANY_RE)
    return 0.5 * (think.search(text) is not None) + 0.5 * (answer.search(text) is not None)


def tagged_answer(text: Any) -> str | None:
    """The answer the hybrid reward grades: the content of the last ``<answer>...</answer>``
    pair (reduced to its ``\\boxed{}`` / ``#### N`` answer if it holds one), else, for an output
    without answer tags, :func:`extract_answer` of the whole text (so correctness and format
    are scored apart, as the paper's two criteria are). None when nothing is found."""
    text = completion_text(text)
    tags = _ANSWER_TAG_RE.findall(text)
    if tags:
        inner = tags[-1].strip()
        reduced = extract_answer(inner) if ("\\boxed" in inner or "\\fbox" in inner or "####" in inner) else None
        return (reduced or inner) or None
    return extract_answer(text)


UNDECIDED = None
"""What :func:`local_check` returns when the local rules cannot decide."""


def local_check(pred: str | None, gold: Any) -> bool | None:
    """The paper's local evaluator with a third answer: True (the rules of :func:`answers_match`
    find a match), False (no answer at all, or the rules decide a mismatch: both sides plain
    numbers, or a multiple-choice gold letter), else ``UNDECIDED`` (None): symbolic or textual
    answers that differ as written (units, forms math-verify cannot read), where the Box 5
    judge is asked."""
    try:
        if pred is None or not str(pred).strip():
            return False
        golds = _gold_strings(gold)
        if not golds:
            return False
        decided_false = True
        for g in golds:
            if answers_match(pred, g):
                return True
            ng = normalize_answer(g)
            numeric = _to_number(pred) is not None and _to_number(g) is not None
            if not (numeric or _choice_letter(ng) is not None):
                decided_false = False
        return False if decided_false else UNDECIDED
    except Exception:  # noqa: BLE001 - a grader must never take a training run down
        return UNDECIDED


def parse_binary_verdict(text: str | None) -> int | None:
    """Box 5's reply "1" or "0": strict (the whole reply, stripped of quotes and a final period),
    else the last standalone 0/1 in the reply; None when there is none."""
    if text is None:
        return None
    t = text.strip().strip("\"'`").rstrip(".").strip()
    if t in ("0", "1"):
        return int(t)
    hits = re.findall(r"(?<![\d.])([01])(?!\d|\.\d)", text)
    return int(hits[-1]) if hits else None


def hybrid_rewards(completions: Sequence[Any], answers: Sequence[Any], questions: Sequence[str], judge=None, *,
                   correctness_weight: float = 0.8, format_weight: float = 0.2,
                   format_mode: str = "pair") -> tuple[list[float], dict]:
    """The paper's reward, ``correctness_weight`` x correctness + ``format_weight`` x
    :func:`tag_format_reward` (§3.4: 0.8 and 0.2). Correctness is :func:`local_check` on
    :func:`tagged_answer`; only the undecided answers go to ``judge`` (an ``api.answer_judge.AnswerJudge``,
    or any object with ``judge(items) -> list[int | None]``), in one batch. Without a judge, or
    when the judge fails, an undecided answer scores 0 (counted in ``judge_failed``).

    Returns the rewards and the counts ``{"correct", "format", "undecided", "judged_correct",
    "judge_failed"}`` (means over the completions for the first two)."""
    if not len(completions) == len(answers) == len(questions):
        raise ValueError(f"{len(completions)} completions, {len(answers)} answers, {len(questions)} questions")
    texts = [completion_text(c) for c in completions]
    preds = [tagged_answer(t) for t in texts]
    correct = [local_check(p, a) for p, a in zip(preds, answers)]
    undecided = [i for i, c in enumerate(correct) if c is UNDECIDED]
    failed = 0
    if undecided:
        verdicts = judge.judge([(questions[i], answers[i], preds[i]) for i in undecided]) if judge is not None \
            else [None] * len(undecided)
        for i, v in zip(undecided, verdicts):
            failed += v is None
            correct[i] = bool(v)
    fmt = [tag_format_reward(t, format_mode) for t in texts]
    score = [float(c) for c in correct]
    rewards = [correctness_weight * c + format_weight * f for c, f in zip(score, fmt)]
    n = max(1, len(texts))
    return rewards, {"correct": sum(score) / n, "format": sum(fmt) / n, "undecided": len(undecided),
                     "judged_correct": sum(int(correct[i]) for i in undecided), "judge_failed": failed}
