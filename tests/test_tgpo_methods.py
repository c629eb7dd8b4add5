"""The methods of teacher_guided_policy_optimization.md (tgpo, tgpo_r and the baselines op_distill,
kdrl, grpo_pp): eq. (4)'s aggregation, the guidance NLL of eq. (3), TGPO_R's advantages of eq.
(5) and the KDRL regulariser against float64 references written here from raw model logits
(one unpadded forward per row), the annealing schedule, and a smoke run of each method."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_cmdp_methods import (acc, close, examples, f64, grads_close, make_ctx, make_micro,  # noqa: F401
                               ref_logits, rows_of, student, teacher)

from reasondistill import losses as L
from reasondistill.config import ConfigError, build_config
from reasondistill.methods import get_method

tgpo, tgpo_r, op_distill, kdrl, grpo_pp = (get_method(n) for n in ("tgpo", "tgpo_r", "op_distill", "kdrl", "grpo_pp"))
REWARDS = [1.0, 0.0, 1.0, 1.0]  # two groups of two: the second has no spread (advantages 0)


def group_adv(rewards, g=2):
    out = []
    for k in range(0, len(rewards), g):
        grp = rewards[k:k + g]
        mu = sum(grp) / g
        sd = math.sqrt(sum((r - mu) ** 2 for r in grp) / (g - 1))
        out += [(r - mu) / (sd + 1e-4) for r in grp]
    return out


def group_tokens_ref(per_row_tokens, g=2):
    """Eq. (4)'s aggregation by loops: per group sum of its tokens / its token count; mean over groups."""
    vals = []
    for k in range(0, len(per_row_tokens), g):
        grp = per_row_tokens[k:k + g]
        vals.append(sum(t.sum() for t in grp) / sum(len(t) for t in grp))
    return sum(vals) / len(vals)


# --------------------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------------------
def test_group_tokens_aggregation_matches_loops_and_splits_exactly():
    torch.manual_seed(0)
    x = torch.randn(6, 5, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0],
                         [0, 0, 0, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.float64)
    rows = [x[i][mask[i].bool()] for i in range(6)]
    want = group_tokens_ref(rows)
    norm = L.loss_normalizer("group_tokens", mask.sum(), 6, group_size=2)
    assert norm == 3
    got = L.aggregate_loss(x, mask, "group_tokens", norm, group_size=2)
    assert float(got) == pytest.approx(float(want), rel=1e-13)
    # micro-batches of whole groups add up to the full batch with the global normaliser
    parts = sum(L.aggregate_loss(x[s], mask[s], "group_tokens", norm, group_size=2) for s in (slice(0, 2), slice(2, 6)))
    assert float(parts) == pytest.approx(float(want), rel=1e-13)
    # it is not dapo (global token mean) nor grpo (mean of row means) on this batch
    assert float(L.aggregate_loss(x, mask, "dapo", mask.sum())) != pytest.approx(float(want), rel=1e-3)
    assert float(L.aggregate_loss(x, mask, "grpo", 6)) != pytest.approx(float(want), rel=1e-3)
    with pytest.raises(ValueError, match="groups of 4"):
        L.aggregate_loss(x, mask, "group_tokens", norm, group_size=4)


def test_group_tokens_surrogate_value_is_minus_group_token_mean_advantage():
    lp = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0, 0.5, 2.0], dtype=torch.float64)
    loss, _ = L.policy_gradient_loss(lp, lp.detach(), adv, mask, "group_tokens", group_size=2)
    want = group_tokens_ref([-adv[i].expand(int(mask[i].sum())) for i in range(4)])
    assert float(loss.detach()) == pytest.approx(float(want), rel=1e-13)
    with pytest.raises(ValueError, match="group_size"):
        L.policy_gradient_loss(lp, lp.detach(), adv, mask, "group_tokens")


def test_kl_estimate_by_hand():
    lp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -0.5])
    d = ref - lp  # (-0.5, 1.5)
    torch.testing.assert_close(L.kl_estimate(lp, ref, "k1"), -d)
    torch.testing.assert_close(L.kl_estimate(lp, ref, "k2"), torch.tensor([0.125, 1.125]))
    torch.testing.assert_close(L.kl_estimate(lp, ref, "k3"), d.exp() - d - 1)
    assert float(L.kl_estimate(lp, lp, "k3").abs().sum()) == 0.0
    with pytest.raises(ValueError):
        L.kl_estimate(lp, ref, "k4")


