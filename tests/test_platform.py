"""The platform under every method: real clipping (num_iterations), LoRA through the engine,
periodic evaluation with the best checkpoint, teachers that share ids but not templates, and
the HF-style schedule sizing."""

from __future__ import annotations

import copy
import json
import math
import random
from pathlib import Path

import pytest
import torch

from reasondistill import engine
from reasondistill.config import ConfigError, build_config
from reasondistill.engine import train
from reasondistill.methods import get_method
from reasondistill.methods import onpolicy
from reasondistill.methods.base import Micro
from reasondistill.rollout import encode_pairs
from reasondistill.tasks import arith

grpo, sft = get_method("grpo"), get_method("sft")

def share(metrics, key):
    """A (numerator, denominator) metric as the engine logs it."""
    num, den = metrics[key]
    return num / den



def _cfg(method, tiny, out, **kw):
    base = dict(student=str(tiny / "student"), teacher=str(tiny / "teacher"), output_dir=str(out),
                max_steps=2, per_device_train_batch_size=4, dataset="arith:size=64", report_to="none", progress=False,
                device="cpu", max_completion_length=16)
    if method in ("grpo", "gkd_grpo", "cmdp"):
        base.update(num_generations=2, per_device_train_batch_size=2)
    base.update(kw)
    return build_config(get_method(method).Config, overrides=base)


def _metrics(out):
    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def _weights(folder, name="model.safetensors"):
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / name))


@pytest.fixture()
def alternating_rewards(monkeypatch):
    """A random model never answers right: alternate rewards so the advantages are non-zero."""
    monkeypatch.setattr(onpolicy, "accuracy_reward", lambda texts, answer: [float(i % 2) for i in range(len(texts))])


# --------------------------------------------------------------------------------------
# num_iterations: the ratio is 1 on the first update and clips on later ones
# --------------------------------------------------------------------------------------
def test_later_updates_clip_and_clipped_tokens_get_no_gradient(tokenizer, tiny_model):
    """Update 1 on a generation batch has ratio exactly 1; after a large step the second update
    on the same batch clips tokens, and its gradient equals a float64 reference in which the
    clipped tokens are constants (so they contribute nothing)."""
    from accelerate import Accelerator

    model = copy.deepcopy(tiny_model).double()
    cfg = build_config(grpo.Config, overrides=dict(num_generations=2, epsilon=0.2, epsilon_high=0.28,
                                                   loss_type="dapo", device="cpu", report_to="none"))
    ctx = engine.Context(cfg=cfg, accelerator=Accelerator(cpu=True), model=model, tokenizer=tokenizer,
                         generator=torch.Generator().manual_seed(0), rng=random.Random(0))
    ex = arith.generate("train", 4, seed=3)
    prompts = [f"<|im_start|>user\n{e['question']}<|im_end|>\n<|im_start|>assistant\n" for e in ex]
    batch = encode_pairs(tokenizer, prompts, [e["solution"] for e in ex], 64, 32)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    micro = Micro.of(batch, advantages=adv, task_reward=adv)
    totals = {"tokens": float(micro.num_tokens), "rows": 4.0}

    loss, m1 = grpo.loss(ctx, micro, totals)
    assert share(m1, "pg/ratio_mean") == 1.0 and share(m1, "pg/clip_ratio") == 0.0 and share(m1, "pg/approx_kl") == 0.0
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 3.0 * p.grad  # a large learning rate
    model.zero_grad()

    loss, m2 = grpo.loss(ctx, micro, totals)  # the same generation batch: num_iterations = 2
    loss.backward()
    assert share(m2, "pg/ratio_mean") != pytest.approx(1.0, abs=1e-3) and share(m2, "pg/clip_ratio") > 0
    # float64 reference, token by token
    ref_model = copy.deepcopy(model)
    ref_model.zero_grad()
    old = micro.extras["old_logp"]
    from reasondistill.rollout import forward_logits

    logits = forward_logits(ref_model, batch)
    logp = torch.log_softmax(logits, -1).gather(-1, batch.completion_ids.unsqueeze(-1)).squeeze(-1)
    mask = batch.completion_mask.bool()
    ratio = torch.exp(logp - old)
    a = adv.double().unsqueeze(-1).expand_as(ratio)
    clipped = ((ratio > 1.28) & (a > 0)) | ((ratio < 0.8) & (a < 0))
    assert clipped[mask].any() and (~clipped[mask]).any()
    value = torch.where(clipped, -(ratio.detach().clamp(0.8, 1.28)) * a, -ratio * a)  # clipped: constant
    ref = value[mask].sum() / mask.sum()
    ref.backward()
    assert float(loss) == pytest.approx(float(ref), rel=1e-10)
    assert share(m2, "pg/clip_ratio") == pytest.approx(float(clipped[mask].double().mean()), abs=1e-12)
    assert share(m2, "pg/clip_ratio_high") == pytest.approx(float((clipped & (a > 0))[mask].double().mean()), abs=1e-12)
    assert share(m2, "pg/clip_ratio_low") == pytest.approx(float((clipped & (a < 0))[mask].double().mean()), abs=1e-12)
    for (n, p), (_, q) in zip(model.named_parameters(), ref_model.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-12, msg=n)


