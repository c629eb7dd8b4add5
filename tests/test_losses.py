"""reasondistill.losses against brute-force float64 references written with explicit loops.

Every reference below is deliberately naive (Python floats, math.exp/math.log, for-loops) so
that it shares no code path with the vectorised implementation it checks.
"""

import math

import pytest
import torch

from reasondistill import losses as L

F64 = torch.float64


def _randn(*shape, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=F64) * scale


# ----------------------------------------------------------------------------------------
# brute-force references
# ----------------------------------------------------------------------------------------


def ref_softmax(row, temperature=1.0):
    z = [float(x) / temperature for x in row]
    mx = max(z)
    e = [math.exp(x - mx) for x in z]
    s = sum(e)
    return [x / s for x in e]


def ref_kl(a, b):
    return sum(ai * math.log(ai / bi) for ai, bi in zip(a, b) if ai > 0)


def ref_divergence(kind, s_row, t_row, temperature=1.0, beta=0.5, alpha=0.1):
    q = ref_softmax(s_row, temperature)  # student
    p = ref_softmax(t_row, temperature)  # teacher
    if kind == "forward_kl":
        return ref_kl(p, q)
    if kind == "reverse_kl":
        return ref_kl(q, p)
    if kind == "generalized_jsd":
        m = [beta * pi + (1 - beta) * qi for pi, qi in zip(p, q)]
        return beta * ref_kl(p, m) + (1 - beta) * ref_kl(q, m)
    if kind == "skew_kl":
        return ref_kl(p, [alpha * pi + (1 - alpha) * qi for pi, qi in zip(p, q)])
    if kind == "skew_reverse_kl":
        return ref_kl(q, [(1 - alpha) * pi + alpha * qi for pi, qi in zip(p, q)])
    raise AssertionError(kind)


def call(kind, s, t, temperature=1.0, beta=0.5, alpha=0.1):
    if kind == "generalized_jsd":
        return L.generalized_jsd(s, t, beta=beta, temperature=temperature)
    if kind == "skew_kl":
        return L.skew_kl(s, t, alpha=alpha, temperature=temperature)
    if kind == "skew_reverse_kl":
        return L.skew_reverse_kl(s, t, alpha=alpha, temperature=temperature)
    return getattr(L, kind)(s, t, temperature=temperature)


KINDS = ["forward_kl", "reverse_kl", "generalized_jsd", "skew_kl", "skew_reverse_kl"]


# ----------------------------------------------------------------------------------------
# divergences
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("temperature", [1.0, 1.7])
def test_divergence_matches_reference(kind, temperature):
    B, T, V = 2, 3, 5
    s, t = _randn(B, T, V, seed=1, scale=2), _randn(B, T, V, seed=2, scale=2)
    got = call(kind, s, t, temperature, beta=0.3, alpha=0.2)
    assert got.shape == (B, T) and got.dtype == F64
    for b in range(B):
        for i in range(T):
            want = ref_divergence(kind, s[b, i].tolist(), t[b, i].tolist(), temperature, 0.3, 0.2)
            assert got[b, i].item() == pytest.approx(want, rel=1e-12, abs=1e-14)


@pytest.mark.parametrize("kind", KINDS)
def test_divergence_zero_on_equal_inputs_and_nonnegative(kind):
    s = _randn(3, 4, 7, seed=3, scale=3)
    assert torch.allclose(call(kind, s, s.clone()), torch.zeros(3, 4, dtype=F64), atol=1e-14)
    t = _randn(3, 4, 7, seed=4, scale=3)
    assert (call(kind, s, t) > 0).all()


def test_generalized_jsd_endpoints_are_the_two_kls():
    s, t = _randn(2, 3, 6, seed=5), _randn(2, 3, 6, seed=6)
    assert torch.equal(L.generalized_jsd(s, t, beta=0.0), L.forward_kl(s, t))
    assert torch.equal(L.generalized_jsd(s, t, beta=1.0), L.reverse_kl(s, t))
    assert torch.equal(
        L.generalized_jsd(s, t, beta=0.0, temperature=2.0), L.forward_kl(s, t, temperature=2.0)
    )
    # no NaN at the end points, in value or gradient
    s.requires_grad_(True)
    for beta in (0.0, 1.0):
        (g,) = torch.autograd.grad(L.generalized_jsd(s, t, beta=beta).sum(), s)
        assert torch.isfinite(g).all()


def test_skew_endpoints_and_continuity():
    s, t = _randn(2, 3, 6, seed=7), _randn(2, 3, 6, seed=8)
    assert torch.equal(L.skew_kl(s, t, alpha=0.0), L.forward_kl(s, t))
    assert torch.equal(L.skew_reverse_kl(s, t, alpha=0.0), L.reverse_kl(s, t))
    assert torch.equal(L.skew_kl(s, t, alpha=1.0), torch.zeros(2, 3, dtype=F64))
    assert torch.equal(L.skew_reverse_kl(s, t, alpha=1.0), torch.zeros(2, 3, dtype=F64))
    # the mixture formula itself tends to the end points (not only the special cases)
    assert torch.allclose(L.skew_kl(s, t, alpha=1e-9), L.forward_kl(s, t), atol=1e-7)
    assert torch.allclose(L.skew_reverse_kl(s, t, alpha=1e-9), L.reverse_kl(s, t), atol=1e-7)
    assert L.skew_kl(s, t, alpha=1 - 1e-9).abs().max() < 1e-7


