"""An OpenAI-compatible endpoint as the model under evaluation, over real HTTP on 127.0.0.1:
the project's own server with the embedded teacher, and a server that always fails."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from reasondistill.api.client import ChatClient
from reasondistill.api.serve import serve
from reasondistill.cli import main
from reasondistill.eval.api_model import APIModel
from reasondistill.eval.math_eval import evaluate
from reasondistill.models import load_model, load_tokenizer, resolve_model
from reasondistill.tasks import arith


@pytest.fixture(scope="module")
def server():
    srv = serve("embedded:teacher").start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


def test_an_endpoint_is_evaluated_like_the_local_model_it_serves(server, tmp_path):
    """Greedy answers of the served teacher equal the local teacher's, row by row."""
    assert main(["eval", "--base-url", server, "--api-model", "embedded:teacher", "--benchmark", "arith",
                 "--limit", "12", "--max-new-tokens", "48", "--workers", "3", "--output-dir", str(tmp_path)]) == 0
    api_rows = [json.loads(x) for x in (tmp_path / "eval_examples.jsonl").read_text().splitlines()]
    path = resolve_model("embedded:teacher")
    local_rows, local = evaluate(load_model(path), load_tokenizer(path), arith.generate("test", 12, seed=0),
                                 max_new_tokens=48)
    assert [r["output"] for r in api_rows] == [r["output"] for r in local_rows]
    assert [r["num_tokens"] for r in api_rows] == [r["num_tokens"] for r in local_rows]  # from the usage field
    summary = json.loads((tmp_path / "eval_summary.json").read_text())
    assert summary["accuracy"] == local["accuracy"] > 0.5 and "api_failures" not in summary
    assert "embedded:teacher" in summary["model"]


def test_samples_and_the_length_cap_come_back_from_the_endpoint(server):
    model = APIModel(server, "embedded:teacher", workers=2)
    recs = arith.generate("test", 3, seed=1)
    rows, s = evaluate(model, None, recs, samples=2, temperature=1.0, max_new_tokens=3)
    assert len(rows) == 6 and [r["sample"] for r in rows] == [0, 1] * 3
    assert all(r["truncated"] and r["num_tokens"] == 3 for r in rows)  # finish_reason "length"
    assert s["truncated_share"] == 1.0 and s["num_questions"] == 3


class _AlwaysFails(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b'{"error": {"message": "overloaded"}}'
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_failed_requests_are_graded_wrong_and_counted_not_fatal():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _AlwaysFails)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
        model = APIModel(url, "m", client=ChatClient(url, "m", max_retries=1, backoff=0.0, sleep=lambda s: None))
        rows, s = evaluate(model, None, arith.generate("test", 4, seed=2), max_new_tokens=8)
        assert s["api_failures"] == 4 and s["accuracy"] == 0.0
        assert all("overloaded" in r["api_error"] and r["output"] == "" for r in rows)
    finally:
        srv.shutdown()
        srv.server_close()


def test_an_endpoint_cannot_give_the_teacher_kl(server):
    with pytest.raises(ValueError, match="token ids"):
        evaluate(APIModel(server, "embedded:teacher"), None, arith.generate("test", 1, seed=0),
                 teacher=object())


@pytest.mark.skipif(not (Path(__file__).resolve().parents[2] / "shared" / "benchmarks").exists(),
                    reason="../shared/benchmarks not present")
def test_the_other_tasks_run_against_an_endpoint_too(server, tmp_path, capsys):
    """code (asked through the chat instruction), choice (generate) and instruct (the same endpoint
    as the judge: its verdicts are mostly unparseable, which is counted, not fatal) through --base-url."""
    from pathlib import Path

    shared = Path(__file__).resolve().parents[2] / "shared" / "benchmarks"
    base = ["eval", "--base-url", server, "--api-model", "embedded:teacher", "--data-dir", str(shared),
            "--first", "3", "--max-new-tokens", "16"]
    assert main([*base, "--task", "code", "--benchmark", "humaneval", "--output-dir", str(tmp_path / "c")]) == 0
    assert main([*base, "--task", "choice", "--benchmark", "mmlu", "--output-dir", str(tmp_path / "m")]) == 0
    code = json.loads((tmp_path / "c" / "code_summary.json").read_text())
    choice = json.loads((tmp_path / "m" / "choice_summary.json").read_text())
    assert code["num_tasks"] == 3 and choice["num_questions"] == 3 and choice["scoring"] == "generate"
    assert main([*base, "--task", "instruct", "--benchmark", "alpaca_eval", "--judge", server, "--judge-model",
                 "embedded:teacher", "--output-dir", str(tmp_path / "i")]) == 0
    instruct = json.loads((tmp_path / "i" / "instruct_summary.json").read_text())
    assert instruct["num_instructions"] == 3
    rows = [json.loads(x) for x in (tmp_path / "m" / "choice_examples.jsonl").read_text().splitlines()]
    assert all(1 <= r["num_tokens"] <= 16 for r in rows)  # lengths from the endpoint's usage
    capsys.readouterr()
    assert main([*base, "--task", "choice", "--benchmark", "mmlu", "--scoring", "loglik",
                 "--output-dir", str(tmp_path / "l")]) == 2
    assert "scoring=loglik needs" in capsys.readouterr().err
