"""Multiple-choice evaluation (reasondistill.eval.choice_eval): loading MMLU CSVs and JSONL,
deterministic option shuffling, letter extraction, and an end-to-end run's accounting.

The real MMLU files come from $REASONDISTILL_DATA_DIR/mmlu or ../shared/benchmarks/mmlu; those
tests skip if neither exists.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from reasondistill.data.benchmarks import DATA_DIR_ENV, DataError
from reasondistill.eval.choice_eval import (
    evaluate_choice,
    extract_choice,
    format_prompt,
    load_choice_file,
    load_choice_files,
    shuffle_options,
    summarize_choice,
)

MMLU_ROWS = {"abstract_algebra": 100, "college_mathematics": 100, "college_physics": 102,
             "elementary_mathematics": 378, "high_school_mathematics": 270}


def _mmlu_dir() -> Path:
    env = os.environ.get(DATA_DIR_ENV)
    return (Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "benchmarks") / "mmlu"


@pytest.fixture(scope="module")
def mmlu():
    d = _mmlu_dir()
    if not d.is_dir():
        pytest.skip(f"MMLU files not found under {d} (set {DATA_DIR_ENV})")
    return load_choice_files(d)


def test_load_mmlu(mmlu):
    by_subject: dict = {}
    for r in mmlu:
        by_subject.setdefault(r["subject"], []).append(r)
    assert {s: len(v) for s, v in by_subject.items()} == MMLU_ROWS
    assert len({r["id"] for r in mmlu}) == len(mmlu)
    for r in mmlu:
        assert len(r["choices"]) == 4 and r["answer"] in "ABCD"
        assert r["answer"] == "ABCD"[r["answer_index"]]
    first = mmlu[0]
    assert first["subject"] == "abstract_algebra" and first["id"] == "abstract_algebra-1"
    assert first["question"].startswith("Find the degree for the given field extension")
    assert first["choices"] == ["0", "4", "2", "6"] and first["answer"] == "B"
    assert len(load_choice_files(_mmlu_dir(), limit_per_file=3)) == 15


def test_csv_quoted_multiline_rows_and_line_numbers(tmp_path):
    p = tmp_path / "demo_test.csv"
    p.write_text('"What is\n1+1?",1,2,3,4,B\nSecond,a,b,c,d,d\n\n"Third, with comma",x,y,z,w,A\n')
    recs = load_choice_file(p)
    assert [r["id"] for r in recs] == ["demo-1", "demo-3", "demo-5"]
    assert recs[0]["question"] == "What is\n1+1?" and recs[1]["answer"] == "D" and recs[2]["choices"][0] == "x"
    assert all(r["subject"] == "demo" for r in recs)


@pytest.mark.parametrize("content, line, message", [
    ('Q1,a,b,c,d,A\nQ2,a,b\n', 2, "columns"),
    ('Q1,a,b,c,d,A\n"multi\nline",a,b,c,d,E\n', 2, "not one of the letters ABCD"),
    ('"multi\nline",a,b,c,d,A\nQ3,a,b,c,d,\n', 3, "not one of the letters"),
])
def test_csv_errors_name_file_and_line(tmp_path, content, line, message):
    p = tmp_path / "broken_test.csv"
    p.write_text(content)
    with pytest.raises(DataError, match=rf"broken_test\.csv, line {line}: .*{message}"):
        load_choice_file(p)


def test_jsonl_formats_and_errors(tmp_path):
    p = tmp_path / "mc.jsonl"
    rows = [{"q": "Pick two", "opts": ["one", "two", "three"], "gold": 1, "topic": "numbers"},
            {"q": "Pick c", "opts": ["a", "b", "c"], "gold": "(c)"},
            {"q": "Pick by text", "opts": {"A": "x", "B": "y"}, "gold": "y", "uid": "abc"}]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    recs = load_choice_file(p, question_field="q", choices_field="opts", answer_field="gold", id_field="uid",
                            subject_field="topic")
    assert [r["answer"] for r in recs] == ["B", "C", "B"]
    assert [r["id"] for r in recs] == ["numbers-1", "mc-2", "abc"]
    assert [r["subject"] for r in recs] == ["numbers", "mc", "mc"]

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "choices": ["a", "b"], "answer": "A"}) + "\n"
                   + json.dumps({"question": "q", "answer": "A"}) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl, line 2: missing field 'choices'"):
        load_choice_file(bad)
    bad.write_text(json.dumps({"question": "q", "choices": ["a", "b"], "answer": 2}) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl, line 1: answer index 2 out of range"):
        load_choice_file(bad)
    bad.write_text("[1, 2]\n")
    with pytest.raises(DataError, match=r"line 1: expected a JSON object"):
        load_choice_file(bad)
    with pytest.raises(DataError, match="not found"):
        load_choice_file(tmp_path / "nope.csv")


# ------------------------------------------------------------------------------------------
# Shuffling
# ------------------------------------------------------------------------------------------
def _rec(i: int) -> dict:
    return {"id": f"s-{i}", "question": f"question {i}", "choices": [f"opt{i}-{j}" for j in range(4)],
            "answer": "ABCD"[i % 4], "answer_index": i % 4, "subject": "s"}


def test_shuffle_deterministic_and_keeps_the_answer():
    recs = [_rec(i) for i in range(200)]
    for r in recs:
        a, b = shuffle_options(r, seed=7), shuffle_options(dict(r), seed=7)
        assert a["choices"] == b["choices"] and a["answer"] == b["answer"]  # same (seed, id), same order
        assert sorted(a["permutation"]) == [0, 1, 2, 3]
        assert a["choices"] == [r["choices"][p] for p in a["permutation"]]
        assert a["choices"][a["answer_index"]] == r["choices"][r["answer_index"]]  # the right text
        assert a["answer"] == "ABCD"[a["answer_index"]] and a["original_answer"] == r["answer"]
        assert r["choices"] == [f"opt{r['question'].split()[1]}-{j}" for j in range(4)]  # input untouched
    # the order does not depend on the record's neighbours or position
    assert shuffle_options(recs[5], 7)["choices"] == [shuffle_options(x, 7) for x in reversed(recs)][-6]["choices"]


def test_different_seeds_give_different_orders():
    recs = [_rec(i) for i in range(200)]
    same = sum(shuffle_options(r, 0)["permutation"] == shuffle_options(r, 1)["permutation"] for r in recs)
    assert same < 30  # 1/24 expected by chance: about 8
    identity = sum(shuffle_options(r, 0)["permutation"] == [0, 1, 2, 3] for r in recs)
    assert identity < 30
    # the gold letters end up spread over all positions
    letters = [shuffle_options(r, 3)["answer"] for r in recs if r["answer"] == "A"]
    assert set(letters) == set("ABCD")


def test_format_prompt():
    r = {"question": "What is 2+2? ", "choices": ["3", " 4", "5", "22"]}
    text = format_prompt(r)
    assert text.startswith("What is 2+2?\n\nA. 3\nB. 4\nC. 5\nD. 22\n\n")
    assert "The answer is (X)" in text
    assert format_prompt(r, instruction=None).endswith("D. 22")


# ------------------------------------------------------------------------------------------
# Extraction
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("The answer is (C)", "C"),
    ("the answer is C.", "C"),
    ("Answer: c", "C"),
    ("ANSWER: b", "B"),
    ("Final answer: option D", "D"),
    ("The correct answer is: (a)", "A"),
    ("C.", "C"),
    ("C", "C"),
    ("(B) because 2+2=4", "B"),
    ("D) 42", "D"),
    ("\\boxed{C}", "C"),
    ("so we get $\\boxed{\\text{(B)}}$.", "B"),
    ("\\boxed{D. 42}", "D"),
    ("**Answer: A**", "A"),
    ("Option B is correct.", "B"),
    ("A is tempting, but B is wrong too.\nThe answer is (D).", "D"),
    ("The answer is (A). On reflection, the answer is (C).", "C"),
    ("Let me think.\nB\n", "B"),
    ("I think the answer is definitely C", None),
    # absent or not a valid option
    ("", None),
    ("I do not know.", None),
    ("The answer is 42.", None),
    ("The answer is (E)", None),
    ("The answer is a prime number.", None),
    ("A prime number has two divisors.", None),
    ("Answer: Cats", None),
])
def test_extract_choice(text, expected):
    assert extract_choice(text, 4) == expected


def test_extract_choice_more_options_and_boxed_text():
    assert extract_choice("The answer is (E)", 5) == "E"
    assert extract_choice("\\boxed{4}", 4, choices=["3", "4", "5", "6"]) == "B"
    assert extract_choice("\\boxed{7}", 4, choices=["3", "4", "5", "6"]) is None


def test_summarize_choice():
    rows = [{"subject": "x", "choices": ["a", "b", "c", "d"], "gold": "A", "extracted": "A", "correct": True},
            {"subject": "x", "choices": ["a", "b", "c", "d"], "gold": "B", "extracted": None, "correct": False},
            {"subject": "y", "choices": ["a", "b"], "gold": "B", "extracted": "A", "correct": False}]
    s = summarize_choice(rows)
    assert s["accuracy"] == pytest.approx(1 / 3) and s["num_unparseable"] == 1
    assert s["per_subject"] == {"x": {"num_questions": 2, "accuracy": 0.5, "num_unparseable": 1},
                                "y": {"num_questions": 1, "accuracy": 0.0, "num_unparseable": 0}}
    assert s["chance_accuracy"] == pytest.approx((0.25 + 0.25 + 0.5) / 3)
    assert s["gold_letter_counts"] == {"A": 1, "B": 2} and s["predicted_letter_counts"] == {"A": 2}


# ------------------------------------------------------------------------------------------
# End to end with the embedded student (accounting only: it knows arithmetic, not MMLU)
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def student():
    from reasondistill.models import load_model, load_tokenizer

    path = Path(__file__).resolve().parents[1] / "reasondistill" / "assets" / "arith" / "student"
    return load_model(path), load_tokenizer(path)


def test_evaluate_choice_smoke(student, mmlu):
    model, tok = student
    records = [r for r in mmlu if r["subject"] == "abstract_algebra"][:3] + \
              [r for r in mmlu if r["subject"] == "college_physics"][:3]
    rows, s = evaluate_choice(model, tok, records, seed=0, max_new_tokens=8, batch_size=4)
    assert len(rows) == 6 and [r["id"] for r in rows] == [r["id"] for r in records]
    for row, rec in zip(rows, records):
        shown = shuffle_options(rec, 0)
        assert row["choices"] == shown["choices"] and row["gold"] == shown["answer"]
        assert row["choices"]["ABCD".index(row["gold"])] == rec["choices"][rec["answer_index"]]
        assert row["extracted"] == extract_choice(row["output"], 4, row["choices"])
        assert row["correct"] == (row["extracted"] == row["gold"])
    assert s["num_questions"] == 6 and s["seed"] == 0 and s["shuffle"] is True
    assert s["accuracy"] == pytest.approx(sum(r["correct"] for r in rows) / 6)
    assert s["num_unparseable"] == sum(r["extracted"] is None for r in rows)
    assert set(s["per_subject"]) == {"abstract_algebra", "college_physics"}
    assert sum(v["num_questions"] for v in s["per_subject"].values()) == 6
    json.dumps([rows, s])  # written as JSONL / JSON by the CLI
    unshuffled, s2 = evaluate_choice(model, tok, records, shuffle=False, max_new_tokens=8)
    assert [r["gold"] for r in unshuffled] == [r["answer"] for r in records] and s2["shuffle"] is False