def test_linear_anneal_presets_reach_zero_where_the_paper_says():
    from reasondistill.methods.tgpo import SCHEDULES

    w, d = SCHEDULES["paper"]
    assert L.linear_anneal(0, w, d) == 2e-3 and L.linear_anneal(100, w, d) == pytest.approx(1e-3)
    assert L.linear_anneal(200, w, d) == pytest.approx(0.0, abs=1e-18) and L.linear_anneal(250, w, d) == 0.0
    w, d = SCHEDULES["continuous"]
    assert L.linear_anneal(299, w, d) > 0 and L.linear_anneal(300, w, d) == pytest.approx(0.0, abs=1e-18)
    assert L.linear_anneal(199, *SCHEDULES["aggressive"]) == pytest.approx(2e-2 - 199e-4)
    assert L.linear_anneal(10_000, *SCHEDULES["constant"]) == 2e-3


# --------------------------------------------------------------------------------------
# the methods against float64 references
# --------------------------------------------------------------------------------------
def _ref_parts(student, teacher, rows, temperature=1.0):
    """Per row: (log pi(a_t) with grad, log pi(argmax mu) with grad, argmax mu, log mu(a_t))."""
    s64, t64 = f64(student), f64(teacher)
    out = []
    for (p, c), s, t in zip(rows, ref_logits(s64, rows), ref_logits(t64, rows)):
        ls = torch.log_softmax(s / temperature, -1)
        target = t.argmax(-1)
        idx = torch.arange(len(c))
        out.append((ls[idx, torch.tensor(c)], ls[idx, target], target,
                    torch.log_softmax(t / temperature, -1)[idx, torch.tensor(c)].detach()))
    return s64, out


@pytest.mark.parametrize("w", [0.0, 0.3])
def test_tgpo_loss_and_gradient_match_eq_4_plus_w_eq_3(tokenizer, acc, student, teacher, examples, w):
    import copy

    model = copy.deepcopy(student)
    ctx = make_ctx("tgpo", tokenizer, acc, model, teacher, advantage="sequence", schedule="custom", w_init=w)
    micro = make_micro(tokenizer, examples, REWARDS)
    rows = rows_of(micro.batch)
    loss, metrics = tgpo.loss(ctx, micro, {"tokens": float(micro.num_tokens), "rows": 4.0})
    loss.backward()
    s64, parts = _ref_parts(student, teacher, rows)
    adv = group_adv(REWARDS)
    pg = group_tokens_ref([-a * torch.exp(lp - lp.detach()) for a, (lp, *_ ) in zip(adv, parts)])
    guide = sum(-g.mean() for _, g, _, _ in parts) / len(parts)
    ref = pg + w * guide
    ref.backward()
    close(loss, ref, rel=1e-5, abs_=1e-7)
    grads_close(model, s64)
    assert metrics["tgpo/guidance_weight"] == w
    num, den = metrics["tgpo/guidance_nll"]
    assert num / den == pytest.approx(float(guide.detach()), rel=1e-5)
    num, den = metrics["tgpo/teacher_agreement"]
    same = sum(int((torch.tensor(c) == tgt).sum()) for (_, c), (_, _, tgt, _) in zip(rows, parts))
    assert (num, den) == (same, sum(len(c) for _, c in rows))


def test_tgpo_guidance_is_losses_tgpo_guidance_nll_and_never_reaches_the_teacher(tokenizer, acc, student, teacher,
                                                                                examples):
    """With zero advantages the loss is w x eq. (3), equal to the contract function on the
    models' logits; the teacher (even with requires_grad on) gets no gradient."""
    import copy

    model, t = copy.deepcopy(student), copy.deepcopy(teacher).requires_grad_(True)
    ctx = make_ctx("tgpo", tokenizer, acc, model, t, advantage="sequence", schedule="custom", w_init=1.0)
    micro = make_micro(tokenizer, examples, [1.0, 1.0, 0.0, 0.0])  # no spread: every advantage is 0
    loss, _ = tgpo.loss(ctx, micro, {"tokens": float(micro.num_tokens), "rows": 4.0})
    sig = ctx.signals(micro.batch)
    with torch.no_grad():
        want = L.tgpo_guidance_nll(sig.student_logits(), sig.teacher_argmax(), micro.batch.completion_mask)
    close(loss, want, rel=1e-6)
    loss.backward()
    assert all(p.grad is None for p in t.parameters())
    assert model.lm_head.weight.grad.abs().sum() > 0