@pytest.mark.parametrize("kind", KINDS)
def test_temperature_divides_both_logits(kind):
    s, t = _randn(2, 3, 5, seed=9, scale=3), _randn(2, 3, 5, seed=10, scale=3)
    got = call(kind, s, t, temperature=2.0)
    want = call(kind, s / 2, t / 2)
    assert torch.allclose(got, want, rtol=1e-13, atol=1e-15)
    assert not torch.allclose(got, call(kind, s, t))


def test_vocab_mismatch_is_an_error_with_a_hint():
    with pytest.raises(ValueError, match="vocab_limit"):
        L.reverse_kl(_randn(1, 2, 5), _randn(1, 2, 6))


@pytest.mark.parametrize("kind", KINDS)
def test_masked_vocabulary_entries_stay_finite(kind):
    """-inf logits at the same entries in both models (e.g. blocked tokens) give finite values
    and gradients, equal to the divergence over the remaining entries."""
    s, t = _randn(2, 3, 6, seed=11), _randn(2, 3, 6, seed=12)
    s_inf, t_inf = s.clone(), t.clone()
    s_inf[..., 4:] = float("-inf")
    t_inf[..., 4:] = float("-inf")
    s_inf.requires_grad_(True)
    val = call(kind, s_inf, t_inf)
    (g,) = torch.autograd.grad(val.sum(), s_inf)
    assert torch.isfinite(val).all() and torch.isfinite(g).all()
    assert torch.allclose(val, call(kind, s[..., :4], t[..., :4]), atol=1e-13)


# ----------------------------------------------------------------------------------------
# masked reductions
# ----------------------------------------------------------------------------------------


def test_masked_mean_and_sum():
    x = torch.tensor([[1.0, 2.0, float("nan")], [4.0, float("inf"), 6.0]], dtype=F64)
    m = torch.tensor([[1, 1, 0], [1, 0, 1]])
    assert L.masked_sum(x, m).item() == 13.0
    assert L.masked_mean(x, m).item() == 13.0 / 4
    assert L.masked_mean(x, m, dim=-1).tolist() == [1.5, 5.0]
    assert L.masked_sum(x, m.bool(), dim=-1).tolist() == [3.0, 10.0]


def test_masked_mean_empty_mask_is_zero_with_finite_grad():
    x = _randn(2, 3).requires_grad_(True)
    m = torch.zeros(2, 3)
    out = L.masked_mean(x, m)
    assert out.item() == 0.0 and not torch.isnan(out)
    (g,) = torch.autograd.grad(out, x)
    assert torch.equal(g, torch.zeros_like(g))
    row = L.masked_mean(x, torch.tensor([[1, 1, 0], [0, 0, 0]]), dim=-1)
    assert torch.isfinite(row).all() and row[1].item() == 0.0


# ----------------------------------------------------------------------------------------
# advantages and returns
# ----------------------------------------------------------------------------------------


def test_group_advantages_three_scales_by_hand():
    r = torch.tensor([1.0, 2.0, 3.0, 4.0, 4.0, 4.0], dtype=F64)
    eps = 1e-4
    # groups [1,2,3] (mean 2, unbiased std 1) and [4,4,4] (mean 4, std 0)
    want_group = [-1 / (1 + eps), 0.0, 1 / (1 + eps), 0.0, 0.0, 0.0]
    # batch std of [1,2,3,4,4,4]: mean 3, squared deviations 4+1+0+1+1+1 = 8, / 5 -> sqrt(1.6)
    bstd = math.sqrt(1.6)
    want_batch = [-1 / (bstd + eps), 0.0, 1 / (bstd + eps), 0.0, 0.0, 0.0]
    want_none = [-1.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    assert L.group_advantages(r, 3, "group").tolist() == pytest.approx(want_group, abs=1e-15)
    assert L.group_advantages(r, 3, "batch").tolist() == pytest.approx(want_batch, abs=1e-15)
    assert L.group_advantages(r, 3, "none").tolist() == pytest.approx(want_none, abs=1e-15)
    # eps is honoured and torch.std's unbiased convention is used
    g2 = L.group_advantages(torch.tensor([0.0, 1.0]), 2, eps=0.5)
    s = torch.tensor([0.0, 1.0]).std().item()  # sqrt(0.5)
    assert g2.tolist() == pytest.approx([-0.5 / (s + 0.5), 0.5 / (s + 0.5)])


def test_group_advantages_singletons_and_bad_sizes():
    r = torch.tensor([1.0, 0.0, 1.0])
    for scale in ("group", "none"):
        assert torch.equal(L.group_advantages(r, 1, scale), torch.zeros(3))
    assert torch.equal(L.group_advantages(torch.tensor([5.0]), 1, "batch"), torch.zeros(1))
    assert torch.isfinite(L.group_advantages(torch.tensor([1, 0, 1, 1]), 2)).all()  # int input
    with pytest.raises(ValueError):
        L.group_advantages(r, 2)
    with pytest.raises(ValueError):
        L.group_advantages(r, 3, scale="bogus")


def ref_reward_to_go(r, m, gamma):
    out = [[0.0] * len(row) for row in r]
    for b in range(len(r)):
        valid = [t for t in range(len(r[b])) if m[b][t]]
        for t in valid:
            out[b][t] = sum(gamma ** (u - t) * r[b][u] for u in valid if u >= t)  # DESIGN: gamma^(u-t)
    return out


def test_reward_to_go_with_a_hole_in_the_mask_by_hand():
    nan = float("nan")
    r = torch.tensor([[1.0, 2.0, nan, 4.0, nan]], dtype=F64)
    m = torch.tensor([[1, 1, 0, 1, 0]])
    # valid positions 0, 1, 3; the contract discounts by gamma^(u-t), so the hole still counts
    # t=3: 4;  t=1: 2 + .25*4 = 3;  t=0: 1 + .5*2 + .125*4 = 2.5
    assert L.reward_to_go(r, m, gamma=0.5).tolist() == [[2.5, 3.0, 0.0, 4.0, 0.0]]
    assert L.reward_to_go(r, m, gamma=1.0).tolist() == [[7.0, 6.0, 0.0, 4.0, 0.0]]


@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_reward_to_go_matches_reference(gamma):
    r = _randn(3, 7, seed=13)
    m = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [0, 0, 1, 0, 1, 1, 0], [0] * 7])
    got = L.reward_to_go(r, m, gamma)
    want = ref_reward_to_go(r.tolist(), m.tolist(), gamma)
    assert torch.allclose(got, torch.tensor(want, dtype=F64), atol=1e-14)


