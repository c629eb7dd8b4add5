"""The pipeline paper's hybrid reward (sft_then_grpo_api_teachers.md §3.4) and the GRPO stage's
KL reference: the tag format score, the three-way local check, the Box 5 judge asked only for
undecided answers (batched, cached by content, over the real API path against the rule judge
server on 127.0.0.1), the SFT model's format reward above 0 after a tiny SFT run in the Box 3
format, and the reference of GRPO-after-LoRA-SFT being the merged SFT model, never the base."""

from __future__ import annotations

import pytest
import torch

from reasondistill.api.answer_judge import AnswerJudge
from reasondistill.rewards import (hybrid_rewards, local_check, parse_binary_verdict, tag_format_reward,
                                   tagged_answer)


@pytest.mark.parametrize("text, pair, any_", [
    ("<think>1+2=3</think>\n<answer>3</answer>", 1.0, 1.0),
    ("<think>1+2=3</think> so 3", 0.5, 0.5),
    ("1+2=3 <answer>3</answer>", 0.5, 0.5),
    ("1+2=3\n\\boxed{3}", 0.0, 0.0),
    ("<think>1+2=3 <answer>3</answer>", 0.5, 1.0),  # an unclosed think: one tag by pairs, both by any tag
    ("</think><answer>3", 0.0, 1.0),
    ("<THINK>a</THINK><Answer>3</Answer>", 1.0, 1.0),
])
def test_tag_format_reward(text, pair, any_):
    assert tag_format_reward(text) == pair
    assert tag_format_reward(text, "any") == any_


def test_tagged_answer_and_local_check():
    assert tagged_answer("<think>x</think><answer> 12 </answer>") == "12"
    assert tagged_answer("<answer>\\boxed{7}</answer>") == "7"
    assert tagged_answer("1+2=3\n\\boxed{3}") == "3"  # no tags: the answer as rewards.extract_answer finds it
    assert tagged_answer("no answer here") is None
    assert local_check("3", "3") is True
    assert local_check("3.0", "3") is True
    assert local_check("4", "3") is False  # two numbers that differ: decided
    assert local_check(None, "3") is False and local_check("  ", "3") is False
    assert local_check("B", "A") is False  # a multiple-choice letter: decided
    assert local_check("five", "5") is None  # words vs a number: undecided, the judge's case
    assert local_check("x+1", "3") is None


def test_parse_binary_verdict():
    assert [parse_binary_verdict(t) for t in ("1", " 0\n", "'1'", "1.", "Score: 0.", "I think 1", "none", None)] == \
        [1, 0, 1, 1, 0, 1, None, None]
    assert parse_binary_verdict("10") is None and parse_binary_verdict("0.5") is None


@pytest.fixture()
def rule_judge():
    from reasondistill.pipelines.api_pipeline import RuleJudgeServer

    srv = RuleJudgeServer(model_name="rule").start()
    seen = []
    inner = srv.chat_completion

    def counting(request):
        seen.append(request["messages"][-1]["content"])
        return inner(request)

    srv.chat_completion = counting
    yield srv, seen
    srv.stop()


