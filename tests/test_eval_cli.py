"""`reasondistill eval` and `reasondistill train` end to end through the CLI, on tiny models."""

import json
from pathlib import Path

import pytest
import torch

from reasondistill.cli import main
from reasondistill.eval.math_eval import evaluate, summarize
from reasondistill.tasks import arith

SHARED = Path(__file__).resolve().parents[2] / "shared" / "benchmarks"


@pytest.fixture
def tiny(tiny_models):
    """The saved tiny student/teacher folders of conftest."""
    return tiny_models


def test_summary_metrics_by_hand():
    rows = [{"id": "a", "correct": True, "num_tokens": 4, "truncated": False, "kl": 0.1},
            {"id": "a", "correct": False, "num_tokens": 6, "truncated": True, "kl": 0.5},
            {"id": "b", "correct": False, "num_tokens": 2, "truncated": False, "kl": 0.3},
            {"id": "b", "correct": False, "num_tokens": 4, "truncated": False, "kl": 0.2}]
    s = summarize(rows, samples=2, kl_budget=0.35)
    assert s["avg@k"] == 0.25 and s["pass@k"] == 0.5 and s["num_questions"] == 2
    assert s["kl_mean"] == pytest.approx(0.275) and s["constraint_satisfaction"] == 0.75
    assert s["kl_std"] == pytest.approx(torch.tensor([0.1, 0.5, 0.3, 0.2]).std().item())
    assert s["truncated_share"] == 0.25 and s["mean_tokens"] == 4


def test_kl_is_zero_against_itself_and_positive_against_another(tiny):
    from reasondistill.models import load_model, load_tokenizer

    s, t = load_model(tiny / "student"), load_model(tiny / "teacher")
    tok = load_tokenizer(tiny / "student")
    recs = arith.generate("test", 6, seed=0)
    _, same = evaluate(s, tok, recs, teacher=s, max_new_tokens=8)
    _, other = evaluate(s, tok, recs, teacher=t, max_new_tokens=8)
    assert same["kl_mean"] == pytest.approx(0.0, abs=1e-6) and same["constraint_satisfaction"] == 1.0
    assert other["kl_mean"] > 0.01


