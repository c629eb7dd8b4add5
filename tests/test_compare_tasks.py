"""`reasondistill compare` with the evaluations beyond math (eval.code, eval.choice, eval.instruct
on 2 records each): every model gets pass@1, MC acc and instruct win after the math columns,
cached per model; the instruct judge is an OpenAI-compatible endpoint started here that always
answers [[A]], so the win rate must come out at exactly 50% (both orders averaged)."""

from __future__ import annotations

import csv
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from reasondistill.config import ConfigError
from reasondistill.pipelines import compare as C


class _AlwaysA(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.calls += 1
        data = json.dumps({"id": "x", "object": "chat.completion", "model": "biased",
                           "choices": [{"index": 0, "message": {"role": "assistant", "content": "A, surely. [[A]]"},
                                        "finish_reason": "stop"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def biased_judge():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _AlwaysA)
    server.daemon_threads, server.calls = True, 0
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def data_files(d):
    d.mkdir()
    code = d / "mini.jsonl"
    code.write_text("".join(json.dumps({"task_id": f"T/{k}", "prompt": f'def f{k}(x):\n    """x + {k}"""\n',
                                        "entry_point": f"f{k}", "test": f"def check(g):\n    assert g(1) == {1 + k}\n"})
                            + "\n" for k in range(3)))
    mc = d / "mc"
    mc.mkdir()
    (mc / "algebra_test.csv").write_text("".join(f'"What is {k}+1?",{k},{k + 1},{k + 2},{k + 3},B\n' for k in range(3)))
    ins = d / "ins.jsonl"
    ins.write_text("".join(json.dumps({"instruction": q, "output": a}) + "\n"
                           for q, a in (("Say hi.", "Hi!"), ("What is 2+2?", "4"), ("Name a fruit.", "Apple"))))
    return code, mc, ins


def write_cfg(tmp_path, tiny_models, judge_url, **eval_over):
    code, mc, ins = data_files(tmp_path / "data")
    ev = dict(benchmarks=["arith"], limit=4, max_new_tokens=8, batch_size=4, judge="rule", student=True,
              teacher=True, code=str(code), code_limit=2, choice=str(mc), choice_limit=2, instruct=str(ins),
              instruct_limit=2, instruct_judge=judge_url, instruct_judge_model="biased", task_max_new_tokens=8)
    ev.update(eval_over)
    cfg = {"output_dir": str(tmp_path / "cmp"),
           "common": dict(student=str(tiny_models / "student"), teacher=str(tiny_models / "teacher"), max_steps=2,
                          per_device_train_batch_size=2, num_generations=2, max_completion_length=8, dataset="arith:size=40",
                          report_to="none", device="cpu", learning_rate=1e-3, seed=0),
           "runs": [{"name": "CMDP", "method": "cmdp"}], "eval": ev}
    p = tmp_path / "compare.yaml"
    p.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return p


def test_compare_with_code_choice_and_instruct(tmp_path, tiny_models, biased_judge, capsys):
    url = f"http://127.0.0.1:{biased_judge.server_address[1]}/v1"
    p = write_cfg(tmp_path, tiny_models, url)
    res = C.run_compare(p, progress=False)
    out = tmp_path / "cmp"
    rows = list(csv.reader((out / "table.csv").open()))
    assert rows[0][:6] == ["Method", "arith FAC ↑", "arith RWR ↑", "arith RLR ↓", "arith KL ↓", "arith CS ↑"]
    assert rows[0][6:] == ["mini pass@1 ↑", "mc MC acc ↑", "ins instruct win ↑"]
    assert [r[0] for r in rows[1:]] == ["CMDP", "Student model", "Teacher model"]
    for name, r in zip(["CMDP", "Student model", "Teacher model"], rows[1:]):
        d = out / "eval" / name.replace(" ", "_")
        code = json.loads((d / "code_mini_summary.json").read_text())
        mc = json.loads((d / "choice_mc_summary.json").read_text())
        ins = json.loads((d / "instruct_ins_summary.json").read_text())
        assert code["num_tasks"] == 2 and mc["num_questions"] == 2 and ins["num_instructions"] == 2
        assert len((d / "instruct_ins_examples.jsonl").read_text().splitlines()) == 2
        assert r[6] == f"{100 * code['pass@1']:.2f}" and r[7] == f"{100 * mc['accuracy']:.2f}"
        # an always-[[A]] judge: the model wins as A and loses as B -> exactly 50 %
        assert r[8] == "50.00" and ins["unparseable_verdicts"] == 0 and ins["wins"] == ins["losses"] == 2
    assert biased_judge.calls == 3 * 2 * 2  # 3 models x 2 instructions x both orders
    rec = {r["model"]: r for r in res["table"]}
    assert rec["CMDP"]["instruct win"] == 0.5 and "pass@1" in rec["CMDP"] and "MC acc" in rec["Teacher model"]
    saved = json.loads((out / "results.json").read_text())
    assert saved["instruct_unparseable_verdicts"] == {"CMDP": 0, "Student model": 0, "Teacher model": 0}
    md = (out / "table.md").read_text()
    assert "ins instruct win ↑" in md and "unparseable verdicts (left out): CMDP 0/4" in md

    # a second call reuses every evaluation; a new limit re-runs that task only
    capsys.readouterr()
    C.run_compare(p, progress=False)
    assert "evaluating" not in capsys.readouterr().err and biased_judge.calls == 12
    p.write_text(p.read_text().replace("choice_limit: 2", "choice_limit: 3"))
    C.run_compare(p, progress=False)
    err = capsys.readouterr().err
    assert err.count("evaluating") == 3 and err.count("on choice") == 3
    assert json.loads((out / "eval" / "CMDP" / "choice_mc_summary.json").read_text())["num_questions"] == 3


def test_instruct_without_an_llm_judge_fails_before_training(tmp_path, tiny_models):
    p = write_cfg(tmp_path, tiny_models, None)
    with pytest.raises(ConfigError, match="instruct_judge"):
        C.run_compare(p, progress=False)
    assert not (tmp_path / "cmp" / "runs").exists()


def test_without_the_new_keys_the_table_is_unchanged(tmp_path, tiny_models):
    p = write_cfg(tmp_path, tiny_models, None, code=None, choice=None, instruct=None, teacher=False)
    C.run_compare(p, progress=False)
    header = next(csv.reader((tmp_path / "cmp" / "table.csv").open()))
    files = [f.name for f in (tmp_path / "cmp" / "eval" / "CMDP").iterdir()]
    assert len(header) == 6 and "arith_summary.json" in files
    assert not [f for f in files if f.startswith(("code_", "choice_", "instruct_"))]