# ----------------------------------------------------------------------------------------
# CMDP rewards (eq. 4)
# ----------------------------------------------------------------------------------------


def _cmdp_inputs():
    kl = torch.tensor(
        [
            [0.1, 0.1, 0.1, 0.1, 7.0],  # never violates (padding KL 7 ignored)
            [2.0, 0.1, 0.3, 7.0, 7.0],  # first token spends the whole budget
            [0.2, 0.3, 0.9, 0.5, 0.1],  # violates mid-way
            [9.0, 0.2, 0.2, 9.0, 0.2],  # left padding and a hole; padding KL must not count
            [1.0, 1.0, 1.0, 1.0, 1.0],  # empty row
        ],
        dtype=F64,
    )
    mask = torch.tensor(
        [[1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 1, 1, 0, 1], [0, 0, 0, 0, 0]]
    )
    task = torch.tensor([1.0, 1.0, 0.5, 1.0, 1.0], dtype=F64)
    return task, kl, mask


def test_cmdp_token_rewards_length_normalized_by_hand():
    task, kl, mask = _cmdp_inputs()
    rew, vio = L.cmdp_token_rewards(task, kl, mask, budget=0.35, penalty=20.0)
    # D = 0.35 * n_valid: rows 1.4, 1.05, 1.75, 1.05, 0
    # row 0: S = 0, .1, .2, .3 -> feasible; task reward at the last valid token (t=3)
    # row 1: S = 0, 2.0, 2.1 -> violated at t=1, 2: -(20 + kl_t)
    # row 2: S = 0, .2, .5, 1.4, 1.9 -> violated at t=4 only (1.75 - 1.9 < 0)
    # row 3: valid t = 1, 2, 4; S = 0, .2, .4 -> feasible; reward at t=4
    want_rew = [
        [0.0, 0.0, 0.0, 1.0, 0.0],
        [0.0, -20.1, -20.3, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.0, -20.1],
        [0.0, 0.0, 0.0, 0.0, 1.0],
        [0.0, 0.0, 0.0, 0.0, 0.0],
    ]
    want_vio = [
        [False] * 5,
        [False, True, True, False, False],
        [False, False, False, False, True],
        [False] * 5,
        [False] * 5,
    ]
    assert vio.dtype == torch.bool and vio.tolist() == want_vio
    assert torch.allclose(rew, torch.tensor(want_rew, dtype=F64), atol=1e-12)


def test_cmdp_token_rewards_sum_budget_by_hand():
    task, kl, mask = _cmdp_inputs()
    rew, vio = L.cmdp_token_rewards(task, kl, mask, budget=1.0, penalty=20.0, budget_mode="sum")
    # D = 1 for every row
    # row 0: S max .3 -> feasible; row 1: S = 0, 2.0, 2.1 -> violated at t=1, 2
    # row 2: S = 0, .2, .5, 1.4, 1.9 -> violated at t=3, 4; row 3: S = 0, .2, .4 -> feasible
    want_rew = [
        [0.0, 0.0, 0.0, 1.0, 0.0],
        [0.0, -20.1, -20.3, 0.0, 0.0],
        [0.0, 0.0, 0.0, -20.5, -20.1],
        [0.0, 0.0, 0.0, 0.0, 1.0],
        [0.0, 0.0, 0.0, 0.0, 0.0],
    ]
    want_vio = [
        [False] * 5,
        [False, True, True, False, False],
        [False, False, False, True, True],
        [False] * 5,
        [False] * 5,
    ]
    assert vio.tolist() == want_vio
    assert torch.allclose(rew, torch.tensor(want_rew, dtype=F64), atol=1e-12)


