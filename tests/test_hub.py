"""Benchmarks from the Hugging Face Hub (reasondistill.data.hub): the table, the real `datasets`
path on local Parquet/JSON files with the Hub's schema, the fallback from the local loaders,
EvalPlus's extra tests through the real sandbox, and the offline errors.

Nothing here touches the network: every test runs with HF_HUB_OFFLINE=1, HF_DATASETS_OFFLINE=1,
an empty `datasets` cache under tmp_path, and Internet sockets refused.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest

datasets = pytest.importorskip("datasets")

from reasondistill.data import hub  # noqa: E402
from reasondistill.data.benchmarks import BENCHMARKS, DATA_DIR_ENV, DataError, load_benchmark  # noqa: E402
from reasondistill.eval.code_eval import CODE_BENCHMARKS, build_program, evaluate_solutions  # noqa: E402
from reasondistill.eval.code_eval import load_code_benchmark  # noqa: E402
from reasondistill.eval.instruct_eval import INSTRUCT_BENCHMARKS, load_instruct_benchmark  # noqa: E402
from reasondistill.eval.choice_eval import CHOICE_BENCHMARKS, load_choice_records  # noqa: E402

PAPER_BENCHMARKS = {  # every benchmark the four papers evaluate -> its name here
    "GSM8K": "gsm8k", "MATH-500": "math500", "Minerva": "minerva_math", "OlympiadBench": "olympiadbench",
    "Gaokao2023-EN": "gaokao2023en", "SVAMP": "svamp", "AMC23": "amc23", "AIME24": "aime24", "AIME25": "aime25",
    "SAT-Math": "sat_math", "CMATH": "cmath", "HumanEval": "humaneval", "HumanEval+": "humaneval_plus",
    "MBPP": "mbpp", "MBPP+": "mbpp_plus", "MMLU": "mmlu", "MMLU-Pro": "mmlu_pro", "ARC-Challenge": "arc_challenge",
    "GPQA-Diamond": "gpqa_diamond", "AlpacaEval": "alpaca_eval",
}
LOCAL_TABLES = {"math": {k: s.file for k, s in BENCHMARKS.items()}, "code": CODE_BENCHMARKS,
                "choice": CHOICE_BENCHMARKS, "instruct": INSTRUCT_BENCHMARKS}


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """Offline for the whole test: the variables, an empty cache, no data dir or mirror; any
    Internet connection or name lookup fails, and the test fails afterwards if one was tried
    (even when the library swallowed the error)."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.delenv(hub.MIRROR_ENV, raising=False)

    attempts: list = []
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def no_internet(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(address)
            raise OSError(f"test: no network ({address})")
        return real_connect(self, address)

    def no_lookup(host, *args, **kwargs):
        if host not in (None, "localhost", "127.0.0.1", "::1"):
            attempts.append(host)
            raise socket.gaierror(f"test: no name lookups ({host})")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", no_internet)
    monkeypatch.setattr(socket, "getaddrinfo", no_lookup)
    monkeypatch.setattr(hub, "_hub_unreachable", lambda *a, **k: pytest.fail("probed the Hub while offline"))
    yield cache
    assert not attempts, f"the test tried the network: {attempts}"


def _write(path: Path, columns: dict) -> Path:
    """A Parquet (or JSON Lines / JSON) file with these columns, written by `datasets` itself."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = datasets.Dataset.from_dict(columns)
    if path.suffix == ".parquet":
        ds.to_parquet(str(path))
    elif path.suffix == ".jsonl":
        ds.to_json(str(path), lines=True)
    else:  # .json: one JSON array, as AlpacaEval publishes it
        path.write_text(json.dumps(ds.to_list()), encoding="utf-8")
    return path


@pytest.fixture
def mirror(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "mirror"
    d.mkdir()
    monkeypatch.setenv(hub.MIRROR_ENV, str(d))
    return d


# --------------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------------
def test_table_has_every_paper_benchmark():
    assert set(PAPER_BENCHMARKS.values()) <= set(hub.DATA)
    for name, spec in hub.DATA.items():
        assert spec.task in hub.TASKS, name
        assert "/" in spec.hub_id and spec.split, name
        assert spec.fields and all(isinstance(c, tuple) and c for c in spec.fields.values()), name
    assert hub.DATA["gpqa_diamond"].gated


def test_local_names_agree_with_the_table():
    """Each local loader's name has a Hub entry of the same task, and the table names the file
    that loader reads (so the offline message tells users the right file)."""
    for task, table in LOCAL_TABLES.items():
        for name, rel in table.items():
            assert hub.DATA[name].task == task, name
            assert hub._local_file(name, hub.DATA[name]) == rel, name


def test_markdown_table():
    md = hub.hub_table_markdown()
    lines = md.strip().splitlines()
    assert lines[0] == "| name | Hub id | config | split | fields | task |"
    assert len(lines) == 2 + len(hub.DATA)
    assert "| gsm8k | `openai/gsm8k` | main | test | question ← `question`; answer ← `answer` | math |" in lines
    assert any(line.startswith("| gpqa_diamond | `Idavidrein/gpqa` (gated) |") for line in lines)


# --------------------------------------------------------------------------------------------
# one benchmark of each task kind through the real `datasets` path
# --------------------------------------------------------------------------------------------
def test_math_from_parquet(mirror):
    _write(mirror / "openai/gsm8k/main/test.parquet",
           {"question": ["Tom has 3 apples and buys 15. How many?", "Two?"],
            "answer": ["3 + 15 = 18\n#### 18", "so 1,080 in all\n#### 1,080"]})
    recs = load_benchmark("gsm8k")  # no data dir: the Hub table, here its mirror
    assert [r["answer"] for r in recs] == ["18", "1080"]
    assert recs[0] == {"id": "gsm8k-1", "question": "Tom has 3 apples and buys 15. How many?", "answer": "18",
                       "source": "gsm8k", "solution": "3 + 15 = 18\n#### 18"}
    assert len(hub.load_hub_benchmark("gsm8k", limit=1)) == 1


def test_math_split_expression_and_joined_columns(mirror):
    for split, ids in (("train", ["a", "b"]), ("test", ["c"])):
        _write(mirror / f"ChilleD/SVAMP/default/{split}.parquet",
               {"ID": ids, "Body": ["Tom has 3 apples"] * len(ids), "Question": ["How many?"] * len(ids),
                "Answer": [3.0] * len(ids), "Equation": ["( 3 )"] * len(ids), "Type": ["Id"] * len(ids)})
    recs = hub.load_hub_benchmark("svamp")
    assert [r["id"] for r in recs] == ["a", "b", "c"]  # train+test read as one
    assert recs[0]["question"] == "Tom has 3 apples. How many?" and recs[0]["answer"] == "3"
    assert recs[0]["equation"] == "( 3 )"


def test_olympiadbench_list_answers_and_extras(mirror):
    _write(mirror / "Hothan/OlympiadBench/OE_TO_maths_en_COMP/train.parquet",
           {"id": [7], "question": ["Find x."], "final_answer": [["$2$", "$3$"]], "solution": ["x is 2 or 3"],
            "subfield": ["Algebra"], "unit": [None]})
    (r,) = hub.load_hub_benchmark("olympiadbench")
    assert r["id"] == "7" and r["answer"] == ["$2$", "$3$"] and r["subject"] == "Algebra"


HE_PROMPT = 'def total(xs):\n    """Sum of the integers xs."""\n'
# EvalPlus's HumanEval+ `test`: one check(candidate) over the base input and the extra (plus) ones
HE_PLUS_TEST = ("\ndef check(candidate):\n    inputs = [[[1, 2, 3]], [[]], [[-5, 5]], [[1000000, 1]]]\n"
                "    results = [6, 0, 0, 1000001]\n    for inp, exp in zip(inputs, results):\n"
                "        assert candidate(*inp) == exp\n")
RIGHT = "    return sum(xs)\n"
WRONG = "    return sum(x for x in xs if x > 0)\n"  # right on the base input [1, 2, 3], wrong on [-5, 5]


def test_humaneval_plus_extra_tests_run_in_the_sandbox(mirror):
    _write(mirror / "evalplus/humanevalplus/default/test.parquet",
           {"task_id": ["HumanEval/0"], "prompt": [HE_PROMPT], "canonical_solution": [RIGHT],
            "entry_point": ["total"], "test": [HE_PLUS_TEST]})
    (rec,) = load_code_benchmark("humaneval_plus")
    assert rec["id"] == rec["task_id"] == "HumanEval/0" and rec["source"] == "humaneval_plus"
    program = build_program(rec, WRONG)
    assert "[[-5, 5]]" in program and program.rstrip().endswith("check(total)")
    rows, summary = evaluate_solutions([rec, rec], [rec["canonical_solution"], WRONG], workers=2, timeout=20)
    assert [r["passed"] for r in rows] == [True, False], [r["detail"] for r in rows]
    assert rows[1]["status"] == "failed"


def test_mbpp_plus_module_level_tests_and_derived_fields(mirror):
    plus = ("inputs = [[3], [0], [-2]]\nresults = [9, 0, 4]\nfor i, (inp, exp) in enumerate(zip(inputs, results)):\n"
            "    assert square(*inp) == exp\n")
    _write(mirror / "evalplus/mbppplus/default/test.parquet",
           {"task_id": [2], "code": ["import math\ndef square(x):\n    return x * x\n"],
            "prompt": ["Write a function that squares a number."], "source_file": ["x.py"],
            "test_imports": [["import math"]], "test_list": [["assert square(3) == 9"]], "test": [plus]})
    (rec,) = load_code_benchmark("mbpp_plus")
    assert rec["task_id"] == "Mbpp/2" and rec["entry_point"] == "square"
    assert rec["prompt"] == ('import math\n\ndef square(x):\n    """\n    Write a function that squares a number.\n'
                             '    assert square(3) == 9\n    """\n')
    assert rec["test"].startswith("import math\n") and "def check(candidate)" in rec["test"]
    wrong = "def square(x):\n    return x * 3\n"  # 3 * 3 == 9: passes the base assert only
    rows, _ = evaluate_solutions([rec, rec, rec], [rec["canonical_solution"], "    return x ** 2\n", wrong],
                                 workers=2, timeout=20)
    assert [r["passed"] for r in rows] == [True, True, False], [r["detail"] for r in rows]