def test_engine_reuses_the_generation_batch_num_iterations_times(tiny_models, tmp_path, alternating_rewards,
                                                                monkeypatch):
    calls = []
    real = onpolicy.generate
    monkeypatch.setattr(onpolicy, "generate", lambda *a, **k: calls.append(1) or real(*a, **k))
    train(grpo, _cfg("grpo", tiny_models, tmp_path / "r", max_steps=4, num_iterations=2, learning_rate=5e-2))
    rows = _metrics(tmp_path / "r")
    assert len(calls) == 2  # one generation batch per two optimizer steps
    assert [r["pg/ratio_mean"] == 1.0 for r in rows] == [True, False, True, False]
    assert rows[1]["pg/approx_kl"] > 0


def _interrupt_after(n):
    def stop(ctx, step, metrics):
        if step == n:
            raise KeyboardInterrupt
    return stop


def test_resume_in_the_middle_of_a_generation_batch_is_exact(tiny_models, tmp_path, alternating_rewards):
    kw = dict(max_steps=4, num_iterations=2, learning_rate=5e-2)
    train(grpo, _cfg("grpo", tiny_models, tmp_path / "a", **kw))
    with pytest.raises(KeyboardInterrupt):
        train(grpo, _cfg("grpo", tiny_models, tmp_path / "b", **kw), callback=_interrupt_after(3))
    assert (tmp_path / "b" / "checkpoint-3" / "generation_batch_0.pt").exists()  # step 4 reuses step 3's batch
    train(grpo, _cfg("grpo", tiny_models, tmp_path / "b", resume=True, **kw))
    a, b = _weights(tmp_path / "a" / "final"), _weights(tmp_path / "b" / "final")
    assert all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------------------
# LoRA through the engine
# --------------------------------------------------------------------------------------
LORA = dict(use_peft=True, lora_r=4, lora_alpha=8, lora_dropout=0.0, learning_rate=1e-2)


def test_lora_trains_only_the_adapter_and_resumes_exactly(tiny_models, tmp_path):
    train(sft, _cfg("sft", tiny_models, tmp_path / "a", max_steps=4, **LORA))
    with pytest.raises(KeyboardInterrupt):
        train(sft, _cfg("sft", tiny_models, tmp_path / "b", max_steps=4, **LORA), callback=_interrupt_after(2))
    assert (tmp_path / "b" / "checkpoint-2" / "model" / "adapter_config.json").exists()
    train(sft, _cfg("sft", tiny_models, tmp_path / "b", max_steps=4, resume=True, **LORA))
    a = _weights(tmp_path / "a" / "final", "adapter_model.safetensors")
    b = _weights(tmp_path / "b" / "final", "adapter_model.safetensors")
    assert a and all("lora_" in k for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed adapter differs"
    assert any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)  # the adapter did train
    assert not (tmp_path / "a" / "final" / "model.safetensors").exists()  # final/ holds the adapter only


