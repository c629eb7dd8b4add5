"""The pairwise reasoning judge: verdict parsing, both orders, accounting of unparseable
verdicts, the rule judge on the embedded task, the RWR / RLR matrix, and real judges (a local
HF model, an OpenAI-compatible endpoint on 127.0.0.1) whose failures never crash the run."""

from __future__ import annotations

import json

import pytest

from reasondistill.eval import pairwise as P


def rows(outputs, gold="1", question="What is 7-7-8+9?"):
    return [{"id": f"q{i}", "sample": 0, "question": question, "gold": gold, "output": o}
            for i, o in enumerate(outputs)]


GOOD = "7-7=0\n0-8=-8\n-8+9=1\n\\boxed{1}"
LUCKY = "7-7=0\n0-8=-7\n-7+9=1\n\\boxed{1}"  # right answer through a wrong step
WRONG = "7-7=0\n0-8=-8\n-8+9=2\n\\boxed{2}"


@pytest.mark.parametrize("text,want", [
    ("A is better.\n[[A]]", "A"), ("[[B]]", "B"), ("tie [[C]]", "C"), ("first [[A]] then [[B]]", "B"),
    ("[[ A ]]", "A"), ("Verdict: A wins", "A"), ("Verdict: B", "B"), ("verdict: tie", "C"),
    ("My verdict: a tie.", "C"), ("Verdict: a clear win for B", None), ("Verdict: Alpha", None),
    ("I cannot decide.", None), ("", None), ("[[D]]", None), (None, None), (RuntimeError("x"), None),
])
def test_parse_verdict(text, want):
    assert P.parse_verdict(text) == want


def test_template_renders_literally_and_checks_placeholders(tmp_path):
    t = P.load_template()
    out = P.render(t, "Q?", "1", "\\boxed{1} {answer}", "B-sol")
    assert "\\boxed{1} {answer}" in out and "[Correct final answer]\n1" in out and "B-sol" in out
    bad = tmp_path / "t.txt"
    bad.write_text("only {question}")
    with pytest.raises(ValueError, match="solution_a"):
        P.load_template(bad)


def test_rule_judge_prefers_sound_reasoning_over_lucky_answers():
    j = P.RuleJudge()
    s, rec = P.compare_pair(j, rows([GOOD, GOOD, LUCKY]), rows([LUCKY, WRONG, LUCKY]))
    # q0: sound vs lucky -> win; q1: sound vs wrong answer -> win; q2: same -> tie
    assert (s["wins"], s["losses"], s["ties"]) == (2, 0, 1)
    assert s["win_rate"] == pytest.approx(2 / 3) and s["unparseable_verdicts"] == 0
    assert [r["verdict_ab"] for r in rec] == ["A", "A", "C"] and [r["verdict_ba"] for r in rec] == ["B", "B", "C"]
    s2, _ = P.compare_pair(j, rows([LUCKY, WRONG, LUCKY]), rows([GOOD, GOOD, LUCKY]))
    assert (s2["wins"], s2["losses"], s2["ties"]) == (0, 2, 1)


def test_both_orders_cancel_position_bias_and_unparseable_is_counted():
    always_a = lambda prompts, items: ["[[A]]"] * len(prompts)  # noqa: E731 - a biased judge
    s, _ = P.compare_pair(always_a, rows([GOOD, WRONG]), rows([WRONG, GOOD]))
    assert (s["wins"], s["losses"], s["ties"]) == (0, 0, 2)

    def flaky(prompts, items):  # order AB parseable, order BA garbage or a failed call
        return ["[[A]]" if k % 2 == 0 else (RuntimeError("500") if k % 4 == 1 else "no idea") for k in range(len(prompts))]

    s, rec = P.compare_pair(flaky, rows([GOOD, WRONG]), rows([WRONG, GOOD]))
    assert s["unparseable_verdicts"] == 2 and s["wins"] == 2 and s["unjudged"] == 0
    assert "judge call failed" in rec[0]["judge_ba"]
    nothing = lambda prompts, items: ["?"] * len(prompts)  # noqa: E731
    s, _ = P.compare_pair(nothing, rows([GOOD]), rows([WRONG]))
    assert s["unjudged"] == 1 and s["judged"] == 0 and s["win_rate"] == 0.0 and s["unparseable_verdicts"] == 2


def test_unmatched_answer_sets_are_refused():
    with pytest.raises(ValueError, match="share no"):
        P.compare_pair(P.RuleJudge(), rows([GOOD]), [{"id": "other", "question": "x", "gold": "1", "output": GOOD}])


def test_matrix_rwr_rlr():
    answers = {"good": rows([GOOD, GOOD]), "lucky": rows([LUCKY, LUCKY]), "wrong": rows([WRONG, GOOD])}
    m = P.pairwise_matrix(P.RuleJudge(), answers)
    w = m["win"]
    assert w["good"]["lucky"] == 1.0 and w["lucky"]["good"] == 0.0
    assert w["good"]["wrong"] == 0.5 and w["wrong"]["good"] == 0.0  # q1 is a tie
    assert m["rwr"]["good"] == pytest.approx(0.75) and m["rlr"]["good"] == 0.0
    assert m["rlr"]["lucky"] == pytest.approx((1.0 + w["wrong"]["lucky"]) / 2)
    for i in answers:
        assert w[i][i] is None


def test_hf_judge_with_the_embedded_model_never_crashes():
    """A real local model as judge: its verdicts are noise, the accounting is real."""
    j = P.make_judge("embedded:teacher", max_new_tokens=8)
    s, rec = P.compare_pair(j, rows([GOOD, WRONG]), rows([WRONG, GOOD]))
    assert s["questions"] == 2 and s["judged"] + s["unjudged"] == 2
    assert s["unparseable_verdicts"] == sum((r["verdict_ab"] is None) + (r["verdict_ba"] is None) for r in rec)


def test_endpoint_judge_against_a_real_server():
    """An OpenAI-compatible server on 127.0.0.1 serving the embedded teacher."""
    from reasondistill.api.serve import serve

    server = serve("embedded:teacher", port=0).start()
    try:
        j = P.make_judge(server.url, model="embedded:teacher", max_tokens=8, max_retries=1)
        s, rec = P.compare_pair(j, rows([GOOD]), rows([WRONG]))
        assert s["questions"] == 1 and len(rec[0]["judge_ab"]) > 0
        assert s["unparseable_verdicts"] == (rec[0]["verdict_ab"] is None) + (rec[0]["verdict_ba"] is None)
    finally:
        server.stop()
    # the server is gone: every call fails, the comparison still completes
    dead = P.make_judge(server.url, model="embedded:teacher", max_retries=0, timeout=2)
    s, rec = P.compare_pair(dead, rows([GOOD]), rows([WRONG]))
    assert s["unparseable_verdicts"] == 2 and s["unjudged"] == 1 and "judge call failed" in rec[0]["judge_ab"]


def test_cli_eval_pairwise(tmp_path):
    from reasondistill.cli import main

    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("".join(json.dumps(r) + "\n" for r in rows([GOOD, GOOD])))
    b.write_text("".join(json.dumps(r) + "\n" for r in rows([LUCKY, GOOD])))
    out = tmp_path / "pw"
    assert main(["eval", "pairwise", "--a", str(a), "--b", str(b), "--judge", "rule", "--output-dir", str(out)]) == 0
    s = json.loads((out / "pairwise_summary.json").read_text())
    assert (s["wins"], s["ties"]) == (1, 1)
    assert len((out / "pairwise_verdicts.jsonl").read_text().splitlines()) == 2
