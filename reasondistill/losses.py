"""Losses, divergences, rewards and advantages: pure functions of tensors.

Nothing here touches a model, a tokenizer or a file. Every training method is built from
these pieces (see DESIGN.md, "The losses contract"), so each is tested in isolation against a
brute-force float64 reference in ``tests/test_losses.py``.

Conventions
-----------
* Shapes. Logits are ``[B, T, V]`` (batch, positions, vocabulary); masks are ``[B, T]`` with
  1 = counted and 0 = ignored (padding, prompt); per-token results are ``[B, T]``. The
  divergences accept any leading dimensions (``[..., V]`` -> ``[...]``).
* Which distribution is which. ``p`` is the teacher, ``q`` the student:
  ``forward_kl`` = KL(p || q), ``reverse_kl`` = KL(q || p).
* Temperature. Where a function takes ``temperature``, *both* models' logits are divided by
  it before the softmax. The same temperature must be used for sampling, for the importance
  ratios and for the loss; a mismatch silently biases all three.
* Vocabularies of different sizes. The divergences require equal ``V`` and raise otherwise.
  When the teacher has padding rows (Qwen2.5-7B: 152,064 rows vs 151,936 for the 1.5B), slice
  both logits to the shared range, ``logits[..., :vocab_limit]``; the chunked forms take
  ``vocab_limit=`` directly.
* Precision. Everything computes in the input dtype and is exact in float64 (the tests run in
  float64). ``log_softmax``/``logsumexp`` are used throughout, never ``log(softmax)``. The two
  sampled-token functions compute in float32 when given half-precision logits, and the chunked
  forms project half-precision hidden states to float32 logits chunk by chunk.
* Empty masks give 0, never NaN, and finite (zero) gradients.
* Normalisation and gradient accumulation. A scalar loss is "sum over counted tokens (or rows)
  divided by a denominator". A training loop that splits one optimizer batch into micro-batches
  passes the *global* denominator as ``normalizer=`` and *sums* the micro-batch losses; the
  result then equals the full-batch loss exactly, whatever the split (DESIGN.md / FIELD_NOTES:
  per-micro-batch normalisation makes the loss depend on the accumulation setting). What the
  global denominator is for each ``loss_type`` is spelled out in ``policy_gradient_loss``.
* Chunked forms. ``chunked_divergence`` and ``chunked_sampled_token_logprobs`` take hidden
  states and ``lm_head`` weights instead of logits, and never hold ``[B, T, V]`` logits: they
  project ``chunk_size`` token positions at a time and recompute each chunk in backward (a
  custom autograd function). They agree with the plain forms to float rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "forward_kl",
    "reverse_kl",
    "generalized_jsd",
    "skew_kl",
    "skew_reverse_kl",
    "masked_sum",
    "masked_mean",
    "group_advantages",
    "reward_to_go",
    "cmdp_budget_slack",
    "cmdp_token_rewards",
    "group_token_standardize",
    "process_advantages",
    "floored_log_probs",
    "sampled_token_logprobs",
    "tgpo_guidance_nll",
    "policy_gradient_loss",
    "loss_normalizer",
    "aggregate_loss",
    "kl_estimate",
    "linear_anneal",
    "validity_ratio",
    "prob_proxy_validity_weights",
    "chunked_divergence",
    "chunked_sampled_token_logprobs",
]

LOSS_TYPES = ("grpo", "dapo", "dr_grpo", "group_tokens")
DIVERGENCE_KINDS = ("reverse_kl", "forward_kl", "generalized_jsd", "skew_kl", "skew_reverse_kl")


# ----------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------


def _check_pair(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ in shape. If only the vocabulary differs "
            "(padding rows, e.g. 152064 vs 151936), compare on the shared range: slice both to "
            "[..., :vocab_limit]. If the tokenizers differ, the ids mean different tokens and no "
            "slicing makes the divergence meaningful."
        )


def _check_unit(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def _log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if temperature != 1.0:
        logits = logits / temperature
    return F.log_softmax(logits, dim=-1)  # (..., V)


def _kl(logp_a: torch.Tensor, logp_b: torch.Tensor) -> torch.Tensor:
    """KL(a || b) = sum_v a_v (log a_v - log b_v) over the last dim; 0 * log 0 = 0."""
    p_a = logp_a.exp()  # (..., V)
    diff = torch.where(p_a > 0, logp_a - logp_b, 0.0)  # where(): no NaN from -inf - -inf
    return (p_a * diff).sum(-1)  # (...)


def _log_mix(logp_a: torch.Tensor, logp_b: torch.Tensor, w_a: float) -> torch.Tensor:
    """log(w_a * a + (1 - w_a) * b) for 0 < w_a < 1, stable, finite gradient at -inf entries."""
    lo = torch.finfo(logp_a.dtype).min  # logaddexp(-inf, -inf) has a NaN gradient; clamp first
    a = (logp_a + math.log(w_a)).clamp_min(lo)
    b = (logp_b + math.log1p(-w_a)).clamp_min(lo)
    return torch.logaddexp(a, b)  # (..., V)


def _safe_div(num: torch.Tensor, den: torch.Tensor | float) -> torch.Tensor:
    """num / den, and 0 (with a zero, finite gradient) where den == 0."""
    den = torch.as_tensor(den, dtype=num.dtype, device=num.device)
    ok = den != 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), 0.0)


# ----------------------------------------------------------------------------------------
# divergences (per token)
# ----------------------------------------------------------------------------------------


def forward_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Per-token KL(teacher || student) of softmax(logits / temperature): ``[..., V] -> [...]``.

    Mode-covering; the classic KD / SeqKD / SFT-on-teacher-distribution direction.
    """
    _check_pair(student_logits, teacher_logits)
    logq = _log_probs(student_logits, temperature)  # (B, T, V)
    logp = _log_probs(teacher_logits, temperature)  # (B, T, V)
    return _kl(logp, logq)  # (B, T)


