"""The question bank (pipelines/bank.py): every adapter on real or realistic files, bad rows
reported with file and line and counted, case-insensitive de-duplication, stratified sampling
deterministic for a seed, and the ``bank`` subcommand."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from reasondistill.data.benchmarks import BENCHMARKS
from reasondistill.data.records import DataError
from reasondistill.pipelines.api_commands import register
from reasondistill.pipelines.bank import Source, build_bank, split_solution, stratified_sample

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "benchmarks"
needs_shared = pytest.mark.skipif(not (SHARED / "gsm8k_train.jsonl").is_file(), reason="../shared/benchmarks absent")


def rows(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().split("\n") if line]


def write_jsonl(path, items) -> Path:
    Path(path).write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in items))
    return Path(path)


def run_cli(*argv) -> int:
    p = argparse.ArgumentParser()
    register(p.add_subparsers(dest="command"))
    args = p.parse_args(list(argv))
    return args.func(args)


# --------------------------------------------------------------------------------------------
# adapters
# --------------------------------------------------------------------------------------------
@needs_shared
def test_gsm8k_adapter_splits_at_hashes(tmp_path):
    s = build_bank([Source("gsm8k", str(SHARED / "gsm8k_train.jsonl"))], tmp_path / "b.jsonl", log=lambda m: None)
    out = rows(tmp_path / "b.jsonl")
    assert s["written"] == len(out) == 7473 - s["counts"]["duplicates"] and s["counts"]["bad"] == 0
    first = out[0]
    assert first["id"] == "math-q-00001" and first["source"] == "gsm8k" and first["final_answer"] == "72"
    assert first["question"].startswith("Natalia sold clips")
    assert first["reasoning"].endswith("72 clips altogether in April and May.") and "####" not in first["reasoning"]
    assert [r["id"] for r in out[:3]] == ["math-q-00001", "math-q-00002", "math-q-00003"]
    assert all("," not in r["final_answer"] for r in out)  # "1,080" -> "1080"


def test_numina_parquet_last_box_is_the_answer_and_bad_rows_are_reported(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pa.table({
        "problem": ["Find $x$ if $2x=4$.", "No box here.", "", "Compute $1+1$."],
        "solution": ["We divide: $x=\\frac{4}{2}$, so first $\\boxed{3}$ was a typo; $x=\\boxed{2}$.",
                     "It is 5.", "\\boxed{1}", "Clearly \\boxed{2}"],
        "source": ["olympiads", "cn_k12", "amc_aime", "cn_k12"],
        "messages": ["[...]"] * 4,
    })
    path = tmp_path / "numina.parquet"
    pq.write_table(table, path)
    logged = []
    s = build_bank([Source("numina", str(path))], tmp_path / "b.jsonl", log=logged.append)
    out = rows(tmp_path / "b.jsonl")
    assert [r["final_answer"] for r in out] == ["2", "2"]
    assert out[0]["reasoning"] == "We divide: $x=\\frac{4}{2}$, so first $\\boxed{3}$ was a typo; $x="
    assert split_solution("So $\\boxed{2}$.", "boxed") == ("So", "2")  # a "$" that opened the box goes with it
    assert out[0]["meta"] == {"source": "olympiads"} and out[1]["reasoning"] == "Clearly"
    c = s["counts"]
    assert (c["rows"], c["bad"], c["empty"], c["written"]) == (4, 1, 1, 2)
    assert s["bad_rows"] == [{"where": f"{path}, row 2", "message": "no \\boxed{} answer in the solution"}]
    assert s["empty_rows"] == [f"{path}, row 3"]
    assert any(f"{path}, row 2" in m for m in logged)
    assert json.loads((tmp_path / "b.summary.json").read_text())["counts"] == c


def test_math_and_jeebench_adapters(tmp_path):
    math_file = write_jsonl(tmp_path / "math.jsonl", [
        {"problem": "What is $\\frac12+\\frac12$?", "solution": "Add: $\\boxed{1}$.", "level": "Level 1",
         "type": "Algebra", "unique_id": "test/algebra/1.json"},
        '{"problem": "cut short',
    ])
    jee = tmp_path / "dataset.json"
    jee.write_text('[\n  {"description": "JEE Adv 2023 Paper 2", "index": 1, "subject": "math", "type": "MCQ",\n'
                   '   "question": "Which is prime?", "gold": "B"},\n'
                   '  {"description": "JEE Adv 2016", "index": 2, "subject": "phy", "type": "Numeric",\n'
                   '   "question": "Speed?", "gold": "3"},\n'
                   '  "not an object",\n'
                   '  {"description": "JEE Adv 2019", "index": 3, "subject": "math", "type": "Integer",\n'
                   '   "question": "Count them.", "gold": 4}\n]\n')
    s = build_bank([Source("math", str(math_file)), Source("jeebench", str(jee))], tmp_path / "b.jsonl",
                   log=lambda m: None)
    out = rows(tmp_path / "b.jsonl")
    assert [(r["source"], r["final_answer"]) for r in out] == [("math", "1"), ("jeebench", "B"), ("jeebench", "4")]
    assert out[0]["reasoning"] == "Add:" and out[0]["meta"]["level"] == "Level 1"
    assert out[1]["meta"] == {"description": "JEE Adv 2023 Paper 2", "index": 1, "subject": "math", "type": "MCQ",
                              "source_id": 1}
    assert "reasoning" not in out[1]
    src = s["sources"]
    assert src["jeebench"]["filtered"] == 1 and src["jeebench"]["bad"] == 1 and src["math"]["bad"] == 1
    where = {b["where"] for b in s["bad_rows"]}
    assert where == {f"{math_file}, line 2", f"{jee}, line 6"}


@needs_shared
def test_every_shared_benchmark_by_name(tmp_path):
    names = sorted(BENCHMARKS)
    s = build_bank(names, tmp_path / "b.jsonl", data_dir=SHARED, log=lambda m: None)
    for name in names:
        r = s["sources"][name]
        assert r["rows"] == BENCHMARKS[name].rows, name
        assert r["rows"] == r["bad"] + r["filtered"] + r["empty"] + r["duplicates"] + r["kept"], name
    assert s["sources"]["gaokao2023en"]["empty"] == 2  # two rows without an answer in the published file
    assert s["sources"]["gsm8k"]["bad"] == 0
    out = rows(tmp_path / "b.jsonl")
    by = {r["source"]: r for r in out}
    assert by["minerva_math"]["reasoning"] and by["minerva_math"]["final_answer"]
    assert isinstance(by["olympiadbench"]["final_answer"], list)
    assert by["math500"]["meta"]["subject"] and by["math500"]["meta"]["source_id"].startswith("test/")
    assert by["svamp"]["final_answer"] == "145" or by["svamp"]["final_answer"]


def test_generic_jsonl_mapping_filter_and_cli(tmp_path, capsys):
    src = write_jsonl(tmp_path / "mine.jsonl", [
        {"q": "What is 2+2?", "ans": "4", "subject": "math", "topic": "add"},
        {"q": "what IS  2+2? ", "ans": "4", "subject": "math", "topic": "add"},  # a duplicate, case and spaces
        {"q": "Name a gas.", "ans": "O2", "subject": "chem", "topic": "x"},
        {"q": "What is 3*3?", "ans": 9, "subject": "Math", "topic": "mul"},
        {"ans": "7", "subject": "math"},
        "{not json",
    ])
    gsm = write_jsonl(tmp_path / "g.jsonl", [{"question": "Q1?", "answer": "so\n#### 1,080"},
                                             {"question": "What is 2+2?", "answer": "#### 4"},
                                             {"question": "Q3?", "answer": "no marker"}])
    out = tmp_path / "bank.jsonl"
    rc = run_cli("bank", "--input", f"jsonl:{src}", "--name", "mine", "--field", "question=q", "--field",
                 "final_answer=ans", "--where", "subject=math", "--meta", "topic", "--input", f"gsm8k:{gsm}",
                 "--output", str(out))
    assert rc == 0
    got = rows(out)
    assert [(r["id"], r["source"], r["question"], r["final_answer"]) for r in got] == [
        ("math-q-00001", "mine", "What is 2+2?", "4"), ("math-q-00002", "mine", "What is 3*3?", "9"),
        ("math-q-00003", "gsm8k", "Q1?", "1080")]
    assert got[0]["meta"] == {"topic": "add"} and got[2]["reasoning"] == "so"
    s = json.loads((tmp_path / "bank.summary.json").read_text())
    assert s["sources"]["mine"] | {"inputs": None} == {
        "name": "mine", "inputs": None, "rows": 6, "bad": 2, "filtered": 1, "empty": 0, "duplicates": 1,
        "kept": 2, "capped": 0, "in_bank": 2, "written": 2}
    assert s["sources"]["gsm8k"]["duplicates"] == 1 and s["sources"]["gsm8k"]["bad"] == 1
    err = capsys.readouterr()
    assert f"{src}, line 5: no column for 'question'" in err.err or f"{src}, line 5" in err.err
    assert f"{src}, line 6: malformed JSON" in err.err and f"{gsm}, line 3" in err.err
    assert "wrote 3 questions" in err.out
    with pytest.raises(SystemExit):
        run_cli("bank", "--field", "question=q", "--input", f"jsonl:{src}", "--output", str(out))
    with pytest.raises(DataError, match="expected KIND:PATH"):
        run_cli("bank", "--input", "nosuch:thing", "--output", str(out))


def test_hub_adapter_through_datasets_on_a_local_folder(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "my_dataset"
    (folder / "data").mkdir(parents=True)
    write_jsonl(folder / "data" / "train.jsonl", [{"problem": f"P{i}?", "solution": f"so \\boxed{{{i}}}"}
                                                  for i in range(5)])
    s = build_bank([Source("hub", str(folder), fields={"final_answer": "solution"})], tmp_path / "b.jsonl",
                   log=lambda m: None)
    out = rows(tmp_path / "b.jsonl")
    assert s["written"] == 5 and [r["final_answer"] for r in out] == ["0", "1", "2", "3", "4"]
    assert out[0]["source"] == "my_dataset" and out[0]["reasoning"] == "so"
    with pytest.raises(DataError, match="split"):
        build_bank([Source("hub", str(folder), split="nosuch")], tmp_path / "c.jsonl", log=lambda m: None)


# --------------------------------------------------------------------------------------------
# sampling
# --------------------------------------------------------------------------------------------
def test_stratified_sample_allocates_proportionally_and_is_deterministic():
    items = ["a"] * 600 + ["b"] * 300 + ["c"] * 100
    pick = stratified_sample(items, 100, key=lambda x: x, seed=0)
    assert [items[i] for i in pick].count("a") == 60 and [items[i] for i in pick].count("c") == 10
    assert pick == sorted(pick) and pick == stratified_sample(items, 100, key=lambda x: x, seed=0)
    assert pick != stratified_sample(items, 100, key=lambda x: x, seed=1)
    # the paper's 4,125 -> 3,000 (NuminaMath 2,893 after dedupe, OpenAIMath 996, JEEBench 236)
    paper = ["numina"] * 2893 + ["gsm8k"] * 996 + ["jee"] * 236
    got = [paper[i] for i in stratified_sample(paper, 3000, key=lambda x: x, seed=0)]
    assert (got.count("numina"), got.count("gsm8k"), got.count("jee")) == (2104, 724, 172)
    assert stratified_sample(items, 5000, key=lambda x: x, seed=0) == list(range(1000))


def test_caps_total_and_meta_stratification_are_deterministic(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"question": f"A{i}?", "answer": str(i), "kind": "x" if i % 4 else "y"}
                                           for i in range(200)])
    b = write_jsonl(tmp_path / "b.jsonl", [{"question": f"B{i}?", "answer": str(i)} for i in range(100)])

    def make(out, seed, **kw):
        return build_bank([Source("jsonl", str(a), name="a", meta=["kind"]), Source("jsonl", str(b), name="b")],
                          out, seed=seed, log=lambda m: None, **kw)

    s = make(tmp_path / "1.jsonl", 7, per_source=["a=80"], total=90, stratify_field="kind")
    make(tmp_path / "2.jsonl", 7, per_source=["a=80"], total=90, stratify_field="kind")
    make(tmp_path / "3.jsonl", 8, per_source=["a=80"], total=90, stratify_field="kind")
    assert (tmp_path / "1.jsonl").read_bytes() == (tmp_path / "2.jsonl").read_bytes()
    assert (tmp_path / "1.jsonl").read_bytes() != (tmp_path / "3.jsonl").read_bytes()
    out = rows(tmp_path / "1.jsonl")
    assert s["sources"]["a"]["capped"] == 120 and s["sources"]["a"]["in_bank"] == 80
    by = [r["source"] for r in out]
    assert len(out) == 90 and by.count("a") == 40 and by.count("b") == 50  # 80:100 of 90
    kinds = [r["meta"]["kind"] for r in out if r["source"] == "a"]
    assert kinds.count("y") == 10  # a quarter, as in the source
    ids = [r["id"] for r in out]
    assert ids == sorted(ids) and len(set(ids)) == 90 and all(i.startswith("math-q-") for i in ids)
    # the cap of one source does not depend on the others being there
    alone = build_bank([Source("jsonl", str(a), name="a", meta=["kind"])], tmp_path / "4.jsonl", seed=7,
                       per_source=["a=80"], stratify_field="kind", log=lambda m: None)
    assert alone["written"] == 80
    assert [r["question"] for r in rows(tmp_path / "4.jsonl")] == \
        [r["question"] for r in rows(tmp_path / "4.jsonl")]
    full = [r["question"] for r in rows(tmp_path / "4.jsonl")]
    two = build_bank([Source("jsonl", str(a), name="a", meta=["kind"]), Source("jsonl", str(b), name="b")],
                     tmp_path / "5.jsonl", seed=7, per_source=["a=80"], stratify_field="kind", log=lambda m: None)
    assert [r["question"] for r in rows(tmp_path / "5.jsonl") if r["source"] == "a"] == full and two["written"] == 180
    with pytest.raises(DataError, match="no input is called"):
        make(tmp_path / "6.jsonl", 0, per_source=["c=3"])


def test_split_solution_rules():
    assert split_solution("a\nb\n#### 1,000", "gsm8k") == ("a\nb", "1000")
    assert split_solution("so $\\boxed{\\frac{1}{2}}$.", "boxed") == ("so", "\\frac{1}{2}")
    assert split_solution("plain 5", "auto") == (None, "plain 5")


def test_probe_source_names_a_benchmark_that_is_not_here(tmp_path, monkeypatch):
    """The pipeline's ``if_available`` inputs are probed: a benchmark with no local file on an
    offline machine is a DataError naming it (so the pipeline skips it), a local one reads."""
    from reasondistill.data.records import DataError
    from reasondistill.pipelines.bank import parse_input, probe_source

    monkeypatch.delenv("REASONDISTILL_DATA_DIR", raising=False)
    monkeypatch.delenv("REASONDISTILL_HUB_MIRROR", raising=False)
    with pytest.raises(DataError, match="gsm8k"):
        probe_source(parse_input("gsm8k_train", tmp_path), tmp_path)
    f = tmp_path / "q.jsonl"
    f.write_text('{"question": "1+1?", "answer": "2"}\n')
    probe_source(parse_input(f"jsonl:{f}"))
