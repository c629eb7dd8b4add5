"""rollout.py: the KV-cache sampler against a no-cache reference, masks, groups, log-probs."""

import pytest
import torch

from reasondistill.models import encode_prompts, render_prompt
from reasondistill.rollout import Rollout, forward_logits, generate, sequence_logprobs

QUESTIONS = ["What is 1+2?", "What is 17-3+8-2+40-11?", "Hi", "What is the answer to 5-9, step by step?"]
MAX_NEW = 12


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return [render_prompt(tokenizer, q) for q in QUESTIONS]


@pytest.fixture(scope="module")
def model(tiny_model):
    return tiny_model.eval()


def seeded(seed=1234):
    return torch.Generator().manual_seed(seed)


def reference_generate(model, prompt_ids, G, max_new, temperature, top_p, greedy, eos, seed):
    """One row at a time, no padding, no cache: the full sequence is recomputed every step.

    Uses the documented randomness contract: one float64 uniform per (row, step), drawn
    up front as an (N, max_new) matrix; the first token in vocabulary order whose cumulative
    (top-p truncated) probability exceeds u times the total."""
    rows = [p for p in prompt_ids for _ in range(G)]
    u = None if greedy else torch.rand((len(rows), max_new), generator=seeded(seed), dtype=torch.float64)
    out = []
    with torch.no_grad():
        for r, p in enumerate(rows):
            seq, toks, lps = list(p), [], []
            for t in range(max_new):
                logits = model(torch.tensor([seq])).logits[0, -1].float()
                if greedy:
                    tok = int(logits.argmax())
                    lp = float(torch.log_softmax(logits, -1)[tok])
                else:
                    logp = torch.log_softmax(logits / temperature, -1)
                    probs = logp.exp()
                    order = torch.argsort(probs, descending=True, stable=True)
                    sp = probs[order]
                    keep = torch.zeros_like(probs, dtype=torch.bool)
                    keep[order] = (torch.cumsum(sp, 0) - sp) < top_p
                    cdf = torch.cumsum(torch.where(keep, probs, torch.zeros_like(probs)).double(), 0)
                    tok = min(int((cdf <= u[r, t] * cdf[-1]).sum()), len(cdf) - 1)
                    lp = float(logp[tok])
                toks.append(tok)
                lps.append(lp)
                seq.append(tok)
                if tok in eos:
                    break
            out.append((toks, lps, tok not in eos))
    return out


def assert_matches_reference(roll, ref, atol=1e-5):
    assert roll.completion_ids.shape[1] == max(len(t) for t, _, _ in ref)
    for r, (toks, lps, trunc) in enumerate(ref):
        n = len(toks)
        assert roll.completion_ids[r, :n].tolist() == toks, f"row {r}"
        assert roll.completion_mask[r].tolist() == [1] * n + [0] * (roll.completion_ids.shape[1] - n)
        assert (roll.completion_ids[r, n:] == roll.pad_token_id).all()
        torch.testing.assert_close(roll.logprobs[r, :n], torch.tensor(lps), atol=atol, rtol=0)
        assert (roll.logprobs[r, n:] == 0).all()
        assert bool(roll.truncated[r]) == trunc


@pytest.mark.parametrize("G", [1, 2])
def test_kv_cache_greedy_equals_no_cache_reference(model, tokenizer, prompts, G):
    ids = encode_prompts(tokenizer, prompts)
    assert len({len(p) for p in ids}) == len(ids)  # different lengths -> left padding is exercised
    roll = generate(model, tokenizer, prompts, num_generations=G, max_new_tokens=MAX_NEW, do_sample=False)
    ref = reference_generate(model, ids, G, MAX_NEW, 1.0, 1.0, True, [tokenizer.eos_token_id], None)
    assert_matches_reference(roll, ref)
    assert roll.temperature == 1.0


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 1.0), (1.3, 0.8)])
def test_kv_cache_sampling_equals_no_cache_reference(model, tokenizer, prompts, temperature, top_p):
    ids = encode_prompts(tokenizer, prompts)
    eos = list(range(100, 160))  # a list of stop ids: rows finish at different steps (row compaction)
    roll = generate(model, tokenizer, prompts, num_generations=2, max_new_tokens=MAX_NEW, temperature=temperature,
                    top_p=top_p, eos_token_id=eos, generator=seeded(7))
    ref = reference_generate(model, ids, 2, MAX_NEW, temperature, top_p, False, eos, 7)
    assert_matches_reference(roll, ref)
    lengths = {len(t) for t, _, _ in ref}
    assert len(lengths) > 1  # some rows stopped early, others went on
    assert roll.temperature == temperature


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 1.0), (0.7, 0.5)])
def test_logprobs_equal_sequence_logprobs(model, tokenizer, prompts, temperature, top_p):
    roll = generate(model, tokenizer, prompts, num_generations=2, max_new_tokens=MAX_NEW, temperature=temperature,
                    top_p=top_p, generator=seeded(3))
    recomputed = sequence_logprobs(model, roll, temperature=roll.temperature)
    torch.testing.assert_close(recomputed, roll.logprobs, atol=1e-5, rtol=0)
    assert (recomputed[roll.completion_mask == 0] == 0).all()
    # the same numbers from the raw completion logits
    logits = forward_logits(model, roll, batch_size=3)
    assert logits.shape == (*roll.completion_ids.shape, model.config.vocab_size)
    lp = torch.log_softmax(logits / temperature, -1).gather(-1, roll.completion_ids[..., None])[..., 0]
    torch.testing.assert_close(lp * roll.completion_mask, roll.logprobs, atol=1e-5, rtol=0)