def test_merge_adapter_writes_the_merged_model(tiny_models, tmp_path):
    from reasondistill.models import load_model
    from reasondistill.rollout import forward_logits

    train(sft, _cfg("sft", tiny_models, tmp_path / "m", merge_adapter=True, **LORA))
    merged = load_model(tmp_path / "m" / "final" / "merged")
    via_adapter = load_model(tmp_path / "m" / "final")  # base + adapter, merged on load
    base = load_model(tiny_models / "student")
    tok = arith.build_tokenizer()
    ex = arith.generate("train", 2, seed=1)
    batch = encode_pairs(tok, [e["question"] for e in ex], [e["solution"] for e in ex], 32, 32)
    with torch.no_grad():
        lm, la, lb = (forward_logits(m, batch) for m in (merged, via_adapter, base))
    torch.testing.assert_close(lm, la, rtol=1e-5, atol=1e-5)
    assert (lm - lb).abs().max() > 1e-4


def test_kl_reference_of_a_lora_student_is_the_model_training_started_from(tiny_models, tmp_path,
                                                                           alternating_rewards):
    """GRPO (beta > 0) on a LoRA-SFT'd student: the reference is the SFT model, not the base (TRL #3194)."""
    from reasondistill.models import load_model
    from reasondistill.rollout import forward_logits

    train(sft, _cfg("sft", tiny_models, tmp_path / "sft", max_steps=3, **LORA))
    cfg = _cfg("grpo", tiny_models, tmp_path / "g", student=str(tmp_path / "sft" / "final"), beta=0.1, **LORA)
    ctx = engine.build_context(grpo, cfg)
    grpo.setup(ctx)
    assert "ref" not in ctx.extras  # no second copy of the model: the adapter is switched off instead
    with torch.no_grad():  # a trained adapter, so that "adapter off" differs from the policy
        for n, p in ctx.policy.named_parameters():
            if "lora_B" in n:
                p.add_(0.05)
    tok = arith.build_tokenizer()
    ex = arith.generate("train", 2, seed=1)
    batch = encode_pairs(tok, [e["question"] for e in ex], [e["solution"] for e in ex], 32, 32)

    def logp(model):
        lg = torch.log_softmax(forward_logits(model, batch), -1)
        return lg.gather(-1, batch.completion_ids.unsqueeze(-1)).squeeze(-1) * batch.completion_mask

    with torch.no_grad():
        ref = onpolicy.reference_logp(ctx, batch)
        sft_model, base, policy = (logp(m) for m in (load_model(tmp_path / "sft" / "final"),
                                                      load_model(tiny_models / "student"), ctx.policy))
    torch.testing.assert_close(ref, sft_model, rtol=1e-5, atol=1e-5)
    assert (ref - base).abs().max() > 1e-4 and (ref - policy).abs().max() > 1e-4
    rows = train(grpo, cfg) and _metrics(tmp_path / "g")  # and the whole loop with it
    assert rows[-1]["pg/kl"] > 0 and all(math.isfinite(r["loss"]) for r in rows)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_qlora_and_8bit_optimizers_say_they_need_cuda(tiny_models, tmp_path):
    with pytest.raises(RuntimeError, match="CUDA"):
        train(sft, _cfg("sft", tiny_models, tmp_path / "q", load_in_4bit=True, **LORA))
    with pytest.raises(ConfigError, match="CUDA"):
        train(sft, _cfg("sft", tiny_models, tmp_path / "o", optim="adamw_8bit"))