def test_mbpp_asserts_become_a_check(mirror):
    _write(mirror / "google-research-datasets/mbpp/full/test.parquet",
           {"task_id": [11], "text": ["Write a python function to remove a character."],
            "code": ["def helper(s):\n    return s\ndef remove_char(s, c):\n    return helper(s).replace(c, '')"],
            "test_list": [["assert remove_char('hello', 'l') == 'heo'", "assert remove_char('abc', 'b') == 'ac'"]],
            "test_setup_code": [""], "challenge_test_list": [[]]})
    (rec,) = load_code_benchmark("mbpp")
    assert rec["entry_point"] == "remove_char"  # the function the asserts call, not the helper
    assert rec["test"] == ("def check(candidate):\n    assert remove_char('hello', 'l') == 'heo'\n"
                           "    assert remove_char('abc', 'b') == 'ac'\n")
    assert rec["prompt"].startswith("def remove_char(s, c):\n")
    # the reference program (helper first) verbatim after the prompt, a body continuation, a wrong one
    rows, _ = evaluate_solutions([rec, rec], [rec["canonical_solution"], "def remove_char(s, c):\n    return s\n"],
                                 workers=2, timeout=20, extract=False)
    rows += evaluate_solutions([rec], ["    return s.replace(c, '')\n"], workers=1, timeout=20)[0]
    assert [r["passed"] for r in rows] == [True, False, True], [r["detail"] for r in rows]