def test_sequence_logprobs_has_grad(make_model, tokenizer, prompts):
    m = make_model(len(tokenizer), seed=5, hidden_size=32, num_hidden_layers=1)
    m.train()
    roll = generate(m, tokenizer, prompts, max_new_tokens=4, generator=seeded())
    assert m.training  # mode restored
    assert not roll.logprobs.requires_grad
    lp = sequence_logprobs(m, roll, batch_size=2)
    assert lp.requires_grad
    lp.sum().backward()
    assert m.lm_head.weight.grad is not None and m.lm_head.weight.grad.abs().sum() > 0


def _eos_biased_model(make_model, tokenizer, prompts):
    """A model for which EOS is likely but not certain: the lm_head row of EOS is pushed
    toward the average final hidden state."""
    m = make_model(len(tokenizer), seed=11)
    m.eval()
    eos = tokenizer.eos_token_id
    ids = encode_prompts(tokenizer, prompts)
    with torch.no_grad():
        h = torch.cat([m(torch.tensor([p]), output_hidden_states=True).hidden_states[-1][0] for p in ids])
        d = h.mean(0) / h.mean(0).norm()
        m.lm_head.weight[eos] += 0.7 * d * (h @ d).mean().sign()  # ~half the rows stop within 20 tokens
    return m


def test_stop_at_eos_masks_and_pads(make_model, tokenizer, prompts):
    m = _eos_biased_model(make_model, tokenizer, prompts)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    roll = generate(m, tokenizer, prompts, num_generations=4, max_new_tokens=20, generator=seeded(0))
    C = roll.completion_ids.shape[1]
    ended_early = 0
    for r in range(len(roll)):
        ids, mask = roll.completion_ids[r].tolist(), roll.completion_mask[r].tolist()
        n = sum(mask)
        assert mask == [1] * n + [0] * (C - n)
        if eos in ids[:n]:
            assert ids.index(eos) == n - 1  # the mask covers the EOS token and stops there
            assert ids[n:] == [pad] * (C - n)
            assert not roll.truncated[r]
            ended_early += n < C
        else:
            assert n == 20 and roll.truncated[r]
    assert ended_early >= 2 and 0 < roll.truncation_rate < 1
    texts = roll.texts(tokenizer)
    assert all("<|im_end|>" not in t for t in texts)
    torch.testing.assert_close(sequence_logprobs(m, roll), roll.logprobs, atol=1e-5, rtol=0)


def test_num_generations_groups_consecutive_rows(model, tokenizer, prompts):
    G = 3
    roll = generate(model, tokenizer, prompts[:2], num_generations=G, max_new_tokens=6, generator=seeded(9))
    assert roll.group_index.tolist() == [0, 0, 0, 1, 1, 1] and roll.num_generations == G
    p0, p1 = encode_prompts(tokenizer, prompts[:2])
    for r in range(6):
        real = roll.prompt_ids[r][roll.prompt_mask[r].bool()].tolist()
        assert real == (p0 if r < G else p1)
    assert len({tuple(x) for x in roll.completion_ids[:G].tolist()}) > 1  # samples within a group differ
    # same as listing each prompt G times by hand (the cache is shared, the randomness is not)
    manual = generate(model, tokenizer, [p0] * G + [p1] * G, max_new_tokens=6, generator=seeded(9))
    assert torch.equal(manual.completion_ids, roll.completion_ids)
    torch.testing.assert_close(manual.logprobs, roll.logprobs, atol=1e-5, rtol=0)
    greedy = generate(model, tokenizer, prompts[:2], num_generations=G, max_new_tokens=6, do_sample=False)
    assert torch.equal(greedy.completion_ids[0], greedy.completion_ids[G - 1])


