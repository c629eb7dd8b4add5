"""Benchmark loaders (reasondistill.data.benchmarks): the nine real files and the error paths.

Real files come from $REASONDISTILL_DATA_DIR or ../shared/benchmarks; those tests skip if
neither exists. Error-path tests write their own files under tmp_path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from reasondistill.data.benchmarks import (
    BENCHMARKS,
    DATA_DIR_ENV,
    DataError,
    load_benchmark,
    load_jsonl,
)

README_ROWS = {
    "gsm8k": 1319,
    "gsm8k_train": 7473,
    "math500": 500,
    "aime24": 30,
    "amc23": 40,
    "minerva_math": 272,
    "svamp": 1000,
    "gaokao2023en": 385,
    "olympiadbench": 675,
}
# rows whose published answer is empty (the answer sits at the end of the question text)
KNOWN_EMPTY_ANSWERS = {"gaokao2023en": 2}


def _data_dir() -> Path:
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "benchmarks"


@pytest.fixture(scope="module")
def data_dir() -> Path:
    d = _data_dir()
    if not d.is_dir():
        pytest.skip(f"benchmark data folder {d} not found (set {DATA_DIR_ENV})")
    return d


def test_registry_names():
    assert set(BENCHMARKS) == set(README_ROWS)


@pytest.mark.parametrize("name", sorted(README_ROWS))
def test_benchmark_loads(name, data_dir):
    recs = load_benchmark(name, data_dir)
    assert len(recs) == README_ROWS[name] == BENCHMARKS[name].rows
    assert len({r["id"] for r in recs}) == len(recs), "ids must be unique"
    for r in recs:
        assert isinstance(r["id"], str) and r["id"]
        assert isinstance(r["question"], str) and r["question"].strip()
        assert r["source"] == name
    empty = [r["id"] for r in recs if not r["answer"]]
    assert len(empty) == KNOWN_EMPTY_ANSWERS.get(name, 0), empty
    if name != "olympiadbench":
        assert all(isinstance(r["answer"], str) for r in recs)


def test_limit(data_dir):
    assert len(load_benchmark("gsm8k_train", data_dir, limit=5)) == 5


def test_gsm8k_answer_and_solution(data_dir):
    r = load_benchmark("gsm8k", data_dir, limit=1)[0]
    assert r["answer"] == "18"
    assert r["solution"].rstrip().endswith("#### 18")
    assert r["id"] == "gsm8k_test-1"
    # thousands separators in '#### N' are removed
    answers = [x["answer"] for x in load_benchmark("gsm8k_train", data_dir)]
    assert not any("," in a for a in answers)
    assert all(a.lstrip("-").replace(".", "", 1).isdigit() for a in answers)


def test_svamp_concatenates_body_and_question(data_dir):
    r = load_benchmark("svamp", data_dir, limit=1)[0]
    raw = json.loads((data_dir / "svamp.jsonl").open(encoding="utf-8").readline())
    assert r["question"].startswith(raw["Body"].strip())
    assert r["question"].endswith(raw["Question"].strip())
    assert r["answer"] == "145"  # 145.0 printed without .0
    assert r["id"] == "chal-777"


def test_minerva_answer_is_last_box(data_dir):
    recs = load_benchmark("minerva_math", data_dir)
    assert recs[0]["answer"] == "1.6"
    for r in recs:
        sol = r["solution"]
        assert "\\boxed" in sol
        last = sol.rindex("\\boxed")
        assert r["answer"] in sol[last:]


def test_olympiadbench_answer_is_list(data_dir):
    recs = load_benchmark("olympiadbench", data_dir)
    assert all(isinstance(r["answer"], list) and r["answer"] for r in recs)
    assert all(isinstance(a, str) for r in recs for a in r["answer"])
    assert recs[0]["answer"] == ["2"]


def test_math500_extras(data_dir):
    r = load_benchmark("math500", data_dir, limit=1)[0]
    assert r["answer"] == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert r["subject"] == "Precalculus" and str(r["level"]) == "2"
    assert "\\boxed" in r["solution"]
    assert r["id"] == "test/precalculus/807.json"


def test_amc23_numbers_print_as_integers(data_dir):
    recs = load_benchmark("amc23", data_dir)
    assert recs[0]["answer"] == "27"
    assert not any(r["answer"].endswith(".0") for r in recs)


def test_data_dir_from_env(data_dir, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(data_dir))
    assert len(load_benchmark("aime24")) == 30


# --------------------------------------------------------------------------------------------
# generic loader and errors (own files)
# --------------------------------------------------------------------------------------------


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_load_jsonl_conversions(tmp_path):
    p = _write(
        tmp_path / "mix.jsonl",
        [
            json.dumps({"q": "A", "a": 145.0}),
            "",  # blank lines are skipped (line numbers still count)
            json.dumps({"q": "B", "a": 2.5, "k": 7}),
            json.dumps({"q": "C", "a": ["$1$", 2]}),
            json.dumps({"q": "D", "a": "We get \\boxed{\\frac{1}{2}} and then \\boxed{\\frac{3}{4}}."}),
            json.dumps({"q": "E", "a": "so 1,000 in all.\n#### 1,000"}),
            json.dumps({"q": "F", "a": "x+1"}),
        ],
    )
    recs = load_jsonl(p, "q", "a", id_field="k")
    assert [r["answer"] for r in recs] == ["145", "2.5", ["$1$", "2"], "\\frac{3}{4}", "1000", "x+1"]
    assert [r["id"] for r in recs] == ["mix-1", "7", "mix-4", "mix-5", "mix-6", "mix-7"]
    assert recs[3]["solution"].startswith("We get")
    assert "solution" not in recs[0]
    assert all(r["source"] == "mix" for r in recs)
    assert len(load_jsonl(p, "q", "a", limit=2)) == 2


@pytest.mark.parametrize("fields", ["Body,Question", "Body, Question", ["Body", "Question"]])
def test_load_jsonl_joins_question_fields(tmp_path, fields):
    p = _write(tmp_path / "s.jsonl", [json.dumps({"Body": "Tom has 3 apples", "Question": "How many?", "Answer": 3.0})])
    (r,) = load_jsonl(p, fields, "Answer")
    assert r["question"] == "Tom has 3 apples. How many?"
    assert r["answer"] == "3"


def test_malformed_json_names_file_and_line(tmp_path):
    p = _write(tmp_path / "bad.jsonl", [json.dumps({"q": "1", "a": "1"}), "", '{"q": "2", "a": '])
    with pytest.raises(DataError) as ei:
        load_jsonl(p, "q", "a")
    msg = str(ei.value)
    assert isinstance(ei.value, ValueError)
    assert str(p) in msg and "line 3" in msg and "malformed JSON" in msg
    assert "Expecting value" in msg  # the JSON error itself


def test_non_object_line(tmp_path):
    p = _write(tmp_path / "list.jsonl", ["[1, 2]"])
    with pytest.raises(DataError, match="line 1.*JSON object"):
        load_jsonl(p, "q", "a")


def test_missing_field_names_field_file_line_and_present(tmp_path):
    rows = [json.dumps({"problem": "x", "answer": "1"}), json.dumps({"problem": "y", "solution": "2"})]
    p = _write(tmp_path / "miss.jsonl", rows)
    with pytest.raises(DataError) as ei:
        load_jsonl(p, "problem", "answer")
    msg = str(ei.value)
    assert "'answer'" in msg and str(p) in msg and "line 2" in msg
    assert "problem" in msg and "solution" in msg  # the fields present
    with pytest.raises(DataError, match="'question'.*fields present: problem, answer"):
        load_jsonl(p, "question", "answer")


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="cannot open"):
        load_jsonl(tmp_path / "nope.jsonl", "q", "a")


def test_unknown_benchmark_lists_valid_names(tmp_path):
    with pytest.raises(DataError) as ei:
        load_benchmark("gsm9k", tmp_path)
    msg = str(ei.value)
    assert "gsm9k" in msg
    for name in README_ROWS:
        assert name in msg


def test_no_data_dir_says_how_to_set_it(monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    with pytest.raises(DataError, match=DATA_DIR_ENV):
        load_benchmark("gsm8k")


def test_benchmark_file_missing_in_data_dir(tmp_path):
    with pytest.raises(DataError, match="math500.jsonl"):
        load_benchmark("math500", tmp_path)
