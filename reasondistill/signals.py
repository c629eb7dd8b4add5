"""Every teacher and student quantity on the completion tokens of a rollout, in one place.

Methods and the evaluation ask a :class:`TokenPass` for what they need (log-probs of tokens,
per-token divergences, the teacher's argmax or top-k, validity weights, the student's entropy)
instead of running the models and slicing logits themselves. A pass runs each model at most
once, lazily, and computes every quantity in one of two ways that give the same numbers:

* ``chunk_size == 0``: from the ``[N, C, V]`` logits of both models;
* ``chunk_size > 0``: from the models' final hidden states, projected through the LM heads
  ``chunk_size`` counted positions at a time (``losses.chunked_*`` for the differentiable
  quantities), so neither model's float32 ``[N, C, V]`` logits ever exist. Real vocabularies
  (151,936 rows for Qwen2.5) need this.

Conventions shared by every quantity:

* Results are ``(N, C)`` (or ``(N, C, k)``) at the positions that predict each completion
  token, and 0 where ``completion_mask`` is 0, in both paths (the chunked path skips those
  positions, so the plain path zeroes them to give identical tensors).
* ``temperature`` divides both models' logits everywhere.
* The teacher is read on the first ``shared_vocab`` logit columns (its extra rows are padding)
  and, with ``teacher_floor > 0``, through ``losses.floored_log_probs``; the student's
  log-prob of a token uses the student's full vocabulary.
* Only ``student_logp`` and ``divergence`` carry gradient (w.r.t. the student); everything
  else runs under ``no_grad``.
"""

from __future__ import annotations

import math

import torch

from . import losses
from .losses import _project, floored_log_probs
from .rollout import forward_logits, position_ids_from_mask

__all__ = ["StudentModule", "TokenPass", "completion_hidden", "lm_head_weight", "mean_kl_per_row"]


class StudentModule(torch.nn.Module):
    """Wraps the HF causal LM being trained so that every student forward, including the
    hidden-states-only forward of the chunked path, goes through the module that accelerate
    wraps in DDP (calling the inner model's decoder directly bypasses DDP's forward and breaks
    gradient sync under several processes). Sample from and save ``.lm``."""

    def __init__(self, lm: torch.nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, *args, hidden_only: bool = False, **kw):
        """``hidden_only``: the decoder's ``last_hidden_state`` ``(B, T, H)``, no logits;
        otherwise ``lm(*args, **kw)`` unchanged."""
        if hidden_only:
            return self.lm.get_decoder()(*args, **kw).last_hidden_state  # (B, T, H)
        return self.lm(*args, **kw)