def test_evalplus_release_file_is_refused(mirror):
    _write(mirror / "evalplus/humanevalplus/default/test.parquet",
           {"task_id": ["HumanEval/0"], "prompt": [HE_PROMPT], "entry_point": ["total"],
            "test": ["def check(candidate):\n    pass\n"], "plus_input": [[[[1]]]]})
    with pytest.raises(DataError, match="plus_input"):
        load_code_benchmark("humaneval_plus")


def test_choice_from_parquet_spread_over_subjects(mirror):
    _write(mirror / "cais/mmlu/all/test.parquet",
           {"question": ["1+1?", "2+2?", "H2O is?"], "subject": ["math", "math", "chemistry"],
            "choices": [["1", "2", "3", "4"], ["4", "3", "2", "1"], ["water", "salt", "gold", "air"]],
            "answer": [1, 0, 0]})
    recs = load_choice_records("mmlu")
    assert recs[0] == {"id": "mmlu-1", "question": "1+1?", "choices": ["1", "2", "3", "4"], "answer": "B",
                       "answer_index": 1, "subject": "math", "source": "mmlu"}
    assert [r["subject"] for r in load_choice_records("mmlu", limit=2)] == ["math", "chemistry"]


def test_choice_schemas(mirror):
    _write(mirror / "allenai/ai2_arc/ARC-Challenge/test.parquet",
           {"id": ["q1"], "question": ["Which is a gas?"],
            "choices": [{"text": ["rock", "steam", "ice"], "label": ["1", "2", "3"]}], "answerKey": ["2"]})
    (arc,) = load_choice_records("arc_challenge")
    assert arc["choices"] == ["rock", "steam", "ice"] and arc["answer"] == "B" and arc["id"] == "q1"

    _write(mirror / "TIGER-Lab/MMLU-Pro/default/test.parquet",
           {"question_id": [70], "question": ["Pick J."], "options": [[f"o{i}" for i in range(10)]],
            "answer": ["J"], "answer_index": [9], "category": ["law"]})
    (pro,) = load_choice_records("mmlu_pro")
    assert pro["answer"] == "J" and len(pro["choices"]) == 10 and pro["subject"] == "law" and pro["id"] == "70"

    _write(mirror / "Idavidrein/gpqa/gpqa_diamond/train.parquet",
           {"Record ID": [f"rec{i}" for i in range(8)], "Question": ["Q?"] * 8, "Correct Answer": ["right"] * 8,
            "Incorrect Answer 1": ["w1"] * 8, "Incorrect Answer 2": ["w2"] * 8, "Incorrect Answer 3": ["w3"] * 8,
            "Subdomain": ["Physics"] * 8})
    gpqa = load_choice_records("gpqa_diamond")
    assert all(r["choices"][r["answer_index"]] == "right" and sorted(r["choices"]) == ["right", "w1", "w2", "w3"]
               for r in gpqa)
    assert len({r["answer"] for r in gpqa}) > 1  # the correct answer is not always option A
    assert load_choice_records("gpqa_diamond") == gpqa  # the order is fixed per record id

    _write(mirror / "dmayhem93/agieval-sat-math/default/test.parquet",
           {"query": ["Q: If x+1=3, what is x? Answer Choices: (A)1 (B)2 (C)3 (D)4\n"
                      "A: Among A through D, the answer is"],
            "choices": [["(A)1", "(B)2", "(C)3", "(D)4"]], "gold": [[1]]})
    (sat,) = load_choice_records("sat_math")
    assert sat["question"] == "If x+1=3, what is x?" and sat["choices"] == ["1", "2", "3", "4"]
    assert sat["answer"] == "B"


