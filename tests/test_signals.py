"""reasondistill.signals: every TokenPass quantity, plain == chunked (values and gradients), and
both equal to a direct computation from ``rollout.forward_logits`` and the losses.py functions
(or an explicit float64 formula).

The models are tiny random Qwen2s with different widths and depths. The student has 44 output
rows and the teacher 46, of which the first 40 are shared: the teacher's extra rows play the
padding rows of a real teacher, and tokens 40..43 are real student tokens the teacher cannot
score. The LM heads are scaled up so that the distributions are far from uniform.
"""

import copy
import math

import pytest
import torch

from reasondistill import losses as L
from reasondistill.eval.math_eval import _kl_per_row
from reasondistill.rollout import Rollout, forward_logits
from reasondistill.signals import StudentModule, TokenPass, completion_hidden, mean_kl_per_row

VS, VT, SHARED = 44, 46, 40
CHUNK = 3  # does not divide the 9 counted positions
KINDS = list(L.DIVERGENCE_KINDS)


@pytest.fixture(scope="module")
def models(make_model):
    s = make_model(VS, seed=0, hidden_size=32, num_hidden_layers=1)
    t = make_model(VT, seed=1, hidden_size=48, num_hidden_layers=2)
    with torch.no_grad():
        for m in (s, t):
            m.eval()
            m.lm_head.weight.mul_(20.0)
    t.requires_grad_(False)
    return s, t


@pytest.fixture(scope="module")
def models64(models):
    return tuple(copy.deepcopy(m).double() for m in models)


def _batch() -> Rollout:
    """4 rows: left-padded prompts, right-padded completions, the last row with no counted token;
    completion tokens 41 and 42 are outside the shared vocabulary."""
    g = torch.Generator().manual_seed(3)
    pm = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1], [0, 0, 1, 1], [0, 1, 1, 1]])
    cm = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]])
    ci = torch.randint(0, SHARED, (4, 5), generator=g)
    ci[0, 2], ci[1, 1] = 42, 41
    return Rollout(prompt_ids=torch.randint(0, SHARED, (4, 4), generator=g) * pm, prompt_mask=pm,
                   completion_ids=ci * cm, completion_mask=cm, logprobs=torch.zeros(4, 5),
                   truncated=torch.zeros(4, dtype=torch.bool), group_index=torch.arange(4))


def _pass(models, chunk, student=True, **kw) -> TokenPass:
    s, t = models
    return TokenPass(_batch(), StudentModule(s) if student else None, t, shared_vocab=SHARED, chunk_size=chunk, **kw)


def _grads(model, value):
    """Gradients of a fixed weighted sum of ``value`` w.r.t. every parameter of ``model``."""
    model.zero_grad(set_to_none=True)
    w = torch.linspace(0.5, 1.5, value.numel(), dtype=value.dtype).reshape(value.shape)
    (value * w).sum().backward()
    out = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return out


def _close(a, b, atol=1e-5):
    assert a.shape == b.shape
    assert torch.allclose(a.double(), b.double(), atol=atol, rtol=1e-5), (a - b).abs().max()


def _zero_off_mask(x, mask):
    assert (x[~mask.bool()] == 0).all()


def _div(kind, s, t, temperature, beta, alpha):
    """The contract's public divergence functions, called by name."""
    if kind == "generalized_jsd":
        return L.generalized_jsd(s, t, beta=beta, temperature=temperature)
    if kind in ("skew_kl", "skew_reverse_kl"):
        return getattr(L, kind)(s, t, alpha=alpha, temperature=temperature)
    return getattr(L, kind)(s, t, temperature=temperature)


# ----------------------------------------------------------------------------------------
# plain == chunked
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("floor", [0.0, 0.05])
@pytest.mark.parametrize("kind", KINDS)
def test_divergence_plain_equals_chunked_values_and_grads(models, kind, floor):
    s = models[0]
    got = {}
    for chunk in (0, CHUNK):
        d = _pass(models, chunk, temperature=1.3, teacher_floor=floor).divergence(kind, beta=0.3, alpha=0.2)
        got[chunk] = (d.detach(), _grads(s, d))
    _close(got[0][0], got[CHUNK][0])
    _zero_off_mask(got[0][0], _batch().completion_mask)
    _zero_off_mask(got[CHUNK][0], _batch().completion_mask)
    assert got[0][0].abs().max() > 1e-3  # not trivially zero
    for a, b in zip(got[0][1], got[CHUNK][1]):
        _close(a, b)
    assert any(g.abs().max() > 0 for g in got[0][1])


