"""`reasondistill report DIR [DIR ...]`: every *_summary.json under the folders becomes a row of
one Markdown table, with only the metric columns that some summary has; pairwise summaries and
unreadable files are skipped and named on stderr."""

from __future__ import annotations

import json
from pathlib import Path

from reasondistill.cli import main
from reasondistill.report.summaries import summary_table, task_of

MATH = {"num_questions": 4, "samples": 1, "accuracy": 0.75, "pass@1": 0.75, "kl_mean": 0.1234, "kl_std": 0.05,
        "kl_budget": 0.35, "constraint_satisfaction": 0.5, "model": "stud", "benchmark": "arith"}
MATH_K = {"num_questions": 2, "samples": 4, "accuracy": 0.25, "avg@k": 0.25, "pass@k": 0.5, "benchmark": "gsm8k"}
CODE = {"task": "code", "benchmark": "humaneval", "num_tasks": 3, "samples": 5, "pass@1": 0.2, "pass@5": 0.6,
        "model": "stud"}
CHOICE = {"task": "choice", "benchmark": "mmlu", "num_questions": 10, "accuracy": 0.3, "unparseable_share": 0.1}
INSTRUCT = {"task": "instruct", "benchmark": "alpaca_eval", "num_instructions": 5, "win_rate": 0.625,
            "num_verdicts": 10, "unparseable_verdicts": 3, "unparseable_share": 0.3}
NO_VERDICT = {**INSTRUCT, "win_rate": None, "unparseable_verdicts": 10}
PAIRWISE = {"questions": 2, "judged": 2, "win_rate": 0.5, "unparseable_verdicts": 0, "judge": "rule",
            "a": "x", "b": "y"}


def put(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))


def parse_md(text: str) -> list[dict]:
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, [c.strip() for c in ln.strip("|").split("|")])) for ln in lines[2:]]


def test_report_over_several_folders(tmp_path, capsys):
    a, b = tmp_path / "runA", tmp_path / "runB"
    put(a / "eval_summary.json", MATH)
    put(a / "k" / "eval_summary.json", MATH_K)
    put(a / "code_summary.json", CODE)
    put(b / "deep" / "er" / "choice_summary.json", CHOICE)
    put(b / "instruct_summary.json", INSTRUCT)
    put(b / "empty" / "instruct_summary.json", NO_VERDICT)
    put(b / "pairwise_summary.json", PAIRWISE)
    put(b / "broken_summary.json", "{not json")
    put(b / "notes.json", {"accuracy": 1.0, "num_questions": 1})  # not *_summary.json: not looked at
    md_file = tmp_path / "rep" / "table.md"
    assert main(["report", str(a), str(b), "--output", str(md_file)]) == 0
    out, err = capsys.readouterr()
    assert md_file.read_text() in out
    assert "pairwise_summary.json: not an evaluation summary" in err and "broken_summary.json" in err
    rows = {r["summary"]: r for r in parse_md(md_file.read_text())}
    assert list(rows) == ["runA/code", "runA/eval", "runA/k/eval", "runB/deep/er/choice", "runB/empty/instruct",
                          "runB/instruct"]
    header = list(next(iter(rows.values())))
    assert header == ["summary", "model", "task", "benchmark", "FAC", "pass@1", "pass@k", "KL", "CS", "MC acc",
                      "unparseable share", "instruct win", "unparseable verdicts"]
    m = rows["runA/eval"]
    assert (m["task"], m["model"], m["FAC"], m["pass@1"], m["KL"], m["CS"]) == (
        "math", "stud", "75.00", "75.00", "0.123 ± 0.050", "50.00")
    assert m["MC acc"] == m["instruct win"] == m["pass@k"] == ""
    assert rows["runA/k/eval"]["pass@k"] == "50.00 (k=4)" and rows["runA/k/eval"]["pass@1"] == ""
    c = rows["runA/code"]
    assert (c["task"], c["pass@1"], c["pass@k"], c["FAC"]) == ("code", "20.00", "60.00 (k=5)", "")
    ch = rows["runB/deep/er/choice"]
    assert (ch["MC acc"], ch["unparseable share"], ch["FAC"]) == ("30.00", "10.00", "")
    ins = rows["runB/instruct"]
    assert (ins["instruct win"], ins["unparseable verdicts"], ins["unparseable share"]) == ("62.50", "3/10", "")
    assert rows["runB/empty/instruct"]["instruct win"] == "n/a"


def test_columns_are_only_those_present_and_errors(tmp_path, capsys):
    put(tmp_path / "x" / "code_summary.json", CODE)
    put(tmp_path / "y" / "choice_summary.json", CHOICE)
    table = summary_table([tmp_path])
    assert table[0] == ["summary", "model", "task", "benchmark", "pass@1", "pass@k", "MC acc", "unparseable share"]
    assert table[1][:3] == [f"{tmp_path.name}/x/code", "stud", "code"]
    assert task_of(PAIRWISE) is None and task_of(MATH) == "math" and task_of([1]) is None
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty)]) == 2
    assert "no evaluation *_summary.json" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_report_reads_what_eval_writes(tmp_path, capsys):
    out = tmp_path / "ev"
    assert main(["eval", "--model", "embedded:student", "--benchmark", "arith", "--limit", "3", "--max-new-tokens",
                 "8", "--teacher", "embedded:teacher", "--output-dir", str(out)]) == 0
    written = json.loads((out / "eval_summary.json").read_text())
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    row = parse_md(capsys.readouterr().out)[0]
    assert row["task"] == "math" and row["FAC"] == f"{100 * written['accuracy']:.2f}"
    assert row["KL"] == f"{written['kl_mean']:.3f} ± {written['kl_std']:.3f}"