def test_tgpo_r_advantages_are_eq_5(tokenizer, acc, student, teacher, examples):
    ctx = make_ctx("tgpo_r", tokenizer, acc, student, teacher, advantage="sequence", shaping_lambda=0.3)
    micro = make_micro(tokenizer, examples, REWARDS)
    with torch.no_grad():
        tgpo_r.loss(ctx, micro, {"tokens": float(micro.num_tokens), "rows": 4.0})
    _, parts = _ref_parts(student, teacher, rows_of(micro.batch))
    adv = micro.extras["advantages"].double()  # (N, C)
    mask = micro.batch.completion_mask.bool()
    for i, (a, (_, g, _, _)) in enumerate(zip(group_adv(REWARDS), parts)):
        torch.testing.assert_close(adv[i][mask[i]], a + 0.3 * g.detach(), rtol=1e-5, atol=1e-6)
        assert (adv[i][~mask[i]] == 0).all()


def test_tgpo_r_gradient_is_the_score_function_of_the_shaped_advantage(tokenizer, acc, student, teacher, examples):
    import copy

    model = copy.deepcopy(student)
    ctx = make_ctx("tgpo_r", tokenizer, acc, model, teacher, advantage="sequence", shaping_lambda=0.3)
    micro = make_micro(tokenizer, examples, REWARDS)
    loss, _ = tgpo_r.loss(ctx, micro, {"tokens": float(micro.num_tokens), "rows": 4.0})
    loss.backward()
    s64, parts = _ref_parts(student, teacher, rows_of(micro.batch))
    per_row = [-(a + 0.3 * g.detach()) * torch.exp(lp - lp.detach()) for a, (lp, g, _, _) in zip(group_adv(REWARDS), parts)]
    ref = group_tokens_ref(per_row)
    ref.backward()
    close(loss, ref, rel=1e-5, abs_=1e-7)
    grads_close(model, s64)


def test_op_distill_advantage_is_the_per_token_log_ratio(tokenizer, acc, student, teacher, examples):
    import copy

    model = copy.deepcopy(student)
    ctx = make_ctx("op_distill", tokenizer, acc, model, teacher, advantage="token", teacher_prob_floor=0.0)
    micro = make_micro(tokenizer, examples, REWARDS)
    loss, _ = op_distill.loss(ctx, micro, {"tokens": float(micro.num_tokens), "rows": 4.0})
    loss.backward()
    s64, parts = _ref_parts(student, teacher, rows_of(micro.batch))
    mask = micro.batch.completion_mask.bool()
    adv = micro.extras["advantages"].double()
    for i, (lp, _, _, lt) in enumerate(parts):  # no group normalisation: the raw log mu - log pi
        torch.testing.assert_close(adv[i][mask[i]], lt - lp.detach(), rtol=1e-5, atol=1e-6)
    ref = group_tokens_ref([-(lt - lp.detach()) * torch.exp(lp - lp.detach()) for lp, _, _, lt in parts])
    ref.backward()
    close(loss, ref, rel=1e-5, abs_=1e-7)
    grads_close(model, s64)


@pytest.mark.parametrize("est", ["k2", "k3"])
def test_kdrl_is_grpo_plus_the_reverse_kl_estimate(tokenizer, acc, student, teacher, examples, est):
    import copy

    model = copy.deepcopy(student)
    ctx = make_ctx("kdrl", tokenizer, acc, model, teacher, advantage="sequence", kd_coef=0.5, kl_estimator=est,
                   teacher_prob_floor=0.0)
    micro = make_micro(tokenizer, examples, REWARDS)
    loss, _ = kdrl.loss(ctx, micro, {"tokens": float(micro.num_tokens), "rows": 4.0})
    loss.backward()
    s64, parts = _ref_parts(student, teacher, rows_of(micro.batch))

    def k(lp, lt):
        d = lt - lp
        return 0.5 * d * d if est == "k2" else d.exp() - d - 1

    per_row = [-a * torch.exp(lp - lp.detach()) + 0.5 * k(lp, lt) for a, (lp, _, _, lt) in zip(group_adv(REWARDS), parts)]
    ref = group_tokens_ref(per_row)
    ref.backward()
    close(loss, ref, rel=1e-5, abs_=1e-7)
    grads_close(model, s64)


