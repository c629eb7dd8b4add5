"""Code-generation evaluation (reasondistill.eval.code_eval): extraction, programs, pass@k,
loading, and the HumanEval harness proving itself on the canonical solutions.

The real HumanEval file comes from $REASONDISTILL_DATA_DIR or ../shared/benchmarks; those tests
skip if neither exists.
"""

from __future__ import annotations

import itertools
import json
import os
from fractions import Fraction
from math import comb
from pathlib import Path

import pytest

from reasondistill.data.benchmarks import DATA_DIR_ENV, DataError
from reasondistill.eval.code_eval import (
    build_program,
    evaluate_code,
    evaluate_solutions,
    extract_code,
    load_code_benchmark,
    pass_at_k,
    summarize_code,
)
from reasondistill.eval.sandbox import STATUSES, run_program

PROMPT = ('from typing import List\n\n\ndef total(xs: List[int]) -> int:\n'
          '    """Sum of xs.\n    >>> total([1, 2])\n    3\n    """\n')
RECORD = {"task_id": "T/0", "prompt": PROMPT, "entry_point": "total",
          "test": "\ndef check(candidate):\n    assert candidate([1, 2]) == 3\n    assert candidate([]) == 0\n",
          "canonical_solution": "    return sum(xs)\n"}

BODY = "    return sum(xs)\n"
FULL = "def total(xs: List[int]) -> int:\n    return sum(xs)\n"


def _data_dir() -> Path:
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "benchmarks"


@pytest.fixture(scope="module")
def humaneval():
    d = _data_dir()
    if not (d / "code" / "humaneval.jsonl").is_file():
        pytest.skip(f"HumanEval not found under {d} (set {DATA_DIR_ENV})")
    return load_code_benchmark("humaneval", data_dir=d)


# ------------------------------------------------------------------------------------------
# extract_code / build_program
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("completion, expected", [
    # raw continuations, cut at the HumanEval stop sequences
    (BODY, BODY),
    (BODY + "\n\ndef other():\n    pass\n", BODY + "\n"),
    (BODY + "\nclass X:\n    pass\n", BODY),
    (BODY + "\nif __name__ == '__main__':\n    print(total([1]))\n", BODY),
    (BODY + "\nprint(total([1, 2]))\n", BODY),
    (BODY + "\n# tests\nassert total([]) == 0\n", BODY),
    ("    # an indented comment stays\n" + BODY, "    # an indented comment stays\n" + BODY),
    ("    def helper(v):\n        return v\n" + BODY, "    def helper(v):\n        return v\n" + BODY),
    ("", ""),
    # fenced block with the full definition: used as is
    ("Here you go:\n```python\n" + FULL + "```\nDone.", FULL),
    ("```py\nimport math\n\n" + FULL + "```", "import math\n\n" + FULL),
    ("```\n" + FULL + "```", FULL),  # untagged fence
    ("```python\n" + FULL, FULL),  # unterminated fence (cut by the token limit)
    # fenced block without the definition: a continuation
    ("```python\n" + BODY + "```", BODY),
    # a python block is preferred over another language; the block defining the function wins
    ("```text\nnot code\n```\n```python\n" + FULL + "```", FULL),
    ("```python\nprint('example')\n```\nSolution:\n```python\n" + FULL + "```", FULL),
    # an unfenced answer that starts with the definition is a full program (helpers kept)
    ("from typing import List\n\n" + FULL + "\ndef helper():\n    pass\n",
     "from typing import List\n\n" + FULL + "\ndef helper():\n    pass\n"),
])
def test_extract_code(completion, expected):
    assert extract_code(completion, PROMPT) == expected


@pytest.mark.parametrize("completion, passes", [
    (BODY, True),
    (BODY + "\ndef other():\n    pass\n", True),
    ("```python\n" + FULL + "```", True),
    # the block uses List without importing it: the prompt's imports come first
    ("```python\ndef total(xs: List[int]) -> int:\n    return sum(xs)\n```", True),
    ("```python\n" + BODY + "```", True),
    ("    return 0\n", False),
    ("```python\ndef total(xs):\n    return -1\n```", False),
    ("garbage that is not python", False),
])
def test_build_program_runs(completion, passes):
    prog = build_program(RECORD, completion)
    assert prog.rstrip().endswith("check(total)")
    r = run_program(prog, timeout=10)
    assert r.passed is passes, (prog, r.stderr)