def reverse_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Per-token KL(student || teacher) of softmax(logits / temperature): ``[..., V] -> [...]``.

    Mode-seeking; what GKD (lambda=1), MiniLLM and on-policy distillation minimise.
    """
    _check_pair(student_logits, teacher_logits)
    logq = _log_probs(student_logits, temperature)  # (B, T, V)
    logp = _log_probs(teacher_logits, temperature)  # (B, T, V)
    return _kl(logq, logp)  # (B, T)


def generalized_jsd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    beta: float = 0.5,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Per-token generalised Jensen-Shannon divergence (GKD), TRL's convention.

    With p = teacher, q = student and M = beta * p + (1 - beta) * q:
    ``beta * KL(p || M) + (1 - beta) * KL(q || M)`` for 0 < beta < 1.

    The end points are *defined* as ``beta = 0 -> forward_kl`` (KL(p || q)) and
    ``beta = 1 -> reverse_kl`` (KL(q || p)), computed directly (no log 0). Note that this is a
    convention, not a limit: the mixture formula itself tends to 0 at both ends.
    """
    _check_unit("beta", beta)
    if beta == 0.0:
        return forward_kl(student_logits, teacher_logits, temperature)
    if beta == 1.0:
        return reverse_kl(student_logits, teacher_logits, temperature)
    _check_pair(student_logits, teacher_logits)
    logq = _log_probs(student_logits, temperature)  # (B, T, V)
    logp = _log_probs(teacher_logits, temperature)  # (B, T, V)
    logm = _log_mix(logp, logq, beta)  # (B, T, V)
    return beta * _kl(logp, logm) + (1.0 - beta) * _kl(logq, logm)  # (B, T)