def test_cmdp_budget_boundary_is_feasible_and_violation_at_first_token():
    # D - S_t = 0 exactly is feasible (the paper's ">= 0"); binary-exact numbers
    kl = torch.tensor([[0.25, 0.25, 0.125]], dtype=F64)
    m = torch.ones(1, 3)
    rew, vio = L.cmdp_token_rewards(torch.tensor([1.0]), kl, m, 0.5, 10.0, "sum")
    assert vio.tolist() == [[False, False, False]] and rew.tolist() == [[0.0, 0.0, 1.0]]
    # a budget already negative is violated from the first token on (S_0 = 0)
    rew, vio = L.cmdp_token_rewards(1.0, kl, m, -0.5, 10.0, "sum")
    assert vio.tolist() == [[True, True, True]] and rew.tolist() == [[-10.25, -10.25, -10.125]]


# ----------------------------------------------------------------------------------------
# sampled-token log-probs and TGPO guidance
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_token_logprobs_matches_reference_and_autograd(temperature):
    B, T, V = 2, 3, 6
    logits = _randn(B, T, V, seed=14, scale=2).requires_grad_(True)
    ids = torch.tensor([[0, 5, 2], [3, 3, 1]])
    got = L.sampled_token_logprobs(logits, ids, temperature)
    for b in range(B):
        for t in range(T):
            p = ref_softmax(logits[b, t].tolist(), temperature)
            assert got[b, t].item() == pytest.approx(math.log(p[ids[b, t]]), rel=1e-13)
    w = _randn(B, T, seed=15)
    (g,) = torch.autograd.grad((got * w).sum(), logits)
    ref = torch.log_softmax(logits / temperature, -1).gather(-1, ids[..., None]).squeeze(-1)
    (g_ref,) = torch.autograd.grad((ref * w).sum(), logits)
    assert torch.allclose(g, g_ref, atol=1e-14)
    assert torch.autograd.gradcheck(
        lambda x: L.sampled_token_logprobs(x, ids, temperature), (logits,)
    )


def test_sampled_token_logprobs_half_precision_returns_float32():
    logits = _randn(2, 3, 50, seed=16, scale=3).to(torch.bfloat16)
    ids = torch.randint(0, 50, (2, 3), generator=torch.Generator().manual_seed(0))
    got = L.sampled_token_logprobs(logits, ids)
    ref = torch.log_softmax(logits.float(), -1).gather(-1, ids[..., None]).squeeze(-1)
    assert got.dtype == torch.float32 and torch.allclose(got, ref, atol=1e-6)


def test_tgpo_guidance_nll_matches_reference():
    B, T, V = 3, 4, 5
    logits = _randn(B, T, V, seed=17)
    ids = torch.tensor([[1, 2, 3, 4], [0, 0, 1, 1], [4, 3, 2, 1]])
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 0, 0]])
    rows = []
    for b in range(B):
        terms = [
            -math.log(ref_softmax(logits[b, t].tolist())[ids[b, t]])
            for t in range(T)
            if mask[b, t]
        ]
        rows.append(sum(terms) / len(terms) if terms else 0.0)
    want = sum(rows) / B  # the empty row contributes 0 and counts as a row
    assert L.tgpo_guidance_nll(logits, ids, mask).item() == pytest.approx(want, rel=1e-13)
    assert L.tgpo_guidance_nll(logits, ids, mask, normalizer=6).item() == pytest.approx(
        sum(rows) / 6, rel=1e-13
    )
    assert L.tgpo_guidance_nll(logits, ids, torch.zeros(B, T)).item() == 0.0


# ----------------------------------------------------------------------------------------
# policy-gradient loss
# ----------------------------------------------------------------------------------------


def ref_pg_loss(lp, old, adv, mask, loss_type, el, eh, ref=None, beta=0.0, L_max=None):
    B, T = len(lp), len(lp[0])
    per = [[0.0] * T for _ in range(B)]
    for b in range(B):
        for t in range(T):
            a = adv[b][t] if isinstance(adv[b], list) else adv[b]
            ratio = math.exp(lp[b][t] - old[b][t])
            clipped = min(max(ratio, 1 - el), 1 + eh)
            per[b][t] = -min(ratio * a, clipped * a)
            if ref is not None and beta > 0:
                d = ref[b][t] - lp[b][t]
                per[b][t] += beta * (math.exp(d) - d - 1)
    if loss_type == "grpo":
        total = 0.0
        for b in range(B):
            n = sum(mask[b])
            total += sum(per[b][t] for t in range(T) if mask[b][t]) / n if n else 0.0
        return total / B
    s = sum(per[b][t] for b in range(B) for t in range(T) if mask[b][t])
    if loss_type == "dapo":
        n = sum(sum(row) for row in mask)
        return s / n if n else 0.0
    return s / (B * L_max)