@pytest.mark.parametrize("which", ["completion", "teacher_argmax", "outside_shared"])
def test_student_logp_plain_equals_chunked_values_and_grads(models, which):
    s = models[0]
    got = {}
    for chunk in (0, CHUNK):
        tp = _pass(models, chunk, temperature=1.3, teacher_floor=0.05)
        tokens = {"completion": None, "teacher_argmax": tp.teacher_argmax(),
                  "outside_shared": torch.full_like(tp.batch.completion_ids, VS - 1)}[which]
        lp = tp.student_logp(tokens)
        got[chunk] = (lp.detach(), _grads(s, lp))
    _close(got[0][0], got[CHUNK][0])
    _zero_off_mask(got[CHUNK][0], _batch().completion_mask)
    for a, b in zip(got[0][1], got[CHUNK][1]):
        _close(a, b)


def test_no_grad_quantities_plain_equals_chunked(models):
    p, c = (_pass(models, chunk, temperature=1.3, teacher_floor=0.05) for chunk in (0, CHUNK))
    mask = _batch().completion_mask
    for name in ("teacher_logp", "prob_proxy_weights", "student_entropy"):
        a, b = getattr(p, name)(), getattr(c, name)()
        _close(a, b)
        _zero_off_mask(b, mask)
        assert not a.requires_grad and not b.requires_grad
    for name in ("teacher_argmax", "student_argmax"):
        a, b = getattr(p, name)(), getattr(c, name)()
        assert a.dtype == torch.long and torch.equal(a, b)
    (pa, ia), (pb, ib) = p.teacher_topk(7), c.teacher_topk(7)
    assert pa.shape == (4, 5, 7) and torch.equal(ia, ib)
    _close(pa, pb)
    _zero_off_mask(pb, mask.unsqueeze(-1).expand(-1, -1, 7))


@pytest.mark.parametrize("kind", ["skew_kl", "skew_reverse_kl"])
def test_alpha_reaches_the_chunked_path(models, kind):
    d = {(chunk, a): _pass(models, chunk).divergence(kind, alpha=a).detach()
         for chunk in (0, CHUNK) for a in (0.1, 0.5)}
    for a in (0.1, 0.5):
        _close(d[0, a], d[CHUNK, a])
    assert (d[CHUNK, 0.1] - d[CHUNK, 0.5]).abs().max() > 1e-3


# ----------------------------------------------------------------------------------------
# against a direct computation
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("floor", [0.0, 0.05])
@pytest.mark.parametrize("temperature", [1.0, 1.7])
@pytest.mark.parametrize("chunk", [0, CHUNK])
def test_every_quantity_matches_a_direct_computation(models64, chunk, temperature, floor):
    s_model, t_model = models64
    b = _batch()
    ids, mask = b.completion_ids, b.completion_mask.bool()
    with torch.no_grad():
        s = forward_logits(s_model, b)  # (N, C, VS) float64
        t = forward_logits(t_model, b)[..., :SHARED]  # (N, C, SHARED)
    q_full = torch.softmax(s / temperature, -1)  # (N, C, VS) the student, full vocabulary
    p = (1 - floor) * torch.softmax(t / temperature, -1) + floor / SHARED  # the floored teacher
    log_p = p.log()
    inside = ids < SHARED
    tp = _pass(models64, chunk, temperature=temperature, teacher_floor=floor)

    def check(got, want):
        want = torch.where(mask.reshape(mask.shape + (1,) * (want.dim() - 2)), want, 0)
        _close(got.detach(), want)

    check(tp.student_logp(), q_full.log().gather(-1, ids[..., None])[..., 0])
    for kind in KINDS:  # the losses.py functions on tempered student logits and the floored teacher
        want = _div(kind, s[..., :SHARED] / temperature, log_p, 1.0, 0.3, 0.2)
        if floor == 0.0:  # and directly with their temperature argument
            _close(want, _div(kind, s[..., :SHARED], t, temperature, 0.3, 0.2))
        check(tp.divergence(kind, beta=0.3, alpha=0.2), want)
    outside = math.log(max(floor, 1e-30) / SHARED)
    at_token = log_p.gather(-1, ids.clamp(max=SHARED - 1)[..., None])[..., 0]
    check(tp.teacher_logp(), torch.where(inside, at_token, outside))
    check(tp.teacher_argmax(), t.argmax(-1))
    probs, top_ids = tp.teacher_topk(5)
    check(probs, p.topk(5, -1).values)
    check(top_ids, p.topk(5, -1).indices)
    w = L.prob_proxy_validity_weights(log_p, ids.clamp(max=SHARED - 1), top_k=6, gamma=0.7, clip=(0.4, 3.0))
    if temperature == 1.0 and floor == 0.0:  # exactly the contract's function of the raw teacher logits
        _close(w, L.prob_proxy_validity_weights(t, ids.clamp(max=SHARED - 1), top_k=6, gamma=0.7, clip=(0.4, 3.0)))
    check(tp.prob_proxy_weights(top_k=6, gamma=0.7, clip=(0.4, 3.0)), torch.where(inside, w, 0.4))
    check(tp.student_entropy(), -(q_full * q_full.log()).sum(-1))
    check(tp.student_argmax(), s.argmax(-1))