def test_tiny_top_p_equals_greedy(model, tokenizer, prompts):
    greedy = generate(model, tokenizer, prompts, max_new_tokens=MAX_NEW, do_sample=False)
    nucleus = generate(model, tokenizer, prompts, max_new_tokens=MAX_NEW, top_p=1e-6, generator=seeded())
    assert torch.equal(greedy.completion_ids, nucleus.completion_ids)
    torch.testing.assert_close(greedy.logprobs, nucleus.logprobs, atol=1e-6, rtol=0)
    zero_t = generate(model, tokenizer, prompts, max_new_tokens=MAX_NEW, temperature=0.0)
    assert torch.equal(greedy.completion_ids, zero_t.completion_ids)


def test_max_new_tokens_truncation(model, tokenizer, prompts):
    roll = generate(model, tokenizer, prompts, max_new_tokens=5, eos_token_id=[], generator=seeded())
    assert roll.completion_ids.shape == (len(prompts), 5)
    assert roll.completion_mask.all() and roll.truncated.all() and roll.truncation_rate == 1.0


def test_reproducible_with_seed_and_independent_of_batch_size(model, tokenizer, prompts):
    kw = dict(num_generations=2, max_new_tokens=MAX_NEW, eos_token_id=list(range(100, 130)))
    a = generate(model, tokenizer, prompts, generator=seeded(42), **kw)
    b = generate(model, tokenizer, prompts, generator=seeded(42), **kw)
    c = generate(model, tokenizer, prompts, generator=seeded(43), **kw)
    chunked = generate(model, tokenizer, prompts, generator=seeded(42), batch_size=3, **kw)
    assert torch.equal(a.completion_ids, b.completion_ids) and torch.equal(a.logprobs, b.logprobs)
    assert not torch.equal(a.completion_ids, c.completion_ids)
    assert torch.equal(chunked.completion_ids, a.completion_ids)
    assert torch.equal(chunked.prompt_ids, a.prompt_ids) and torch.equal(chunked.group_index, a.group_index)
    torch.testing.assert_close(chunked.logprobs, a.logprobs, atol=1e-5, rtol=0)


def test_rollout_helpers(model, tokenizer, prompts):
    roll = generate(model, tokenizer, prompts, max_new_tokens=4, do_sample=False)
    N, P = roll.prompt_ids.shape
    assert roll.full_ids().shape == (N, P + 4) and roll.full_mask().shape == (N, P + 4)
    pos = roll.full_position_ids()
    assert (pos[:, -1] == roll.prompt_mask.sum(1) + roll.lengths - 1).all()
    assert len(roll.to("cpu")) == N and roll.to("cpu").temperature == roll.temperature
    sub = roll.select([0, 2])
    assert isinstance(sub, Rollout) and torch.equal(sub.completion_ids, roll.completion_ids[[0, 2]])
    both = Rollout.cat([roll.select(slice(0, 1)), roll.select(slice(1, N))])
    assert torch.equal(both.full_ids(), roll.full_ids())
    assert roll.texts(tokenizer) == [tokenizer.decode(r, skip_special_tokens=True) for r in roll.completion_ids]
    with pytest.raises(ValueError, match="empty"):
        generate(model, tokenizer, [[]])


def test_generation_config_stop_ids_also_stop(make_model, tokenizer, prompts):
    """Instruct models list extra stop ids in generation_config; sampling must honour them."""
    m = make_model(len(tokenizer), seed=3)
    free = generate(m, tokenizer, prompts, max_new_tokens=6, do_sample=False)
    first = free.completion_ids[0, 0].item()
    assert first != tokenizer.eos_token_id
    m.generation_config.eos_token_id = [first]
    stopped = generate(m, tokenizer, prompts, max_new_tokens=6, do_sample=False)
    assert stopped.completion_mask[0].tolist()[:2] == [1, 0]  # stopped right after that token
    assert not stopped.truncated[0]