def _pg_inputs(B=4, T=5, seed=20):
    lp = _randn(B, T, seed=seed, scale=0.3) - 1.0
    old = lp + _randn(B, T, seed=seed + 1, scale=0.3)
    ref = lp + _randn(B, T, seed=seed + 2, scale=0.3)
    adv = _randn(B, seed=seed + 3)
    lengths = [5, 3, 1, 4][:B]
    mask = torch.tensor([[1] * n + [0] * (T - n) for n in lengths])
    return lp, old, ref, adv, mask


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_policy_gradient_loss_matches_reference(loss_type, beta):
    lp, old, ref, adv, mask = _pg_inputs()
    loss, stats = L.policy_gradient_loss(
        lp, old, adv, mask, loss_type, 0.2, 0.28, ref_logprobs=ref, beta=beta,
        max_completion_length=6,
    )
    want = ref_pg_loss(
        lp.tolist(), old.tolist(), adv.tolist(), mask.tolist(), loss_type, 0.2, 0.28,
        ref.tolist(), beta, 6,
    )
    assert loss.item() == pytest.approx(want, rel=1e-12)
    assert set(stats) >= {"clip_ratio", "clip_ratio_low", "clip_ratio_high", "kl"}
    assert all(isinstance(v, float) for v in stats.values())
    # per-token advantages give the same result as the broadcast [B] form
    loss_tok, _ = L.policy_gradient_loss(
        lp, old, adv[:, None].expand_as(lp), mask, loss_type, 0.2, 0.28, ref_logprobs=ref,
        beta=beta, max_completion_length=6,
    )
    assert loss_tok.item() == pytest.approx(loss.item(), rel=1e-14)


def test_policy_gradient_clipping_zeroes_the_clipped_side():
    # tokens: (ratio, A) = (1.5, +1) clipped, (0.5, +1) not, (0.5, -1) clipped, (1.5, -1) not
    old = torch.zeros(1, 4, dtype=F64)
    lp = torch.log(torch.tensor([[1.5, 0.5, 0.5, 1.5]], dtype=F64)).requires_grad_(True)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]], dtype=F64)
    mask = torch.ones(1, 4)
    loss, stats = L.policy_gradient_loss(lp, old, adv, mask, "dapo", 0.2, 0.2)
    (g,) = torch.autograd.grad(loss, lp)
    # d/dlp of -ratio*A/4 = -ratio*A/4 on the unclipped side, 0 on the clipped side
    assert g[0].tolist() == pytest.approx([0.0, -0.5 / 4, 0.0, 1.5 / 4], abs=1e-15)
    assert loss.item() == pytest.approx(-(1.2 + 0.5 - 0.8 - 1.5) / 4, rel=1e-14)
    assert stats["clip_ratio_high"] == 0.25 and stats["clip_ratio_low"] == 0.25
    assert stats["clip_ratio"] == 0.5


def test_policy_gradient_k3_term():
    lp = torch.tensor([[-1.0, -2.0, -0.5]], dtype=F64, requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0, -0.5]], dtype=F64)
    mask = torch.tensor([[1, 1, 0]])
    zero_adv = torch.zeros(1, dtype=F64)
    loss, stats = L.policy_gradient_loss(
        lp, lp.detach(), zero_adv, mask, "grpo", ref_logprobs=ref, beta=0.1
    )
    d = [-0.5, 1.0]  # ref - lp at the two counted tokens
    k3 = [math.exp(x) - x - 1 for x in d]
    assert loss.item() == pytest.approx(0.1 * sum(k3) / 2, rel=1e-14)
    assert stats["kl"] == pytest.approx(sum(k3) / 2, rel=1e-14)
    (g,) = torch.autograd.grad(loss, lp)
    # d k3 / d lp = 1 - exp(ref - lp)
    assert g[0].tolist() == pytest.approx([0.1 * (1 - math.exp(x)) / 2 for x in d] + [0.0])
    # beta = 0: the kl is reported but not added
    loss0, stats0 = L.policy_gradient_loss(lp, lp.detach(), zero_adv, mask, ref_logprobs=ref)
    assert loss0.item() == 0.0 and stats0["kl"] == pytest.approx(stats["kl"])


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_policy_gradient_empty_mask_is_zero(loss_type):
    lp = _randn(2, 3).requires_grad_(True)
    old = torch.full((2, 3), float("-inf"), dtype=F64)  # garbage at padding must not leak
    loss, stats = L.policy_gradient_loss(
        lp, old, torch.ones(2, dtype=F64), torch.zeros(2, 3), loss_type, max_completion_length=3
    )
    (g,) = torch.autograd.grad(loss, lp)
    assert loss.item() == 0.0 and torch.equal(g, torch.zeros_like(g))
    assert all(math.isfinite(v) for v in stats.values())


def test_policy_gradient_bad_arguments():
    lp, old, _, adv, mask = _pg_inputs()
    with pytest.raises(ValueError):
        L.policy_gradient_loss(lp, old, adv, mask, "dr_grpo")
    with pytest.raises(ValueError):
        L.policy_gradient_loss(lp, old, adv, mask, "ppo")