def test_instruct_from_the_hub_json_file(mirror):
    # AlpacaEval's repository: a JSON array file read by the json builder (its loading script is not)
    _write(mirror / "tatsu-lab/alpaca_eval/alpaca_eval.json",
           {"instruction": ["Say hi.", "Name a colour."], "output": ["Hi!", "Blue."],
            "generator": ["text_davinci_003"] * 2, "dataset": ["helpful_base"] * 2})
    recs = load_instruct_benchmark("alpaca_eval")
    assert recs[1] == {"id": "alpaca_eval-2", "instruction": "Name a colour.", "reference": "Blue.",
                       "source": "alpaca_eval", "dataset": "helpful_base", "generator": "text_davinci_003"}
    assert len(load_instruct_benchmark("alpaca_eval", limit=1)) == 1


def test_snapshot_folder_read_like_the_hub(mirror):
    """A snapshot folder as `hf download --local-dir` writes it: `datasets` reads its README configs."""
    base = mirror / "openai/gsm8k"
    _write(base / "main/test-00000-of-00001.parquet", {"question": ["Q?"], "answer": ["#### 4"]})
    _write(base / "socratic/test-00000-of-00001.parquet", {"question": ["S?"], "answer": ["#### 5"]})
    (base / "README.md").write_text(
        "---\nconfigs:\n- config_name: main\n  data_files:\n  - split: test\n    path: main/test-*\n"
        "- config_name: socratic\n  data_files:\n  - split: test\n    path: socratic/test-*\n---\n", encoding="utf-8")
    (r,) = hub.load_hub_benchmark("gsm8k")
    assert r["question"] == "Q?" and r["answer"] == "4"