def test_build_program_continuation_layout():
    prog = build_program(RECORD, BODY)
    assert prog == PROMPT + BODY + "\n" + RECORD["test"] + "\ncheck(total)\n"
    assert build_program(RECORD, BODY + "\nprint(1)\n", extract=False) == (
        PROMPT + BODY + "\nprint(1)\n" + "\n" + RECORD["test"] + "\ncheck(total)\n")


# ------------------------------------------------------------------------------------------
# pass@k
# ------------------------------------------------------------------------------------------
def _brute_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """Share of the k-subsets of n samples (c of them correct) that contain a correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return Fraction(sum(any(samples[i] for i in s) for s in subsets), len(subsets))


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_matches_brute_force(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(float(_brute_pass_at_k(n, c, k)), abs=1e-12), (n, c, k)


def test_pass_at_k_large_and_invalid():
    # large n: no overflow, agrees with exact binomials
    assert pass_at_k(200, 13, 100) == pytest.approx(1 - comb(187, 100) / comb(200, 100), rel=1e-12)
    assert pass_at_k(10, 0, 10) == 0.0 and pass_at_k(10, 1, 10) == 1.0
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    for bad in [(0, 0, 1), (3, 4, 1), (3, -1, 1), (3, 1, 0), (3, 1, 4)]:
        with pytest.raises(ValueError):
            pass_at_k(*bad)


def test_summarize_code_pass_at_k():
    rows = [{"task_id": t, "passed": p, "status": "passed" if p else "failed"}
            for t, outcome in [("a", [1, 0, 0, 0]), ("b", [0, 0, 0, 0]), ("c", [1, 1, 1, 1])] for p in outcome]
    s = summarize_code(rows, samples=4)
    assert s["pass@1"] == pytest.approx(5 / 12)
    assert s["pass@4"] == pytest.approx((1 + 0 + 1) / 3)
    assert "pass@10" not in s and s["num_passed"] == 5 and s["num_failed"] == 7 and s["num_tasks"] == 3


# ------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------
def test_load_humaneval(humaneval):
    assert len(humaneval) == 164
    assert humaneval[0]["id"] == humaneval[0]["task_id"] == "HumanEval/0"
    assert len({r["id"] for r in humaneval}) == 164
    assert all(r["entry_point"] in r["prompt"] and "def check(" in r["test"] for r in humaneval)
    assert load_code_benchmark("humaneval", data_dir=_data_dir(), limit=5)[-1]["task_id"] == "HumanEval/4"


def test_load_any_jsonl_and_errors(tmp_path):
    good = {k: RECORD[k] for k in ("task_id", "prompt", "entry_point", "test")}
    p = tmp_path / "mine.jsonl"
    p.write_text(json.dumps(good) + "\n\n" + json.dumps({**good, "task_id": "T/1"}) + "\n")
    recs = load_code_benchmark(p)
    assert [r["id"] for r in recs] == ["T/0", "T/1"] and recs[0]["source"] == "mine"

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(good) + "\n" + json.dumps({k: v for k, v in good.items() if k != "entry_point"}) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl, line 2: missing field 'entry_point'"):
        load_code_benchmark(bad)
    bad.write_text("\n\n{not json\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 3: malformed JSON"):
        load_code_benchmark(bad)
    bad.write_text(json.dumps({**good, "entry_point": "not an identifier"}) + "\n")
    with pytest.raises(DataError, match=r"line 1: entry_point"):
        load_code_benchmark(bad)
    with pytest.raises(DataError, match="unknown code benchmark"):
        load_code_benchmark("mbpp_plus_plus", data_dir=tmp_path)
    with pytest.raises(DataError, match="not found"):
        load_code_benchmark(tmp_path / "missing.jsonl")


# ------------------------------------------------------------------------------------------
# The harness on real HumanEval
# ------------------------------------------------------------------------------------------
def test_canonical_solutions_all_pass(humaneval):
    rows, summary = evaluate_solutions(humaneval, [r["canonical_solution"] for r in humaneval], workers=2)
    failed = [(r["task_id"], r["status"], r["detail"]) for r in rows if not r["passed"]]
    assert failed == []
    assert summary["pass@1"] == 1.0 and summary["num_tasks"] == 164 and summary["num_programs"] == 164


def test_corrupted_solutions_all_fail(humaneval):
    """Every body replaced by ``return None``: no HumanEval task's tests accept None."""
    rows, summary = evaluate_solutions(humaneval, ["    return None\n"] * len(humaneval), workers=2)
    passed = [r["task_id"] for r in rows if r["passed"]]
    assert passed == []
    assert summary["pass@1"] == 0.0 and summary["num_failed"] == 164 and summary["num_timeouts"] == 0


