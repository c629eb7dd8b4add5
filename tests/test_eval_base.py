"""The task interface and its one loop (eval/base.py), the EvalConfig family through
config.build_config, and the `eval TASK` subcommands' own flags."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from reasondistill.cli import build_parser, main
from reasondistill.config import ConfigError, build_config, field_doc
from reasondistill.eval.base import EvalConfig, Task, chat_messages, evaluate_task, load_records
from reasondistill.eval.tasks import eval_config_class


class Echo(Task):
    """A toy task: the model should repeat a word; 'correct' when the word is in its answer."""

    name = prefix = "echo"

    def __init__(self):
        self.finished = False

    @classmethod
    def load(cls, source, data_dir=None, first=None, **options):
        words = source.split(",")
        return [{"id": str(i), "word": w} for i, w in enumerate(words)][:first]

    def prepare(self, records):
        return [{**r, "shown": r["word"].upper()} for r in records]

    def prompt(self, record):
        return chat_messages(f"Repeat: {record['shown']}")

    def score(self, record, output, sample):
        return {"id": record["id"], "sample": sample, "output": output, "correct": record["word"] in output}

    def finish(self, rows, progress=False):
        self.finished = True
        return [{**r, "finished": True} for r in rows]

    def summarize(self, rows, samples):
        return {"num_rows": len(rows), "samples": samples, "accuracy": sum(r["correct"] for r in rows) / len(rows)}


def test_a_toy_task_runs_on_the_loop(tiny_model, tokenizer):
    task = Echo()
    records = Echo.load("a,b,c")
    rows, s = evaluate_task(task, tiny_model, tokenizer, records, samples=2, temperature=1.0, max_new_tokens=3,
                            batch_size=2, seed=1, benchmark="words")
    assert task.finished and len(rows) == 6 and all(r["finished"] for r in rows)
    assert [(r["id"], r["sample"]) for r in rows] == [(str(i), k) for i in range(3) for k in (0, 1)]
    assert all(1 <= r["num_tokens"] <= 3 and isinstance(r["truncated"], bool) for r in rows)
    assert s["task"] == "echo" and s["benchmark"] == "words" and s["num_rows"] == 6 and s["samples"] == 2
    assert s["temperature"] == 1.0 and s["max_new_tokens"] == 3 and s["seed"] == 1  # the sampling settings
    assert {"mean_tokens", "truncated_share", "wall_seconds"} <= set(s) and "api_failures" not in s
    again, _ = evaluate_task(Echo(), tiny_model, tokenizer, records, samples=2, temperature=1.0, max_new_tokens=3,
                             batch_size=3, seed=1)
    assert [r["output"] for r in again] == [r["output"] for r in rows]  # one generator for the run: batching-free


def test_a_task_without_generation_yields_its_own_outputs(tiny_model, tokenizer):
    class Lengths(Echo):
        def outputs(self, model, tokenizer, records, **sampling):
            yield records, None, [len(r["word"]) for r in records]

        def score(self, record, output, sample):
            return {"id": record["id"], "output": str(output), "correct": output == 1}

    rows, s = evaluate_task(Lengths(), tiny_model, tokenizer, Lengths.load("a,bb"))
    assert [r["output"] for r in rows] == ["1", "2"] and "num_tokens" not in rows[0] and s["accuracy"] == 0.5


# --------------------------------------------------------------------------------------------
# EvalConfig
# --------------------------------------------------------------------------------------------
def test_eval_config_from_yaml_then_key_value(tmp_path):
    cls = eval_config_class("math")
    y = tmp_path / "e.yaml"
    y.write_text("benchmark: gsm8k\nlimit: 50\ntemperature: 0.7\nsamples: 4\nteacher: embedded:teacher\n")
    cfg = build_config(cls, y, ["limit=20", "kl_budget=0.2", "system=Be brief."])
    assert isinstance(cfg, EvalConfig) and cfg.task == "math"
    assert (cfg.benchmark, cfg.limit, cfg.temperature, cfg.samples, cfg.kl_budget) == ("gsm8k", 20, 0.7, 4, 0.2)
    assert cfg.teacher == "embedded:teacher" and cfg.system == "Be brief." and cfg.max_new_tokens == 512
    assert cfg.top_p == 1.0  # the plain default once nothing else set it
    instruct = build_config(eval_config_class("instruct"), overrides=["benchmark=alpaca_eval", "judge=rule"])
    assert (instruct.temperature, instruct.top_p) == (0.8, 0.95)  # the task's own default sampling


def test_eval_config_unknown_key_is_listed_with_a_suggestion(tmp_path):
    with pytest.raises(ConfigError) as e:
        build_config(eval_config_class("choice"), overrides=["benchmark=mmlu", "scorng=loglik"])
    msg = str(e.value)
    assert "'scorng'" in msg and "Did you mean scoring" in msg and "loglik_target" in msg
    assert "teacher" not in msg.split("Valid keys:")[1]  # a math key is not a choice key
    y = tmp_path / "e.yaml"
    y.write_text("benchmark: gsm8k\nkl_budjet: 0.3\n")
    with pytest.raises(ConfigError, match=r"e.yaml:2: unknown config key 'kl_budjet'.*Did you mean kl_budget"):
        build_config(eval_config_class("math"), y)
    with pytest.raises(ConfigError, match="limit='ten' is not a valid int"):
        build_config(eval_config_class("code"), overrides=["benchmark=humaneval", "limit=ten"])


def test_presets_fill_what_is_left_unset():
    cls = eval_config_class("math")
    cfg = build_config(cls, overrides=["benchmark=gsm8k", "preset=pipeline", "temperature=0.2"])
    assert cfg.samples == 2 and cfg.limit == 200 and cfg.temperature == 0.2 and "####" in cfg.question_template
    assert build_config(cls, overrides=["benchmark=gsm8k", "preset=pipeline", "first=10"]).limit is None
    tgpo = build_config(cls, overrides=["benchmark=aime24", "preset=tgpo"])
    assert tgpo.samples == 32 and tgpo.temperature == 0.6
    ll = build_config(eval_config_class("choice"), overrides=["benchmark=mmlu", "preset=tgpo-choice",
                                                              "scoring=loglik"])
    assert ll.temperature == 0.0  # likelihood scoring samples nothing
    with pytest.raises(ConfigError, match="preset vcrd-code is for eval code, not eval math"):
        build_config(cls, overrides=["benchmark=gsm8k", "preset=vcrd-code"])


def test_every_eval_field_is_documented():
    from reasondistill.eval.pairwise import PairwiseConfig
    from reasondistill.pipelines.compare import CompareEval

    for cls in [eval_config_class(t) for t in ("math", "code", "choice", "instruct")] + [PairwiseConfig, CompareEval]:
        for f in dataclasses.fields(cls):
            assert field_doc(cls, f.name), f"{cls.__name__}.{f.name} has no docstring"


def test_arith_generates_limit_problems_a_file_is_cut_or_subsampled(tmp_path):
    cls = eval_config_class("math")
    recs, chosen = load_records(build_config(cls, overrides=["benchmark=arith", "limit=7", "seed=3"]))
    assert len(recs) == 7 and chosen == {"num_records": 7}
    f = tmp_path / "q.jsonl"
    f.write_text("".join(json.dumps({"q": f"{k}+1?", "a": str(k + 1)}) + "\n" for k in range(20)))
    base = [f"data={f}", "question_field=q", "answer_field=a"]
    first, how = load_records(build_config(cls, overrides=[*base, "first=4"]))
    assert [r["answer"] for r in first] == ["1", "2", "3", "4"] and how == {"first": 4, "num_records": 4}
    drawn, how = load_records(build_config(cls, overrides=[*base, "limit=4", "sample_seed=5"]))
    assert len(drawn) == 4 and drawn != first and how["sample_seed"] == 5 and how["num_available"] == 20


# --------------------------------------------------------------------------------------------
# The subcommands
# --------------------------------------------------------------------------------------------
def _help(capsys, *argv) -> str:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", *argv, "--help"])
    return capsys.readouterr().out


OWN = {"math": ["--teacher", "--kl-budget", "--question-field", "--question-template", "--samples"],
       "code": ["--timeout", "--chat", "--samples", "--memory-mb"],
       "choice": ["--scoring", "--loglik-target", "--no-shuffle"],
       "instruct": ["--judge", "--judge-model", "--judge-template", "--judge-max-tokens"],
       "pairwise": ["--a", "--b", "--judge", "--judge-model", "--judge-template"]}


@pytest.mark.parametrize("task", list(OWN))
def test_each_subcommand_shows_only_its_own_flags(task, capsys):
    text = _help(capsys, task)
    for flag in OWN[task]:
        assert f"{flag} " in text or f"{flag}\n" in text, (task, flag)
    others = {f for t, flags in OWN.items() if t != task for f in flags} - set(OWN[task])
    for flag in others:
        assert f"{flag} " not in text and f"{flag}\n" not in text, (task, flag)
    assert "--config" in text and "key=value" in text
    assert ("--model" in text) == (task != "pairwise") and "--task" not in text


def test_list_keys_and_the_old_command_line(capsys):
    assert main(["eval", "choice", "--list-keys"]) == 0
    out = capsys.readouterr().out
    assert "scoring = 'generate'" in out and "teacher =" not in out
    from reasondistill.cli import _eval_alias

    assert _eval_alias(["eval", "--task", "code", "--model", "m"]) == ["eval", "code", "--model", "m"]
    assert _eval_alias(["eval", "--model", "m", "--benchmark", "gsm8k"]) == ["eval", "math", "--model", "m",
                                                                             "--benchmark", "gsm8k"]
    assert _eval_alias(["eval", "math", "--task=choice", "--model", "m"]) == ["eval", "choice", "--model", "m"]
    assert _eval_alias(["eval", "instruct", "--model", "m"]) == ["eval", "instruct", "--model", "m"]


def test_eval_from_a_yaml_config_with_overrides(tmp_path):
    y = tmp_path / "e.yaml"
    y.write_text(f"model: embedded:student\nbenchmark: arith\nlimit: 9\nmax_new_tokens: 2\n"
                 f"output_dir: {tmp_path / 'out'}\nprogress: false\n")
    assert main(["eval", "math", "--config", str(y), "--limit", "3", "seed=1"]) == 0
    s = json.loads((tmp_path / "out" / "eval_summary.json").read_text())
    assert s["num_questions"] == 3 and s["seed"] == 1 and s["max_new_tokens"] == 2 and s["task"] == "math"


def test_eval_help_lists_the_subcommands():
    r = subprocess.run([sys.executable, "-m", "reasondistill.cli", "eval", "--help"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and all(t in r.stdout for t in OWN)