# --------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------
def test_schedule_presets_and_custom():
    cfg = build_config(tgpo.Config, overrides=dict(schedule="paper"))
    assert (cfg.w_init, cfg.decay) == (2e-3, 1e-5)
    cfg = build_config(tgpo.Config, overrides=dict(schedule="custom", w_init=0.1, decay=1e-3))
    assert (cfg.w_init, cfg.decay) == (0.1, 1e-3)
    with pytest.raises(ConfigError, match="schedule=custom"):
        build_config(tgpo.Config, overrides=dict(schedule="paper", w_init=0.5))
    with pytest.raises(ConfigError, match="schedule must be"):
        build_config(tgpo.Config, overrides=dict(schedule="cosine"))
    with pytest.raises(ConfigError, match="beta"):
        build_config(tgpo.Config, overrides=dict(beta=0.1))
    pp = build_config(grpo_pp.Config, overrides={})
    assert (pp.loss_type, pp.epsilon_high, pp.beta, pp.teacher) == ("group_tokens", 0.28, 0.0, None)


# --------------------------------------------------------------------------------------
# smoke: every method trains end to end; the dynamics the paper plots are logged every step
# --------------------------------------------------------------------------------------
DYNAMICS = ("reward/task_mean", "completions/mean_length", "completions/max_length", "completions/truncated_share",
            "grad_norm", "policy/entropy", "pg/clip_ratio")


def _train(name, tiny_models, out, **kw):
    from reasondistill.engine import train

    cfg = build_config(get_method(name).Config, overrides={**dict(
        student=str(tiny_models / "student"), teacher=str(tiny_models / "teacher"), output_dir=str(out),
        max_steps=2, per_device_train_batch_size=2, num_generations=2, max_completion_length=8,
        dataset="arith:size=50", report_to="none", progress=False, device="cpu", learning_rate=1e-3), **kw})
    return train(get_method(name), cfg)


@pytest.mark.parametrize("name,kw", [("tgpo", dict(schedule="paper")), ("tgpo_r", {}), ("op_distill", {}),
                                     ("kdrl", {}), ("grpo_pp", dict(teacher="none"))])
def test_method_smoke(tiny_models, tmp_path, name, kw):
    result = _train(name, tiny_models, tmp_path / "run", **kw)
    assert result["steps"] == 2 and (tmp_path / "run" / "final" / "model.safetensors").exists()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) for r in rows)
    for key in DYNAMICS:
        assert all(key in r for r in rows), key
    assert all(r["completions/max_length"] >= r["completions/mean_length"] for r in rows)
    if name == "tgpo":
        assert [r["tgpo/guidance_weight"] for r in rows] == [2e-3, pytest.approx(2e-3 - 1e-5)]


def test_tgpo_resume_continues_the_schedule(tiny_models, tmp_path):
    kw = dict(schedule="custom", w_init=0.5, decay=0.1, max_steps=4, save_steps=2)
    _train("tgpo", tiny_models, tmp_path / "a", **kw)

    def stop(ctx, step, metrics):
        if step == 2:
            raise KeyboardInterrupt

    from reasondistill.engine import train

    cfg = build_config(tgpo.Config, overrides=dict(
        student=str(tiny_models / "student"), teacher=str(tiny_models / "teacher"), output_dir=str(tmp_path / "b"),
        per_device_train_batch_size=2, num_generations=2, max_completion_length=8, dataset="arith:size=50",
        report_to="none", progress=False, device="cpu", learning_rate=1e-3, **kw))
    with pytest.raises(KeyboardInterrupt):
        train(tgpo, cfg, callback=stop)
    train(tgpo, build_config(tgpo.Config, overrides={**cfg.__dict__, "resume": True}))
    a = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["tgpo/guidance_weight"] for r in b] == [r["tgpo/guidance_weight"] for r in a]
    assert [r["tgpo/guidance_weight"] for r in a] == pytest.approx([0.5, 0.4, 0.3, 0.2])
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], rel=1e-5)


