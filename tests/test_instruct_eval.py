"""Instruction following (eval/instruct_eval.py): the paper's judge template, the loader, the
win-rate arithmetic with a scripted judge (both orders, ties half, unparseable verdicts left
out), and real judges: the project's OpenAI-compatible server on 127.0.0.1 serving the embedded
teacher (its verdicts are noise; parsing, order swapping, retries and accounting are real),
behind a proxy that fails the first requests, and after it is gone."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from reasondistill.data.benchmarks import DataError
from reasondistill.eval import instruct_eval as I

SHARED = Path(__file__).resolve().parents[2] / "shared" / "benchmarks"
SHORT_TEMPLATE = "Q: {question}\nA: {answer_a}\nB: {answer_b}\nBetter:"


def answer_rows(n):
    return [{"id": f"i{k}", "instruction": f"instruction {k}", "reference": f"reference {k}",
             "output": f"model answer {k}"} for k in range(n)]


# --------------------------------------------------------------------------------------------
# template and data
# --------------------------------------------------------------------------------------------
def test_packaged_template_is_the_papers_prompt_and_fills_literally(tmp_path):
    t = I.load_instruct_template()
    for needle in ("Act as an impartial judge", "do not let the order of presentation influence",
                   "[[A]], [[B]], or [[C]] (tie)", "[User Question]\n{question}", "[Response A]\n{answer_a}",
                   "[Response B]\n{answer_b}"):
        assert needle in t
    from reasondistill.eval.pairwise import fill

    out = fill(t, {"question": "Q {answer_b}?", "answer_a": "def f(): return {}", "answer_b": "B"})
    assert "Q {answer_b}?" in out and "def f(): return {}" in out and "{answer_a}" not in out
    bad = tmp_path / "bad.txt"
    bad.write_text("{question} {answer_a}")
    with pytest.raises(ValueError, match="answer_b"):
        I.load_instruct_template(bad)


def test_loader_fields_ids_and_errors(tmp_path):
    f = tmp_path / "mine.jsonl"
    f.write_text(json.dumps({"instruction": "Say hi.", "output": "Hi!", "dataset": "d", "generator": "g"}) + "\n\n"
                 + json.dumps({"id": 7, "instruction": "Count.", "output": "1 2 3"}) + "\n")
    recs = I.load_instruct_benchmark(f)
    assert recs[0] == {"id": "mine-1", "instruction": "Say hi.", "reference": "Hi!", "source": "mine",
                       "dataset": "d", "generator": "g"}
    assert recs[1]["id"] == "7" and len(I.load_instruct_benchmark(f, limit=1)) == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"instruction": "x", "output": "y"}) + "\n" + json.dumps({"instruction": "x"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl, line 2: missing field 'output'"):
        I.load_instruct_benchmark(bad)
    bad.write_text("{not json\n")
    with pytest.raises(DataError, match="line 1: malformed JSON"):
        I.load_instruct_benchmark(bad)
    with pytest.raises(DataError, match="unknown instruction benchmark"):
        I.load_instruct_benchmark("alpaca_evil", tmp_path)


@pytest.mark.skipif(not SHARED.exists(), reason="../shared/benchmarks not present")
def test_real_alpaca_eval_file():
    recs = I.load_instruct_benchmark("alpaca_eval", SHARED)
    assert len(recs) == 805 and len({r["id"] for r in recs}) == 805
    assert all(r["instruction"].strip() and r["reference"].strip() for r in recs)
    assert {r["generator"] for r in recs} == {"text_davinci_003"}


def test_rule_judge_is_refused():
    with pytest.raises(ValueError, match="LLM judge"):
        I.make_instruct_judge("rule")
    with pytest.raises(ValueError, match="judge-model"):
        I.make_instruct_judge("http://127.0.0.1:9/v1")


# --------------------------------------------------------------------------------------------
# the arithmetic, with a scripted judge
# --------------------------------------------------------------------------------------------
class Scripted:
    """Answers by (instruction, whether the model's answer is Response A), from a script."""

    def __init__(self, script):
        self.script, self.seen = script, []

    def __call__(self, prompts, items):
        out = []
        for p, it in zip(prompts, items):
            model_first = it["answer_a"].startswith("model answer")
            self.seen.append((p, model_first))
            reply = self.script[(it["question"], model_first)]
            out.append(reply() if callable(reply) else reply)
        return out


def test_win_rate_averages_the_two_orders_ties_half_unparseable_left_out():
    def failed():
        return ConnectionError("judge unreachable")

    judge = Scripted({
        ("instruction 0", True): "A is better.\n[[A]]", ("instruction 0", False): "[[B]]",  # win, win
        ("instruction 1", True): "[[C]]", ("instruction 1", False): "[[A]]",               # tie, loss
        ("instruction 2", True): "I cannot tell.", ("instruction 2", False): "tie [[C]]",   # ?, tie
        ("instruction 3", True): failed, ("instruction 3", False): "no verdict",           # failed, ?
    })
    rows = I.judge_answers(judge, answer_rows(4), SHORT_TEMPLATE)
    s = I.summarize_instruct(rows)
    # order "model is A": 1, 0.5 -> 0.75; order "model is B": 1, 0, 0.5 -> 0.5; averaged: 0.625
    # (pooling the five verdicts would give 0.6: the orders are averaged, not the verdicts)
    assert s["win_rate_model_as_a"] == pytest.approx(0.75) and s["win_rate_model_as_b"] == pytest.approx(0.5)
    assert s["win_rate"] == pytest.approx(0.625)
    assert (s["wins"], s["ties"], s["losses"]) == (2, 2, 1)
    assert s["unparseable_verdicts"] == 3 and s["failed_judge_calls"] == 1 and s["num_verdicts"] == 8
    assert s["unparseable_share"] == pytest.approx(3 / 8) and s["unjudged"] == 1
    assert [r["score"] for r in rows] == [1.0, 0.25, 0.5, None]
    assert [(r["verdict_model_as_a"], r["verdict_model_as_b"]) for r in rows] == [
        ("A", "B"), ("C", "A"), (None, "C"), (None, None)]
    assert rows[3]["failed_model_as_a"] and not rows[3]["failed_model_as_b"]
    assert "judge call failed" in rows[3]["judge_model_as_a"] and "unreachable" in rows[3]["judge_model_as_a"]
    # both orders were asked, the model's answer first as Response A, then as Response B
    assert [m for _, m in judge.seen] == [True, False] * 4
    p_first, p_second = judge.seen[0][0], judge.seen[1][0]
    assert "A: model answer 0\nB: reference 0" in p_first and "A: reference 0\nB: model answer 0" in p_second


def test_position_bias_cancels_and_a_crashing_judge_never_raises():
    always_a = lambda prompts, items: ["[[A]]"] * len(prompts)  # noqa: E731 - a judge with position bias
    s = I.summarize_instruct(I.judge_answers(always_a, answer_rows(3), SHORT_TEMPLATE))
    assert s["win_rate"] == 0.5 and s["wins"] == 3 and s["losses"] == 3

    calls = []

    def second_call_crashes(prompts, items):
        calls.append(len(prompts))
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return ["[[B]]"] * len(prompts)

    rows = I.judge_answers(second_call_crashes, answer_rows(3), SHORT_TEMPLATE, judge_batch=2)
    s = I.summarize_instruct(rows)
    assert calls == [2, 2, 2]  # one instruction (two orders) per call
    assert s["failed_judge_calls"] == 2 and s["unjudged"] == 1 and rows[1]["score"] is None
    assert s["win_rate_model_as_a"] == 0.0 and s["win_rate_model_as_b"] == 1.0 and s["win_rate"] == 0.5

    short = lambda prompts, items: ["[[A]]"]  # noqa: E731 - answers fewer prompts than asked
    s = I.summarize_instruct(I.judge_answers(short, answer_rows(2), SHORT_TEMPLATE))
    assert s["failed_judge_calls"] == 4 and s["win_rate"] is None and s["unjudged"] == 2


# --------------------------------------------------------------------------------------------
# real judges over HTTP
# --------------------------------------------------------------------------------------------
class FlakyProxy(ThreadingHTTPServer):
    """Forwards POSTs to ``target`` but answers the first ``fail_first`` of them with 503."""

    daemon_threads = True

    def __init__(self, target: str, fail_first: int):
        self.target, self.fail_first, self.count, self.lock = target, fail_first, 0, threading.Lock()
        super().__init__(("127.0.0.1", 0), _ProxyHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _ProxyHandler(BaseHTTPRequestHandler):
    server: FlakyProxy

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.server.lock:
            self.server.count += 1
            fail = self.server.count <= self.server.fail_first
        if fail:
            status, data = 503, b'{"error": {"message": "overloaded, try again"}}'
        else:
            req = urllib.request.Request(self.server.target + self.path[len("/v1"):], data=body,
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=60) as r:
                    status, data = r.status, r.read()
            except urllib.error.HTTPError as e:
                status, data = e.code, e.read()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def teacher_server():
    from reasondistill.api.serve import serve

    server = serve("embedded:teacher", port=0).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def student():
    from reasondistill.models import resolve_model
    from reasondistill.models import load_model, load_tokenizer

    p = resolve_model("embedded:student")
    return load_model(p), load_tokenizer(p)


def test_real_server_judge_with_retries_and_a_prompt_too_long(teacher_server, student):
    model, tok = student
    records = [{"id": "a", "instruction": "What is 3+4?", "reference": "7"},
               {"id": "b", "instruction": "Say hi.", "reference": "Hi!"},
               {"id": "long", "instruction": "Summarise.", "reference": "word " * 700}]  # over the 512-token context
    proxy = FlakyProxy(teacher_server.url, fail_first=3)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        judge = I.make_instruct_judge(proxy.url, "embedded:teacher", max_tokens=8, workers=2, max_retries=4,
                                      backoff=0.01, max_backoff=0.05)
        rows, s = I.evaluate_instruct(model, tok, records, judge, template=SHORT_TEMPLATE, max_new_tokens=12,
                                      seed=0)
    finally:
        proxy.shutdown()
        proxy.server_close()
    assert judge.client.stats["retries"] == 3  # the 503s were retried, and those calls then succeeded
    assert s["num_instructions"] == 3 and s["num_verdicts"] == 6
    # the long reference overflows the teacher's context: the server answers 400 (not retried), both orders
    long = rows[2]
    assert long["failed_model_as_a"] and long["failed_model_as_b"] and "512" in long["judge_model_as_a"]
    assert s["failed_judge_calls"] == 2
    for r in rows[:2]:  # real replies, whatever they say
        assert not r["failed_model_as_a"] and not r["failed_model_as_b"]
        assert "judge call failed" not in r["judge_model_as_a"] + r["judge_model_as_b"]
    # the accounting matches the per-row verdicts
    assert s["unparseable_verdicts"] == sum((r["verdict_model_as_a"] is None) + (r["verdict_model_as_b"] is None)
                                            for r in rows)
    parsed = s["wins"] + s["ties"] + s["losses"]
    assert parsed + s["unparseable_verdicts"] == 6
    assert (s["win_rate"] is None) == (parsed == 0)
    assert s["temperature"] == 0.8 and s["top_p"] == 0.95 and s["judge"].startswith("embedded:teacher@")
    assert all(isinstance(r["output"], str) and 1 <= r["num_tokens"] <= 12 for r in rows)


def test_a_judge_that_is_gone_fails_every_call_and_the_run_completes(student):
    from reasondistill.api.serve import serve

    server = serve("embedded:teacher", port=0)  # bound, then closed: nothing listens there
    url = server.url
    server.server_close()
    judge = I.make_instruct_judge(url, "embedded:teacher", max_tokens=4, max_retries=1, backoff=0.01, timeout=2)
    model, tok = student
    rows, s = I.evaluate_instruct(model, tok, [{"id": "x", "instruction": "Hi", "reference": "Hello"}], judge,
                                  template=SHORT_TEMPLATE, max_new_tokens=4)
    assert s["failed_judge_calls"] == 2 and s["unparseable_verdicts"] == 2 and s["win_rate"] is None
    assert judge.client.stats["retries"] == 2 and "judge call failed" in rows[0]["judge_model_as_b"]


def test_local_model_judge_with_the_papers_template(student):
    """A local HF judge (greedy) reads the full §10.3.1 prompt; no context check, no crash."""
    model, tok = student
    judge = I.make_instruct_judge("embedded:teacher", max_tokens=6)
    rows, s = I.evaluate_instruct(model, tok, [{"id": "x", "instruction": "Add 2 and 5.", "reference": "7"}],
                                  judge, max_new_tokens=6)
    assert s["failed_judge_calls"] == 0 and len(rows[0]["judge_model_as_a"]) > 0
    r = rows[0]
    assert s["unparseable_verdicts"] == (r["verdict_model_as_a"] is None) + (r["verdict_model_as_b"] is None)
