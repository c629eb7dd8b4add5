"""`reasondistill eval --task code|choice|instruct` through the CLI with the embedded student,
on tiny limits: files written, summaries printed, options honoured, bad combinations refused.
Local files make every test run; the real benchmark files are used when ../shared/benchmarks
is there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reasondistill.cli import main

SHARED = Path(__file__).resolve().parents[2] / "shared" / "benchmarks"
needs_shared = pytest.mark.skipif(not SHARED.exists(), reason="../shared/benchmarks not present")

PROBLEMS = [
    {"task_id": "T/0", "prompt": 'def add(a, b):\n    """Return a + b."""\n', "entry_point": "add",
     "canonical_solution": "    return a + b\n", "test": "def check(f):\n    assert f(2, 3) == 5\n"},
    {"task_id": "T/1", "prompt": 'def neg(x):\n    """Return -x."""\n', "entry_point": "neg",
     "canonical_solution": "    return -x\n", "test": "def check(f):\n    assert f(4) == -4\n"},
]


def read(out: Path, task: str):
    rows = [json.loads(x) for x in (out / f"{task}_examples.jsonl").read_text().splitlines()]
    return rows, json.loads((out / f"{task}_summary.json").read_text())


def run(*argv):
    return main(["eval", "--model", "embedded:student", *argv])


# --------------------------------------------------------------------------------------------
# code
# --------------------------------------------------------------------------------------------
def test_code_task_on_a_jsonl_file_with_samples(tmp_path, capsys):
    data = tmp_path / "mini.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    out = tmp_path / "out"
    assert run("--task", "code", "--data", str(data), "--samples", "3", "--temperature", "1.0",
               "--max-new-tokens", "12", "--workers", "2", "--timeout", "5", "--output-dir", str(out)) == 0
    rows, s = read(out, "code")
    assert s["task"] == "code" and s["benchmark"] == str(data) and s["model"] == "embedded:student"
    assert s["num_tasks"] == 2 and s["samples"] == 3 and s["num_programs"] == 6 and "pass@3" in s
    assert len(rows) == 6 and {r["task_id"] for r in rows} == {"T/0", "T/1"}
    assert all(r["status"] in ("passed", "failed", "timeout", "error") for r in rows)
    assert s["num_passed"] + s["num_failed"] + s["num_timeouts"] + s["num_errors"] == 6
    assert s["pass@1"] == sum(r["passed"] for r in rows) / 6
    assert json.loads(capsys.readouterr().out)["pass@1"] == s["pass@1"]


@needs_shared
def test_code_task_on_humaneval(tmp_path):
    out = tmp_path / "he"
    assert run("--task", "code", "--benchmark", "humaneval", "--data-dir", str(SHARED), "--first", "2",
               "--max-new-tokens", "8", "--output-dir", str(out)) == 0
    rows, s = read(out, "code")
    assert [r["task_id"] for r in rows] == ["HumanEval/0", "HumanEval/1"] and s["benchmark"] == "humaneval"
    assert s["samples"] == 1 and 0.0 <= s["pass@1"] <= 1.0


# --------------------------------------------------------------------------------------------
# multiple choice
# --------------------------------------------------------------------------------------------
def write_choice_folder(d: Path) -> Path:
    d.mkdir()
    (d / "algebra_test.csv").write_text("".join(f'"What is {k}+1?",{k},{k + 1},{k + 2},{k + 3},B\n' for k in range(6)))
    (d / "physics_test.csv").write_text("".join(f'"Unit {k}?",m,s,kg,N,{"ABCD"[k % 4]}\n' for k in range(6)))
    return d


def test_choice_task_on_a_folder_is_balanced_and_the_shuffle_follows_the_seed(tmp_path):
    data = write_choice_folder(tmp_path / "mc")
    outs = {}
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        outs[name] = tmp_path / name
        assert run("--task", "choice", "--data", str(data), "--first", "5", "--seed", seed, "--max-new-tokens", "6",
                   "--output-dir", str(outs[name])) == 0
    rows, s = read(outs["a"], "choice")
    assert s["task"] == "choice" and s["num_questions"] == 5 and s["seed"] == 0 and s["shuffle"] is True
    assert [r["subject"] for r in rows] == ["algebra", "physics", "algebra", "physics", "algebra"]
    assert set(s["per_subject"]) == {"algebra", "physics"}
    for r in rows:  # after shuffling, the gold letter still points at the right option's text
        k = int(r["question"].split()[-1].split("+")[0].rstrip("?"))
        right, options = (str(k + 1), {str(k + i) for i in range(4)}) if r["subject"] == "algebra" else \
            (["m", "s", "kg", "N"][k % 4], {"m", "s", "kg", "N"})
        assert set(r["choices"]) == options and r["choices"]["ABCD".index(r["gold"])] == right
    assert any(r["permutation"] != [0, 1, 2, 3] for r in rows)
    same, _ = read(outs["b"], "choice")
    other, _ = read(outs["c"], "choice")
    assert [r["permutation"] for r in same] == [r["permutation"] for r in rows]
    assert [r["permutation"] for r in other] != [r["permutation"] for r in rows]
    assert 0.0 <= s["accuracy"] <= 1.0 and s["num_unparseable"] == sum(r["extracted"] is None for r in rows)

    out = tmp_path / "plain"
    assert run("--task", "choice", "--data", str(data / "algebra_test.csv"), "--first", "2", "--no-shuffle",
               "--max-new-tokens", "4", "--output-dir", str(out)) == 0
    rows, s = read(out, "choice")
    assert s["shuffle"] is False and [r["gold"] for r in rows] == ["B", "B"]


@needs_shared
def test_choice_task_on_mmlu(tmp_path):
    out = tmp_path / "mmlu"
    assert run("--task", "choice", "--benchmark", "mmlu", "--data-dir", str(SHARED), "--first", "5",
               "--max-new-tokens", "4", "--output-dir", str(out)) == 0
    rows, s = read(out, "choice")
    assert s["benchmark"] == "mmlu" and len({r["subject"] for r in rows}) == 5  # one per subject file


# --------------------------------------------------------------------------------------------
# instruction following
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def judge_url():
    from reasondistill.api.serve import serve

    server = serve("embedded:teacher", port=0).start()
    yield server.url
    server.stop()


def test_instruct_task_with_an_endpoint_judge(tmp_path, judge_url, capsys):
    data = tmp_path / "ins.jsonl"
    data.write_text("".join(json.dumps({"instruction": q, "output": a}) + "\n"
                            for q, a in (("What is 2+2?", "4"), ("Name a colour.", "Blue"), ("Say yes.", "Yes"))))
    template = tmp_path / "t.txt"
    template.write_text("Q: {question}\nA: {answer_a}\nB: {answer_b}\nVerdict:")
    out = tmp_path / "out"
    assert run("--task", "instruct", "--data", str(data), "--first", "2", "--judge", judge_url, "--judge-model",
               "embedded:teacher", "--judge-template", str(template), "--judge-max-tokens", "6",
               "--max-new-tokens", "10", "--output-dir", str(out)) == 0
    rows, s = read(out, "instruct")
    assert s["task"] == "instruct" and s["num_instructions"] == 2 and s["num_verdicts"] == 4
    assert s["temperature"] == 0.8 and s["top_p"] == 0.95 and s["max_new_tokens"] == 10  # the paper's sampling
    assert s["failed_judge_calls"] == 0 and all(r["judge_model_as_a"] and r["judge_model_as_b"] for r in rows)
    assert s["unparseable_verdicts"] == sum((r["verdict_model_as_a"] is None) + (r["verdict_model_as_b"] is None)
                                            for r in rows)
    assert [r["reference"] for r in rows] == ["4", "Blue"]
    err = capsys.readouterr().err
    assert ("could not be parsed" in err) == (s["unparseable_verdicts"] > 0)


@needs_shared
def test_instruct_task_on_alpaca_eval_with_the_papers_template(tmp_path, judge_url):
    """The §10.3.1 prompt alone is longer than the embedded teacher's 512-token context: every
    call is refused by the server, and the run still completes and says so."""
    out = tmp_path / "ae"
    assert run("--task", "instruct", "--benchmark", "alpaca_eval", "--data-dir", str(SHARED), "--first", "2",
               "--judge", judge_url, "--judge-model", "embedded:teacher", "--max-new-tokens", "8",
               "--output-dir", str(out)) == 0
    rows, s = read(out, "instruct")
    assert s["benchmark"] == "alpaca_eval" and s["failed_judge_calls"] == 4 and s["win_rate"] is None
    assert "context" in rows[0]["judge_model_as_a"]


def test_bad_combinations_are_refused(tmp_path, capsys):
    """A task's settings are checked when its config is built (exit status 2, the message, no
    traceback); a flag of another task is not one of this subcommand's (argparse refuses it)."""
    data = tmp_path / "ins.jsonl"
    data.write_text(json.dumps({"instruction": "x", "output": "y"}) + "\n")
    assert run("--task", "instruct", "--data", str(data)) == 2
    assert "needs a judge" in capsys.readouterr().err
    assert run("--task", "instruct", "--data", str(data), "--judge", "rule") == 2
    assert "LLM judge" in capsys.readouterr().err
    assert run("--task", "code") == 2
    assert "exactly one" in capsys.readouterr().err
    for flags in (["--teacher", "embedded:teacher"], ["--samples", "2"]):
        with pytest.raises(SystemExit):
            main(["eval", "choice", "--model", "embedded:student", "--data", str(data), *flags])
        assert f"unrecognized arguments: {flags[0]}" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="pairwise"):
        main(["eval", "pairwise", "--task", "code"])
    assert run("--task", "code", "--data", str(tmp_path / "missing.jsonl")) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["eval", "choice", "--model", "embedded:student", "--data", str(data), "scoring=likelihood"]) == 2
    assert "scoring must be one of generate, loglik" in capsys.readouterr().err


@needs_shared
def test_choice_task_scored_by_likelihood_on_mmlu(tmp_path):
    """--scoring loglik: every question gets an answer (nothing to parse), the scores are recorded,
    and a preset's sampling temperature does not apply to it."""
    out = tmp_path / "ll"
    assert run("--task", "choice", "--benchmark", "mmlu", "--data-dir", str(SHARED), "--first", "8",
               "--scoring", "loglik", "--loglik-target", "text", "--preset", "tgpo-choice",
               "--output-dir", str(out)) == 0
    s = json.loads((out / "choice_summary.json").read_text())
    assert s["scoring"] == "loglik" and s["num_unparseable"] == 0 and s["preset"] == "tgpo-choice"
    rows = [json.loads(x) for x in (out / "choice_examples.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(len(r["option_scores"]) == len(r["choices"]) for r in rows)
