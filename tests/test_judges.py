"""The VCRD validity judges (reasondistill/judges.py): both PRM adapters on tiny random models
built from configs (a Qwen2.5-Math-PRM-style token classifier read at <extra_0>, with another
tokenizer so the text is re-encoded; a Skywork-style value head read at the last token, same
tokenizer): scores in [0, 1], equal to one plain forward per pair at the right position; the
arith and prob judges against their definitions."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from reasondistill import judges
from reasondistill.tasks import arith


def _queries(tokenizer, n=2):
    probs = arith.generate("train", n, seed=3)
    out = []
    for p in probs:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": p["question"]}], tokenize=False,
                                               add_generation_prompt=True)
        pids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        cids = tokenizer(p["solution"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        L = len(cids)
        g = torch.Generator().manual_seed(len(out))
        other = torch.randint(3, len(tokenizer), (L,), generator=g).tolist()
        out.append(judges.Query(p["question"], pids, cids, list(range(L)) * 2, cids + other))
    return out


def _config(vocab, **kw):
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, intermediate_size=64, max_position_embeddings=512, **kw)


@pytest.fixture(scope="module")
def classifier_prm(tmp_path_factory, tokenizer, clone_tok):
    from transformers import Qwen2ForTokenClassification

    jtok = clone_tok(tokenizer)
    jtok.add_special_tokens({"additional_special_tokens": ["<extra_0>"]})
    torch.manual_seed(0)
    m = Qwen2ForTokenClassification(_config(len(jtok), num_labels=2))
    d = tmp_path_factory.mktemp("qwen_prm")
    m.save_pretrained(d)
    jtok.save_pretrained(str(d))
    return d


@pytest.fixture(scope="module")
def value_prm(tmp_path_factory, tokenizer):
    from transformers import Qwen2Model

    torch.manual_seed(1)
    m = Qwen2Model(_config(len(tokenizer)))
    d = tmp_path_factory.mktemp("skywork_prm")
    m.save_pretrained(d)
    tokenizer.save_pretrained(str(d))
    torch.manual_seed(2)
    save_file({"v_head.summary.weight": torch.randn(1, 32), "v_head.summary.bias": torch.randn(1)},
              str(d / "value_head.safetensors"))
    return d


def _naive(judge, q):
    """One plain forward per pair, the score read at the last token of its own sequence."""
    prefix, items = judge._pairs(q)
    out = []
    for k, sfx in items:
        ids = prefix[:k] + sfx
        h = judge.backbone(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
        out.append(float(judge.read(h)))
    return torch.tensor(out)


def test_classifier_prm_reencodes_and_reads_at_separator(classifier_prm, tokenizer):
    backbone, head, kind, jtok = judges.load_prm(str(classifier_prm))
    assert kind == "classifier"
    judge = judges.PRMJudge(backbone, head, kind, jtok, tokenizer, pack_size=16)
    assert not judge.same_ids and judge.sep_ids == [jtok.convert_tokens_to_ids("<extra_0>")]
    qs = _queries(tokenizer)
    scores = judge.score(qs)
    for q, s in zip(qs, scores):
        assert s.shape == (len(q.positions),) and ((s >= 0) & (s <= 1)).all()
        assert torch.allclose(s, _naive(judge, q), atol=1e-5)
        prefix, items = judge._pairs(q)
        prompt = judge._prompt_text(q.question)
        for (k, sfx), t, a in zip(items, q.positions, q.candidates):
            assert sfx[-1] == judge.sep_ids[0]  # read at <extra_0>
            text = jtok.decode(prefix[:k] + sfx[:-1])
            cand = "" if a == tokenizer.eos_token_id else tokenizer.decode([a])
            assert text == prompt + tokenizer.decode(q.completion_ids[:t]) + cand


def test_value_prm_same_ids_last_token(value_prm, tokenizer):
    backbone, head, kind, jtok = judges.load_prm(str(value_prm))
    assert kind == "value"
    judge = judges.PRMJudge(backbone, head, kind, jtok, tokenizer, pack_size=7)
    assert judge.same_ids and judge.sep_ids == []
    qs = _queries(tokenizer)
    for q, s in zip(qs, judge.score(qs)):
        assert ((s >= 0) & (s <= 1)).all()
        P = len(jtok(judge._prompt_text(q.question), add_special_tokens=False)["input_ids"])
        ref = []
        for t, a in zip(q.positions, q.candidates):  # prompt + y_<t + a, the value at a
            ids = jtok(judge._prompt_text(q.question), add_special_tokens=False)["input_ids"] + q.completion_ids[:t]
            ids = ids + ([] if a == tokenizer.eos_token_id else [a])
            h = backbone(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
            ref.append(float(torch.sigmoid(head(h))))
        assert P > 0 and torch.allclose(s, torch.tensor(ref), atol=1e-5)


@pytest.mark.parametrize("mode", ["word", "step"])
def test_candidate_completion(value_prm, tokenizer, mode):
    backbone, head, kind, jtok = judges.load_prm(str(value_prm))
    judge = judges.PRMJudge(backbone, head, kind, jtok, tokenizer, candidate_tokens=mode)
    q = _queries(tokenizer, 1)[0]
    L = len(q.completion_ids)
    q = judges.Query(q.question, q.prompt_ids, q.completion_ids, list(range(L)), list(q.completion_ids))
    prefix, items = judge._pairs(q)
    pieces = [tokenizer.decode([i]) for i in q.completion_ids]
    for (k, sfx), t in zip(items, q.positions):
        text = tokenizer.decode(sfx)
        if mode == "step" and q.completion_ids[t] != tokenizer.eos_token_id:
            end = t + len(sfx)
            assert text.endswith("\n") or end >= L - 1  # a step ends at its newline (or the answer's end)
        if mode == "word" and pieces[t][-1:].isdigit() and t + 1 < L and pieces[t + 1][:1].isdigit():
            assert len(sfx) >= 2  # the number is completed
    assert torch.allclose(judge.score([q])[0], _naive(judge, q), atol=1e-5)


def test_arith_judge_matches_rule(tokenizer):
    judge = judges.ArithJudge(tokenizer)
    question = "What is 7-7-8+9?"
    sol = "7-7=0\n0-8=-8\n-8+9=1\n\\boxed{1}"
    ids = tokenizer(sol, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    wrong = tokenizer("5", add_special_tokens=False)["input_ids"][0]
    t = len(tokenizer("7-7=", add_special_tokens=False)["input_ids"])
    q = judges.Query(question, [], ids, [t, t, len(ids) - 1], [ids[t], wrong, tokenizer.eos_token_id])
    s = judge.score([q])[0]
    assert s.tolist() == pytest.approx([1.0, arith.validity_score(question, "7-7=", "5"), 1.0])
    assert s[1] < 1.0


def test_prob_judge_score_is_teacher_probability(tokenizer, tiny_model):
    judge = judges.ProbJudge(tokenizer, tiny_model.eval())
    q = _queries(tokenizer, 1)[0]
    s = judge.score([q])[0]
    with torch.no_grad():
        p = torch.softmax(tiny_model(input_ids=torch.tensor([q.prompt_ids + q.completion_ids])).logits[0], -1)
    P = len(q.prompt_ids)
    ref = torch.stack([p[P - 1 + t, a] for t, a in zip(q.positions, q.candidates)])
    assert torch.allclose(s, ref, atol=1e-6)