def test_hybrid_reward_judges_only_undecided_answers_batched_and_cached(rule_judge, tmp_path):
    srv, seen = rule_judge
    cache = tmp_path / "cache.jsonl"
    judge = AnswerJudge(srv.url, "rule", cache_path=str(cache), concurrency=2)
    outs = ["<think>2+3=5</think><answer>5</answer>",  # correct, both tags: 0.8 + 0.2
            "<think>2+3=6</think><answer>6</answer>",  # wrong number: decided locally, 0.2
            "<answer>5 apples</answer>",  # units: the local rules read 5 -> correct, one tag: 0.8 + 0.1
            "<answer>five</answer>",  # undecided -> the judge (rule judge says 0 for "five" vs 5)
            "<answer>five</answer>",  # the same content: one request for both
            "<think>x</think><answer>x+1</answer>",  # undecided
            "no tags, no answer"]  # nothing found: 0, decided
    golds, qs = ["5"] * 7, ["What is 2+3?"] * 7
    rewards, info = hybrid_rewards(outs, golds, qs, judge)
    assert rewards == pytest.approx([1.0, 0.2, 0.9, 0.1, 0.1, 0.2, 0.0])
    assert info["undecided"] == 3 and info["judge_failed"] == 0
    assert len(seen) == 2 and judge.stats["requests"] == 2  # only the two distinct undecided answers
    assert all("Reference answer: 5" in p and "Student answer (from <answer> tags):" in p for p in seen)
    assert "Respond ONLY with: 1 or 0" in seen[0]  # Box 5, the packaged template
    hybrid_rewards(outs, golds, qs, judge)
    assert len(seen) == 2 and judge.stats["cache_hits"] == 3  # cached by content: nothing asked again
    judge.close()
    again = AnswerJudge(srv.url, "rule", cache_path=str(cache))  # a resumed run reads the cache file
    assert hybrid_rewards(outs, golds, qs, again)[0] == rewards and len(seen) == 2
    again.close()
    # without a judge (or when it fails) an undecided answer scores 0 and is counted
    r, info = hybrid_rewards(outs[3:4], ["5"], qs[:1], None, correctness_weight=0.8, format_weight=0.2)
    assert r == [pytest.approx(0.1)] and info["judge_failed"] == 1


def test_judge_failure_scores_zero_and_is_not_cached(tmp_path):
    judge = AnswerJudge("http://127.0.0.1:9/v1", "nobody", max_retries=0, timeout=2)  # nothing listens on port 9
    r, info = hybrid_rewards(["<answer>five</answer>"], ["5"], ["q"], judge)
    assert r == [pytest.approx(0.1)] and info["judge_failed"] == 1 and not judge.cache
    judge.close()


def test_hybrid_config_keys_are_validated():
    from reasondistill.config import ConfigError, build_config
    from reasondistill.methods import get_method

    cls = get_method("grpo").Config
    cfg = build_config(cls, None, {"reward": "hybrid", "correctness_weight": 0.8, "format_weight": 0.2})
    assert cfg.reward == "hybrid" and cfg.judge_base_url is None  # no judge: undecided answers score 0
    for bad in ({"reward": "judge"}, {"reward": "hybrid", "judge_model": "m"}, {"tag_format_mode": "loose"}):
        with pytest.raises(ConfigError):
            build_config(cls, None, bad)


# --------------------------------------------------------------------------------------------
# SFT in the Box 3 format, then GRPO's reference
# --------------------------------------------------------------------------------------------
def _format_records(n: int, seed: int = 0):
    from reasondistill.pipelines.api_pipeline import load_sft_template, render_sft_record
    from reasondistill.tasks.arith import DatasetSpec

    tmpl = load_sft_template("pipeline_sft_plain")
    out = []
    for i, r in enumerate(DatasetSpec.parse(f"arith:size={n}").records(seed=seed)):
        lines = r["solution"].splitlines()  # the teacher's format: steps, then \boxed{N}
        trace = {"id": f"q{i}", "question": r["question"], "final_answer": r["answer"],
                 "reasoning": "\n".join(lines[:-1]), "generated_answer": r["answer"], "source": "arith"}
        out.append(render_sft_record(trace, tmpl))
    return out


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    """A tiny LoRA SFT run (the pipeline's LoRA settings, the tiny models' learning rate) on
    traces in the <think>/<answer> format."""
    from reasondistill.config import build_config
    from reasondistill.engine import train
    from reasondistill.methods import get_method

    out = tmp_path_factory.mktemp("sft") / "run"
    sft = get_method("sft")
    cfg = build_config(sft.Config, None, {
        "student": "embedded:student", "teacher": None, "use_peft": True, "lora_r": 32, "lora_alpha": 64,
        "lora_dropout": 0.05, "learning_rate": 5e-3, "warmup_ratio": 0.05, "weight_decay": 0.01,
        "lora_target_modules": "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,lm_head",  # as the embedded config
        "per_device_train_batch_size": 16, "max_steps": 60, "max_completion_length": 96, "max_prompt_length": 64,
        "output_dir": str(out), "report_to": "none", "progress": False})
    train(sft, cfg, records=_format_records(640))
    return out / "final"