# ----------------------------------------------------------------------------------------
# gradient-accumulation invariance: 1 x 8 rows == 4 x 2 rows with the global normaliser
# ----------------------------------------------------------------------------------------


def _accumulation_setup():
    B, T, H, V = 8, 6, 4, 7
    x = _randn(B, T, H, seed=30)  # fixed "hidden states"
    W = _randn(H, V, seed=31, scale=0.5).requires_grad_(True)  # the shared parameter
    ids = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(32))
    lengths = [6, 1, 3, 5, 2, 6, 4, 0]  # rows of different lengths, one empty
    mask = torch.tensor([[1] * n + [0] * (T - n) for n in lengths])
    with torch.no_grad():
        old = L.sampled_token_logprobs(x @ W, ids) + _randn(B, T, seed=33, scale=0.3)
        ref = L.sampled_token_logprobs(x @ W, ids) + _randn(B, T, seed=34, scale=0.3)
    adv = _randn(B, seed=35)
    teacher = _randn(B, T, V, seed=36)
    return x, W, ids, mask, old, ref, adv, teacher


def _accumulated_grad(loss_fn, n_micro):
    x, W, ids, mask, old, ref, adv, teacher = _accumulation_setup()
    B = x.shape[0]
    total = None
    step = B // n_micro
    for s in range(0, B, step):
        sl = slice(s, s + step)
        loss = loss_fn(x[sl] @ W, ids[sl], mask[sl], old[sl], ref[sl], adv[sl], teacher[sl],
                       global_rows=B, global_tokens=mask.sum())
        (g,) = torch.autograd.grad(loss, W)
        total = g if total is None else total + g
    return total


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_policy_gradient_accumulation_invariance(loss_type):
    Lmax = 6

    def loss_fn(logits, ids, mask, old, ref, adv, teacher, global_rows, global_tokens):
        norm = {"grpo": global_rows, "dapo": global_tokens, "dr_grpo": global_rows * Lmax}
        lp = L.sampled_token_logprobs(logits, ids)
        loss, _ = L.policy_gradient_loss(
            lp, old, adv, mask, loss_type, 0.2, 0.28, ref_logprobs=ref, beta=0.05,
            normalizer=norm[loss_type], max_completion_length=Lmax,
        )
        return loss

    full = _accumulated_grad(loss_fn, 1)
    micro = _accumulated_grad(loss_fn, 4)
    assert full.abs().max() > 1e-3  # a real gradient
    assert torch.allclose(full, micro, rtol=0, atol=1e-6)
    assert torch.allclose(full, micro, rtol=0, atol=1e-12)  # exact in float64, in fact

    if loss_type == "dapo":
        # the test has teeth: averaging per-micro-batch token means (no normalizer) differs,
        # because the micro-batches hold different numbers of tokens (TRL #4719)
        def local(logits, ids, mask, old, ref, adv, teacher, **_):
            lp = L.sampled_token_logprobs(logits, ids)
            return L.policy_gradient_loss(lp, old, adv, mask, loss_type, 0.2, 0.28)[0]

        averaged = _accumulated_grad(local, 4) / 4
        assert (_accumulated_grad(local, 1) - averaged).abs().max() > 1e-3


