"""The four methods compute the right numbers: each ``prepare``/``loss`` is compared with an
independent float64 reference written here from raw model logits (one unpadded forward per row
of a float64 copy of the model, positions picked by hand), not with the library's own helpers."""

from __future__ import annotations

import copy
import math
import random
import statistics

import pytest
import torch

from reasondistill import engine
from reasondistill.config import build_config
from reasondistill.methods import get_method, onpolicy
from reasondistill.methods.base import Micro
from reasondistill.rollout import encode_pairs, generate
from reasondistill.tasks import arith

gkd = get_method("gkd")
grpo = get_method("grpo")
kd = get_method("kd")
sft = get_method("sft")

MAX_C = 12  # max_completion_length for sampled completions
DATA_C = 64  # max_completion_length for dataset completions (longer than any solution here)

def share(metrics, key):
    """A (numerator, denominator) metric as the engine logs it."""
    num, den = metrics[key]
    return num / den



# --------------------------------------------------------------------------------------
# fixtures and helpers
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def acc():
    from accelerate import Accelerator

    return Accelerator(cpu=True)


def sharpen(model, factor=20.0):
    """A random init gives near-uniform next-token distributions (logit std ~0.1), on which
    forward KL, reverse KL and every temperature agree to ~1e-4; scale the LM head so the
    references can tell them apart."""
    with torch.no_grad():
        model.lm_head.weight.mul_(factor)
    return model


@pytest.fixture(scope="module")
def student(tokenizer, make_model):
    return sharpen(make_model(len(tokenizer), seed=0, hidden_size=32, num_hidden_layers=1,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))


