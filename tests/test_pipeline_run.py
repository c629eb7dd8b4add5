"""``reasondistill pipeline``: Box 3 records, the rule judge, the paper config (loaded, not run),
and the embedded pipeline end to end on tiny settings (bank from the embedded task and the shared
GSM8K file when present, traces from the embedded teacher served by api/serve.py on 127.0.0.1,
verdicts from the rule judge over the same API, LoRA SFT, GRPO with the hybrid reward, eval math
with the pipeline preset for the API teacher and the local students), then resume, a changed
config refused, and --rerun-changed."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest

from reasondistill.pipelines import api_pipeline as ap

ROOT = Path(__file__).resolve().parents[1]
SHARED_BENCHMARKS = ROOT.parent / "shared" / "benchmarks"


def test_sft_template_is_a_marked_reconstruction_and_teaches_the_grpo_format():
    from reasondistill.models import TEMPLATES_DIR
    from reasondistill.rewards import tag_format_reward

    text = (TEMPLATES_DIR / "pipeline_sft.txt").read_text()
    assert "RECONSTRUCTION" in text.split("[prompt]")[0]
    prompt, completion = ap.load_sft_template("pipeline_sft")
    assert "<think>...</think>" in prompt and "<answer>...</answer>" in prompt and "#" not in prompt
    box4 = (TEMPLATES_DIR / "pipeline_grpo_prompt.txt").read_text().removesuffix("\n")
    assert prompt == box4  # SFT asks for the format GRPO prompts for
    row = {"id": "math-q-00001", "question": "What is 2+3?", "final_answer": "5", "reasoning": "2+3=5\n",
           "generated_answer": "5", "source": "arith"}
    rec = ap.render_sft_record(row, (prompt, completion))
    assert rec["solution"] == "<think>\n2+3=5\n</think>\n<answer>5</answer>"
    assert rec["question"].endswith("Problem:\n\nWhat is 2+3?") and rec["problem"] == "What is 2+3?"
    assert rec["answer"] == "5" and tag_format_reward(rec["solution"]) == 1.0


def test_rule_judge_answers_box2_and_box5():
    from reasondistill.pipelines.judging import parse_verdict, render_prompt
    from reasondistill.api.answer_judge import AnswerJudge

    tmpl = (Path(ap.__file__).parents[1] / "templates" / "judge_triplet.txt").read_text()
    good = {"question": "What is 1+2+3?", "final_answer": "6", "reasoning": "1+2=3\n3+3=6", "generated_answer": "6"}
    bad = dict(good, reasoning="1+2=3\n3+3=7", generated_answer="7")
    assert parse_verdict(ap._rule_verdict(render_prompt(tmpl, good)))[0] == {"is_correct": 1, "reasoning_quality": 10}
    assert parse_verdict(ap._rule_verdict(render_prompt(tmpl, bad)))[0] == {"is_correct": 0, "reasoning_quality": 5}
    box5 = AnswerJudge.__new__(AnswerJudge)
    from reasondistill.api.answer_judge import _default_judge_template

    box5.template = _default_judge_template()
    assert ap._rule_verdict(box5.prompt("q", "6", "6")) == "1" and ap._rule_verdict(box5.prompt("q", "6", "x")) == "0"


def test_moving_average():
    assert ap.moving_average([1, 2, 3, 4], 2) == [1, 1.5, 2.5, 3.5]
    assert ap.moving_average([], 10) == []


def test_paper_config_loads_with_the_papers_settings():
    from reasondistill.config import build_config
    from reasondistill.methods import get_method

    cfg = ap.load_config(ROOT / "configs" / "pipeline_paper.yaml")
    assert [t["model"] for t in cfg["teachers"]] == ["openai/gpt-4.1", "anthropic/claude-sonnet-4"]
    assert cfg["judge"]["model"] == "google/gemini-2.5-pro" and cfg["student"] == "Qwen/Qwen2.5-32B-Instruct"
    assert (cfg["generate"]["temperature"], cfg["generate"]["max_tokens"], cfg["generate"]["timeout"]) == (0.2, 8192, 360)
    assert (cfg["filter"]["min_correct"], cfg["filter"]["min_quality"], cfg["filter"]["n"]) == (1, 10, 1000)
    s, g = cfg["sft"]["train"], cfg["grpo"]["train"]
    assert (cfg["sft"]["eval_share"], cfg["sft"]["evaluations"]) == (0.1, 20)
    assert {k: s[k] for k in ("lora_r", "lora_alpha", "lora_target_modules", "lora_dropout", "learning_rate",
                              "lr_scheduler_type", "warmup_ratio", "weight_decay", "per_device_train_batch_size",
                              "gradient_accumulation_steps", "num_train_epochs", "metric_for_best_model")} == {
        "lora_r": 32, "lora_alpha": 64, "lora_target_modules": "all-linear", "lora_dropout": 0.05,
        "learning_rate": 1e-5, "lr_scheduler_type": "cosine", "warmup_ratio": 0.05, "weight_decay": 0.01,
        "per_device_train_batch_size": 2, "gradient_accumulation_steps": 8, "num_train_epochs": 5,
        "metric_for_best_model": "eval/token_accuracy"}
    assert s["max_prompt_length"] + s["max_completion_length"] == 8192
    assert {k: g[k] for k in ("learning_rate", "beta", "num_generations", "per_device_train_batch_size",
                              "temperature", "top_p", "max_completion_length", "max_prompt_length",
                              "num_train_epochs", "reward", "correctness_weight", "format_weight")} == {
        "learning_rate": 5e-6, "beta": 0.1, "num_generations": 3, "per_device_train_batch_size": 1, "temperature": 0.8,
        "top_p": 0.95, "max_completion_length": 1500, "max_prompt_length": 512, "num_train_epochs": 1,
        "reward": "hybrid", "correctness_weight": 0.8, "format_weight": 0.2}
    # the train sections are valid method configs on this machine (auto -> LoRA + AdamW on a CPU)
    sft_cfg = build_config(get_method("sft").Config, None, {**ap.resolve_auto(s), "teacher": None, "eval_dataset": "split",
                                                           "eval_size": 100, "eval_steps": 15})
    grpo_cfg = build_config(get_method("grpo").Config, None, {**ap.resolve_auto(g), "teacher": None,
                                                             "judge_base_url": cfg["grpo"]["judge"]["base_url"],
                                                             "judge_model": cfg["grpo"]["judge"]["model"]})
    cuda, bnb = ap._cuda_bnb()
    assert sft_cfg.load_in_4bit == bnb and sft_cfg.optim == ("paged_adamw_8bit" if bnb else "adamw_torch")
    assert grpo_cfg.use_peft and grpo_cfg.reward == "hybrid"
    stages = [s[0] for s in ap.Pipeline(cfg).stages()]
    assert stages[:4] == ["bank", "generate:gpt41", "judge:gpt41", "filter:gpt41"]
    evals = [s for s in stages if s.startswith("eval:")]
    assert len(evals) == 7 * 2  # Table 4.1: 2 teachers, the base, 2 SFT, 2 GRPO students x GSM8K, AIME24
    assert stages[-1] == "report"


def test_unknown_keys_are_refused():
    from reasondistill.config import ConfigError

    with pytest.raises(ConfigError, match="unknown key sft.epochs"):
        ap.load_config(ROOT / "configs" / "pipeline_embedded.yaml", ["sft.epochs=3"])


TINY = ['bank.inputs=[{embedded: "arith:size=48", name: arith}, {spec: gsm8k_train, name: gsm8k, if_available: true}]',
        'bank.per_source=["gsm8k=3"]', "filter.n=24", "sft.train.num_train_epochs=2", "sft.evaluations=2",
        "grpo.prompts=6", "eval.settings.limit=8", "eval.settings.samples=1"]


def _parser():
    p = argparse.ArgumentParser(prog="reasondistill")
    ap.add_parser(p.add_subparsers(dest="command", required=True))
    return p


def _cli(*argv) -> int:
    args = _parser().parse_args([str(a) for a in argv])
    return args.func(args)


@pytest.mark.slow
def test_embedded_pipeline_end_to_end_resumes_and_refuses_a_changed_config(tmp_path, monkeypatch, capsys):
    if SHARED_BENCHMARKS.is_dir():
        monkeypatch.setenv("REASONDISTILL_DATA_DIR", str(SHARED_BENCHMARKS))
    monkeypatch.chdir(tmp_path)  # the config's run_dir is relative
    config = ROOT / "configs" / "pipeline_embedded.yaml"
    sets = [x for s in TINY for x in ("--set", s)]
    assert _cli("pipeline", config, *sets) == 0
    counts = json.loads(capsys.readouterr().out)
    run = tmp_path / "runs" / "pipeline_embedded"
    assert counts["bank"]["by_source"]["arith"] == 48
    assert counts["generate:embedded"]["traces"] + counts["generate:embedded"]["failed_ids"] == counts["bank"]["written"]
    assert counts["judge:embedded"]["judge_errors"] == 0
    assert counts["filter:embedded"]["written"] == 24 and counts["data"]["grpo_prompts"] == 6
    sft = [json.loads(x) for x in (run / "sft_embedded.jsonl").read_text().splitlines()]
    assert all(r["solution"].startswith("<think>") and r["solution"].endswith("</answer>") for r in sft)
    grpo_q = {json.loads(x)["problem"] for x in (run / "grpo_prompts.jsonl").read_text().splitlines()}
    assert not grpo_q & {r["problem"] for r in sft}  # GRPO prompts are disjoint from the SFT data
    assert counts["sft:embedded"]["eval_records"] == 2 and counts["sft:embedded"]["best_step"] is not None
    assert counts["grpo:embedded"]["steps"] == 6  # one prompt per update, one epoch
    metrics = [json.loads(x) for x in (run / "grpo_embedded" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all("reward/format_mean" in m and "reward/correct_mean" in m for m in metrics)
    assert (run / "grpo_embedded" / "moving_average.png").stat().st_size > 1000
    grpo_cfg = (run / "grpo_embedded" / "run" / "config.yaml").read_text()
    assert "reward: hybrid" in grpo_cfg and "beta: 0.1" in grpo_cfg and "sft_embedded/run/final" in grpo_cfg
    table = (run / "table.md").read_text()
    for label in ("teacher_embedded", "base", "sft_embedded", "grpo_embedded"):
        assert f"| {label} |" in table
    assert counts["eval:teacher_embedded:arith"]["accuracy"] > 0.5  # the API teacher, through eval math
    summary = json.loads(next((run / "eval" / "teacher_embedded" / "arith").glob("*_summary.json")).read_text())
    assert summary.get("preset") in (None, "pipeline") and summary["temperature"] == 0.5

    # a rerun: every stage done, nothing runs
    assert _cli("pipeline", config, *sets) == 0
    again = json.loads(capsys.readouterr().out)
    assert all(v.get("skipped") for k, v in again.items() if k != "total_wall_s")
    # a changed setting: refused, naming the stage and the key
    changed = [*sets, "--set", "grpo.train.learning_rate=1e-4"]
    assert _cli("pipeline", config, *changed) == 1
    assert "grpo:embedded: its settings changed since it ran (train.learning_rate)" in capsys.readouterr().err
    # --rerun-changed: GRPO and what follows are redone; the old run is kept aside
    assert _cli("pipeline", config, *changed, "--rerun-changed", "--until", "grpo:embedded") == 0
    redo = json.loads(capsys.readouterr().out)
    assert redo["sft:embedded"].get("skipped") and not redo["grpo:embedded"].get("skipped")
    assert any((run / ".superseded").rglob("moving_average.png"))
    assert _cli("pipeline", config, *changed, "--status") == 0
    status = capsys.readouterr().out
    assert "grpo:embedded                            done" in status
    assert "eval:grpo_embedded:arith                 changed" in status  # its model changed: to redo