# --------------------------------------------------------------------------------------
# the paper's prompt (Appendix B.2) and model config overrides (Appendix B.1)
# --------------------------------------------------------------------------------------
def test_prompt_template_by_name_or_file(tmp_path):
    from reasondistill.models import TGPO_PROMPT_TEMPLATE

    cfg = build_config(tgpo.Config, overrides=dict(prompt_template="tgpo"))
    assert cfg.prompt_template == TGPO_PROMPT_TEMPLATE
    assert TGPO_PROMPT_TEMPLATE.startswith("Your task is to follow a systematic, thorough reasoning process")
    assert TGPO_PROMPT_TEMPLATE.endswith("\n\nUser: {question}\n\nAssistant: <think>")
    f = tmp_path / "mine.txt"
    f.write_text("Q: {question}\nA:\n")
    assert build_config(tgpo.Config, overrides=dict(prompt_template=str(f))).prompt_template == "Q: {question}\nA:"
    with pytest.raises(ConfigError, match="not found"):
        build_config(tgpo.Config, overrides=dict(prompt_template=str(tmp_path / "missing.txt")))
    with pytest.raises(ConfigError, match="question"):
        build_config(tgpo.Config, overrides=dict(prompt_template="no placeholder"))


def test_student_config_overrides_reach_the_loaded_student(tiny_models, tmp_path):
    from reasondistill.engine import build_context
    from reasondistill.methods.base import as_method

    cfg = build_config(tgpo.Config, overrides=dict(
        student=str(tiny_models / "student"), teacher=str(tiny_models / "teacher"), output_dir=str(tmp_path),
        report_to="none", device="cpu", student_config_overrides="rope_theta=40000,max_position_embeddings=1024"))
    ctx = build_context(as_method(tgpo), cfg)
    c = ctx.model.lm.config
    rope = getattr(c, "rope_parameters", None) or {}
    assert (rope.get("rope_theta", getattr(c, "rope_theta", None)), c.max_position_embeddings) == (40000.0, 1024)
    t = ctx.teacher.config  # the teacher keeps its own
    assert (t.rope_parameters or {}).get("rope_theta", getattr(t, "rope_theta", None)) != 40000.0
    with pytest.raises(ConfigError, match="key=value"):
        build_config(tgpo.Config, overrides=dict(student_config_overrides="rope_theta"))
    bad = build_config(tgpo.Config, overrides=dict(student=str(tiny_models / "student"), device="cpu",
                                                   student_config_overrides="rope_thetta=1", report_to="none",
                                                   output_dir=str(tmp_path / "b")))
    with pytest.raises(ValueError, match="did you mean"):
        build_context(as_method(tgpo), bad)


# --------------------------------------------------------------------------------------
# LUFFY: the mixed group and its off-policy term
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("ratio", ["teacher", "one"])
def test_luffy_loss_matches_the_mixed_policy_reference(tokenizer, acc, student, teacher, examples, ratio, tmp_path):
    import copy

    luffy = get_method("luffy")
    model = copy.deepcopy(student)
    ctx = make_ctx("luffy", tokenizer, acc, model, teacher, advantage="sequence", traces=str(tmp_path / "t.jsonl"),
                   off_policy_ratio=ratio, teacher_prob_floor=0.0)
    rewards = [0.0, 1.0, 1.0, 1.0]  # rows 1 and 3 are the groups' teacher traces
    micro = make_micro(tokenizer, examples, rewards)
    micro.extras["off_policy"] = torch.tensor([False, True, False, True])
    loss, metrics = luffy.loss(ctx, micro, {"tokens": float(micro.num_tokens), "rows": 4.0})
    loss.backward()
    s64, parts = _ref_parts(student, teacher, rows_of(micro.batch))
    adv = group_adv(rewards)
    per_row = []
    for i, (a, (lp, _, _, lt)) in enumerate(zip(adv, parts)):
        if i % 2:  # off-policy: f(x) = x / (x + 0.1), x = pi / pi_phi, no clipping
            x = torch.exp(lp - (lt if ratio == "teacher" else 0.0))
            per_row.append(-(x / (x + 0.1)) * a)
        else:
            per_row.append(-a * torch.exp(lp - lp.detach()))
    ref = group_tokens_ref(per_row)
    ref.backward()
    close(loss, ref, rel=1e-5, abs_=1e-7)
    grads_close(model, s64)
    num, den = metrics["luffy/student_reward"]
    assert (num, den) == (1.0, 2.0)