# --------------------------------------------------------------------------------------
# periodic evaluation and the best checkpoint
# --------------------------------------------------------------------------------------
def test_eval_steps_keep_the_best_checkpoint_and_load_it_at_the_end(tiny_models, tmp_path):
    """greater_is_better=true on eval/loss picks the *worst* model (the first evaluation, since
    SFT lowers the loss): a best checkpoint that is not the last, kept despite save_total_limit=1."""
    out = tmp_path / "e"
    res = train(sft, _cfg("sft", tiny_models, out, max_steps=4, learning_rate=1e-2, eval_dataset="split",
                          eval_size=8, eval_steps=1, metric_for_best_model="eval/loss", greater_is_better=True,
                          save_steps=1, save_total_limit=1, load_best_model_at_end=True))
    rows = _metrics(out)
    losses = [r["eval/loss"] for r in rows]
    assert all({"eval/token_accuracy", "eval/accuracy", "eval/truncated_share"} <= set(r) for r in rows)
    assert all(0.0 <= r["eval/truncated_share"] <= 1.0 for r in rows)
    assert losses == sorted(losses, reverse=True) and losses[0] > losses[-1]  # training lowered it
    best = json.loads((out / "best_checkpoint.json").read_text())
    assert best["step"] == 1 and best["value"] == losses[0] and res["best"] == best
    assert (out / "checkpoint-1").exists() and (out / "checkpoint-4").exists()  # best + the newest
    assert not (out / "checkpoint-2").exists() and not (out / "checkpoint-3").exists()
    final, best_w = _weights(out / "final"), _weights(out / "checkpoint-1" / "model")
    assert all(torch.equal(final[k], best_w[k]) for k in best_w)


def test_in_training_evaluation_against_a_direct_computation(tiny_models, tmp_path):
    from reasondistill.eval.in_training import evaluate_in_training
    from reasondistill.rewards import accuracy_reward
    from reasondistill.rollout import generate

    ctx = engine.build_context(sft, _cfg("sft", tiny_models, tmp_path / "x", max_completion_length=12))
    recs = arith.generate("test", 10, seed=5)
    got = evaluate_in_training(ctx, recs)
    roll = generate(ctx.policy, ctx.tokenizer, ctx.render([r["question"] for r in recs]), max_new_tokens=12,
                    do_sample=False)
    assert got["eval/truncated_share"] == float(roll.truncated.float().mean())
    assert got["eval/accuracy"] == sum(accuracy_reward(roll.texts(ctx.tokenizer), answer=[r["answer"] for r in recs])) / 10
    batch = encode_pairs(ctx.tokenizer, ctx.render([r["question"] for r in recs]), [r["solution"] for r in recs], 256, 12)
    from reasondistill.rollout import forward_logits

    with torch.no_grad():
        lg = forward_logits(ctx.policy, batch)
    m = batch.completion_mask.bool()
    nll = -torch.log_softmax(lg, -1).gather(-1, batch.completion_ids.unsqueeze(-1)).squeeze(-1)[m]
    assert got["eval/loss"] == pytest.approx(float(nll.mean()), rel=1e-5)
    assert got["eval/token_accuracy"] == pytest.approx(float((lg.argmax(-1) == batch.completion_ids)[m].float().mean()))


def test_an_arith_eval_set_comes_from_the_test_split(tiny_models):
    from reasondistill.data.train import train_and_eval_records

    cfg = _cfg("sft", tiny_models, "unused", dataset="arith:size=2000", eval_dataset="arith:size=50", eval_size=0)
    tr, ev = train_and_eval_records(cfg)
    assert len(ev) == 50 and not {r["question"] for r in tr} & {r["question"] for r in ev}


def test_eval_split_is_never_trained_on(tiny_models):
    from reasondistill.data.train import train_and_eval_records

    cfg = _cfg("sft", tiny_models, "unused", eval_dataset="split", eval_size=10)
    tr, ev = train_and_eval_records(cfg)
    assert len(ev) == 10 and len(tr) == 54 and not {r["question"] for r in tr} & {r["question"] for r in ev}