def _unwrap(model):
    """The module inside DDP / FSDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        inner = model._modules.get("module", model._modules.get("_orig_mod"))
        if inner is None:
            return model
        model = inner


def _device(model) -> torch.device:
    return next(model.parameters()).device


def lm_head_weight(model) -> torch.Tensor:
    """``(V, H)`` output-embedding weight of an HF model or a (wrapped) ``StudentModule``; the
    parameter itself, so a gradient through it reaches the optimizer."""
    inner = _unwrap(model)
    lm = inner.lm if isinstance(inner, StudentModule) else inner
    return lm.get_output_embeddings().weight


def completion_hidden(model, batch) -> torch.Tensor:
    """``(N, C, H)`` final hidden states at the positions that predict each completion token
    (the decoder's output before the LM head; no logits). A ``StudentModule``, wrapped or not,
    is called with ``hidden_only=True`` so that the forward runs through its wrappers."""
    C = batch.completion_ids.shape[1]
    mask = batch.full_mask()
    kw = dict(input_ids=batch.full_ids(), attention_mask=mask, position_ids=position_ids_from_mask(mask))
    if isinstance(_unwrap(model), StudentModule):
        hidden = model(**kw, hidden_only=True)  # (N, P + C, H)
    else:
        hidden = _unwrap(model).get_decoder()(**kw).last_hidden_state  # (N, P + C, H)
    return hidden[:, -(C + 1):-1]


class TokenPass:
    """One student forward (with grad) and one teacher forward (no grad) over the completion
    positions of ``batch`` (a ``rollout.Rollout``), each done lazily at most once, and every
    quantity computed from them. ``chunk_size == 0``: from ``[N, C, V]`` logits; ``> 0``: from
    final hidden states ``chunk_size`` positions at a time (``losses.chunked_*``), never
    holding both models' ``[N, C, V]`` float32 logits.

    ``student``: a ``StudentModule`` (possibly DDP-wrapped) or a plain HF model; ``teacher``: a
    plain HF model, possibly on another device (its outputs are moved to ``device``, by default
    the student's). ``shared_vocab``: the number of leading logit columns both models share
    (None: equal vocabularies). ``teacher_head``: the teacher's LM head already on ``device``
    (chunked path), to copy it once across steps; the one used is ``self.teacher_head``.
    """

    def __init__(self, batch, student=None, teacher=None, *, shared_vocab: int | None = None,
                 temperature: float = 1.0, chunk_size: int = 0, teacher_floor: float = 0.0, device=None,
                 teacher_head: torch.Tensor | None = None):
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= teacher_floor < 1.0:
            raise ValueError(f"teacher_floor must be in [0, 1), got {teacher_floor}")
        if chunk_size < 0:
            raise ValueError(f"chunk_size must be >= 0, got {chunk_size}")
        if device is None:
            device = _device(student) if student is not None else batch.completion_ids.device
        self.device = torch.device(device)
        self.batch = batch.to(self.device)
        self.mask = self.batch.completion_mask.bool()  # (N, C) counted positions
        self.student, self.teacher = student, teacher
        self.shared_vocab, self.temperature = shared_vocab, float(temperature)
        self.chunk_size, self.teacher_floor = int(chunk_size), float(teacher_floor)
        self._teacher_head = teacher_head
        self._cache: dict[str, torch.Tensor] = {}

    # -- the two forwards, each run at most once -------------------------------------------
    def _student_out(self) -> torch.Tensor:
        """Plain: raw ``(N, C, Vs)`` logits (full vocabulary); chunked: ``(N, C, Hs)`` hidden states."""
        if self.student is None:
            raise ValueError("this TokenPass was built without a student")
        if "student" not in self._cache:
            run = completion_hidden if self.chunk_size else forward_logits
            self._cache["student"] = run(self.student, self.batch)
        return self._cache["student"]

    def _teacher_out(self) -> torch.Tensor:
        """Plain: ``(N, C, V)`` float32 logits over the shared vocabulary; chunked: ``(N, C, Ht)``
        hidden states; no grad, on ``self.device``."""
        if self.teacher is None:
            raise ValueError("this TokenPass was built without a teacher")
        if "teacher" not in self._cache:
            run = completion_hidden if self.chunk_size else forward_logits
            with torch.no_grad():
                out = run(self.teacher, self.batch.to(_device(self.teacher))).to(self.device)
            # float32: divergences of bf16 logits are badly wrong
            self._cache["teacher"] = out if self.chunk_size else out[..., : self.shared_vocab].float()
        return self._cache["teacher"]

    @property
    def teacher_head(self) -> torch.Tensor | None:
        """The teacher's ``(Vt, Ht)`` LM head on ``self.device`` (chunked path; copied at most once)."""
        if self._teacher_head is None and self.chunk_size and self.teacher is not None:
            self._teacher_head = lm_head_weight(self.teacher).detach().to(self.device)
        return self._teacher_head

    def _teacher_vocab(self) -> int:
        return lm_head_weight(self.teacher).shape[0] if self.shared_vocab is None else self.shared_vocab

    # -- helpers ---------------------------------------------------------------------------
    def _tokens(self, tokens) -> torch.Tensor:
        return self.batch.completion_ids if tokens is None else tokens.to(self.device).long()  # (N, C)

    def _zero_uncounted(self, x: torch.Tensor) -> torch.Tensor:
        m = self.mask.reshape(self.mask.shape + (1,) * (x.dim() - 2))  # (N, C, 1...)
        return torch.where(m, x, 0)

    def _log_dist(self, side: str, logits: torch.Tensor) -> torch.Tensor:
        """log softmax(logits / temperature), the teacher's floored: ``(..., V)``."""
        z = logits / self.temperature if self.temperature != 1.0 else logits
        return floored_log_probs(z, self.teacher_floor if side == "teacher" else 0.0)

    def _teacher_log_dist(self) -> torch.Tensor:
        """Plain path: the teacher's tempered, floored ``(N, C, V)`` log-distribution, computed
        once per pass (the divergence and every teacher quantity read it)."""
        if "teacher_log_dist" not in self._cache:
            self._cache["teacher_log_dist"] = self._log_dist("teacher", self.teacher_logits())
        return self._cache["teacher_log_dist"]

    def _per_position(self, side: str, fn, tokens=None, raw: bool = False):
        """``fn(log_dist (..., V), tokens (...))`` -> a tensor (or tuple) shaped ``(...)`` or
        ``(..., k)``, without grad, at every counted position of ``side`` ("teacher": shared
        vocabulary, floored; "student": full vocabulary); 0 elsewhere. ``raw``: ``fn`` gets the
        raw logits instead (enough for an argmax, which neither temperature nor floor changes).
        Plain: one call on all positions; chunked: ``chunk_size`` counted positions at a time
        through ``losses._project``."""
        tokens = self._tokens(tokens)  # (N, C)
        dist = (lambda side_, z: z) if raw else self._log_dist
        if side == "student":  # the student's forward is cached for the differentiable quantities too: run it
            self._student_out()  # outside no_grad, or a later student_logp/divergence would get no gradient
        with torch.no_grad():
            if not self.chunk_size:
                if side == "teacher":
                    logits = self.teacher_logits() if raw else self._teacher_log_dist()
                else:
                    logits = self._student_out() if raw else self._log_dist(side, self._student_out().float())
                out = fn(logits, tokens)
                return tuple(map(self._zero_uncounted, out)) if isinstance(out, tuple) else self._zero_uncounted(out)
            if side == "teacher":
                hidden, weight = self._teacher_out(), self.teacher_head[: self._teacher_vocab()]
            else:
                hidden, weight = self._student_out().detach(), lm_head_weight(self.student)
            N, C = self.mask.shape
            flat_h, flat_t = hidden.reshape(N * C, -1), tokens.reshape(N * C)  # (N*C, H), (N*C,)
            idx = self.mask.reshape(-1).nonzero().squeeze(1)  # (n,) counted positions
            parts = [fn(dist(side, _project(flat_h.index_select(0, i), weight)), flat_t.index_select(0, i))
                     for i in (idx.split(self.chunk_size) or (idx,))]
            single = not isinstance(parts[0], tuple)
            outs = []
            for vals in zip(*[(p,) if single else p for p in parts]):
                v = torch.cat(vals)  # (n, ...)
                full = v.new_zeros((N * C, *v.shape[1:])).index_copy(0, idx, v)  # (N*C, ...)
                outs.append(full.reshape(N, C, *v.shape[1:]))
            return outs[0] if single else tuple(outs)

    def _plain_only(self, name: str) -> None:
        if self.chunk_size:
            raise RuntimeError(f"TokenPass.{name}() needs chunk_size=0: with chunk_size={self.chunk_size} the "
                               "[N, C, V] logits are never materialised; use the per-token quantities instead")

    # -- differentiable quantities ---------------------------------------------------------
    def student_logp(self, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """``(N, C)`` log pi(token) at the temperature, full student vocabulary, with grad;
        ``tokens`` default: the completion tokens (e.g. ``teacher_argmax()`` for TGPO's guidance)."""
        tokens = self._tokens(tokens)
        if self.chunk_size:
            return losses.chunked_sampled_token_logprobs(self._student_out(), lm_head_weight(self.student), tokens,
                                                         self.temperature, self.chunk_size, self.mask)
        return self._zero_uncounted(losses.sampled_token_logprobs(self._student_out(), tokens, self.temperature))

    def divergence(self, kind: str = "reverse_kl", beta: float = 0.5, alpha: float = 0.1) -> torch.Tensor:
        """``(N, C)`` per-token divergence (``losses.DIVERGENCE_KINDS``; ``beta`` for
        generalized_jsd, ``alpha`` for the skew kinds) over the shared vocabulary, the teacher
        floored, with grad w.r.t. the student only."""
        if kind not in losses.DIVERGENCE_KINDS:
            raise ValueError(f"kind must be one of {losses.DIVERGENCE_KINDS}, got {kind!r}")
        self._teacher_out()  # the teacher first: its forward should not run while the student's graph is held
        if self.chunk_size:
            return losses.chunked_divergence(
                self._student_out(), self._teacher_out(), lm_head_weight(self.student), self.teacher_head, self.mask,
                kind=kind, beta=beta, temperature=self.temperature, chunk_size=self.chunk_size,
                vocab_limit=self.shared_vocab, alpha=alpha, teacher_floor=self.teacher_floor)
        t, s = self.teacher_logits(), self.student_logits()  # (N, C, V)
        if self.teacher_floor:  # the floored distribution as logits (the divergence divides by T again)
            t = self._teacher_log_dist() * self.temperature
        return self._zero_uncounted(losses._DIVERGENCES[kind](s, t, self.temperature, beta, alpha))

    # -- teacher quantities (no grad) ------------------------------------------------------
    def teacher_logp(self, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """``(N, C)`` log mu(token), floored; a token outside the shared vocabulary gets the
        floor's mass ``log(max(floor, 1e-30) / V_shared)`` (finite, not -inf)."""
        V = self._teacher_vocab()
        outside = math.log(max(self.teacher_floor, 1e-30) / V)

        def fn(logp, tok):  # (..., V), (...) -> (...)
            inside = logp.gather(-1, tok.clamp(max=V - 1).unsqueeze(-1)).squeeze(-1)
            return torch.where(tok < V, inside, outside)

        return self._per_position("teacher", fn, tokens)

    def teacher_argmax(self) -> torch.Tensor:
        """``(N, C)`` long: the teacher's most likely token at each prefix (shared vocabulary)."""
        return self._per_position("teacher", lambda logits, tok: logits.argmax(-1), raw=True)

    def teacher_topk(self, k: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
        """``(probs (N, C, k), ids (N, C, k))``: the teacher's k most likely tokens at the
        temperature (floored), most likely first."""
        k = min(k, self._teacher_vocab())

        def fn(logp, tok):
            top = logp.topk(k, dim=-1)  # (..., k)
            return top.values.exp(), top.indices

        return self._per_position("teacher", fn)

    def prob_proxy_weights(self, tokens: torch.Tensor | None = None, top_k: int = 128, gamma: float = 0.5,
                           clip: tuple[float, float] = (0.5, 2.0), eps: float = 1e-8) -> torch.Tensor:
        """``(N, C)`` VCRD-Prob weights, ``losses.prob_proxy_validity_weights`` of the teacher's
        (floored, tempered) distribution at ``tokens`` (default the completion tokens). A token
        outside the shared vocabulary gets ``clip[0]``, the weight of an impossible token."""
        V = self._teacher_vocab()

        def fn(logp, tok):
            w = losses.prob_proxy_validity_weights(logp, tok.clamp(max=V - 1), top_k, eps, gamma, clip)
            return torch.where(tok < V, w, clip[0])

        return self._per_position("teacher", fn, tokens)

    def teacher_logits(self) -> torch.Tensor:
        """``(N, C, V)`` float32 raw teacher logits over the shared vocabulary (chunk_size=0 only)."""
        self._plain_only("teacher_logits")
        return self._teacher_out()

    # -- student quantities without grad ---------------------------------------------------
    def student_entropy(self) -> torch.Tensor:
        """``(N, C)`` entropy of the student's distribution at the temperature (full vocabulary)."""

        def fn(logp, tok):
            p = logp.exp()
            return -torch.where(p > 0, p * logp, 0.0).sum(-1)

        return self._per_position("student", fn)

    def student_argmax(self) -> torch.Tensor:
        """``(N, C)`` long: the student's most likely token at each prefix (full vocabulary)."""
        return self._per_position("student", lambda logits, tok: logits.argmax(-1), raw=True)

    def student_logits(self) -> torch.Tensor:
        """``(N, C, V)`` float32 raw student logits over the shared vocabulary, with grad (chunk_size=0 only)."""
        self._plain_only("student_logits")
        return self._student_out()[..., : self.shared_vocab].float()


def mean_kl_per_row(student, teacher, batch, shared_vocab: int | None = None, chunk_size: int = 0,
                    temperature: float = 1.0, teacher_floor: float = 0.0) -> torch.Tensor:
    """``(N,)`` mean per-token KL(student || teacher) over each row's counted tokens (0 for a
    row without any), no grad, on the student's device: the evaluation's per-answer KL.
    ``shared_vocab=None``: the smaller of the two LM heads (the extra rows being padding)."""
    if shared_vocab is None:
        shared_vocab = min(lm_head_weight(student).shape[0], lm_head_weight(teacher).shape[0])
    with torch.no_grad():
        tp = TokenPass(batch, student, teacher, shared_vocab=shared_vocab, temperature=temperature,
                       chunk_size=chunk_size, teacher_floor=teacher_floor)
        return losses.masked_mean(tp.divergence("reverse_kl"), tp.mask, dim=-1)  # (N,)