def test_token_level_kl_accumulation_invariance():
    def loss_fn(logits, ids, mask, old, ref, adv, teacher, global_rows, global_tokens):
        return L.masked_sum(L.reverse_kl(logits, teacher), mask) / global_tokens

    full, micro = _accumulated_grad(loss_fn, 1), _accumulated_grad(loss_fn, 4)
    assert full.abs().max() > 1e-3
    assert torch.allclose(full, micro, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------------
# schedules and validity weights
# ----------------------------------------------------------------------------------------


def test_linear_anneal():
    assert L.linear_anneal(0, 1.0, 0.01) == 1.0
    assert L.linear_anneal(50, 1.0, 0.01) == pytest.approx(0.5)
    assert L.linear_anneal(100, 1.0, 0.01) == 0.0
    assert L.linear_anneal(1000, 1.0, 0.01) == 0.0
    assert L.linear_anneal(7, 0.3, 0.0) == 0.3


def test_validity_ratio():
    rs = torch.tensor([0.5, 0.0, 0.9], dtype=F64)
    rt = torch.tensor([0.25, 0.5, 0.0], dtype=F64)
    assert L.validity_ratio(rs, rt).tolist() == pytest.approx([0.5 / (0.25 + 1e-8), 0.0, 0.9e8])
    assert L.validity_ratio(rs, rt, eps=0.25).tolist() == pytest.approx([1.0, 0.0, 3.6])


def ref_prob_proxy(row, token, top_k, eps, gamma, clip):
    p = ref_softmax(row)
    collision = sum(x * x for x in sorted(p, reverse=True)[:top_k])
    w = p[token] / (collision + eps)
    if w == 0:
        return clip[0]
    return math.exp(min(max(gamma * math.log(w), math.log(clip[0])), math.log(clip[1])))


def test_prob_proxy_validity_weights_matches_reference():
    B, T, V = 2, 4, 6
    logits = _randn(B, T, V, seed=40, scale=2)
    logits[1, 0] = 0.0  # uniform: w = (1/6) / (1/36) = 6 -> gamma log 6 > log 2 -> clip[1]
    logits[1, 1, 3] = float("-inf")  # p[token] = 0 -> w = 0 -> clip[0]
    tokens = torch.tensor([[0, 1, 2, 3], [5, 3, 0, 1]])
    got = L.prob_proxy_validity_weights(logits, tokens, top_k=1)
    for top_k in (1, 3, 128):
        got = L.prob_proxy_validity_weights(logits, tokens, top_k=top_k)
        for b in range(B):
            for t in range(T):
                want = ref_prob_proxy(logits[b, t].tolist(), tokens[b, t], top_k, 1e-8, 0.5,
                                      (0.5, 2.0))
                assert got[b, t].item() == pytest.approx(want, rel=1e-12)
    got = L.prob_proxy_validity_weights(logits, tokens, top_k=1)
    assert got[1, 0].item() == pytest.approx(2.0) and got[1, 1].item() == pytest.approx(0.5)
    assert ((got >= 0.5 - 1e-12) & (got <= 2.0 + 1e-12)).all()


# ----------------------------------------------------------------------------------------
# chunked forms == plain forms
# ----------------------------------------------------------------------------------------


def _chunk_setup(dtype=F64, Vs=11, Vt=13):
    B, T, Hs, Ht = 2, 5, 4, 6  # B*T = 10: chunk sizes 3 and 4 do not divide it
    hs = _randn(B, T, Hs, seed=50).to(dtype).requires_grad_(True)
    ht = _randn(B, T, Ht, seed=51).to(dtype)
    ws = _randn(Vs, Hs, seed=52).to(dtype).requires_grad_(True)
    wt = _randn(Vt, Ht, seed=53).to(dtype)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]])
    return hs, ht, ws, wt, mask


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("chunk_size", [1, 3, 4, 1024])
def test_chunked_divergence_equals_plain(kind, chunk_size):
    hs, ht, ws, wt, mask = _chunk_setup()
    V = 11  # teacher has 2 padding rows beyond the shared vocabulary
    kw = dict(beta=0.3, alpha=0.2, temperature=1.3)
    weights = _randn(2, 5, seed=54)  # an arbitrary upstream gradient

    got = L.chunked_divergence(hs, ht, ws, wt, mask, kind, chunk_size=chunk_size,
                               vocab_limit=V, **kw)
    g_got = torch.autograd.grad((got * weights).sum(), (hs, ws))

    plain = call(kind, hs @ ws[:V].T, (ht @ wt[:V].T).detach(), kw["temperature"], kw["beta"],
                 kw["alpha"]) * mask
    g_plain = torch.autograd.grad((plain * weights).sum(), (hs, ws))

    assert torch.allclose(got, plain, rtol=0, atol=1e-12)
    assert got[0, 3] == 0 and got[1, 0] == 0  # uncounted positions are 0
    for a, b in zip(g_got, g_plain):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)


def test_chunked_divergence_float32_within_1e5_and_no_grad_path():
    hs, ht, ws, wt, mask = _chunk_setup(torch.float32, Vs=13, Vt=13)
    got = L.chunked_divergence(hs, ht, ws, wt, mask, "generalized_jsd", chunk_size=3)
    plain = L.generalized_jsd(hs @ ws.T, ht @ wt.T) * mask
    assert torch.allclose(got, plain, atol=1e-5)
    g1 = torch.autograd.grad(got.sum(), (hs, ws))
    g2 = torch.autograd.grad(plain.sum(), (hs, ws))
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g1, g2))
    with torch.no_grad():
        assert torch.allclose(
            L.chunked_divergence(hs, ht, ws, wt, None, "reverse_kl", chunk_size=4),
            L.reverse_kl(hs @ ws.T, ht @ wt.T),
            atol=1e-5,
        )


def test_chunked_divergence_checks_vocabularies_and_empty_mask():
    hs, ht, ws, wt, mask = _chunk_setup()
    with pytest.raises(ValueError, match="vocab_limit=11"):
        L.chunked_divergence(hs, ht, ws, wt, mask)
    with pytest.raises(ValueError):
        L.chunked_divergence(hs, ht, ws, wt, mask, vocab_limit=12)
    out = L.chunked_divergence(hs, ht, ws, wt, torch.zeros(2, 5), vocab_limit=11)
    assert torch.equal(out, torch.zeros(2, 5, dtype=F64))
    loss = L.masked_mean(out, torch.zeros(2, 5))
    assert loss.item() == 0.0
    g_h, g_w = torch.autograd.grad(loss, (hs, ws))
    assert not g_h.any() and not g_w.any()
    # the teacher side never receives a gradient
    ht.requires_grad_(True)
    out = L.chunked_divergence(hs, ht, ws, wt, mask, vocab_limit=11)
    assert not out.sum().requires_grad or torch.autograd.grad(
        out.sum(), ht, allow_unused=True)[0] is None