# --------------------------------------------------------------------------------------
# teachers that share ids but not templates
# --------------------------------------------------------------------------------------
OTHER_TEMPLATE = ("{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                  "{% if add_generation_prompt %}### assistant: {% endif %}")


def test_shared_ids_teacher_trains_with_its_own_stop_ids(tiny_models, tmp_path, clone_tok, monkeypatch):
    """A teacher whose tokenizer gives the same ids to the same strings but has another chat
    template and EOS: strict refuses it, shared_ids trains, and the teacher's own samples stop at
    the teacher's EOS."""
    from reasondistill.models import TokenizerMismatchError, load_model

    tok = arith.build_tokenizer()
    teacher_tok = clone_tok(tok, eos_token="<|endoftext|>", chat_template=OTHER_TEMPLATE)
    folder = tmp_path / "teacher"
    load_model(tiny_models / "teacher").save_pretrained(folder)
    teacher_tok.save_pretrained(str(folder))
    kw = dict(teacher=str(folder), lmbda=0.0, seq_kd=True, max_steps=1)
    with pytest.raises(TokenizerMismatchError, match="EOS"):
        train(get_method("gkd"), _cfg("gkd", tiny_models, tmp_path / "strict", **kw))
    import reasondistill.methods.gkd as gkd_module
    from reasondistill.models import stop_ids

    seen, real = [], gkd_module.generate
    monkeypatch.setattr(gkd_module, "generate", lambda m, *a, **k: seen.append(k["eos_token_id"]) or real(m, *a, **k))
    res = train(get_method("gkd"), _cfg("gkd", tiny_models, tmp_path / "shared", tokenizer_compat="shared_ids", **kw))
    assert seen == [stop_ids(teacher_tok, res["context"].teacher)] and teacher_tok.eos_token_id in seen[0]
    assert tok.eos_token_id != teacher_tok.eos_token_id


def test_a_teacher_sample_ends_in_the_students_stop_token():
    """seq_kd with a shared-ids teacher: the student is taught to stop on its own EOS (2), not
    on the teacher's (0); a row cut at the length limit keeps its last token."""
    from reasondistill.rollout import Rollout

    ids = torch.tensor([[5, 6, 0, 0], [5, 0, 7, 7], [5, 6, 7, 8], [5, 2, 0, 0]])  # pad id 0 after the end
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0]])
    roll = Rollout(prompt_ids=torch.ones(4, 1, dtype=torch.long), prompt_mask=torch.ones(4, 1, dtype=torch.long),
                   completion_ids=ids, completion_mask=mask, logprobs=torch.zeros(4, 4),
                   truncated=torch.tensor([False, False, True, False]), group_index=torch.arange(4))
    out = roll.with_stop_token([0], eos_token_id=2).completion_ids
    assert out.tolist() == [[5, 6, 2, 0], [5, 2, 7, 7], [5, 6, 7, 8], [5, 2, 0, 0]]


def test_raw_prompt_template_renders_every_prompt(tiny_models, tmp_path):
    from reasondistill.models import TGPO_PROMPT_TEMPLATE

    cfg = _cfg("sft", tiny_models, tmp_path / "t", prompt_template=TGPO_PROMPT_TEMPLATE, max_steps=1)
    ctx = engine.build_context(sft, cfg)
    text = ctx.render(["What is 1+2?"])[0]
    assert text.endswith("Assistant: <think>") and "What is 1+2?" in text and "<|im_start|>" not in text
    micro = sft.prepare(ctx, [{"question": "What is 1+2?", "solution": "1+2=3\n\\boxed{3}"}])
    ids = micro.batch.prompt_ids[0][micro.batch.prompt_mask[0].bool()].tolist()
    assert ids == ctx.tokenizer(text, add_special_tokens=False)["input_ids"][-cfg.max_prompt_length:]


# --------------------------------------------------------------------------------------
# sizing a run the HF way
# --------------------------------------------------------------------------------------
def test_num_train_epochs_and_warmup_ratio_size_the_run(tiny_models, tmp_path):
    cfg = _cfg("sft", tiny_models, tmp_path / "s", num_train_epochs=1.5, warmup_ratio=0.1,
               per_device_train_batch_size=8, gradient_accumulation_steps=2)
    resolved = engine.resolve_schedule(cfg, num_records=64, world=1)
    assert resolved.max_steps == math.ceil(1.5 * 64 / 16) == 6 and resolved.warmup_steps == 1
    res = train(sft, cfg)
    assert res["steps"] == 6
    assert "max_steps: 6" in (tmp_path / "s" / "config.yaml").read_text()  # the resolved config is recorded