def _greedy_texts(model_path, questions, tokenizer=None):
    from reasondistill.models import encode_prompts, load_model, load_tokenizer, render_prompt, resolve_model
    from reasondistill.rollout import generate

    path = resolve_model(str(model_path))
    tok = tokenizer or load_tokenizer(path)
    model = load_model(path).eval()
    ids = encode_prompts(tok, [render_prompt(tok, q) for q in questions])
    with torch.no_grad():
        r = generate(model, tok, ids, num_generations=1, max_new_tokens=96, do_sample=False)
    return r.texts(tok)


def test_sft_model_format_reward_starts_above_zero(sft_run):
    from reasondistill.tasks.arith import DatasetSpec

    questions = [r["question"] for r in DatasetSpec.parse("arith:size=24").records(seed=5, split="test")]
    base = [tag_format_reward(t) for t in _greedy_texts("embedded:student", questions)]
    tuned = _greedy_texts(sft_run, questions)
    after = [tag_format_reward(t) for t in tuned]
    assert sum(base) == 0.0  # the shipped student writes \boxed{} answers, no tags
    assert sum(after) / len(after) > 0.5, tuned[:3]  # the SFT model starts GRPO with a format reward above 0


def test_grpo_reference_is_the_merged_sft_model_never_the_base(sft_run):
    """GRPO with LoRA on the SFT adapter folder: the folder loads merged, a new adapter trains on
    top, and the beta-KL reference (adapter disabled) is the merged SFT model (TRL #3194)."""
    from reasondistill.config import build_config
    from reasondistill.engine import build_context
    from reasondistill.methods import get_method
    from reasondistill.methods.onpolicy import reference_logp
    from reasondistill.models import load_model, resolve_model
    from reasondistill.rollout import generate

    grpo = get_method("grpo")
    cfg = build_config(grpo.Config, None, {"student": str(sft_run), "use_peft": True, "lora_r": 32, "lora_alpha": 64,
                                           "beta": 0.1, "num_generations": 3, "per_device_train_batch_size": 1,
                                           "max_completion_length": 32, "report_to": "none", "device": "cpu"})
    ctx = build_context(grpo, cfg)
    grpo.setup(ctx)
    torch.manual_seed(0)
    for name, p in ctx.policy.named_parameters():  # move the new adapter away from zero, as training does
        if "lora_B" in name:
            p.data.normal_(0, 0.05)
    with torch.no_grad():
        batch = generate(ctx.policy, ctx.tokenizer, ctx.prompt_ids(["What is 1+2+3+4?", "What is 9-3+2-1?"]),
                         num_generations=3, max_new_tokens=32, temperature=1.0, generator=ctx.generator)
        ref = reference_logp(ctx, batch)
        mask = batch.completion_mask.bool()
        sft = load_model(resolve_model(str(sft_run))).eval()
        base = load_model(resolve_model("embedded:student")).eval()
        sft_lp = ctx.signals(batch, temperature=cfg.temperature, student=sft).student_logp()
        base_lp = ctx.signals(batch, temperature=cfg.temperature, student=base).student_logp()
        pol_lp = ctx.signals(batch, temperature=cfg.temperature, student=ctx.policy).student_logp()
    assert torch.allclose(ref[mask], sft_lp[mask], atol=1e-5)
    assert (ref[mask] - base_lp[mask]).abs().max() > 1e-2
    assert (ref[mask] - pol_lp[mask]).abs().max() > 1e-4  # the trained adapter is off in the reference only