def test_missing_column_names_the_columns_found(mirror):
    _write(mirror / "HuggingFaceH4/MATH-500/default/test.parquet", {"prompt": ["x?"], "solution": ["\\boxed{1}"]})
    with pytest.raises(DataError, match=r"no column for 'question' \(tried problem\); columns found: prompt, solution"):
        hub.load_hub_benchmark("math500")


# --------------------------------------------------------------------------------------------
# local files first
# --------------------------------------------------------------------------------------------
def test_local_file_takes_precedence(tmp_path, mirror):
    _write(mirror / "openai/gsm8k/main/test.parquet", {"question": ["from the Hub?"], "answer": ["#### 1"]})
    data = tmp_path / "data"
    data.mkdir()
    (data / "gsm8k_test.jsonl").write_text(json.dumps({"question": "local?", "answer": "#### 2"}) + "\n")
    (r,) = load_benchmark("gsm8k", data)
    assert r["question"] == "local?" and r["id"] == "gsm8k_test-1"  # the local loader's record
    assert load_benchmark("gsm8k", tmp_path / "mirror")[0]["question"] == "from the Hub?"  # not in that dir

    _write(mirror / "openai/openai_humaneval/default/test.parquet",
           {"task_id": ["Hub/0"], "prompt": [HE_PROMPT], "entry_point": ["total"], "test": [HE_PLUS_TEST]})
    (data / "code").mkdir()
    (data / "code" / "humaneval.jsonl").write_text(json.dumps(
        {"task_id": "Local/0", "prompt": HE_PROMPT, "entry_point": "total", "test": HE_PLUS_TEST}) + "\n")
    assert load_code_benchmark("humaneval", data)[0]["task_id"] == "Local/0"
    assert load_code_benchmark("humaneval")[0]["task_id"] == "Hub/0"