def skew_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    alpha: float = 0.1,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Per-token skew KL, ``KL(p || alpha * p + (1 - alpha) * q)``, p teacher, q student.

    DistiLLM's SKL and VCRD eq. (2). ``alpha = 0`` is ``forward_kl``; ``alpha = 1`` is 0.
    (``temperature`` is an addition to the contract's signature, default 1 = no change.)
    """
    _check_unit("alpha", alpha)
    if alpha == 0.0:
        return forward_kl(student_logits, teacher_logits, temperature)
    _check_pair(student_logits, teacher_logits)
    if alpha == 1.0:
        return student_logits.new_zeros(student_logits.shape[:-1])
    logq = _log_probs(student_logits, temperature)  # (B, T, V)
    logp = _log_probs(teacher_logits, temperature)  # (B, T, V)
    return _kl(logp, _log_mix(logp, logq, alpha))  # (B, T)


def skew_reverse_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    alpha: float = 0.1,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Per-token skew reverse KL, ``KL(q || (1 - alpha) * p + alpha * q)``, p teacher, q student.

    DistiLLM's SRKL. ``alpha = 0`` is ``reverse_kl``; ``alpha = 1`` is 0.
    """
    _check_unit("alpha", alpha)
    if alpha == 0.0:
        return reverse_kl(student_logits, teacher_logits, temperature)
    _check_pair(student_logits, teacher_logits)
    if alpha == 1.0:
        return student_logits.new_zeros(student_logits.shape[:-1])
    logq = _log_probs(student_logits, temperature)  # (B, T, V)
    logp = _log_probs(teacher_logits, temperature)  # (B, T, V)
    return _kl(logq, _log_mix(logq, logp, alpha))  # (B, T)


_DIVERGENCES: dict[str, Callable[..., torch.Tensor]] = {
    "forward_kl": lambda s, t, temperature, beta, alpha: forward_kl(s, t, temperature),
    "reverse_kl": lambda s, t, temperature, beta, alpha: reverse_kl(s, t, temperature),
    "generalized_jsd": lambda s, t, temperature, beta, alpha: generalized_jsd(
        s, t, beta, temperature
    ),
    "skew_kl": lambda s, t, temperature, beta, alpha: skew_kl(s, t, alpha, temperature),
    "skew_reverse_kl": lambda s, t, temperature, beta, alpha: skew_reverse_kl(
        s, t, alpha, temperature
    ),
}


# ----------------------------------------------------------------------------------------
# masked reductions
# ----------------------------------------------------------------------------------------


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``x * mask`` (over ``dim``, or everything). Masked-out entries are *replaced* by 0,
    so inf/NaN at padding positions (e.g. a -inf log-prob) cannot leak into the sum."""
    m = mask.to(x.dtype)
    x = torch.where(m != 0, x, 0.0) * m  # (B, T)
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over the counted entries (``mask`` may hold weights); 0.0, not NaN, when the
    mask is empty (over ``dim``, or everything)."""
    m = mask.to(x.dtype)
    den = m.sum() if dim is None else m.sum(dim)
    return _safe_div(masked_sum(x, m, dim), den)


# ----------------------------------------------------------------------------------------
# rewards and advantages
# ----------------------------------------------------------------------------------------


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale: str = "group", eps: float = 1e-4
) -> torch.Tensor:
    """GRPO advantages: ``rewards`` ``[N]`` in consecutive groups of ``group_size`` (the
    completions of one prompt) -> ``[N]``: ``r - mean(group)``, divided by
    ``std(group) + eps`` (``scale="group"``), by ``std(all N) + eps`` (``"batch"``), or not
    at all (``"none"``, Dr. GRPO). The std is unbiased (torch's default); a group (or batch) of
    one has std 0, not NaN.
    """
    if scale not in ("group", "batch", "none"):
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    r = rewards if rewards.is_floating_point() else rewards.to(torch.get_default_dtype())
    n = r.numel()
    if group_size < 1 or n % group_size != 0:
        raise ValueError(f"{n} rewards do not split into groups of {group_size}")
    g = r.reshape(n // group_size, group_size)  # (G, group_size)
    adv = (g - g.mean(-1, keepdim=True)).reshape(n)  # (N,)
    if scale == "none":
        return adv
    if scale == "group":
        std = _unbiased_std(g).repeat_interleave(group_size)  # (N,)
    else:
        std = _unbiased_std(r.reshape(1, n)).expand(n)  # (N,)
    return adv / (std + eps)


def _unbiased_std(x: torch.Tensor) -> torch.Tensor:
    """Unbiased std over the last dim; 0 (not NaN) for a single element."""
    k = x.shape[-1]
    if k < 2:
        return x.new_zeros(x.shape[:-1])
    var = ((x - x.mean(-1, keepdim=True)) ** 2).sum(-1) / (k - 1)
    return var.sqrt()


def reward_to_go(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """``[B, T]`` return-to-go, exactly the DESIGN contract: at a counted position t, the sum over
    counted u >= t of ``gamma**(u - t) * r_u`` (a hole in the mask contributes no reward but its
    position still counts in the exponent). Uncounted positions get 0.

    Built backwards from masked rewards (``R_t = r_t + gamma * R_{t+1}`` with r = 0 where
    uncounted), so padding anywhere cannot produce NaN (no ``gamma ** index`` terms).
    """
    m = mask.bool()
    r = torch.where(m, rewards, 0.0)  # (B, T)
    if gamma == 1.0:
        out = r.flip(-1).cumsum(-1).flip(-1)  # (B, T)
        return torch.where(m, out, 0.0)
    running = r.new_zeros(r.shape[:-1])  # (B,)
    out = []
    for t in range(r.shape[-1] - 1, -1, -1):
        running = r[..., t] + gamma * running  # (B,)
        out.append(torch.where(m[..., t], running, 0.0))
    return torch.stack(out[::-1], dim=-1)  # (B, T)


def cmdp_budget_slack(
    step_kl: torch.Tensor,
    mask: torch.Tensor,
    budget: float | torch.Tensor,
    budget_mode: str = "length_normalized",
) -> torch.Tensor:
    """``[B, T]`` remaining budget ``D - S_t`` before each token (constrained_mdp_distillation.md
    §3.1, z_t = d - sum_{u<t} C_u), the quantity both eq. (4) and the boundary term (II) test.

    S_t = sum of ``step_kl`` over counted u < t; D = ``budget`` (``"sum"``) or ``budget`` x the
    row's number of counted tokens (``"length_normalized"``). ``budget`` may be a scalar or
    ``[B]``. Uncounted positions hold +inf (never violated, never on the boundary).
    """
    if budget_mode not in ("length_normalized", "sum"):
        raise ValueError(f"budget_mode must be 'length_normalized' or 'sum', got {budget_mode!r}")
    m = mask.bool()  # (B, T)
    kl = torch.where(m, step_kl, 0.0)  # (B, T)
    spent = kl.cumsum(-1) - kl  # (B, T) S_t, exclusive prefix sum over counted tokens
    budget = torch.as_tensor(budget, dtype=kl.dtype, device=kl.device)
    if budget.dim() == 1:
        budget = budget.unsqueeze(-1)  # (B, 1) a per-row budget
    if budget_mode == "length_normalized":
        budget = budget * m.sum(-1, keepdim=True).to(kl.dtype)  # (B, 1)
    return torch.where(m, budget - spent, math.inf)  # (B, T)


def cmdp_token_rewards(
    task_reward: torch.Tensor | float,
    step_kl: torch.Tensor,
    mask: torch.Tensor,
    budget: float | torch.Tensor,
    penalty: float,
    budget_mode: str = "length_normalized",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token constrained reward of constrained_mdp_distillation.md eq. (4).

    ``task_reward`` ``[B]`` (the sequence reward R, e.g. correctness), ``step_kl`` ``[B, T]``
    (the per-state divergence C_t, which is also the penalty's phi), ``mask`` ``[B, T]``.

    * S_t = sum of step_kl over counted u < t (the budget spent before t).
    * D = ``budget`` (``budget_mode="sum"``, a per-answer budget) or ``budget`` x the row's
      number of counted tokens (``"length_normalized"``, so that the budget scales like the mean
      per-token KL by which the paper reports constraint satisfaction at d = 0.35). As in eq. (4),
      the reward at t only sees the cost of the tokens *before* t, so the last token's own KL never
      decides a violation: a row is feasible throughout iff its KL summed over all but the last
      token is <= D (the eval's CS averages over every token).
    * violated_t = D - S_t < 0 at counted t (the paper's feasible set is D - S_t >= 0).
      Because S_t only counts *earlier* tokens, with budget >= 0 the earliest possible
      violation is the second counted token.
    * reward_t = -(penalty + step_kl_t) where violated; otherwise ``task_reward`` at the row's
      last counted token and 0 elsewhere. Uncounted positions: reward 0, not violated.

    Returns ``(rewards [B, T], violated [B, T] bool)``. Rewards carry the autograd graph of
    ``step_kl`` if it has one; detach ``step_kl`` for use as a policy-gradient return.
    """
    m = mask.bool()  # (B, T)
    B, T = m.shape
    violated = cmdp_budget_slack(step_kl, m, budget, budget_mode) < 0  # (B, T); +inf at padding
    dtype = step_kl.dtype
    pos = torch.arange(T, device=m.device).expand(B, T)  # (B, T)
    last = torch.where(m, pos, -1).max(-1, keepdim=True).values  # (B, 1), -1 for empty rows
    is_last = (pos == last) & m  # (B, T)
    R = torch.as_tensor(task_reward, dtype=dtype, device=step_kl.device).reshape(-1, 1)  # (B, 1)
    rewards = torch.where(is_last, R.expand(B, T), 0.0)  # (B, T)
    rewards = torch.where(violated, -(penalty + step_kl), rewards)  # (B, T)
    return rewards, violated


def group_token_standardize(
    x: torch.Tensor, mask: torch.Tensor, group_size: int, eps: float = 1e-4
) -> torch.Tensor:
    """``[N, T]`` per-token values standardised within groups of ``group_size`` consecutive
    rows: (x - mean) / (std + eps), mean and unbiased std over *all counted tokens of the
    group*. Uncounted positions give 0 and never enter the statistics; a group with fewer
    than two counted tokens has std 0 (no NaN)."""
    n, T = x.shape
    if group_size < 1 or n % group_size != 0:
        raise ValueError(f"{n} rows do not split into groups of {group_size}")
    m = mask.to(x.dtype)  # (N, T)
    g_x = torch.where(m != 0, x, 0.0).reshape(n // group_size, group_size * T)  # (G, k*T)
    g_m = m.reshape(n // group_size, group_size * T)  # (G, k*T)
    cnt = g_m.sum(-1, keepdim=True)  # (G, 1)
    mean = _safe_div(g_x.sum(-1, keepdim=True), cnt)  # (G, 1)
    var = _safe_div((((g_x - mean) * g_m) ** 2).sum(-1, keepdim=True), cnt - 1)  # (G, 1)
    out = torch.where(g_m != 0, (g_x - mean) / (var.clamp_min(0).sqrt() + eps), 0.0)  # (G, k*T)
    return out.reshape(n, T)


def process_advantages(
    rewards: torch.Tensor, mask: torch.Tensor, group_size: int, gamma: float = 1.0, eps: float = 1e-4
) -> torch.Tensor:
    """GRPO with process supervision (DeepSeekMath §4.1.3) on per-token rewards ``[N, T]``.

    Rows come in consecutive groups of ``group_size`` (the answers to one prompt). Within a
    group, every counted token's reward is normalised by the mean and (unbiased) std over *all
    counted tokens of the group* (``group_token_standardize``); the advantage of token t is the
    return-to-go of the normalised rewards, ``reward_to_go(r~, mask, gamma)``. Uncounted
    positions get 0; a group with no counted token gives 0.
    """
    return reward_to_go(group_token_standardize(rewards, mask, group_size, eps), mask, gamma)  # (N, T)


def floored_log_probs(logits: torch.Tensor, floor: float) -> torch.Tensor:
    """log((1 - floor) * softmax(logits) + floor / V) over the last dim: a probability floor
    of floor / V on every token (constrained_mdp_distillation.md Appendix A: "enforcing
    overlapping support ... using a probability floor"), so KL(student || teacher) stays finite
    (at most log(V / floor)) where the teacher gives a token (almost) no mass. ``floor = 0``
    returns plain log-probabilities. The result is a normalised log-distribution, so it can be
    passed as logits to any divergence here."""
    if not 0.0 <= floor < 1.0:
        raise ValueError(f"floor must be in [0, 1), got {floor}")
    logp = F.log_softmax(logits, dim=-1)  # (..., V)
    if floor == 0.0:
        return logp
    V = logits.shape[-1]
    return _log_mix(logp, torch.full_like(logp, -math.log(V)), 1.0 - floor)  # (..., V)


# ----------------------------------------------------------------------------------------
# log-probabilities of chosen tokens
# ----------------------------------------------------------------------------------------


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


class _SampledLogProb(torch.autograd.Function):
    """log softmax(logits / temperature) at token_ids, row-chunked. Saves only the logits
    (already alive) and the per-row logsumexp; backward writes one gradient tensor."""

    @staticmethod
    def forward(ctx, logits, token_ids, temperature, rows_per_chunk):
        V = logits.shape[-1]
        flat = logits.reshape(-1, V)  # (N, V)
        ids = token_ids.reshape(-1, 1)  # (N, 1)
        cd = _compute_dtype(logits.dtype)
        lse = torch.empty(flat.shape[0], dtype=cd, device=logits.device)  # (N,)
        out = torch.empty_like(lse)  # (N,)
        for s in range(0, flat.shape[0], rows_per_chunk):
            z = flat[s : s + rows_per_chunk].to(cd)  # (c, V)
            if temperature != 1.0:
                z = z / temperature
            lse[s : s + rows_per_chunk] = torch.logsumexp(z, -1)
            out[s : s + rows_per_chunk] = (
                z.gather(-1, ids[s : s + rows_per_chunk]).squeeze(-1) - lse[s : s + rows_per_chunk]
            )
        ctx.save_for_backward(logits, token_ids, lse)
        ctx.temperature, ctx.rows = temperature, rows_per_chunk
        return out.reshape(token_ids.shape)

    @staticmethod
    def backward(ctx, grad_out):
        logits, token_ids, lse = ctx.saved_tensors
        V = logits.shape[-1]
        flat = logits.reshape(-1, V)  # (N, V)
        ids = token_ids.reshape(-1, 1)  # (N, 1)
        g = grad_out.reshape(-1, 1).to(lse.dtype)  # (N, 1)
        grad = torch.empty_like(flat)  # (N, V)
        cd, tau, rows = lse.dtype, ctx.temperature, ctx.rows
        for s in range(0, flat.shape[0], rows):
            z = flat[s : s + rows].to(cd)  # (c, V)
            if tau != 1.0:
                z = z / tau
            gc = g[s : s + rows]  # (c, 1)
            d = (z - lse[s : s + rows, None]).exp_().mul_(-gc)  # (c, V)  -g * softmax
            d.scatter_add_(-1, ids[s : s + rows], gc)  # + g at the chosen token
            if tau != 1.0:
                d = d / tau
            grad[s : s + rows] = d
        return grad.reshape(logits.shape), None, None, None


def sampled_token_logprobs(
    logits: torch.Tensor, token_ids: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """``log softmax(logits / temperature)[token_ids]``: ``[B, T, V]``, ``[B, T]`` -> ``[B, T]``.

    Computed as ``z[token] - logsumexp(z)`` a few rows at a time, so neither a full
    log-softmax nor a float32 copy of the logits is ever materialised, in forward or backward.
    Half-precision logits give float32 log-probs; otherwise the input dtype. Supports one
    backward pass (no double backward).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if logits.shape[:-1] != token_ids.shape:
        raise ValueError(f"logits {tuple(logits.shape)} vs token_ids {tuple(token_ids.shape)}")
    rows = max(1, (1 << 22) // max(1, logits.shape[-1]))  # ~4M elements per chunk
    return _SampledLogProb.apply(logits, token_ids.long(), float(temperature), rows)


def tgpo_guidance_nll(
    student_logits: torch.Tensor,
    target_ids: torch.Tensor,
    mask: torch.Tensor,
    normalizer: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """TGPO guidance term, teacher_guided_policy_optimization.md eq. (3): per row, the mean over
    counted t of ``-log softmax(student_logits)[target_ids]`` (the teacher's argmax token at the
    student's own prefix); then the mean over rows. A row with no counted token contributes 0
    and still counts as a row. ``normalizer`` = the global number of rows under gradient
    accumulation (sum the micro-batch losses)."""
    nll = -sampled_token_logprobs(student_logits, target_ids)  # (B, T)
    row = masked_mean(nll, mask, dim=-1)  # (B,)
    return _safe_div(row.sum(), row.shape[0] if normalizer is None else normalizer)


# ----------------------------------------------------------------------------------------
# the clipped policy-gradient loss
# ----------------------------------------------------------------------------------------


def policy_gradient_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    loss_type: str = "grpo",
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    ref_logprobs: torch.Tensor | None = None,
    beta: float = 0.0,
    normalizer: float | torch.Tensor | None = None,
    max_completion_length: int | None = None,
    group_size: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped surrogate (PPO/GRPO) with optional k3 KL to a reference; returns (loss, stats).

    Per token, with ``ratio = exp(logprobs - old_logprobs)`` (``old_logprobs`` is detached):
    ``-min(ratio * A, clip(ratio, 1 - epsilon_low, 1 + epsilon_high) * A)``, plus
    ``beta * (exp(ref - lp) - (ref - lp) - 1)`` when ``beta > 0`` and ``ref_logprobs`` is given.
    ``advantages`` is ``[B]`` (one per sequence, broadcast over tokens) or ``[B, T]``.

    Aggregation (TRL's ``loss_type`` names and semantics) and the ``normalizer`` that makes the
    *sum* of micro-batch losses equal the full-batch loss under gradient accumulation:

    ============  ============================================  ===============================
    loss_type     loss                                          normalizer to pass
    ============  ============================================  ===============================
    ``grpo``      sum over rows of (row's token-mean) / B       global number of rows
    ``dapo``      sum over all counted tokens / counted tokens  global number of counted tokens
    ``dr_grpo``   sum over all counted tokens / (B * L)         global rows * L
    ``group_``    sum over groups of (group's token sum /       global number of groups
    ``tokens``    group's counted tokens) / groups
    ============  ============================================  ===============================

    with L = ``max_completion_length`` (required for ``dr_grpo``) and ``group_size`` rows per
    group (required for ``group_tokens``, the TGPO paper's eq. 4). ``normalizer`` replaces the
    whole denominator. Empty masks give loss 0 (not NaN); a row without counted tokens adds 0.

    ``stats`` holds detached floats over this call's counted tokens: ``clip_ratio_low``
    (ratio < 1 - eps_low with A < 0), ``clip_ratio_high`` (ratio > 1 + eps_high with A > 0),
    ``clip_ratio`` (either: the tokens whose gradient is zeroed by clipping), ``ratio_mean``,
    ``approx_kl`` (k3 estimate of KL(old || current) from the ratio) and ``kl`` (token mean of
    the k3 estimator to the reference) when ``ref_logprobs`` is given.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if loss_type == "dr_grpo" and max_completion_length is None:
        raise ValueError("loss_type='dr_grpo' needs max_completion_length")
    if loss_type == "group_tokens" and not group_size:
        raise ValueError("loss_type='group_tokens' needs group_size")
    m = mask.to(logprobs.dtype)  # (B, T)
    adv = advantages.to(logprobs.dtype)
    if adv.dim() == 1:
        adv = adv.unsqueeze(-1)  # (B, 1) broadcast over tokens
    log_ratio = torch.where(m != 0, logprobs - old_logprobs.detach(), 0.0)  # (B, T)
    ratio = log_ratio.exp()  # (B, T)
    clipped = ratio.clamp(1.0 - epsilon_low, 1.0 + epsilon_high)  # (B, T)
    per_token = -torch.minimum(ratio * adv, clipped * adv)  # (B, T)
    kl = None
    if ref_logprobs is not None:
        kl = torch.where(m != 0, kl_estimate(logprobs, ref_logprobs, "k3"), 0.0)  # (B, T) >= 0
        if beta > 0:
            per_token = per_token + beta * kl

    if normalizer is None:  # this call alone is the whole batch
        normalizer = loss_normalizer(loss_type, m.sum(), logprobs.shape[0], max_completion_length, group_size)
    loss = aggregate_loss(per_token, m, loss_type, normalizer, group_size)

    with torch.no_grad():
        low = ((ratio < 1.0 - epsilon_low) & (adv < 0)).to(m.dtype)  # (B, T)
        high = ((ratio > 1.0 + epsilon_high) & (adv > 0)).to(m.dtype)  # (B, T)
        stats = {
            "clip_ratio_low": masked_mean(low, m).item(),
            "clip_ratio_high": masked_mean(high, m).item(),
            "clip_ratio": masked_mean(low + high, m).item(),
            "ratio_mean": masked_mean(ratio, m).item(),
            # k3 estimate of KL(sampling policy || current policy) on the sampled tokens
            "approx_kl": masked_mean(ratio - 1.0 - log_ratio, m).item(),
        }
        if kl is not None:
            stats["kl"] = masked_mean(kl, m).item()
    return loss, stats


def loss_normalizer(loss_type: str, tokens, rows, max_completion_length: int | None = None,
                    group_size: int | None = None):
    """The denominator of ``loss_type`` (TRL's semantics), from the step's global counts:
    ``dapo`` counted tokens, ``grpo`` rows, ``dr_grpo`` rows x max_completion_length,
    ``group_tokens`` the number of groups (rows / group_size). The one place this mapping lives."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if loss_type == "dapo":
        return tokens
    if loss_type == "grpo":
        return rows
    if loss_type == "group_tokens":
        if not group_size:
            raise ValueError("loss_type='group_tokens' needs group_size")
        return rows / group_size
    if max_completion_length is None:
        raise ValueError("loss_type='dr_grpo' needs max_completion_length")
    return rows * max_completion_length


def aggregate_loss(per_token: torch.Tensor, mask: torch.Tensor, loss_type: str, normalizer,
                   group_size: int | None = None) -> torch.Tensor:
    """Sum ``per_token`` ``[B, T]`` over counted tokens as ``loss_type`` does, divided by
    ``normalizer`` (``loss_normalizer`` of the global counts): ``grpo`` sums each row's token
    mean, ``dapo`` / ``dr_grpo`` sum every counted token, ``group_tokens`` sums each group's
    token mean (the group's summed tokens over its counted tokens, Z = sum_i |y_i| of the TGPO
    paper's eq. 4; rows are consecutive groups of ``group_size``, which never straddle a
    micro-batch). Micro-batch results add up to the full-batch value."""
    m = mask.to(per_token.dtype)
    if loss_type == "grpo":
        num = masked_mean(per_token, m, dim=-1).sum()
    elif loss_type == "group_tokens":
        B = per_token.shape[0]
        if not group_size or B % group_size:
            raise ValueError(f"loss_type='group_tokens': {B} rows do not split into groups of {group_size}")
        g_sum = masked_sum(per_token, m, -1).reshape(B // group_size, group_size).sum(-1)  # (G,)
        g_tok = m.sum(-1).reshape(B // group_size, group_size).sum(-1)  # (G,)
        num = _safe_div(g_sum, g_tok).sum()
    else:
        num = masked_sum(per_token, m)
    return _safe_div(num, normalizer)


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(pi || ref) from the sampled tokens' log-probs (Schulman's k1,
    k2, k3), with ``d = ref_logprobs - logprobs``: ``k1 = -d``, ``k2 = d**2 / 2``,
    ``k3 = exp(d) - d - 1`` (>= 0, unbiased). The gradient flows through ``logprobs`` only."""
    d = ref_logprobs.detach() - logprobs
    if estimator == "k1":
        return -d
    if estimator == "k2":
        return 0.5 * d * d
    if estimator == "k3":
        return d.exp() - d - 1.0
    raise ValueError(f"estimator must be k1, k2 or k3, got {estimator!r}")


# ----------------------------------------------------------------------------------------
# schedules and validity weights
# ----------------------------------------------------------------------------------------


def linear_anneal(step: int | float, w_init: float, decay: float) -> float:
    """``max(w_init - decay * step, 0.0)`` (TGPO's guidance weight schedule)."""
    return max(w_init - decay * step, 0.0)


def validity_ratio(
    r_student: torch.Tensor, r_teacher: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """VCRD eq. (1): ``r_student / (r_teacher + eps)``, elementwise."""
    return r_student / (r_teacher + eps)


def prob_proxy_validity_weights(
    teacher_logits: torch.Tensor,
    student_tokens: torch.Tensor,
    top_k: int = 128,
    eps: float = 1e-8,
    gamma: float = 0.5,
    clip: tuple[float, float] = (0.5, 2.0),
) -> torch.Tensor:
    """VCRD-Prob validity weights (validity_calibrated_distillation.md §10.4): ``[B, T]``.

    p = softmax(teacher_logits); ``w = p[student_token] / (sum of p_i**2 over the top_k largest
    p_i + eps)``; returned ``exp(clamp(gamma * log w, log clip[0], log clip[1]))``, so
    ``w = 0`` gives ``clip[0]``. Computed in log space from ``logsumexp`` and ``topk`` of the
    logits (no full softmax copy); detach the result to use it as a weight.
    """
    lse = torch.logsumexp(teacher_logits, -1, keepdim=True)  # (B, T, 1)
    logp_tok = (teacher_logits.gather(-1, student_tokens.long().unsqueeze(-1)) - lse).squeeze(-1)
    k = min(top_k, teacher_logits.shape[-1])
    top = (teacher_logits.topk(k, dim=-1).values - lse).exp()  # (B, T, k)
    collision = (top * top).sum(-1)  # (B, T)
    log_w = logp_tok - torch.log(collision + eps)  # (B, T), -inf when p[token] = 0
    return torch.exp(torch.clamp(gamma * log_w, math.log(clip[0]), math.log(clip[1])))


# ----------------------------------------------------------------------------------------
# chunked forms (real vocabularies)
# ----------------------------------------------------------------------------------------


def _project(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Logits of a chunk in the weight's dtype (never under autocast: bf16 autocast would round
    float32 master weights), returned in the compute dtype (float32 for half inputs)."""
    with torch.autocast(hidden.device.type, enabled=False):
        logits = hidden.to(weight.dtype) @ weight.T  # (c, V)
    return logits.to(_compute_dtype(logits.dtype))


class _ChunkedHead(torch.autograd.Function):
    """``fn(hidden[i] @ weight[:V].T, i)`` for chunks of row indices ``i``, concatenated.

    ``fn`` maps a chunk's student logits ``(c, V)`` (and the chunk's row indices, to look up
    the teacher side or token ids) to per-row values ``(c,)``. Forward keeps no logits.
    Backward recomputes each chunk's logits, gets d(values)/d(logits) by autograd through
    ``fn`` on that chunk only, and accumulates the weight gradient in place into one buffer
    (``addmm_``), so neither pass ever holds more than one chunk's ``(c, V)`` tensors.
    """

    @staticmethod
    def forward(ctx, hidden, weight, idx, vocab_limit, chunk_size, fn):
        w = weight[:vocab_limit]  # (V, H)
        outs = [
            fn(_project(hidden.index_select(0, i), w), i)  # (c,)
            for i in idx.split(chunk_size)
        ]
        ctx.save_for_backward(hidden, weight, idx)
        ctx.vocab_limit, ctx.chunk_size, ctx.fn = vocab_limit, chunk_size, fn
        if not outs:
            return hidden.new_zeros(0, dtype=_compute_dtype(hidden.dtype))
        return torch.cat(outs)  # (n,)

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, idx = ctx.saved_tensors
        V = ctx.vocab_limit
        w = weight[:V]  # (V, H)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.zeros_like(hidden) if need_h else None  # (N, H)
        grad_w = torch.zeros_like(weight) if need_w else None  # (Vw, H)
        for i, g in zip(idx.split(ctx.chunk_size), grad_out.split(ctx.chunk_size)):
            h = hidden.index_select(0, i)  # (c, H)
            with torch.enable_grad():
                z = _project(h, w).detach().requires_grad_(True)  # (c, V)
                (dz,) = torch.autograd.grad(ctx.fn(z, i), z, g)  # (c, V)
            dz = dz.to(weight.dtype)
            if need_h:
                grad_h.index_add_(0, i, (dz @ w).to(grad_h.dtype))
            if need_w:
                grad_w[:V].addmm_(dz.T, h)
        return grad_h, grad_w, None, None, None, None


def _valid_positions(mask: torch.Tensor | None, n: int, device) -> torch.Tensor:
    if mask is None:
        return torch.arange(n, device=device)
    return mask.reshape(-1).nonzero().squeeze(1)  # (n_valid,)


def _scatter_rows(values: torch.Tensor, idx: torch.Tensor, B: int, T: int) -> torch.Tensor:
    flat = values.new_zeros(B * T)  # (N,) 0 at uncounted positions
    return flat.index_copy(0, idx, values).reshape(B, T)


def chunked_divergence(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    student_lm_head_weight: torch.Tensor,
    teacher_lm_head_weight: torch.Tensor,
    mask: torch.Tensor | None,
    kind: str = "reverse_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    vocab_limit: int | None = None,
    alpha: float = 0.1,
    teacher_floor: float = 0.0,
) -> torch.Tensor:
    """Per-token divergence ``[B, T]`` from final hidden states, without ``[B, T, V]`` logits.

    ``student_hidden`` ``[B, T, Hs]``, ``teacher_hidden`` ``[B, T, Ht]``, lm_head weights
    ``[Vs, Hs]`` and ``[Vt, Ht]``. Equals ``<kind>(h_s @ W_s.T, h_t @ W_t.T, ...)`` at counted
    positions and is 0 at uncounted ones (which are skipped, so padding costs nothing;
    ``mask=None`` counts all). ``kind``: reverse_kl, forward_kl, generalized_jsd (``beta``),
    skew_kl / skew_reverse_kl (``alpha``). ``teacher_floor`` > 0 replaces the teacher's
    distribution by ``floored_log_probs(teacher_logits / temperature, teacher_floor)``.
    ``vocab_limit`` restricts both distributions to the
    first ``vocab_limit`` rows (the shared vocabulary when the teacher has padding rows);
    without it the two vocabularies must be equal.

    Memory: counted positions are processed ``chunk_size`` at a time, in forward and again in
    backward, so only one chunk's ``[chunk_size, V]`` logits (and a few same-sized
    temporaries) exist at once, plus one ``W_s``-sized gradient buffer. The student side is
    differentiable w.r.t. hidden states and weight (a custom autograd function that
    recomputes each chunk); the teacher side gets no gradient and its projection runs twice
    (forward and backward). Half-precision inputs give float32 logits per chunk. At
    V = 151,936 one float32 ``[1024, V]`` tensor is 0.6 GB: lower ``chunk_size`` on small
    devices.
    """
    if kind not in _DIVERGENCES:
        raise ValueError(f"kind must be one of {DIVERGENCE_KINDS}, got {kind!r}")
    B, T, Hs = student_hidden.shape
    if teacher_hidden.shape[:2] != (B, T):
        raise ValueError(f"student hidden {(B, T)} vs teacher hidden {teacher_hidden.shape[:2]}")
    Vs, Vt = student_lm_head_weight.shape[0], teacher_lm_head_weight.shape[0]
    if vocab_limit is None:
        if Vs != Vt:
            raise ValueError(
                f"student vocabulary {Vs} != teacher vocabulary {Vt}; if the extra rows are "
                f"padding (same tokenizer), pass vocab_limit={min(Vs, Vt)}"
            )
        vocab_limit = Vs
    if not 0 < vocab_limit <= min(Vs, Vt):
        raise ValueError(f"vocab_limit {vocab_limit} outside (0, {min(Vs, Vt)}]")
    wt = teacher_lm_head_weight[:vocab_limit].detach()  # (V, Ht)
    ht = teacher_hidden.reshape(B * T, -1).detach()  # (N, Ht)
    divergence = _DIVERGENCES[kind]

    def fn(student_logits, i):  # (c, V), (c,) -> (c,)
        teacher_logits = _project(ht.index_select(0, i), wt)  # (c, V), no grad
        if teacher_floor:
            teacher_logits = floored_log_probs(teacher_logits / temperature, teacher_floor) * temperature
        return divergence(student_logits, teacher_logits, temperature, beta, alpha)

    idx = _valid_positions(mask, B * T, student_hidden.device)  # (n_valid,)
    hs = student_hidden.reshape(B * T, Hs)  # (N, Hs)
    vals = _ChunkedHead.apply(hs, student_lm_head_weight, idx, vocab_limit, chunk_size, fn)
    return _scatter_rows(vals, idx, B, T)


def chunked_sampled_token_logprobs(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    token_ids: torch.Tensor,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``sampled_token_logprobs(hidden @ W.T, token_ids, temperature)`` ``[B, T]`` without
    ``[B, T, V]`` logits: ``chunk_size`` positions at a time, recomputed in backward (same
    machinery as ``chunked_divergence``). With ``mask``, uncounted positions are skipped and
    get 0."""
    B, T, H = hidden.shape
    ids = token_ids.reshape(B * T).long()  # (N,)

    def fn(logits, i):  # (c, V), (c,) -> (c,)
        return sampled_token_logprobs(logits, ids.index_select(0, i), temperature)

    idx = _valid_positions(mask, B * T, hidden.device)  # (n_valid,)
    V = lm_head_weight.shape[0]
    vals = _ChunkedHead.apply(hidden.reshape(B * T, H), lm_head_weight, idx, V, chunk_size, fn)
    return _scatter_rows(vals, idx, B, T)


# ----------------------------------------------------------------------------------------
# VCRD (validity_calibrated_distillation.md) and its ABKD baseline
# ----------------------------------------------------------------------------------------

VCRD_WEIGHTINGS = ("ratio", "student_only", "difference")
VCRD_AMPLIFICATION = ("keep", "cap", "uniform")


def alpha_beta_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    alpha: float = 0.5,
    beta: float = 0.5,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Per-token alpha-beta divergence D_AB(p || q) of ABKD (Wang et al., ICML 2025), p teacher,
    q student, both ``softmax(logits / temperature)``: ``[..., V] -> [...]``.

    For alpha, beta, alpha + beta all nonzero::

        D = -1 / (alpha beta) * sum_i [ p_i^a q_i^b - a/(a+b) p_i^(a+b) - b/(a+b) q_i^(a+b) ]

    and the continuous limits elsewhere (Cichocki et al. 2011's AB-divergence):
    beta = 0: ``1/a^2 sum [p^a log(p^a / q^a) - p^a + q^a]`` (alpha = 1, beta = 0 is forward
    KL(p || q)); alpha = 0: ``1/b^2 sum [q^b log(q^b / p^b) - q^b + p^b]`` (alpha = 0, beta = 1 is
    reverse KL(q || p)); alpha = -beta != 0: ``1/a^2 sum [log(q^a / p^a) + (q^a / p^a)^-1 - 1]``;
    alpha = beta = 0: ``1/2 sum (log p - log q)^2``. Powers are computed as ``exp(a log p)``.
    """
    _check_pair(student_logits, teacher_logits)
    logp = _log_probs(teacher_logits, temperature)  # (..., V)
    logq = _log_probs(student_logits, temperature)  # (..., V)
    a, b = float(alpha), float(beta)
    if a == 0.0 and b == 0.0:
        return 0.5 * ((logp - logq) ** 2).sum(-1)
    if b == 0.0:
        pa = torch.exp(a * logp)
        return (pa * (a * logp - a * logq) - pa + torch.exp(a * logq)).sum(-1) / (a * a)
    if a == 0.0:
        qb = torch.exp(b * logq)
        return (qb * (b * logq - b * logp) - qb + torch.exp(b * logp)).sum(-1) / (b * b)
    if a + b == 0.0:
        d = a * (logq - logp)  # log(q^a / p^a)
        return (d + torch.exp(-d) - 1.0).sum(-1) / (a * a)
    s = a + b
    cross = torch.exp(a * logp + b * logq)
    return -(cross - a / s * torch.exp(s * logp) - b / s * torch.exp(s * logq)).sum(-1) / (a * b)


def vcrd_weights(
    r_student: torch.Tensor,
    r_teacher: torch.Tensor,
    weighting: str = "ratio",
    amplification: str = "keep",
    clip: float | None = None,
    eps: float = 1e-8,
) -> torch.Tensor:
    """VCRD token weights from the judge's scores of the student's and the teacher's token under
    one prefix (eq. 1 and its ablations), elementwise; detach before use (stop-gradient).

    ``weighting``: ``ratio`` = ``validity_ratio(r_s, r_t, eps)`` (eq. 1); ``student_only`` =
    r_s (Table 10's LV-Joint-r_s); ``difference`` = r_s - r_t (Table 10's LV-Joint-(r_s - r_t);
    negative where the teacher's token scores higher, which reverses that token's update: the
    paper states the rule without a floor, so none is applied). ``amplification`` (Figure 3):
    ``keep`` the weights as they are; ``cap`` = min(w, 1) (attenuation kept, amplification
    removed); ``uniform`` = 1 everywhere ("clamping all validity-based weights to 1, thereby
    enforcing uniform update strength", §4.4's words, numerically Table 5's constant rows).
    ``clip``: an optional upper bound on w (the paper caps nothing; None = off).
    """
    if weighting not in VCRD_WEIGHTINGS:
        raise ValueError(f"weighting must be one of {VCRD_WEIGHTINGS}, got {weighting!r}")
    if amplification not in VCRD_AMPLIFICATION:
        raise ValueError(f"amplification must be one of {VCRD_AMPLIFICATION}, got {amplification!r}")
    if weighting == "ratio":
        w = validity_ratio(r_student, r_teacher, eps)
    elif weighting == "student_only":
        w = r_student.clone()
    else:
        w = r_student - r_teacher
    if amplification == "cap":
        w = w.clamp(max=1.0)
    elif amplification == "uniform":
        w = torch.ones_like(w)
    if clip is not None:
        w = w.clamp(max=clip)
    return w


def regime_shares(w: torch.Tensor, mask: torch.Tensor, band: float = 0.05) -> dict[str, tuple[float, float]]:
    """VCRD's three regimes (§2.2) as ``(count, counted tokens)`` pairs over ``mask``:
    ``attenuation`` w < 1 - band, ``parity`` |w - 1| <= band, ``amplification`` w > 1 + band."""
    m = mask.bool()
    n = float(m.sum())
    return {"attenuation": (float(((w < 1.0 - band) & m).sum()), n),
            "parity": (float((((w - 1.0).abs() <= band) & m).sum()), n),
            "amplification": (float(((w > 1.0 + band) & m).sum()), n)}


__all__ += ["alpha_beta_divergence", "vcrd_weights", "regime_shares"]