def test_evaluate_solutions_samples_and_statuses():
    comps = [BODY, "    return 0\n", "    while True:\n        pass\n", "```python\n" + FULL + "```"]
    rows, s = evaluate_solutions([RECORD], [comps], timeout=1.0)
    assert [r["sample"] for r in rows] == [0, 1, 2, 3]
    assert [r["status"] for r in rows] == ["passed", "failed", "timeout", "passed"]
    assert [r["full_program"] for r in rows] == [False, False, False, True]
    assert s["samples"] == 4 and s["pass@1"] == 0.5 and s["pass@4"] == 1.0 and s["num_timeouts"] == 1
    with pytest.raises(ValueError):
        evaluate_solutions([RECORD], [])


# ------------------------------------------------------------------------------------------
# End to end with the embedded (arithmetic) student: garbage code, exact accounting
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def student():
    from reasondistill.models import load_model, load_tokenizer

    path = Path(__file__).resolve().parents[1] / "reasondistill" / "assets" / "arith" / "student"
    return load_model(path), load_tokenizer(path)


def _check_accounting(rows, summary, records, samples):
    assert len(rows) == len(records) * samples
    assert [r["task_id"] for r in rows] == [rec["task_id"] for rec in records for _ in range(samples)]
    assert [r["sample"] for r in rows] == list(range(samples)) * len(records)
    assert all(r["status"] in STATUSES and r["passed"] == (r["status"] == "passed") for r in rows)
    assert summary["num_programs"] == len(rows) and summary["num_tasks"] == len(records)
    assert summary["pass@1"] == pytest.approx(sum(r["passed"] for r in rows) / len(rows))
    assert sum(summary[f"num_{k}"] for k in ("passed", "failed", "timeouts", "errors")) == len(rows)
    assert summary["wall_seconds"] > 0 and all(r["num_tokens"] >= 1 for r in rows)
    json.dumps([rows, summary])  # written as JSONL / JSON by the CLI


def test_evaluate_code_smoke(student, humaneval):
    model, tok = student
    records = humaneval[:3]
    rows, summary = evaluate_code(model, tok, records, max_new_tokens=12, batch_size=2, timeout=5.0)
    _check_accounting(rows, summary, records, 1)
    assert summary["pass@1"] == 0.0  # an arithmetic model writes no working Python
    again, _ = evaluate_code(model, tok, records, max_new_tokens=12, batch_size=3, timeout=5.0)
    assert [r["completion"] for r in again] == [r["completion"] for r in rows]  # greedy: deterministic


def test_evaluate_code_sampling_and_chat(student):
    model, tok = student
    records = [RECORD, {**RECORD, "task_id": "T/1"}]
    rows, summary = evaluate_code(model, tok, records, samples=2, temperature=0.8, max_new_tokens=8, seed=1,
                                  chat=True, timeout=5.0)
    _check_accounting(rows, summary, records, 2)
    assert "pass@2" in summary and summary["samples"] == 2
