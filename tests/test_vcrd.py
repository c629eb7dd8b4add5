"""VCRD (methods/vcrd.py) and its presets/baselines: the weights of eq. (1) under both prefixes
and all three proposal modes against hand-computed cases; every loss and switch against a
float64 reference of eqs. (2)-(4) written here from raw model logits (one unpadded forward per
row); the prepared-rollout cache refusing a changed model or tokenizer; each method's smoke test
through the engine; the shipped configs load."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

from reasondistill import engine
from reasondistill.config import build_config
from reasondistill.methods import get_method
from reasondistill.data import rollouts as prep
from reasondistill.tasks import arith

vcrd = get_method("vcrd")
EPS = 1e-8


def r_of(a: int) -> float:
    """The fake judge's score of a candidate: a fixed function of the token id, in (0, 1]."""
    return ((a * 37) % 11 + 1) / 12


class FakeJudge:
    name = "fake"

    def score(self, queries):
        return [torch.tensor([r_of(a) for a in q.candidates]) for q in queries]


@pytest.fixture(scope="module")
def acc():
    from accelerate import Accelerator

    return Accelerator(cpu=True)


@pytest.fixture(scope="module")
def models(tokenizer, make_model):
    s = make_model(len(tokenizer), seed=0, hidden_size=32, num_hidden_layers=1,
                   eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    t = make_model(len(tokenizer), seed=1, hidden_size=32, num_hidden_layers=1,
                   eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        s.lm_head.weight.mul_(8.0)
        t.lm_head.weight.mul_(4.0)
    return s, t.requires_grad_(False).eval()


@pytest.fixture(scope="module")
def examples(tokenizer):
    probs = arith.generate("train", 3, seed=5, spec=arith.TaskSpec(min_terms=2, max_terms=5))
    g = random.Random(0)
    rows = {}
    for p in probs:  # rollouts of different lengths: the solution (teacher) and a random string (student)
        ids = tokenizer(p["solution"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        other = [g.randrange(3, len(tokenizer)) for _ in range(g.randrange(3, 12))] + [tokenizer.eos_token_id]
        rows[p["id"]] = {"id": p["id"], "teacher_ids": ids, "teacher_truncated": False, "student_ids": other,
                         "student_truncated": False}
    return probs, rows


def make_ctx(tokenizer, acc, models, rows, judge_obj=None, **over):
    from reasondistill.signals import StudentModule

    base = dict(max_prompt_length=64, max_completion_length=64, device="cpu", report_to="none", judge="arith")
    cfg = build_config(vcrd.Config, overrides={**base, **over})
    ctx = engine.Context(cfg=cfg, accelerator=acc, model=StudentModule(models[0]), tokenizer=tokenizer,
                         teacher=models[1], shared_vocab=len(tokenizer), generator=torch.Generator().manual_seed(0),
                         rng=random.Random(0))
    ctx.extras["rollouts"] = rows
    ctx.extras["judge"] = judge_obj or FakeJudge()
    return ctx


def raw_logits(model, prompt, completion, grad=False):
    """(len(completion), V) float64 logits predicting each completion token: one unpadded forward."""
    with torch.enable_grad() if grad else torch.no_grad():
        out = model(input_ids=torch.tensor([prompt + completion])).logits[0].double()
    return out[len(prompt) - 1: len(prompt) + len(completion) - 1]


def skl_ref(s_logits, t_logits, alpha):
    p, q = torch.softmax(t_logits, -1), torch.softmax(s_logits, -1)
    return (p * (p.log() - (alpha * p + (1 - alpha) * q).log())).sum(-1)


def srkl_ref(s_logits, t_logits, alpha):
    p, q = torch.softmax(t_logits, -1), torch.softmax(s_logits, -1)
    return (q * (q.log() - ((1 - alpha) * p + alpha * q).log())).sum(-1)


def ref_weight(r_s, r_t, cfg):
    if cfg.weights == "constant":
        return 1.0
    w = {"ratio": r_s / (r_t + EPS), "student_only": r_s, "difference": r_s - r_t}[cfg.weighting]
    w = {"keep": w, "cap": min(w, 1.0), "uniform": 1.0}[cfg.amplification]
    return min(w, cfg.weight_clip) if cfg.weight_clip else w


def reference_loss(ctx, examples, rows, sampled=None):
    """Eqs. (1)-(4) and Algorithm 1 line 25 in float64 with Python loops over rows and tokens."""
    cfg = ctx.cfg
    student, teacher = ctx.policy, ctx.teacher
    prompts = ctx.prompt_ids([e["question"] for e in examples])
    kinds = [k for k, lam in (("teacher", cfg.lambda_teacher), ("student", cfg.lambda_student)) if lam > 0]
    tokens = sum(len(rows[e["id"]][f"{k}_ids"]) for e in examples for k in kinds)
    norm = tokens if cfg.normalize == "tokens" else len(examples)
    total = 0.0
    for i, e in enumerate(examples):
        r = rows[e["id"]]
        for kind, lam in (("teacher", cfg.lambda_teacher), ("student", cfg.lambda_student)):
            if not lam:
                continue
            own = r[f"{kind}_ids"]
            other_roll = r["student_ids" if kind == "teacher" else "teacher_ids"]
            s_log, t_log = raw_logits(student, prompts[i], own, grad=True), raw_logits(teacher, prompts[i], own)
            d = skl_ref(s_log, t_log, cfg.alpha) if kind == "teacher" else srkl_ref(s_log, t_log, cfg.alpha)
            for t, tok in enumerate(own):
                if cfg.proposal == "greedy":
                    other = int((s_log.detach() if kind == "teacher" else t_log)[t].argmax())
                elif cfg.proposal == "aligned":
                    other = other_roll[t] if t < len(other_roll) else ctx.tokenizer.eos_token_id
                else:
                    other = int(sampled[kind][i, t])
                r_s, r_t = (r_of(other), r_of(tok)) if kind == "teacher" else (r_of(tok), r_of(other))
                total = total + lam * ref_weight(r_s, r_t, cfg) * d[t]
    return total / norm


SWITCHES = [dict(), dict(proposal="aligned"), dict(proposal="sample"), dict(weights="constant"),
            dict(lambda_student=0.0), dict(lambda_teacher=0.0), dict(lambda_teacher=0.0, weights="constant"),
            dict(weighting="student_only"), dict(weighting="difference"), dict(amplification="cap"),
            dict(amplification="uniform"), dict(weight_clip=1.5), dict(normalize="tokens"),
            dict(lambda_teacher=2.0, lambda_student=1.5, alpha=0.3), dict(loss_chunk_size=3)]


@pytest.mark.parametrize("over", SWITCHES, ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()) or "default")
def test_loss_matches_float64_reference(tokenizer, acc, models, examples, over):
    probs, rows = examples
    ctx = make_ctx(tokenizer, acc, models, rows, **over)
    micro = vcrd.prepare(ctx, probs)
    totals = {"tokens": micro.num_tokens, "rows": micro.num_rows}
    sampled = None
    if over.get("proposal") == "sample":  # the same draws: the method's own proposals, same generator seed
        sampled = {}
        for kind in ("teacher", "student"):
            b = micro.extras["parts"][kind]
            sampled[kind] = vcrd.proposals(ctx, ctx.signals(b), b, kind, micro.extras["other_ids"][kind])
        ctx.generator.manual_seed(0)
        for kind in ("teacher", "student"):
            mask = micro.extras["parts"][kind].completion_mask.bool()
            assert ((sampled[kind] >= 0) & (sampled[kind] < len(tokenizer)))[mask].all()
    got, metrics = vcrd.loss(ctx, micro, totals)
    ref = reference_loss(ctx, probs, rows, sampled)
    assert float(got) == pytest.approx(ref.item(), rel=1e-4, abs=1e-7)
    params = [p for p in ctx.policy.parameters() if p.requires_grad]
    g_got = torch.autograd.grad(got, params, allow_unused=True)
    g_ref = torch.autograd.grad(ref, params, allow_unused=True)
    for a, b in zip(g_got, g_ref):  # the gradient of every part, not only the value
        if b is not None:
            assert a is not None and torch.allclose(a.double(), b.double(), rtol=1e-3, atol=1e-6)
    # the weights are reused when num_iterations re-uses the micro-batch
    again, _ = vcrd.loss(ctx, micro, totals)
    assert float(again) == pytest.approx(float(got), rel=1e-6)
    if over.get("weights") != "constant":
        for kind in micro.extras["parts"]:
            shares = [metrics[f"vcrd/{kind}_prefix/{r}_share"] for r in ("attenuation", "parity", "amplification")]
            assert sum(s[0] for s in shares) == shares[0][1] > 0


def test_weights_hand_computed_aligned(tokenizer, acc, models):
    """A two-prompt case written out by hand: proposal=aligned, scores r(a) = r_of(a)."""
    e = arith.generate("train", 2, seed=9)
    rows = {e[0]["id"]: {"teacher_ids": [10, 20, 2], "teacher_truncated": False, "student_ids": [30, 2],
                         "student_truncated": False},
            e[1]["id"]: {"teacher_ids": [40, 2], "teacher_truncated": False, "student_ids": [50, 60, 70, 2],
                         "student_truncated": False}}
    ctx = make_ctx(tokenizer, acc, models, rows, proposal="aligned")
    micro = vcrd.prepare(ctx, e)
    got = {}
    for kind in ("teacher", "student"):
        b = micro.extras["parts"][kind]
        got[kind], _ = vcrd.token_weights(ctx, ctx.signals(b), b, kind, micro)
    r = r_of
    # teacher prefix: w = r(student's aligned token) / (r(teacher token) + eps); past y^S's end: EOS (2)
    wt = [[r(30) / (r(10) + EPS), r(2) / (r(20) + EPS), r(2) / (r(2) + EPS)], [r(50) / (r(40) + EPS), r(60) / (r(2) + EPS)]]
    # student prefix: w = r(student token) / (r(teacher's aligned token) + eps)
    ws = [[r(30) / (r(10) + EPS), r(2) / (r(20) + EPS)],
          [r(50) / (r(40) + EPS), r(60) / (r(2) + EPS), r(70) / (r(2) + EPS), r(2) / (r(2) + EPS)]]
    for kind, want in (("teacher", wt), ("student", ws)):
        for i, row in enumerate(want):
            assert got[kind][i, :len(row)].tolist() == pytest.approx(row, rel=1e-6)
            assert got[kind][i, len(row):].abs().sum() == 0


def test_weights_greedy_is_the_other_models_argmax(tokenizer, acc, models, examples):
    probs, rows = examples
    ctx = make_ctx(tokenizer, acc, models, rows)
    micro = vcrd.prepare(ctx, probs)
    prompts = ctx.prompt_ids([p["question"] for p in probs])
    for kind, other_model in (("teacher", models[0]), ("student", models[1])):
        b = micro.extras["parts"][kind]
        w, _ = vcrd.token_weights(ctx, ctx.signals(b), b, kind, micro)
        for i, p in enumerate(probs):
            own = rows[p["id"]][f"{kind}_ids"]
            arg = raw_logits(other_model, prompts[i], own).argmax(-1).tolist()
            want = [r_of(a) / (r_of(o) + EPS) if kind == "teacher" else r_of(o) / (r_of(a) + EPS)
                    for a, o in zip(arg, own)]
            assert w[i, :len(own)].tolist() == pytest.approx(want, rel=1e-6)


def test_prob_judge_weights_are_section_10_4(tokenizer, acc, models, examples):
    from reasondistill import losses
    from reasondistill.judges import ProbJudge

    probs, rows = examples
    ctx = make_ctx(tokenizer, acc, models, rows, judge_obj=ProbJudge(tokenizer, models[1]), judge="prob")
    micro = vcrd.prepare(ctx, probs)
    prompts = ctx.prompt_ids([p["question"] for p in probs])
    b = micro.extras["parts"]["teacher"]
    w, _ = vcrd.token_weights(ctx, ctx.signals(b), b, "teacher", micro)
    for i, p in enumerate(probs):
        own = rows[p["id"]]["teacher_ids"]
        greedy = raw_logits(models[0], prompts[i], own).argmax(-1)
        want = losses.prob_proxy_validity_weights(raw_logits(models[1], prompts[i], own), greedy)
        assert torch.allclose(w[i, :len(own)].double(), want, atol=1e-5)


def test_prepared_cache_refuses_changed_model_or_tokenizer(tiny_models, tmp_path, clone_tok):
    from reasondistill.models import load_model, load_tokenizer

    tok = load_tokenizer(str(tiny_models / "student"))
    s, t = load_model(str(tiny_models / "student")), load_model(str(tiny_models / "teacher"))
    records = arith.generate("train", 3, seed=0)
    out = tmp_path / "r.jsonl"
    kw = dict(teacher=str(tiny_models / "teacher"), student=str(tiny_models / "student"), max_new_tokens=6,
              temperature=1.0, seed=0, prompt_template=None, max_prompt_length=64)
    counts = prep.write_rollouts(records[:2], out, tokenizer=tok, teacher_model=t, student_model=s, progress=False,
                                 batch_size=1, **kw)
    assert counts["written"] == 2
    again = prep.write_rollouts(records, out, tokenizer=tok, teacher_model=t, student_model=s, progress=False,
                                batch_size=1, **kw)  # resumable: only the missing record is generated
    assert again == {"records": 3, "written": 1, "skipped": 2, "output": str(out)}
    hdr = {k: v for k, v in kw.items() if k not in ("teacher", "student")}
    want = prep.header(kw["teacher"], kw["student"], tok, **hdr)
    table = prep.load_rollouts(out, want)
    assert set(table) == {r["id"] for r in records}
    assert all(r["teacher_ids"] and r["student_ids"] for r in table.values())
    # another tokenizer (a different EOS token), another student, other settings: refused
    other_tok = clone_tok(tok, eos_token=tok.pad_token)
    with pytest.raises(prep.RolloutCacheError, match="tokenizer"):
        prep.load_rollouts(out, prep.header(kw["teacher"], kw["student"], other_tok, **hdr))
    changed = tmp_path / "student2"
    torch.manual_seed(5)
    s2 = load_model(str(tiny_models / "student"))
    with torch.no_grad():
        next(s2.parameters()).add_(1.0)
    s2.save_pretrained(changed)
    with pytest.raises(prep.RolloutCacheError, match="student model"):
        prep.load_rollouts(out, prep.header(kw["teacher"], str(changed), tok, **hdr))
    with pytest.raises(prep.RolloutCacheError, match="teacher model"):
        prep.load_rollouts(out, prep.header(str(changed), kw["student"], tok, **hdr))
    with pytest.raises(prep.RolloutCacheError):
        prep.write_rollouts(records, out, tokenizer=tok, teacher_model=t, student_model=s, progress=False,
                            **{**kw, "temperature": 0.5})
    # an interrupted last line is dropped on the next read
    with open(out, "a") as f:
        f.write('{"id": "half')
    assert len(prep.load_rollouts(out, want)) == 3


def _train(name, tiny_models, out, **kw):
    from reasondistill.engine import train

    cfg = build_config(get_method(name).Config, overrides={**dict(
        student=str(tiny_models / "student"), teacher=str(tiny_models / "teacher"), output_dir=str(out),
        max_steps=2, per_device_train_batch_size=2, max_completion_length=8, dataset="arith:size=20",
        report_to="none", progress=False, device="cpu", learning_rate=1e-3), **kw})
    return train(get_method(name), cfg)


@pytest.mark.parametrize("name,kw", [
    ("vcrd", dict(judge="arith")), ("vcrd", dict(judge="prob", proposal="sample")),
    ("vcrd", dict(judge="arith", proposal="aligned", student_rollouts="online", amplification="cap")),
    ("vcrd", dict(judge="prob", loss_chunk_size=4, lambda_student=0.0)),
    ("distillm2", {}), ("seqkd", {}), ("abkd", {})])
def test_method_smoke(tiny_models, tmp_path, name, kw):
    result = _train(name, tiny_models, tmp_path / "run", **kw)
    assert result["steps"] == 2 and (tmp_path / "run" / "final" / "model.safetensors").exists()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) for r in rows)
    if name in ("vcrd", "distillm2", "seqkd"):
        assert (tmp_path / "run" / "rollouts.jsonl").exists()  # the offline stage ran into the run dir
    if name == "vcrd":
        kind = "student" if kw.get("lambda_teacher", 1.0) == 0 else "teacher"
        assert f"vcrd/{kind}_prefix/amplification_share" in rows[0] and f"vcrd/{kind}_prefix/w_p95" in rows[0]


def test_vcrd_uses_a_given_prepared_file(tiny_models, tmp_path):
    _train("distillm2", tiny_models, tmp_path / "a")
    path = tmp_path / "a" / "rollouts.jsonl"
    _train("vcrd", tiny_models, tmp_path / "b", judge="arith", rollouts=str(path))
    assert not (tmp_path / "b" / "rollouts.jsonl").exists()


def test_configs_load():
    root = Path(__file__).parent.parent / "configs"
    gpu = build_config(vcrd.Config, root / "vcrd_qwen25_math.yaml")
    assert (gpu.judge, gpu.prm_type, gpu.lora_r, gpu.lora_alpha, gpu.lora_dropout) == ("prm", "value", 16, 128, 0.05)
    assert (gpu.learning_rate, gpu.warmup_ratio, gpu.lr_scheduler_type, gpu.eps) == (5e-5, 0.1, "cosine", 1e-8)
    assert gpu.per_device_train_batch_size * gpu.gradient_accumulation_steps * 4 == 128
    cpu = build_config(vcrd.Config, root / "vcrd_embedded.yaml")
    assert cpu.teacher == "embedded:teacher-flawed" and cpu.judge == "arith"
    assert build_config(get_method("distillm2").Config).weights == "constant"
    with pytest.raises(Exception, match="proposal"):
        build_config(vcrd.Config, overrides={"proposal": "beam"})


def test_ratio_histogram_bins_by_hand():
    r_s = torch.tensor([[0.0, 0.5, 1.0, 0.2, 0.0, 0.9]])
    r_t = torch.tensor([[0.0, 0.5, 0.0, 0.4, 0.3, 0.9]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    h = vcrd.ratio_histogram(r_s, r_t, mask)
    assert len(h) == len(vcrd.RATIO_EDGES) + 1 and all(n == 5.0 for _, n in h)
    got = {k: c for k, (c, _) in enumerate(h) if c}
    # 0/0 and 0.5/0.5 -> [1, 10^0.25) (bin 13); 1/0 -> overflow (25); 0.2/0.4 -> [10^-0.5, 10^-0.25) (11);
    # 0/0.3 -> underflow (0); the masked token is not counted
    assert got == {13: 2.0, 25: 1.0, 11: 1.0, 0: 1.0}
    ge1 = sum(c for k, (c, _) in enumerate(h) if k >= 1 and vcrd.RATIO_EDGES[k - 1] >= 0)
    assert ge1 == float(((r_s >= r_t) & mask.bool()).sum())


def test_compare_writes_regimes_and_figure_1(tiny_models, tmp_path):
    from reasondistill.pipelines import compare

    out = tmp_path / "cmp"
    runs = [{"name": "VCRD", "method": "vcrd", "overrides": {}, "base": "VCRD"},
            {"name": "VCRD cap", "method": "vcrd", "overrides": {}, "base": "VCRD cap"},
            {"name": "DistiLLM-2", "method": "distillm2", "overrides": {}, "base": "DistiLLM-2"},
            {"name": "KD", "method": "kd", "overrides": {}, "base": "KD"}]
    _train("vcrd", tiny_models, out / "runs" / "VCRD", judge="arith")
    _train("vcrd", tiny_models, out / "runs" / "VCRD_cap", judge="arith", amplification="cap")
    _train("distillm2", tiny_models, out / "runs" / "DistiLLM-2")
    got = compare.vcrd_report({"output_dir": str(out), "runs": runs})
    assert set(got["regimes"]) == {"VCRD", "VCRD cap"}  # distillm2 runs no judge, kd is no vcrd preset
    assert got["regimes"]["VCRD cap"]["teacher"]["amplification"] == 0.0
    for name, per in got["regimes"].items():
        for kind, v in per.items():
            assert v["attenuation"] + v["parity"] + v["amplification"] == pytest.approx(1.0)
            hist = got["ratio_hist"][name][kind]
            assert sum(hist) == pytest.approx(1.0)
            upper = sum(f for k, f in enumerate(hist) if k >= 1 and vcrd.RATIO_EDGES[k - 1] >= 0)
            assert upper == pytest.approx(v["ratio_ge1"])  # the bins at and above 1 are the logged share
    assert (out / "ratio_hist.png").stat().st_size > 0
    table = (out / "vcrd_regimes.md").read_text()
    assert "| VCRD cap |" in table and "band = 0.05" in table
    assert compare.vcrd_report({"output_dir": str(out), "runs": runs[3:]}) == {}


def test_compare_embedded_config_loads(tmp_path):
    from reasondistill.pipelines import compare

    cfg = compare.load_config(Path(__file__).parent.parent / "configs" / "vcrd_compare_embedded.yaml")
    assert cfg["seeds"] == [0, 1, 2] and cfg["bootstrap"]["method"] == "sft"
    methods = {r["method"] for r in cfg["runs"]}
    assert {"vcrd", "distillm2", "kd", "seqkd", "gkd", "distillm", "abkd"} <= methods
    assert len(cfg["runs"]) == 3 * 16
    # every run builds a valid config with the same steps, prompts per step and SFT start
    common = dict(cfg["common"], student=str(tmp_path / "bootstrap" / "final"))
    for run in cfg["runs"]:
        _, rc = compare._build_run_config(run, common, tmp_path / compare.slug(run["name"]))
        assert (rc.max_steps, rc.per_device_train_batch_size, rc.learning_rate) == (80, 32, 1e-3)
        assert rc.student.endswith("final") and rc.seed == run["overrides"]["seed"]
        if run["method"] == "abkd":
            assert rc.alpha == 0.5  # not the skew alpha
    vc = [r for r in cfg["runs"] if r["base"] == "VCRD"][0]
    assert compare._build_run_config(vc, common, tmp_path / "v")[1].judge == "arith"