def test_luffy_groups_hold_the_teacher_trace_last(tiny_models, tmp_path):
    from reasondistill.tasks import arith

    recs = arith.generate("train", 6, seed=0)
    traces = tmp_path / "traces.jsonl"
    traces.write_text("".join(json.dumps({"question": r["question"], "answer": r["answer"], "solution": r["solution"]})
                              + "\n" for r in recs))
    result = _train("luffy", tiny_models, tmp_path / "run", traces=str(traces), dataset=str(traces),
                    num_generations=3, max_completion_length=64)
    assert result["steps"] == 2
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["luffy/teacher_reward"] == 1.0 for r in rows)  # the embedded task's own worked solutions
    with pytest.raises(ConfigError, match="teacher-traces"):
        build_config(get_method("luffy").Config, overrides={})
    with pytest.raises(ConfigError, match="no teacher trace"):
        _train("luffy", tiny_models, tmp_path / "run2", traces=str(traces), dataset="arith:size=50")


def test_paper_config_loads():
    from pathlib import Path

    from reasondistill.models import TGPO_PROMPT_TEMPLATE, parse_config_overrides

    cfg = build_config(tgpo.Config, Path(__file__).parent.parent / "configs" / "tgpo_qwen25_math.yaml")
    assert (cfg.w_init, cfg.decay, cfg.num_generations, cfg.learning_rate, cfg.max_steps) == (2e-3, 1e-5, 8, 1e-6, 300)
    assert cfg.prompt_template == TGPO_PROMPT_TEMPLATE and cfg.tokenizer_compat == "shared_ids"
    assert parse_config_overrides(cfg.student_config_overrides) == {"rope_theta": 40000,
                                                                   "max_position_embeddings": 16384}


def test_teacher_traces_keep_verified_answers_only(tmp_path, tiny_models):
    """The shipped teacher's verified answers are written (question, answer, solution) and the
    file is the SFT/LUFFY data; a random tiny teacher answers nothing right, so nothing is kept."""
    from reasondistill.pipelines.teacher_traces import write_teacher_traces
    from reasondistill.rewards import accuracy_reward

    out = tmp_path / "traces.jsonl"
    counts = write_teacher_traces("embedded:teacher", "arith:size=12", out, max_new_tokens=64, progress=False)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert counts["questions"] == 12 and counts["kept"] == len(rows) >= 10 and counts["dropped"] == 12 - len(rows)
    assert accuracy_reward([r["solution"] for r in rows], answer=[r["answer"] for r in rows]) == [1.0] * len(rows)
    assert not (tmp_path / "traces.jsonl.partial").exists()
    cfg = build_config(get_method("sft").Config, overrides=dict(dataset=str(out), teacher="none"))
    from reasondistill.data.train import load_records

    assert [r["solution"] for r in load_records(cfg.dataset, cfg)] == [r["solution"] for r in rows]
    bad = write_teacher_traces(str(tiny_models / "teacher"), "arith:size=4", tmp_path / "none.jsonl",
                               max_new_tokens=8, progress=False)
    assert bad["kept"] == 0 and (tmp_path / "none.jsonl").read_text() == ""


def test_teacher_stop_tokens_guide_toward_the_student_eos():
    """A cross-family teacher's own EOS in its argmax becomes the student's EOS (map_teacher_stop),
    or the guidance would teach a stop token that never stops the student."""
    from types import SimpleNamespace

    from reasondistill.methods.tgpo import guidance_targets

    argmax = torch.tensor([[5, 0, 7], [0, 0, 3]])
    fake_pass = SimpleNamespace(teacher_argmax=lambda: argmax.clone())

    def ctx(mapping, stops):
        return SimpleNamespace(cfg=SimpleNamespace(map_teacher_stop=mapping), teacher_stop_ids=stops,
                               tokenizer=SimpleNamespace(eos_token_id=2))

    assert guidance_targets(ctx(True, [0]), fake_pass).tolist() == [[5, 2, 7], [2, 2, 3]]
    assert guidance_targets(ctx(False, [0]), fake_pass).tolist() == argmax.tolist()
    assert guidance_targets(ctx(True, [2]), fake_pass).tolist() == argmax.tolist()  # same EOS: nothing to map
    assert guidance_targets(ctx(True, None), fake_pass).tolist() == argmax.tolist()