def test_the_floor_changes_the_teacher_side_only(models):
    plain, floored = _pass(models, CHUNK), _pass(models, CHUNK, teacher_floor=0.1)
    mask = _batch().completion_mask.bool()
    outside = (_batch().completion_ids >= SHARED) & mask
    for name in ("student_logp", "student_entropy"):
        _close(getattr(plain, name)(), getattr(floored, name)())
    assert torch.equal(plain.teacher_argmax(), floored.teacher_argmax())  # a floor keeps the order
    for name in ("teacher_logp", "divergence"):
        assert (getattr(plain, name)() - getattr(floored, name)())[mask].abs().max() > 1e-3
    # a token the teacher cannot score: the floor's mass, and a tiny finite value without a floor
    _close(floored.teacher_logp()[outside], torch.full((2,), math.log(0.1 / SHARED)))
    _close(plain.teacher_logp()[outside], torch.full((2,), math.log(1e-30 / SHARED)))


@pytest.mark.parametrize("chunk", [0, CHUNK])
def test_temperature_divides_both_models_logits(models, chunk):
    """Temperature 2 equals temperature 1 with both LM heads halved."""
    halved = tuple(copy.deepcopy(m) for m in models)
    with torch.no_grad():
        for m in halved:
            m.lm_head.weight.mul_(0.5)
    a, b = _pass(models, chunk, temperature=2.0, teacher_floor=0.05), _pass(halved, chunk, teacher_floor=0.05)
    for name in ("student_logp", "teacher_logp", "divergence", "student_entropy", "prob_proxy_weights"):
        _close(getattr(a, name)().detach(), getattr(b, name)().detach())
    assert (a.divergence() - _pass(models, chunk, teacher_floor=0.05).divergence()).abs().max() > 1e-3


# ----------------------------------------------------------------------------------------
# laziness, the plain-only accessors, the teacher head, StudentModule
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [0, CHUNK])
def test_each_model_runs_at_most_once_and_only_when_asked(models, chunk):
    s, t = models
    calls, order = {"student": 0, "teacher": 0}, []
    student = StudentModule(s)

    def count(name):
        def hook(*args):  # a pre-hook must return None (a value would replace the inputs)
            calls[name] += 1
            order.append(name)
        return hook

    hooks = [student.register_forward_pre_hook(count("student")), t.get_decoder().register_forward_pre_hook(count("teacher"))]
    try:
        fresh = TokenPass(_batch(), student, t, shared_vocab=SHARED, chunk_size=chunk)
        fresh.divergence("reverse_kl")  # the teacher's no-grad forward runs before the student's graph exists
        assert order == ["teacher", "student"]
        calls.update(student=0, teacher=0)
        tp = TokenPass(_batch(), student, t, shared_vocab=SHARED, chunk_size=chunk)
        assert calls == {"student": 0, "teacher": 0}  # nothing runs at construction
        tp.teacher_logp(), tp.teacher_argmax(), tp.teacher_topk(3), tp.prob_proxy_weights()
        assert calls == {"student": 0, "teacher": 1}
        tp.student_logp(), tp.divergence("forward_kl"), tp.student_entropy(), tp.student_argmax()
        tp.student_logp(tp.teacher_argmax()), tp.divergence("generalized_jsd")
        assert calls == {"student": 1, "teacher": 1}
    finally:
        for h in hooks:
            h.remove()


def test_plain_only_accessors(models):
    tp = _pass(models, 0)
    assert tp.student_logits().shape == (4, 5, SHARED) and tp.student_logits().dtype == torch.float32
    assert tp.teacher_logits().shape == (4, 5, SHARED) and tp.student_logits().requires_grad
    chunked = _pass(models, CHUNK)
    for name in ("student_logits", "teacher_logits"):
        with pytest.raises(RuntimeError, match="never materialised"):
            getattr(chunked, name)()