def test_eval_cli_on_embedded_split_with_teacher(tiny, tmp_path, capsys):
    rc = main(["eval", "--model", str(tiny / "student"), "--benchmark", "arith", "--limit", "5",
               "--teacher", str(tiny / "teacher"), "--kl-budget", "0.35", "--max-new-tokens", "8",
               "--output-dir", str(tmp_path)])
    assert rc == 0
    summary = json.loads((tmp_path / "eval_summary.json").read_text())
    rows = [json.loads(x) for x in (tmp_path / "eval_examples.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and summary["num_questions"] == 5
    assert {"question", "gold", "output", "extracted", "correct", "kl"} <= set(rows[0])
    assert 0.0 <= summary["constraint_satisfaction"] <= 1.0 and "pass@1" in summary


def test_eval_cli_samples_gives_avg_and_pass_at_k(tiny, tmp_path):
    assert main(["eval", "--model", str(tiny / "student"), "--benchmark", "arith", "--limit", "3",
                 "--samples", "4", "--temperature", "1.0", "--max-new-tokens", "6",
                 "--output-dir", str(tmp_path)]) == 0
    s = json.loads((tmp_path / "eval_summary.json").read_text())
    rows = (tmp_path / "eval_examples.jsonl").read_text().splitlines()
    assert len(rows) == 12 and "avg@k" in s and "pass@k" in s and s["pass@k"] >= s["avg@k"]


@pytest.mark.skipif(not SHARED.exists(), reason="../shared/benchmarks not present")
def test_eval_cli_on_real_benchmark_files(tiny, tmp_path):
    assert main(["eval", "--model", str(tiny / "student"), "--benchmark", "gsm8k", "--data-dir", str(SHARED),
                 "--limit", "2", "--max-new-tokens", "4", "--output-dir", str(tmp_path / "a")]) == 0
    assert main(["eval", "--model", str(tiny / "student"), "--data", str(SHARED / "svamp.jsonl"),
                 "--question-field", "Body,Question", "--answer-field", "Answer", "--first", "2",
                 "--max-new-tokens", "4", "--output-dir", str(tmp_path / "b")]) == 0
    rows = [json.loads(x) for x in (tmp_path / "b" / "eval_examples.jsonl").read_text().splitlines()]
    assert rows[0]["gold"] == "145" and "bananas" in rows[0]["question"]


def _questions(out):
    return [json.loads(x)["question"] for x in (out / "eval_examples.jsonl").read_text().splitlines()]


@pytest.mark.skipif(not SHARED.exists(), reason="../shared/benchmarks not present")
def test_limit_is_a_seeded_random_subsample_recorded_in_the_summary(tiny, tmp_path):
    from reasondistill.data.benchmarks import load_jsonl
    from reasondistill.eval.selection import select_records

    base = ["eval", "--model", str(tiny / "student"), "--data", str(SHARED / "svamp.jsonl"), "--question-field",
            "Body,Question", "--answer-field", "Answer", "--max-new-tokens", "2", "--limit", "5"]
    for name, seed in (("s3", "3"), ("s3again", "3"), ("s4", "4")):
        assert main([*base, "--sample-seed", seed, "--output-dir", str(tmp_path / name)]) == 0
    everything = load_jsonl(SHARED / "svamp.jsonl", "Body,Question", "Answer")
    want, chosen = select_records(everything, limit=5, seed=3)
    assert _questions(tmp_path / "s3") == [r["question"] for r in want] == _questions(tmp_path / "s3again")
    assert _questions(tmp_path / "s4") != _questions(tmp_path / "s3")
    assert _questions(tmp_path / "s3") != [r["question"] for r in everything[:5]]  # not the first rows
    summary = json.loads((tmp_path / "s3" / "eval_summary.json").read_text())
    assert summary["selection"] == chosen == {"limit": 5, "sample_seed": 3, "num_records": 5, "num_available": 1000}
    assert main([*base, "--first", "2", "--output-dir", str(tmp_path / "both")]) == 2  # one or the other


@pytest.mark.skipif(not SHARED.exists(), reason="../shared/benchmarks not present")
def test_preset_sets_the_papers_protocol_and_explicit_flags_win(tiny, tmp_path, capsys):
    from reasondistill.eval.selection import PIPELINE_BOX6

    base = ["eval", "--model", str(tiny / "student"), "--benchmark", "gsm8k", "--data-dir", str(SHARED),
            "--preset", "pipeline", "--limit", "3", "--max-new-tokens", "2"]
    assert main([*base, "--output-dir", str(tmp_path / "p")]) == 0
    s = json.loads((tmp_path / "p" / "eval_summary.json").read_text())
    assert s["preset"] == "pipeline" and s["samples"] == 2 and s["temperature"] == 0.5
    assert s["selection"]["limit"] == 3  # the explicit --limit beat the preset's 200
    assert main([*base, "--temperature", "0.9", "--output-dir", str(tmp_path / "t")]) == 0
    assert json.loads((tmp_path / "t" / "eval_summary.json").read_text())["temperature"] == 0.9
    rows = [json.loads(x) for x in (tmp_path / "p" / "eval_examples.jsonl").read_text().splitlines()]
    assert s["question_template"] == PIPELINE_BOX6 and len(rows) == 6  # 3 questions x 2 samples
    capsys.readouterr()
    assert main(["eval", "code", *base[1:], "--output-dir", str(tmp_path / "x")]) == 2
    assert "preset pipeline is for eval math, not eval code" in capsys.readouterr().err


def test_train_cli_rejects_unknown_key_and_lists_keys(tiny, tmp_path, capsys):
    rc = main(["train", "sft", f"student={tiny / 'student'}", "learnin_rate=1"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "learnin_rate" in err and "learning_rate" in err
    assert main(["train", "gkd", "--list-keys"]) == 0
    assert "lmbda" in capsys.readouterr().out


def test_train_cli_runs_a_method(tiny, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "kd", f"student={tiny / 'student'}", f"teacher={tiny / 'teacher'}", "max_steps=2",
                 "per_device_train_batch_size=4", "dataset=arith:size=32", f"output_dir={out}", "progress=false",
                 "report_to=tensorboard"]) == 0
    assert (out / "final" / "model.safetensors").exists() and list((out / "tensorboard").glob("events.*"))
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


def test_cli_reports_bad_input_without_a_traceback(tiny, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"q": "1+1", "a": "2"}\n{"q": "2+2", "a": \n')
    assert main(["eval", "--model", str(tiny / "student"), "--data", str(bad), "--question-field", "q",
                 "--answer-field", "a", "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl" in err and "line 2" in err and "Traceback" not in err
    assert main(["eval", "--model", str(tiny / "student"), "--data", str(bad), "--question-field", "question",
                 "--answer-field", "a", "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "missing field 'question'" in err and "fields present: q, a" in err
    assert main(["train", "gkd", f"student={tiny / 'student'}", "lmbda=2"]) == 2
    assert "lmbda must be in [0, 1]" in capsys.readouterr().err


def test_sft_on_a_jsonl_of_teacher_traces_without_answers(tiny, tmp_path, capsys):
    """SeqKD: train on traces; the answer field is optional, a missing trace is caught before step 1."""
    traces = tmp_path / "traces.jsonl"
    rows = [{"problem": p["question"], "trace": p["solution"]} for p in arith.generate("train", 8, seed=0)]
    traces.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    common = ["train", "sft", f"student={tiny / 'student'}", f"dataset={traces}", "question_field=problem",
              "answer_field=none", "max_steps=1", "per_device_train_batch_size=4", "progress=false",
              "report_to=none"]
    assert main([*common, "solution_field=trace", f"output_dir={out}"]) == 0
    assert (out / "final" / "model.safetensors").exists()
    rows[5].pop("trace")
    traces.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main([*common, "solution_field=trace", f"output_dir={tmp_path / 'run2'}"]) == 2
    err = capsys.readouterr().err
    assert "1 of 8 training records have no 'solution'" in err and "traces-6" in err
    assert not (tmp_path / "run2" / "metrics.jsonl").exists()


def test_explicit_solution_field_wins_over_a_worked_answer(tmp_path):
    from reasondistill.config import build_config
    from reasondistill.data.train import load_records
    from reasondistill.methods import sft

    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"q": "1+1?", "a": "#### 2", "trace": "1+1=2\\n\\boxed{2}"}) + "\n"
                 + json.dumps({"q": "2+2?", "a": "\\boxed{4}", "trace": 44}) + "\n")
    cfg = build_config(sft.Config, overrides=dict(dataset=str(f), question_field="q", answer_field="a",
                                                  solution_field="trace"))
    recs = load_records(cfg.dataset, cfg)
    assert [r["solution"] for r in recs] == ["1+1=2\\n\\boxed{2}", "44"] and recs[0]["answer"] == "2"
    assert all("_completion" not in r for r in recs)


def test_console_script_is_installed():
    import subprocess

    r = subprocess.run(["reasondistill", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "demo" in r.stdout and "eval" in r.stdout