@pytest.fixture(scope="module")
def teacher(tokenizer, make_model):
    m = make_model(len(tokenizer), seed=1, hidden_size=32, num_hidden_layers=1,
                   eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return sharpen(m).requires_grad_(False).eval()


@pytest.fixture(scope="module")
def padded_teacher(tokenizer, make_model):
    """A teacher whose embedding has 16 extra (padding) rows: only the shared range counts."""
    m = make_model(len(tokenizer) + 16, seed=2, hidden_size=32, num_hidden_layers=1,
                   eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return sharpen(m).requires_grad_(False).eval()


@pytest.fixture(scope="module")
def examples():
    """Prompts and completions of different lengths (so both paddings are exercised)."""
    varied = arith.generate("train", 4, seed=0, spec=arith.TaskSpec(min_terms=2, max_terms=6))
    return arith.generate("train", 4, seed=0)[:2] + varied[:2]


def make_ctx(name, tokenizer, acc, model, teacher=None, shared=None, seed=0, **over):
    base = dict(max_prompt_length=64, max_completion_length=DATA_C, device="cpu", report_to="none")
    base.update(over)
    cfg = build_config(get_method(name).Config, overrides=base)
    return engine.Context(cfg=cfg, accelerator=acc, model=model, tokenizer=tokenizer, teacher=teacher,
                          shared_vocab=shared, generator=torch.Generator().manual_seed(seed),
                          rng=random.Random(seed))


def prompt_ids(tokenizer, question):
    """ChatML prompt written by hand (not through the library's renderer)."""
    text = f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def data_rows(tokenizer, examples, max_c=DATA_C):
    """(prompt ids, completion ids + EOS) per example, tokenised here; a completion longer than
    max_c is cut to max_c tokens without EOS."""
    rows = []
    for e in examples:
        c = tokenizer(e["solution"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        c = c if len(c) <= max_c else c[:max_c]
        rows.append((prompt_ids(tokenizer, e["question"]), c))
    return rows


def batch_rows(batch):
    """The real (unpadded) prompt and completion ids of every row of a Rollout."""
    out = []
    for pi, pm, ci, cm in zip(batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask):
        out.append((pi[pm.bool()].tolist(), ci[cm.bool()].tolist()))
    return out


def ref_logits(model64, rows):
    """Per row, float64 logits (len(c), V) at the positions that predict each completion token,
    from one forward on the unpadded prompt + completion (no mask, no padding)."""
    out = []
    for p, c in rows:
        ids = torch.tensor([p + c])
        logits = model64(input_ids=ids).logits[0]  # (P + C, V)
        out.append(logits[len(p) - 1: len(p) + len(c) - 1])  # position i predicts token i + 1
    return out


def f64(model):
    return copy.deepcopy(model).double()


def log_softmax_t(logits, temperature=1.0):
    return torch.log_softmax(logits / temperature, dim=-1)


def fkl(s, t, temperature=1.0):  # KL(teacher || student) per position
    lq, lp = log_softmax_t(s, temperature), log_softmax_t(t, temperature)
    return (lp.exp() * (lp - lq)).sum(-1)


def rkl(s, t, temperature=1.0):  # KL(student || teacher) per position
    return fkl(t, s, temperature)


def jsd(s, t, beta, temperature=1.0):
    lq, lp = log_softmax_t(s, temperature), log_softmax_t(t, temperature)
    p, q = lp.exp(), lq.exp()
    m = beta * p + (1 - beta) * q
    return beta * (p * (lp - m.log())).sum(-1) + (1 - beta) * (q * (lq - m.log())).sum(-1)


def totals_of(*micros):
    return {"tokens": float(sum(m.num_tokens for m in micros)), "rows": float(sum(m.num_rows for m in micros))}


def nll_ref(model64, rows):
    num, den = 0.0, 0
    for (p, c), lg in zip(rows, ref_logits(model64, rows)):
        lp = log_softmax_t(lg)
        num = num - lp[torch.arange(len(c)), torch.tensor(c)].sum()
        den += len(c)
    return num / den


def close(a, b, rel=1e-5, abs_=1e-7):
    a, b = float(a.detach() if torch.is_tensor(a) else a), float(b.detach() if torch.is_tensor(b) else b)
    assert a == pytest.approx(b, rel=rel, abs=abs_), (a, b)


# --------------------------------------------------------------------------------------
# encode_pairs / SFT
# --------------------------------------------------------------------------------------
def test_encode_pairs_layout(tokenizer, acc, student, examples):
    ctx = make_ctx("sft", tokenizer, acc, student)
    b = sft.prepare(ctx, examples).batch
    rows = data_rows(tokenizer, examples)
    P = max(len(p) for p, _ in rows)
    C = max(len(c) for _, c in rows)
    assert b.prompt_ids.shape == (4, P) and b.completion_ids.shape == (4, C)
    assert len({len(p) for p, _ in rows}) > 1 and len({len(c) for _, c in rows}) > 1  # padding on both sides
    pad = tokenizer.pad_token_id
    for i, (p, c) in enumerate(rows):
        # prompts left-padded
        assert b.prompt_ids[i].tolist() == [pad] * (P - len(p)) + p
        assert b.prompt_mask[i].tolist() == [0] * (P - len(p)) + [1] * len(p)
        # completions right-padded, EOS last real token and counted
        assert b.completion_ids[i].tolist() == c + [pad] * (C - len(c))
        assert b.completion_mask[i].tolist() == [1] * len(c) + [0] * (C - len(c))
        assert c[-1] == tokenizer.eos_token_id
    assert sft.prepare(ctx, examples).num_tokens == sum(len(c) for _, c in rows)


def test_encode_pairs_truncation(tokenizer, examples):
    q, s = examples[0]["question"], examples[0]["solution"]
    prompt = f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"
    b = encode_pairs(tokenizer, [prompt], [s], max_prompt=5, max_completion=6)
    p_full = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c_full = tokenizer(s, add_special_tokens=False)["input_ids"]
    assert b.prompt_ids[0].tolist() == p_full[-5:]  # keeps the end of the prompt
    # a completion cut at the limit keeps max_completion tokens and gets NO EOS (it did not end there)
    assert b.completion_ids[0].tolist() == c_full[:6] and b.truncated.tolist() == [True]
    # one that fits (EOS included) ends in EOS and is not truncated
    fits = encode_pairs(tokenizer, [prompt], [s], max_prompt=5, max_completion=len(c_full) + 1)
    assert fits.completion_ids[0].tolist() == c_full + [tokenizer.eos_token_id] and fits.truncated.tolist() == [False]


def test_sft_loss_is_completion_only_mean_nll(tokenizer, acc, student, examples):
    ctx = make_ctx("sft", tokenizer, acc, student)
    micro = sft.prepare(ctx, examples)
    with torch.no_grad():
        loss, _ = sft.loss(ctx, micro, totals_of(micro))
        ref = nll_ref(f64(student), data_rows(tokenizer, examples))
    close(loss, ref)
    # and not the NLL without EOS or with prompt tokens (the reference is sharp enough to tell)
    with torch.no_grad():
        no_eos = nll_ref(f64(student), [(p, c[:-1]) for p, c in data_rows(tokenizer, examples)])
    assert abs(float(no_eos) - float(ref)) > 1e-3


def test_sft_gradient_matches_reference(tokenizer, acc, student, examples):
    model = copy.deepcopy(student)
    ctx = make_ctx("sft", tokenizer, acc, model)
    micro = sft.prepare(ctx, examples)
    loss, _ = sft.loss(ctx, micro, totals_of(micro))
    loss.backward()
    m64 = f64(student)
    nll_ref(m64, data_rows(tokenizer, examples)).backward()
    g, g_ref = model.lm_head.weight.grad, m64.lm_head.weight.grad
    torch.testing.assert_close(g.double(), g_ref, rtol=1e-4, atol=1e-5 * g_ref.abs().max().item())


# --------------------------------------------------------------------------------------
# KD
# --------------------------------------------------------------------------------------
def kd_ref(student64, teacher64, rows, temperature, sft_weight=0.0, vocab=None):
    s_all, t_all = ref_logits(student64, rows), ref_logits(teacher64, rows)
    num, nll, den = 0.0, 0.0, 0
    for (p, c), s, t in zip(rows, s_all, t_all):
        V = vocab or s.shape[-1]
        s, t = s[:, :V], t[:, :V]
        num = num + fkl(s, t, temperature).sum()
        nll = nll - log_softmax_t(s)[torch.arange(len(c)), torch.tensor(c)].sum()
        den += len(c)
    return (num + sft_weight * nll) / den


@pytest.mark.parametrize("chunk", [0, 5])
@pytest.mark.parametrize("temperature,sft_weight", [(2.0, 0.0), (1.0, 0.0), (2.0, 0.7)])
def test_kd_loss_is_masked_forward_kl(tokenizer, acc, student, teacher, examples, temperature, sft_weight, chunk):
    ctx = make_ctx("kd", tokenizer, acc, student, teacher=teacher, temperature=temperature,
                   sft_weight=sft_weight, loss_chunk_size=chunk)
    micro = kd.prepare(ctx, examples)
    with torch.no_grad():
        loss, metrics = kd.loss(ctx, micro, totals_of(micro))
        ref = kd_ref(f64(student), f64(teacher), data_rows(tokenizer, examples), temperature, sft_weight)
    close(loss, ref)
    if sft_weight:  # the NLL term really is the data NLL
        with torch.no_grad():
            close(metrics["kd/nll"], nll_ref(f64(student), data_rows(tokenizer, examples)))


def test_kd_temperature_matters(tokenizer, acc, student, teacher, examples):
    """Guards the reference itself: T=2 and T=1 give clearly different numbers."""
    with torch.no_grad():
        rows = data_rows(tokenizer, examples)
        a = kd_ref(f64(student), f64(teacher), rows, 2.0)
        b = kd_ref(f64(student), f64(teacher), rows, 1.0)
    assert abs(float(a) - float(b)) > 1e-3


@pytest.mark.parametrize("chunk", [0, 7])
def test_kd_padded_teacher_vocab_compares_shared_range(tokenizer, acc, student, padded_teacher, examples, chunk):
    V = len(tokenizer)
    ctx = make_ctx("kd", tokenizer, acc, student, teacher=padded_teacher, shared=V, temperature=2.0,
                   loss_chunk_size=chunk)
    micro = kd.prepare(ctx, examples)
    with torch.no_grad():
        loss, _ = kd.loss(ctx, micro, totals_of(micro))
        ref = kd_ref(f64(student), f64(padded_teacher), data_rows(tokenizer, examples), 2.0, vocab=V)
    close(loss, ref)


def test_kd_gradient_matches_reference(tokenizer, acc, student, teacher, examples):
    model = copy.deepcopy(student)
    ctx = make_ctx("kd", tokenizer, acc, model, teacher=teacher, temperature=2.0, sft_weight=0.3)
    micro = kd.prepare(ctx, examples)
    loss, _ = kd.loss(ctx, micro, totals_of(micro))
    loss.backward()
    m64 = f64(student)
    kd_ref(m64, f64(teacher), data_rows(tokenizer, examples), 2.0, 0.3).backward()
    g, g_ref = model.lm_head.weight.grad, m64.lm_head.weight.grad
    torch.testing.assert_close(g.double(), g_ref, rtol=1e-4, atol=1e-5 * g_ref.abs().max().item())


# --------------------------------------------------------------------------------------
# GKD
# --------------------------------------------------------------------------------------
def gkd_ref(student64, teacher64, rows, beta, temperature):
    s_all, t_all = ref_logits(student64, rows), ref_logits(teacher64, rows)
    num, den = 0.0, 0
    for (p, c), s, t in zip(rows, s_all, t_all):
        if beta == 0.0:
            d = fkl(s, t, temperature)
        elif beta == 1.0:
            d = rkl(s, t, temperature)
        else:
            d = jsd(s, t, beta, temperature)
        num, den = num + d.sum(), den + len(c)
    return num / den


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 1.0])
def test_gkd_off_policy_loss_is_generalized_jsd_on_dataset(tokenizer, acc, student, teacher, examples, beta):
    ctx = make_ctx("gkd", tokenizer, acc, student, teacher=teacher, lmbda=0.0, beta=beta, temperature=2.0)
    micro = gkd.prepare(ctx, examples)
    assert micro.extras["on_policy"] is False
    rows = data_rows(tokenizer, examples)
    assert batch_rows(micro.batch) == rows  # the dataset completion, EOS appended
    with torch.no_grad():
        loss, _ = gkd.loss(ctx, micro, totals_of(micro))
        s64, t64 = f64(student), f64(teacher)
        ref = gkd_ref(s64, t64, rows, beta, 2.0)
    close(loss, ref)
    if beta == 0.0:  # the end points are the KLs, not the (vanishing) mixture formula
        with torch.no_grad():
            assert float(ref) > 10 * float(gkd_ref(s64, t64, rows, 1e-4, 2.0))
            close(loss, kd_ref(s64, t64, rows, 2.0))


def test_gkd_beta_endpoints_differ(tokenizer, acc, student, teacher, examples):
    """beta=0 (forward KL) and beta=1 (reverse KL) are different losses at the method level."""
    out = {}
    for beta in (0.0, 1.0):
        ctx = make_ctx("gkd", tokenizer, acc, student, teacher=teacher, lmbda=0.0, beta=beta)
        micro = gkd.prepare(ctx, examples)
        with torch.no_grad():
            out[beta] = float(gkd.loss(ctx, micro, totals_of(micro))[0])
    assert abs(out[0.0] - out[1.0]) > 1e-3


def test_gkd_on_policy_batch_is_a_student_sample(tokenizer, acc, student, teacher, examples):
    T = 2.0
    ctx = make_ctx("gkd", tokenizer, acc, student, teacher=teacher, lmbda=1.0, beta=0.5, temperature=T,
                   max_completion_length=MAX_C)
    g_copy = torch.Generator().set_state(ctx.generator.get_state())
    micro = gkd.prepare(ctx, examples)
    assert micro.extras["on_policy"] is True
    b = micro.batch
    rows = batch_rows(b)
    data = data_rows(tokenizer, examples)
    assert [p for p, _ in rows] == [p for p, _ in data]  # same prompts
    assert all(c != dc for (_, c), (_, dc) in zip(rows, data))  # not the dataset's completions
    # exactly the student's sample from the context's generator, at the config's temperature
    expect = generate(student, tokenizer, ctx.render([e["question"] for e in examples]), max_new_tokens=MAX_C,
                      temperature=T, generator=g_copy)
    assert torch.equal(expect.completion_ids, b.completion_ids)
    assert micro.num_tokens == int(b.completion_mask.sum()) == sum(len(c) for _, c in rows)
    s64, t64 = f64(student), f64(teacher)
    with torch.no_grad():
        # the stored sampling log-probs are the student's at temperature T (sampling temp == loss temp)
        for i, ((p, c), lg) in enumerate(zip(rows, ref_logits(s64, rows))):
            lp = log_softmax_t(lg, T)[torch.arange(len(c)), torch.tensor(c)]
            torch.testing.assert_close(b.logprobs[i, : len(c)].double(), lp, rtol=1e-4, atol=1e-4)
        loss, metrics = gkd.loss(ctx, micro, totals_of(micro))
        ref = gkd_ref(s64, t64, rows, 0.5, T)
    close(loss, ref)
    assert metrics["gkd/on_policy"] == 1.0


def test_gkd_seq_kd_uses_teacher_generations(tokenizer, acc, student, teacher, examples):
    ctx = make_ctx("gkd", tokenizer, acc, student, teacher=teacher, lmbda=0.0, seq_kd=True, beta=0.5,
                   max_completion_length=MAX_C)
    g_copy = torch.Generator().set_state(ctx.generator.get_state())
    micro = gkd.prepare(ctx, examples)
    assert micro.extras["on_policy"] is False
    prompts = ctx.render([e["question"] for e in examples])
    from_teacher = generate(teacher, tokenizer, prompts, max_new_tokens=MAX_C, generator=g_copy)
    assert torch.equal(micro.batch.completion_ids, from_teacher.completion_ids)
    from_student = generate(student, tokenizer, prompts, max_new_tokens=MAX_C,
                            generator=torch.Generator().manual_seed(0))
    assert not torch.equal(from_student.completion_ids, from_teacher.completion_ids)  # the test can tell
    assert [c for _, c in batch_rows(micro.batch)] != [c for _, c in data_rows(tokenizer, examples)]
    with torch.no_grad():
        close(gkd.loss(ctx, micro, totals_of(micro))[0],
              gkd_ref(f64(student), f64(teacher), batch_rows(micro.batch), 0.5, 1.0))


def test_gkd_on_policy_fraction_follows_lmbda(tokenizer, acc, student, teacher, examples):
    n, lmbda = 300, 0.3
    ctx = make_ctx("gkd", tokenizer, acc, student, teacher=teacher, lmbda=lmbda, max_completion_length=3, seed=7)
    flags = []
    data = data_rows(tokenizer, examples[:1], max_c=3)
    for _ in range(n):
        micro = gkd.prepare(ctx, examples[:1])
        flags.append(micro.extras["on_policy"])
        if not micro.extras["on_policy"]:
            assert batch_rows(micro.batch) == data
    k = sum(flags)
    sd = math.sqrt(n * lmbda * (1 - lmbda))
    assert abs(k - n * lmbda) < 4.5 * sd, k  # binomial: P(fail) < 1e-5
    assert 0 < k < n


# --------------------------------------------------------------------------------------
# GRPO
# --------------------------------------------------------------------------------------
REWARDS = [0.0, 1.0, 2.5, 3.0, 3.0, -1.0]  # 2 prompts x 3 generations


def fake_rewards(record):
    def reward(completions, answer, **kw):
        record.append((list(completions), list(answer)))
        return list(REWARDS[: len(completions)])
    return reward


def test_grpo_batch_scaling_uses_the_whole_step(tokenizer, acc, student, examples, monkeypatch):
    """scale_rewards=batch: two micro-batches get the std of all their rewards together."""
    calls = iter([[1.0, 0.0, 0.0], [2.0, 0.0, 1.0]])  # different spreads per micro-batch
    monkeypatch.setattr(onpolicy, "accuracy_reward", lambda completions, answer, **kw: next(calls))
    ctx = make_ctx("grpo", tokenizer, acc, student, num_generations=3, scale_rewards="batch",
                   max_completion_length=MAX_C)
    micros = [grpo.prepare(ctx, examples[:1]), grpo.prepare(ctx, examples[1:2])]
    grpo.finalize_step(ctx, micros)
    for m in micros:  # advantages are made on the first update of a generation batch
        grpo.loss(ctx, m, totals_of(*micros))
    rewards = [r for m in micros for r in m.extras["task_reward"].tolist()]
    got = torch.cat([m.extras["advantages"] for m in micros]).double()
    want = []
    for a in (0, 3):
        grp = rewards[a: a + 3]
        want += [(r - sum(grp) / 3) / (statistics.stdev(rewards) + 1e-4) for r in grp]
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-6, atol=1e-6)


def hand_advantages(rewards, G, scale, eps=1e-4):
    out = []
    for a in range(0, len(rewards), G):
        grp = rewards[a: a + G]
        mu = sum(grp) / G
        sd = statistics.stdev(grp) if scale == "group" else statistics.stdev(rewards) if scale == "batch" else None
        out += [(r - mu) / (sd + eps) if sd is not None else r - mu for r in grp]
    return out


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_grpo_group_advantages_by_hand(tokenizer, acc, student, examples, monkeypatch, scale):
    record = []
    monkeypatch.setattr(onpolicy, "accuracy_reward", fake_rewards(record))
    ctx = make_ctx("grpo", tokenizer, acc, student, num_generations=3, scale_rewards=scale,
                   max_completion_length=MAX_C)
    micro = grpo.prepare(ctx, examples[:2])
    grpo.finalize_step(ctx, [micro])  # the engine calls it after every prepare of the step
    b = micro.batch
    assert b.completion_ids.shape[0] == 6 and micro.num_rows == 6
    assert micro.num_tokens == int(b.completion_mask.sum())
    texts, answers = record[0]
    # rows i*G .. i*G+G-1 answer prompt i, and are scored against that prompt's answer
    assert answers == [examples[0]["answer"]] * 3 + [examples[1]["answer"]] * 3
    prompts = [p for p, _ in batch_rows(b)]
    assert prompts[:3] == [prompt_ids(tokenizer, examples[0]["question"])] * 3
    assert prompts[3:] == [prompt_ids(tokenizer, examples[1]["question"])] * 3
    assert texts == [tokenizer.decode(c, skip_special_tokens=True) for _, c in batch_rows(b)]
    torch.testing.assert_close(micro.extras["task_reward"], torch.tensor(REWARDS))
    grpo.loss(ctx, micro, totals_of(micro))
    torch.testing.assert_close(micro.extras["advantages"].double(),
                               torch.tensor(hand_advantages(REWARDS, 3, scale), dtype=torch.float64),
                               rtol=1e-6, atol=1e-6)


def test_grpo_format_weight_adds_format_reward(tokenizer, acc, student, examples, monkeypatch):
    monkeypatch.setattr(onpolicy, "accuracy_reward", fake_rewards([]))
    fmt = iter([0.0, 1.0, 1.0, 0.0, 1.0, 0.0])
    monkeypatch.setattr(onpolicy, "format_reward", lambda text: next(fmt))
    ctx = make_ctx("grpo", tokenizer, acc, student, num_generations=3, format_weight=0.5,
                   max_completion_length=MAX_C)
    micro = grpo.prepare(ctx, examples[:2])
    want = [r + 0.5 * f for r, f in zip(REWARDS, [0.0, 1.0, 1.0, 0.0, 1.0, 0.0])]
    torch.testing.assert_close(micro.extras["task_reward"], torch.tensor(want))


def grpo_micro(tokenizer, examples, advantages):
    """A hand-made GRPO micro-batch with rows of different lengths (the dataset completions)."""
    prompts = [f"<|im_start|>user\n{e['question']}<|im_end|>\n<|im_start|>assistant\n" for e in examples]
    b = encode_pairs(tokenizer, prompts, [e["solution"] for e in examples], 64, DATA_C)
    return Micro.of(b, advantages=torch.tensor(advantages, dtype=torch.float32),
                    task_reward=torch.tensor(advantages, dtype=torch.float32))


def grpo_ref(model64, rows, adv, loss_type, temperature, L, ref64=None, beta=0.0):
    """-A * ratio per token (+ beta * k3 to ref), aggregated by loss_type, with ratio =
    exp(logp - logp.detach()): value -A, gradient that of -A * logp (the first iteration,
    where the clipped surrogate reduces to the plain policy gradient)."""
    per_row, tok_sum, n_tok = [], 0.0, 0
    ref_all = ref_logits(ref64, rows) if ref64 is not None else [None] * len(rows)
    for (p, c), lg, rl, a in zip(rows, ref_logits(model64, rows), ref_all, adv):
        idx = (torch.arange(len(c)), torch.tensor(c))
        lp = log_softmax_t(lg, temperature)[idx]
        per_tok = -a * torch.exp(lp - lp.detach())
        if rl is not None:
            with torch.no_grad():
                rlp = log_softmax_t(rl, temperature)[idx]
            d = rlp - lp
            per_tok = per_tok + beta * (d.exp() - d - 1)
        per_row.append(per_tok.mean())
        tok_sum, n_tok = tok_sum + per_tok.sum(), n_tok + len(c)
    if loss_type == "grpo":
        return sum(per_row) / len(rows)
    if loss_type == "dapo":
        return tok_sum / n_tok
    return tok_sum / (len(rows) * L)


ADV = [1.5, -0.5, 0.25, -1.25]


@pytest.mark.parametrize("loss_type,temperature", [("grpo", 1.0), ("dapo", 1.0), ("dr_grpo", 1.0), ("grpo", 0.7)])
def test_grpo_gradient_matches_hand_reference(tokenizer, acc, student, examples, loss_type, temperature):
    model = copy.deepcopy(student)
    ctx = make_ctx("grpo", tokenizer, acc, model, num_generations=2, loss_type=loss_type, temperature=temperature)
    micro = grpo_micro(tokenizer, examples, ADV)
    rows = batch_rows(micro.batch)
    assert len({len(c) for _, c in rows}) > 1  # grpo vs dapo only differ with unequal lengths
    loss, metrics = grpo.loss(ctx, micro, totals_of(micro))
    assert share(metrics, "pg/ratio_mean") == pytest.approx(1.0)
    loss.backward()
    m64 = f64(student)
    ref = grpo_ref(m64, rows, ADV, loss_type, temperature, DATA_C)
    ref.backward()
    close(loss, ref, rel=1e-5, abs_=1e-6)
    g, g_ref = model.lm_head.weight.grad, m64.lm_head.weight.grad
    torch.testing.assert_close(g.double(), g_ref, rtol=1e-4, atol=1e-5 * g_ref.abs().max().item())


def test_grpo_loss_types_give_different_gradients(tokenizer, acc, student, examples):
    """Guards the previous test: the three aggregations are distinguishable on this batch."""
    m64 = f64(student)
    rows = batch_rows(grpo_micro(tokenizer, examples, ADV).batch)
    grads = []
    for lt in ("grpo", "dapo", "dr_grpo"):
        m64.zero_grad()
        grpo_ref(m64, rows, ADV, lt, 1.0, DATA_C).backward()
        grads.append(m64.lm_head.weight.grad.clone())
    for a, b in [(0, 1), (0, 2), (1, 2)]:
        a_, b_ = grads[a] / grads[a].norm(), grads[b] / grads[b].norm()
        assert (a_ - b_).norm() > 1e-3 or abs(grads[a].norm() - grads[b].norm()) > 1e-3 * grads[a].norm()


def test_grpo_equal_rewards_give_zero_gradient(tokenizer, acc, student, examples, monkeypatch):
    monkeypatch.setattr(onpolicy, "accuracy_reward", lambda completions, answer, **kw: [1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    model = copy.deepcopy(student)
    ctx = make_ctx("grpo", tokenizer, acc, model, num_generations=3, max_completion_length=MAX_C)
    micro = grpo.prepare(ctx, examples[:2])
    loss, _ = grpo.loss(ctx, micro, totals_of(micro))
    assert torch.count_nonzero(micro.extras["advantages"]) == 0
    loss.backward()
    assert loss.item() == 0.0
    for name, p in model.named_parameters():
        assert p.grad is None or torch.count_nonzero(p.grad) == 0, name


def test_grpo_beta_keeps_a_frozen_reference(tokenizer, acc, student, examples):
    model = copy.deepcopy(student)
    ctx0 = make_ctx("grpo", tokenizer, acc, model, num_generations=2, beta=0.0)
    grpo.setup(ctx0)
    assert "ref" not in ctx0.extras
    ctx = make_ctx("grpo", tokenizer, acc, model, num_generations=2, beta=0.2, loss_type="grpo")
    grpo.setup(ctx)
    ref = ctx.extras["ref"]
    assert ref is not model
    snapshot = {k: v.detach().clone() for k, v in ref.state_dict().items()}
    model_ptrs = {p.data_ptr() for p in model.parameters()}
    assert all(p.data_ptr() not in model_ptrs for p in ref.parameters())
    assert not any(p.requires_grad for p in ref.parameters())

    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    micro = grpo_micro(tokenizer, examples, ADV)
    loss, m = grpo.loss(ctx, micro, totals_of(micro))
    assert share(m, "pg/kl") == pytest.approx(0.0, abs=1e-7)  # policy == reference before any update
    loss.backward()
    opt.step()
    opt.zero_grad()
    for k, v in ref.state_dict().items():
        assert torch.equal(v, snapshot[k]), k  # the reference did not move
    assert not torch.equal(model.lm_head.weight, snapshot["lm_head.weight"])  # the policy did

    # after the update the KL term is active, and the gradient matches the hand reference
    micro = grpo_micro(tokenizer, examples, ADV)  # a new generation batch: ratio 1 again
    loss, m = grpo.loss(ctx, micro, totals_of(micro))
    assert share(m, "pg/kl") > 1e-4
    loss.backward()
    m64, r64 = f64(model), f64(ref)
    rows = batch_rows(micro.batch)
    r = grpo_ref(m64, rows, ADV, "grpo", 1.0, DATA_C, ref64=r64, beta=0.2)
    r.backward()
    close(loss, r, rel=1e-5, abs_=1e-6)
    g, g_ref = model.lm_head.weight.grad, m64.lm_head.weight.grad
    torch.testing.assert_close(g.double(), g_ref, rtol=1e-4, atol=1e-5 * g_ref.abs().max().item())


# --------------------------------------------------------------------------------------
# max_prompt_length on sampled batches
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,kw", [("gkd", dict(lmbda=1.0)), ("gkd", dict(lmbda=0.0, seq_kd=True)),
                                     ("grpo", dict(num_generations=2))])
def test_sampled_batches_truncate_prompts_like_dataset_batches(tokenizer, acc, student, teacher, examples,
                                                               monkeypatch, name, kw):
    """TrainConfig.max_prompt_length: 'Prompts longer than this (in tokens) are truncated from the
    left' -- for every method; sft/kd and GKD's off-policy batches do it (encode_pairs)."""
    monkeypatch.setattr(onpolicy, "accuracy_reward", lambda completions, answer, **k: [0.0] * len(completions))
    ctx = make_ctx(name, tokenizer, acc, student, teacher=teacher, max_prompt_length=6,
                   max_completion_length=4, **kw)
    micro = get_method(name).prepare(ctx, examples[:2])
    G = kw.get("num_generations", 1)
    want = [prompt_ids(tokenizer, e["question"])[-6:] for e in examples[:2] for _ in range(G)]
    assert [p for p, _ in batch_rows(micro.batch)] == want


# --------------------------------------------------------------------------------------
# the engine's totals: micro-batch losses add up to the full-batch loss
# --------------------------------------------------------------------------------------
def _split_sum(method, ctx, micro_fn):
    full = micro_fn(slice(0, 4))
    a, b = micro_fn(slice(0, 1)), micro_fn(slice(1, 4))
    assert a.num_tokens != b.num_tokens
    with torch.no_grad():
        whole = method.loss(ctx, full, totals_of(full))[0].double()
        parts = method.loss(ctx, a, totals_of(a, b))[0].double() + method.loss(ctx, b, totals_of(a, b))[0].double()
    return whole, parts


@pytest.mark.parametrize("name", ["sft", "kd", "gkd"])
def test_micro_batch_losses_sum_to_full_batch_loss(tokenizer, acc, student, teacher, examples, name):
    method = get_method(name)
    kw = dict(temperature=2.0) if name == "kd" else dict(lmbda=0.0) if name == "gkd" else {}
    ctx = make_ctx(name, tokenizer, acc, student, teacher=None if name == "sft" else teacher, **kw)
    whole, parts = _split_sum(method, ctx, lambda s: method.prepare(ctx, examples[s]))
    assert float(parts) == pytest.approx(float(whole), rel=1e-5)
    if name == "kd":  # and the full-batch loss is the global token mean
        with torch.no_grad():
            close(whole, kd_ref(f64(student), f64(teacher), data_rows(tokenizer, examples), 2.0))


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_grpo_micro_batch_losses_sum_to_full_batch_loss(tokenizer, acc, student, examples, loss_type):
    ctx = make_ctx("grpo", tokenizer, acc, student, num_generations=2, loss_type=loss_type)
    whole, parts = _split_sum(grpo, ctx, lambda s: grpo_micro(tokenizer, examples[s], ADV[s]))
    assert float(parts) == pytest.approx(float(whole), rel=1e-5)