def test_teacher_head_is_exposed_and_a_given_one_is_used(models):
    tp = _pass(models, CHUNK)
    assert torch.equal(tp.teacher_head, models[1].lm_head.weight)
    zero = torch.zeros_like(models[1].lm_head.weight)
    given = _pass(models, CHUNK, teacher_head=zero)
    assert given.teacher_head is zero
    mask = _batch().completion_mask.bool() & (_batch().completion_ids < SHARED)
    _close(given.teacher_logp()[mask], torch.full((int(mask.sum()),), -math.log(SHARED)))  # a uniform teacher
    assert _pass(models, 0).teacher_head is None  # the plain path needs none


def test_errors(models):
    with pytest.raises(ValueError, match="kind"):
        _pass(models, 0).divergence("kl")
    with pytest.raises(ValueError, match="temperature"):
        _pass(models, 0, temperature=0.0)
    with pytest.raises(ValueError, match="teacher_floor"):
        _pass(models, 0, teacher_floor=1.0)
    with pytest.raises(ValueError, match="without a student"):
        _pass(models, CHUNK, student=False).student_logp()


def test_student_module_hidden_only_is_the_decoder_output(models):
    s = models[0]
    b = _batch()
    kw = dict(input_ids=b.full_ids(), attention_mask=b.full_mask(), position_ids=b.full_position_ids())
    wrapped = StudentModule(s)
    with torch.no_grad():
        h = wrapped(**kw, hidden_only=True)
        _close(h, s.get_decoder()(**kw).last_hidden_state, atol=0)
        _close(s.lm_head(h), wrapped(**kw).logits)  # and the plain forward is the LM's
        _close(completion_hidden(wrapped, b), completion_hidden(s, b), atol=0)


def test_ddp_wrapped_student_chunked_gradients(models, tmp_path):
    """One process of DDP: the chunked forward goes through the wrapper (hidden_only=True) and
    its gradients equal the unwrapped student's, over two steps (the reducer stays consistent)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    if not dist.is_available():
        pytest.skip("this torch build has no torch.distributed")
    s = copy.deepcopy(models[0])
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp = DDP(StudentModule(s))
        calls = []
        ddp.register_forward_pre_hook(lambda *a: calls.append(1))
        for _ in range(2):
            d = TokenPass(_batch(), ddp, models[1], shared_vocab=SHARED, chunk_size=CHUNK).divergence()
            got = _grads(s, d)
            want = _grads(s, _pass((s, models[1]), CHUNK).divergence())
            for a, b in zip(got, want):
                _close(a, b)
        assert len(calls) == 2  # through DDP's forward
    finally:
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------------
# the evaluation's per-row KL
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [0, CHUNK])
def test_mean_kl_per_row(models, chunk):
    s, t = models
    b = _batch()
    m = b.completion_mask.float()
    for shared in (SHARED, None):  # None: the smaller of the two heads, as the evaluation always did
        v = shared or min(VS, VT)
        with torch.no_grad():
            kl = L.reverse_kl(forward_logits(s, b)[..., :v], forward_logits(t, b)[..., :v])  # (N, C)
        want = (kl * m).sum(1) / m.sum(1).clamp(min=1)
        got = mean_kl_per_row(s, t, b, shared_vocab=shared, chunk_size=chunk)
        _close(got, want)
        assert got[3] == 0 and (got[:3] > 0).all() and not got.requires_grad
        _close(_kl_per_row(s, t, b, shared, max_logit_elems=1), want)  # one row at a time
        _close(_kl_per_row(s, t, b, shared), want)


def test_a_student_quantity_asked_first_does_not_take_the_gradient_away(tokenizer, make_model):
    """student_argmax / student_entropy run without grad; asked before student_logp or a
    divergence, they must not leave a no-grad forward in the cache (the loss would not train)."""
    from reasondistill.rollout import encode_pairs
    from reasondistill.signals import TokenPass

    s = make_model(len(tokenizer), seed=0, hidden_size=32, num_hidden_layers=1)
    t = make_model(len(tokenizer), seed=1, hidden_size=32, num_hidden_layers=1).requires_grad_(False)
    batch = encode_pairs(tokenizer, ["<|im_start|>user\n1+2<|im_end|>\n<|im_start|>assistant\n"], ["3"], 32, 8)
    for first in ("student_argmax", "student_entropy"):
        p = TokenPass(batch, s, t)
        getattr(p, first)()
        assert p.student_logp().requires_grad and p.divergence("reverse_kl").requires_grad, first