@pytest.mark.parametrize("chunk_size", [1, 3, 1024])
@pytest.mark.parametrize("temperature", [1.0, 0.8])
def test_chunked_sampled_token_logprobs_equals_plain(chunk_size, temperature):
    hs, _, ws, _, mask = _chunk_setup()
    ids = torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(55))
    weights = _randn(2, 5, seed=56)
    got = L.chunked_sampled_token_logprobs(hs, ws, ids, temperature, chunk_size)
    plain = torch.log_softmax((hs @ ws.T) / temperature, -1).gather(-1, ids[..., None])[..., 0]
    assert torch.allclose(got, plain, rtol=0, atol=1e-12)
    g1 = torch.autograd.grad((got * weights).sum(), (hs, ws))
    g2 = torch.autograd.grad((plain * weights).sum(), (hs, ws))
    assert all(torch.allclose(a, b, rtol=0, atol=1e-12) for a, b in zip(g1, g2))
    masked = L.chunked_sampled_token_logprobs(hs, ws, ids, temperature, chunk_size, mask=mask)
    assert torch.allclose(masked, plain.detach() * mask, atol=1e-12)


# ----------------------------------------------------------------------------------------
# CMDP slack, process advantages, probability floor
# ----------------------------------------------------------------------------------------


def ref_slack(kl, m, budget, mode):
    out = []
    for b in range(len(kl)):
        n = sum(m[b])
        D = budget * n if mode == "length_normalized" else budget
        spent, row = 0.0, []
        for t in range(len(kl[b])):
            if m[b][t]:
                row.append(D - spent)
                spent += kl[b][t]
            else:
                row.append(math.inf)
        out.append(row)
    return out


@pytest.mark.parametrize("mode", ["length_normalized", "sum"])
def test_cmdp_budget_slack_matches_reference_and_drives_violations(mode):
    task, kl, mask = _cmdp_inputs()
    got = L.cmdp_budget_slack(kl, mask, 0.35, mode)
    want = torch.tensor(ref_slack(kl.tolist(), mask.tolist(), 0.35, mode), dtype=F64)
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    fin = torch.isfinite(want)
    assert torch.allclose(got[fin], want[fin], atol=1e-12)
    _, vio = L.cmdp_token_rewards(task, kl, mask, 0.35, 20.0, mode)
    assert vio.tolist() == ((got < 0) & mask.bool()).tolist()


def ref_process_advantages(r, m, k, gamma, eps):
    out = [[0.0] * len(row) for row in r]
    for g0 in range(0, len(r), k):
        vals = [r[b][t] for b in range(g0, g0 + k) for t in range(len(r[b])) if m[b][t]]
        if not vals:
            continue
        mean = sum(vals) / len(vals)
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
        norm = [[(r[b][t] - mean) / (std + eps) if m[b][t] else 0.0 for t in range(len(r[b]))]
                for b in range(g0, g0 + k)]
        rtg = ref_reward_to_go(norm, [m[b] for b in range(g0, g0 + k)], gamma)
        for i, b in enumerate(range(g0, g0 + k)):
            out[b] = rtg[i]
    return out


@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_process_advantages_matches_reference(gamma):
    r = _randn(6, 5, seed=21)
    m = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 1, 1, 0, 1],
                      [1, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]])
    got = L.process_advantages(r, m, group_size=2, gamma=gamma)
    want = ref_process_advantages(r.tolist(), m.tolist(), 2, gamma, 1e-4)
    assert torch.allclose(got, torch.tensor(want, dtype=F64), atol=1e-12)
    assert torch.isfinite(got).all()  # a group with one token (std 0) and an empty group: no NaN
    assert (got[~m.bool()] == 0).all()


def test_process_advantages_padding_values_cannot_leak():
    r = _randn(4, 6, seed=22)
    m = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    noisy = torch.where(m.bool(), r, torch.tensor(float("nan"), dtype=F64))
    assert torch.allclose(L.process_advantages(noisy, m, 2), L.process_advantages(r, m, 2), atol=0)


def test_floored_log_probs_bounds_kl_and_limits():
    V = 7
    s = _randn(3, V, seed=23)
    t = _randn(3, V, seed=24)
    t[:, 0] = -1e4  # the teacher gives token 0 no mass
    assert torch.allclose(L.floored_log_probs(t, 0.0), torch.log_softmax(t, -1))
    for floor in (1e-3, 0.1, 0.5):
        lp = L.floored_log_probs(t, floor)
        want = torch.log((1 - floor) * torch.softmax(t, -1) + floor / V)
        assert torch.allclose(lp, want, atol=1e-12)
        assert torch.allclose(lp.exp().sum(-1), torch.ones(3, dtype=F64))
        kl = L.reverse_kl(s, lp)
        assert (kl <= math.log(V / floor) + 1e-9).all()
    s_peaked = s.clone()
    s_peaked[:, 0] = 50.0  # the student puts all its mass where the teacher has none
    assert L.reverse_kl(s_peaked, t).min() > 1e3
    assert L.reverse_kl(s_peaked, L.floored_log_probs(t, 1e-3)).max() <= math.log(V / 1e-3) + 1e-9
    with pytest.raises(ValueError):
        L.floored_log_probs(t, 1.0)
