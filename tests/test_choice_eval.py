"""Multiple-choice evaluation (reasondistill.eval.choice_eval): loading MMLU CSVs and JSONL,
deterministic option shuffling, letter extraction (a table of phrasings and traps), likelihood
scoring checked against a direct float64 computation on a tiny random model, and an end-to-end
run's accounting for both scorings.

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
@pytest.mark.parametrize("text, n_options, expected", [
    # explicit statements
    ("The correct option is (B).", 4, "B"),
    ("Correct option: B", 4, "B"),
    ("I choose B.", 4, "B"),
    ("I'll go with (A).", 4, "A"),
    ("I think it's D.", 4, "D"),
    ("The answer is (C)", 4, "C"),
    ("the answer is C.", 4, "C"),
    ("Answer: (D)", 4, "D"),
    ("Answer: c", 4, "C"),
    ("ANSWER: b", 4, "B"),
    ("the answer is option A", 4, "A"),
    ("Final answer: option D", 4, "D"),
    ("My final answer: C", 4, "C"),
    ("The correct answer is: (a)", 4, "A"),
    ("The best choice is D", 4, "D"),
    ("I think the answer is definitely C", 4, "C"),
    ("Checking each option, the answer would be B) 4.", 4, "B"),
    ("Option B is correct.", 4, "B"),
    ("C is the right answer.", 4, "C"),
    ("**Answer:** A", 4, "A"),
    ("The answer is: **B**", 4, "B"),
    ("\\boxed{B}", 4, "B"),
    ("\\boxed{\\text{B}}", 4, "B"),
    ("so we get $\\boxed{\\text{(B)}}$.", 4, "B"),
    ("\\boxed{D. 42}", 4, "D"),
    ("The answer is (E)", 5, "E"),
    ("The answer is (I)", 10, "I"),
    # no answer phrase: the letter alone, or a conclusive sentence
    ("B) 4", 4, "B"),
    ("B) Because the group has order four, the degree is 4.", 4, "B"),
    ("(B) because 2+2=4", 4, "B"),
    ("**C**", 4, "C"),
    ("C.", 4, "C"),
    ("C", 4, "C"),
    ("(c)", 4, "C"),
    ("Let me think.\nB\n", 4, "B"),
    # traps: the last explicit statement wins, negated mentions never count, "a" as an article
    ("A is wrong; the answer is C", 4, "C"),
    ("The answer is D, not A.", 4, "D"),
    ("Both A and B are wrong, so C", 4, "C"),
    ("Option B is incorrect. The correct answer is A.", 4, "A"),
    ("a good guess is B", 4, "B"),
    ("A is tempting, but B is wrong too.\nThe answer is (D).", 4, "D"),
    ("The answer is (A). On reflection, the answer is (C).", 4, "C"),
    ("\\boxed{A}\nWait, the answer is C.", 4, "C"),
    ("Not A. The answer is B.", 4, "B"),
    ("I would not choose A; I choose C.", 4, "C"),
    ("It is not B, so D.", 4, "D"),
    # no answer: None (unparseable), never a crash
    ("", 4, None),
    ("I do not know.", 4, None),
    ("The answer is 42.", 4, None),
    ("The answer is (E)", 4, None),
    ("(c)", 2, None),
    ("Answer: I don't know.", 10, None),  # the pronoun, not option I
    ("The answer is a prime number.", 4, None),
    ("A prime number has two divisors.", 4, None),
    ("Answer: Cats", 4, None),
    ("B is wrong.", 4, None),
    ("so neither A nor B", 4, None),
    ("so a good answer needs thought", 4, None),
    ("A. 0\nB. 4\nC. 2\nD. 6", 4, None),  # the options echoed back
    ("12+7=19\n19-3=16\n\\boxed{16}", 4, None),
])
def test_extract_choice(text, n_options, expected):
    assert extract_choice(text, n_options) == expected


@pytest.mark.parametrize("text, choices, expected", [
    ("The answer is 4.", ["3", "4", "5", "6"], "B"),
    ("Answer: 5", ["3", "4", "5", "6"], "C"),
    ("The answer is $6$.", ["3", "4", "5", "6"], "D"),
    ("\\boxed{4}", ["3", "4", "5", "6"], "B"),
    ("4", ["3", "4", "5", "6"], "B"),
    ("the answer is: paris", ["London", "Paris", "Rome", "Berlin"], "B"),
    ("The answer is (C) Rome.", ["London", "Paris", "Rome", "Berlin"], "C"),  # the letter, not a text match
    ("\\boxed{7}", ["3", "4", "5", "6"], None),
    ("The answer is 7.", ["3", "4", "5", "6"], None),
    ("The answer is 4.", ["4", "4", "5", "6"], None),  # two options with that text: ambiguous
    ("I think it is Paris or Rome", ["London", "Paris", "Rome", "Berlin"], None),
])
def test_extract_choice_from_the_option_text(text, choices, expected):
    assert extract_choice(text, len(choices), choices) == expected


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
    assert s["scoring"] == "generate" and all(r["predicted"] == r["extracted"] for r in rows)

    # likelihood scoring on the same questions: the same shown orders, an answer for every question
    for target in ("letter", "text"):
        ll, s3 = evaluate_choice(model, tok, records, seed=0, scoring="loglik", loglik_target=target, batch_size=8)
        assert [(r["choices"], r["gold"]) for r in ll] == [(r["choices"], r["gold"]) for r in rows]
        assert all(r["predicted"] in "ABCD" and len(r["option_scores"]) == 4 for r in ll)
        assert s3["num_unparseable"] == 0 and s3["scoring"] == "loglik" and s3["loglik_target"] == target
        assert "mean_tokens" not in s3 and set(s3["per_subject"]) == {"abstract_algebra", "college_physics"}


# ------------------------------------------------------------------------------------------
# Likelihood scoring, against a direct float64 computation on a tiny random model
# ------------------------------------------------------------------------------------------
LOGLIK_RECORDS = [
    {"id": "t-1", "question": "What is 2+2?", "choices": ["3", "4", "5", "22"], "answer": "B", "answer_index": 1,
     "subject": "arith"},
    {"id": "t-2", "question": "Which is a colour?", "choices": ["red", "seven", "quickly"], "answer": "A",
     "answer_index": 0, "subject": "words"},
    {"id": "t-3", "question": "Pick the longest.", "choices": ["a", "a much longer option text", "mid size", "b c"],
     "answer": "B", "answer_index": 1, "subject": "words"},
]


def _direct_logprob(model, tokenizer, prompt: str, continuation: str) -> float:
    """sum of log p(continuation token | everything before it), float64, one unpadded sequence."""
    import torch

    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    was = model.training
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor([p + c])).logits[0].double()  # (P + C, V)
    model.train(was)
    logp = logits.log_softmax(-1)
    return sum(logp[len(p) + k - 1, tok].item() for k, tok in enumerate(c))


@pytest.fixture(scope="module")
def loglik_runs(tiny_model, tokenizer):
    """Both targets at batch 1 and batch 8 (12 / 11 pairs: batch 8 splits a question)."""
    return {(target, bs): evaluate_choice(tiny_model, tokenizer, LOGLIK_RECORDS, seed=3, scoring="loglik",
                                          loglik_target=target, batch_size=bs)
            for target in ("letter", "text") for bs in (1, 8)}


def test_loglik_requests():
    from reasondistill.eval.choice_eval import ANSWER_PREFIX, LOGLIK_INSTRUCTION, loglik_requests
    from reasondistill.tasks.arith import build_tokenizer

    tok, rec = build_tokenizer(), LOGLIK_RECORDS[0]
    prompt, conts = loglik_requests(rec, "letter", tok)
    assert prompt.endswith("<|im_start|>assistant\n" + ANSWER_PREFIX) and "\nB. 4\n" in prompt
    assert LOGLIK_INSTRUCTION in prompt and conts == [" A", " B", " C", " D"]
    prompt, conts = loglik_requests(rec, "text", tok)
    assert prompt.endswith(ANSWER_PREFIX) and "What is 2+2?" in prompt and "B. 4" not in prompt  # cloze form
    assert conts == [" 3", " 4", " 5", " 22"]
    with pytest.raises(ValueError, match="loglik_target"):
        loglik_requests(rec, "both", tok)


@pytest.mark.parametrize("target", ["letter", "text"])
def test_loglik_scores_are_the_continuation_logprobs(loglik_runs, tiny_model, tokenizer, target):
    from reasondistill.eval.choice_eval import loglik_requests

    rows, s = loglik_runs[target, 8]
    assert [r["id"] for r in rows] == [r["id"] for r in LOGLIK_RECORDS]
    for row, rec in zip(rows, LOGLIK_RECORDS):
        shown = shuffle_options(rec, 3)
        prompt, conts = loglik_requests(shown, target, tokenizer)
        direct = [_direct_logprob(tiny_model, tokenizer, prompt, c) for c in conts]
        assert row["option_logprobs"] == pytest.approx(direct, abs=1e-5)
        assert row["option_num_tokens"] == [len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in conts]
        if target == "text":  # mean log-prob per character of " " + option text
            expected = [lp / len(" " + c.strip()) for lp, c in zip(row["option_logprobs"], row["choices"])]
        else:
            expected = row["option_logprobs"]
        assert row["option_scores"] == pytest.approx(expected, rel=1e-12)
        best = max(range(len(direct)), key=lambda j: row["option_scores"][j])
        assert row["predicted"] == "ABCD"[best] and row["correct"] == (row["predicted"] == row["gold"])
        assert row["scoring"] == "loglik" and row["loglik_target"] == target
    assert s["scoring"] == "loglik" and s["loglik_target"] == target and s["num_unparseable"] == 0
    assert s["accuracy"] == pytest.approx(sum(r["correct"] for r in rows) / 3)
    assert set(s["per_subject"]) == {"arith", "words"} and "wall_seconds" in s
    json.dumps([rows, s])
    assert tiny_model.training  # the model's mode is restored


def test_loglik_batching_does_not_change_the_scores(loglik_runs):
    for target in ("letter", "text"):
        one, eight = loglik_runs[target, 1][0], loglik_runs[target, 8][0]
        for a, b in zip(one, eight):
            assert a["option_logprobs"] == pytest.approx(b["option_logprobs"], abs=1e-5)
            assert a["predicted"] == b["predicted"]


def test_the_shuffle_is_the_same_for_both_scorings(loglik_runs, tiny_model, tokenizer):
    gen_rows, gen_summary = evaluate_choice(tiny_model, tokenizer, LOGLIK_RECORDS, seed=3, max_new_tokens=2)
    assert gen_summary["scoring"] == "generate" and "loglik_target" not in gen_summary
    for target in ("letter", "text"):
        for g, ll, rec in zip(gen_rows, loglik_runs[target, 8][0], LOGLIK_RECORDS):
            shown = shuffle_options(rec, 3)
            assert g["choices"] == ll["choices"] == shown["choices"]
            assert g["permutation"] == ll["permutation"] and g["gold"] == ll["gold"] == shown["answer"]
    assert any(r["permutation"] != list(range(len(r["choices"]))) for r in gen_rows)


def test_loglik_argument_errors(tiny_model, tokenizer):
    with pytest.raises(ValueError, match="scoring must be one of"):
        evaluate_choice(tiny_model, tokenizer, LOGLIK_RECORDS, scoring="likelihood")
    with pytest.raises(ValueError, match="loglik_target must be one of"):
        evaluate_choice(tiny_model, tokenizer, LOGLIK_RECORDS, scoring="loglik", loglik_target="letters")
    with pytest.raises(ValueError, match="generate' only"):
        evaluate_choice(tiny_model, tokenizer, LOGLIK_RECORDS, scoring="loglik", temperature=0.6)