def test_hub_only_name_reads_a_local_file_in_the_hub_schema(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    (tmp_path / "aime25.jsonl").write_text(json.dumps({"id": "I-1", "problem": "Find n.", "answer": "70"}) + "\n")
    assert load_benchmark("aime25") == [{"id": "I-1", "question": "Find n.", "answer": "70", "source": "aime25"}]


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------
def test_offline_error_names_the_hub_id_and_how_to_download(offline):
    with pytest.raises(DataError) as ei:
        hub.load_hub_benchmark("gsm8k", cache_dir=offline)
    msg = str(ei.value)
    for part in ("openai/gsm8k", "'main'", "'test'", "offline", "hf download --repo-type dataset openai/gsm8k",
                 "datasets.load_dataset('openai/gsm8k', 'main', split='test')", "HF_DATASETS_OFFLINE=1",
                 hub.MIRROR_ENV, "gsm8k_test.jsonl", DATA_DIR_ENV):
        assert part in msg, part


def test_eval_without_data_dir_tries_the_hub():
    """What `reasondistill eval --benchmark gsm8k` without a data dir now says."""
    with pytest.raises(DataError) as ei:
        load_benchmark("gsm8k")
    msg = str(ei.value)
    assert "openai/gsm8k" in msg and "no benchmark data directory" in msg and DATA_DIR_ENV in msg


def test_unreachable_hub_counts_as_offline(monkeypatch):
    """Without the offline variables, a Hub that does not answer the probe puts `datasets` in its
    offline mode for the call (its cache only), and its flags are restored afterwards."""
    import datasets.config
    import huggingface_hub.constants

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var)
    before = (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "_hub_unreachable", lambda *a, **k: "https://huggingface.co does not answer (test)")
    with pytest.raises(DataError, match=r"allenai/ai2_arc.*not available offline: https://huggingface.co does not"):
        load_choice_records("arc_challenge")
    assert (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE) == (False, False)
    assert before is not None


def test_gated_dataset_says_so(monkeypatch):
    from datasets.exceptions import DatasetNotFoundError

    def gated(*args, **kwargs):
        raise DatasetNotFoundError("Dataset 'Idavidrein/gpqa' is a gated dataset on the Hub. "
                                   "You must be authenticated to access it.")

    monkeypatch.setattr(datasets, "load_dataset", gated)
    with pytest.raises(DataError, match="gated") as ei:
        load_choice_records("gpqa_diamond")
    assert "Idavidrein/gpqa" in str(ei.value) and "hf auth login" in str(ei.value)


def test_datasets_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` raises ImportError
    with pytest.raises(DataError, match="pip install datasets"):
        load_instruct_benchmark("alpaca_eval")


LOADERS = {
    "math": lambda name, d=None: load_benchmark(name, d),
    "code": lambda name, d=None: load_code_benchmark(name, d),
    "choice": lambda name, d=None: load_choice_records(name, d),
    "instruct": lambda name, d=None: load_instruct_benchmark(name, d),
}


@pytest.mark.parametrize("name", sorted(hub.DATA))
def test_every_name_resolves_locally_or_to_its_hub_entry(name, tmp_path):
    """No data here: each name reaches its Hub entry (the offline error naming its Hub id), never
    'unknown'."""
    spec = hub.DATA[name]
    with pytest.raises(DataError) as ei:
        LOADERS[spec.task](name, tmp_path)
    msg = str(ei.value)
    assert spec.hub_id in msg and "unknown" not in msg, msg
    assert hub._local_file(name, spec) in msg


def test_shared_local_files_still_win():
    """With the shared benchmark folder, the names of the local tables load locally."""
    shared = Path(__file__).resolve().parents[2] / "shared" / "benchmarks"
    if not shared.is_dir():
        pytest.skip(f"{shared} not found")
    for task, table in LOCAL_TABLES.items():
        for name in table:
            assert LOADERS[task](name, shared), name


@pytest.mark.parametrize("task, kind", [("math", "benchmark"), ("code", "code benchmark"),
                                        ("choice", "multiple-choice benchmark"),
                                        ("instruct", "instruction benchmark")])
def test_unknown_name_lists_the_known_ones(task, kind, tmp_path):
    with pytest.raises(DataError) as ei:
        LOADERS[task]("no_such_bench", tmp_path)
    msg = str(ei.value)
    assert f"unknown {kind} 'no_such_bench'" in msg
    for name in set(LOCAL_TABLES[task]) | set(hub.hub_names(task)):
        assert name in msg, name
    with pytest.raises(DataError, match="is a code benchmark: --task code"):
        LOADERS["math"]("mbpp_plus", tmp_path)


def test_the_readme_table_is_the_code_table():
    from pathlib import Path

    from reasondistill.data.hub import hub_table_markdown

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert hub_table_markdown().strip() in readme
