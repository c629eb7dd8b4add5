"""Validity judges for VCRD (validity_calibrated_distillation.md §2.2): r(c, a) in [0, 1] for a
prefix c and a proposed next token a, behind one small interface.

A judge scores a batch of (prefix, candidate) pairs grouped by the rollout whose prefixes they
are (a :class:`Query`: one rollout, and for each pair the prefix length t and the candidate
token, in the *student's* token ids); ``score(queries)`` returns one ``(n,)`` float tensor in
[0, 1] per query. Grouping by rollout is what lets a model judge share the prefix: every
candidate of a rollout is scored in one packed forward (below), never one forward per position.
Each judge owns its tokenizer and device.

* ``arith`` (:class:`ArithJudge`): the embedded task's graded rule, ``tasks.arith.validity_score``.
* ``prob`` (:class:`ProbJudge`): VCRD-Prob (§10.4). r(c, a) = the teacher's probability of a;
  the teacher-side baseline is not the score of one token but the top-k collision
  ``sum_i p_i^2`` (an expectation of r under the teacher, eq. 8's), so the weight comes whole
  from ``losses.prob_proxy_validity_weights`` (gamma 0.5, clip [0.5, 2]) through
  ``TokenPass.prob_proxy_weights``: :meth:`ProbJudge.pass_weights` reuses the loss's teacher
  forward. ``score`` gives r itself (a teacher forward per rollout) for diagnostics.
* ``prm`` (:class:`PRMJudge`): a process reward model loaded from a path (:func:`load_prm`) with
  one of two adapters: ``classifier`` (Qwen2.5-Math-PRM style: a token classifier whose
  positive-class probability, softmax index 1, is read at the step separator ``<extra_0>``)
  and ``value`` (Skywork-o1-Open-PRM style: a scalar value head, sigmoid of the value at the
  last token). How a PRM scores one candidate token is not in the paper; the recipe here:
  judge text = the PRM's own rendering of the question (its chat template when it has one,
  ``system_prompt`` as system message) + the completion so far + the candidate, completed by
  ``candidate_tokens`` = ``1`` (the token alone) | ``word`` | ``step`` with the *judged
  rollout's own following tokens* up to the end of the word (while the next token starts with a
  letter or digit) or of the step (up to and including the next newline) -- a substitution
  reading: a counterfactual token is judged inside the rollout's word or step; the other
  reading, completing it with the proposer's own greedy continuation, costs a generation per
  position and is not implemented -- then the separator (``classifier``: ``<extra_0>``;
  ``value``: none by default), and the score is read at the last token. An end-of-answer
  candidate appends nothing. When the PRM's tokenizer has another vocabulary, the text is
  re-encoded: the rollout's text is tokenised once with offsets, the judge prefix of position t
  is the judge tokens that end before t's character offset, and the rest of the text up to t
  joins the candidate in the re-encoded suffix.

Packed shared-prefix forward: for one rollout, the input is ``prefix ids + suffix_1 + ... +
suffix_m`` with a boolean 4-D attention mask in which suffix i attends to the first k_i prefix
tokens and causally to itself, and position ids ``k_i + j``: one forward scores m candidates
with exactly the numbers of m separate forwards (tested). It needs an attention implementation
that takes a custom 4-D mask (``sdpa`` or ``eager``, which :func:`load_prm` selects; not
flash-attention-2).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["Query", "Judge", "ArithJudge", "ProbJudge", "PRMJudge", "load_prm", "build_judge", "JUDGES"]

JUDGES = ("arith", "prob", "prm")


@dataclass
class Query:
    """The (prefix, candidate) pairs of one rollout, in the student's token ids."""

    question: str
    """The problem text (model judges render it themselves)."""
    prompt_ids: list[int]
    """The rendered prompt the rollout was conditioned on (student tokenizer)."""
    completion_ids: list[int]
    """The rollout's completion tokens, without padding."""
    positions: list[int]
    """For each pair, t: its prefix is ``completion_ids[:t]``."""
    candidates: list[int]
    """For each pair, the proposed token at that prefix (a stop id = the answer ends there)."""


class Judge:
    """``score(queries) -> [Tensor (n,) in [0, 1]]``, one per query; ``stop_ids`` mark the end."""

    name = "judge"

    def __init__(self, tokenizer, stop_ids=()):
        self.tokenizer = tokenizer
        self.stop_ids = set(int(i) for i in stop_ids) | {int(tokenizer.eos_token_id)}

    def score(self, queries: list[Query]) -> list[torch.Tensor]:
        raise NotImplementedError

    def _pieces(self, ids: list[int]) -> list[str]:
        """The text of each token (byte-level BPE: exact for ASCII text; see module docstring)."""
        return [self.tokenizer.decode([i]) for i in ids]


class ArithJudge(Judge):
    """The embedded task's graded rule (``tasks.arith.validity_score``), one token at a time."""

    name = "arith"

    def score(self, queries):
        from .tasks.arith import validity_score

        out = []
        for q in queries:
            pieces = self._pieces(q.completion_ids)
            starts = [0]
            for p in pieces:
                starts.append(starts[-1] + len(p))
            text = "".join(pieces)
            out.append(torch.tensor([validity_score(q.question, text[: starts[t]],
                                                    None if a in self.stop_ids else self.tokenizer.decode([a]))
                                     for t, a in zip(q.positions, q.candidates)], dtype=torch.float32))
        return out


class ProbJudge(Judge):
    """VCRD-Prob (§10.4): r(c, a) = teacher probability of a; weights via ``pass_weights``."""

    name = "prob"

    def __init__(self, tokenizer, teacher, top_k=128, gamma=0.5, clip=(0.5, 2.0), eps=1e-8, stop_ids=()):
        super().__init__(tokenizer, stop_ids)
        self.teacher, self.top_k, self.gamma, self.clip, self.eps = teacher, top_k, gamma, tuple(clip), eps

    def pass_weights(self, tp, tokens: torch.Tensor) -> torch.Tensor:
        """``(N, C)`` §10.4 weights of ``tokens`` from a ``signals.TokenPass`` (its teacher forward)."""
        return tp.prob_proxy_weights(tokens, top_k=self.top_k, gamma=self.gamma, clip=self.clip, eps=self.eps)

    @torch.no_grad()
    def score(self, queries):
        device = next(self.teacher.parameters()).device
        out = []
        for q in queries:
            ids = torch.tensor([q.prompt_ids + q.completion_ids], device=device)
            logp = torch.log_softmax(self.teacher(input_ids=ids).logits[0].float(), -1)  # (L, V)
            P = len(q.prompt_ids)
            rows = torch.tensor([P - 1 + t for t in q.positions], device=device)
            cand = torch.tensor(q.candidates, device=device).clamp(max=logp.shape[-1] - 1)
            out.append(logp[rows, cand].exp().cpu())
        return out


def _head_fn(kind: str, head: torch.nn.Module):
    if kind == "classifier":
        return lambda h: torch.softmax(head(h).float(), -1)[..., 1]
    return lambda h: torch.sigmoid(head(h).float()).squeeze(-1)


class PRMJudge(Judge):
    """A process reward model as a token judge (module docstring: the recipe and the packing).

    ``backbone``: a decoder returning ``last_hidden_state``; ``head``: the classifier's score
    module (``classifier``) or the value head (``value``); ``judge_tokenizer``: the PRM's;
    ``tokenizer``: the student's (the queries' ids)."""

    name = "prm"

    def __init__(self, backbone, head, kind, judge_tokenizer, tokenizer, *, separator="auto",
                 candidate_tokens="1", system_prompt="Please reason step by step, and put your final answer "
                 "within \\boxed{}.", stop_ids=(), pack_size=64):
        super().__init__(tokenizer, stop_ids)
        if kind not in ("classifier", "value"):
            raise ValueError(f"PRM kind must be classifier or value, got {kind!r}")
        if str(candidate_tokens) not in ("1", "word", "step"):
            raise ValueError(f"candidate_tokens must be 1, word or step, got {candidate_tokens!r}")
        self.backbone, self.kind, self.read = backbone.eval(), kind, _head_fn(kind, head.eval())
        self.jtok, self.candidate_tokens, self.system_prompt = judge_tokenizer, str(candidate_tokens), system_prompt
        if separator == "auto":
            separator = "<extra_0>" if kind == "classifier" else None
        self.sep_ids = [] if not separator else judge_tokenizer.convert_tokens_to_ids([separator])
        if self.sep_ids and self.sep_ids[0] in (None, judge_tokenizer.unk_token_id):
            raise ValueError(f"the PRM's tokenizer has no separator token {separator!r}")
        self.same_ids = judge_tokenizer.get_vocab() == tokenizer.get_vocab()
        self.pack_size = pack_size
        self.device = next(backbone.parameters()).device

    def _prompt_text(self, question: str) -> str:
        if getattr(self.jtok, "chat_template", None):
            msgs = ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else []) + \
                   [{"role": "user", "content": question}]
            return self.jtok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return question + "\n"

    def _tail(self, pieces: list[str], ids: list[int], t: int, cand_text: str) -> int:
        """End index (exclusive) of the rollout tokens after t that complete the candidate."""
        j = t + 1
        if self.candidate_tokens == "1" or not cand_text:
            return j
        if self.candidate_tokens == "word":
            if not cand_text[-1].isalnum():
                return j
            while j < len(ids) and ids[j] not in self.stop_ids and pieces[j][:1].isalnum():
                j += 1
            return j
        if "\n" in cand_text:
            return j
        while j < len(ids) and ids[j] not in self.stop_ids:
            j += 1
            if "\n" in pieces[j - 1]:
                break
        return j

    def _pairs(self, q: Query):
        """(judge prefix ids, [(k_i, suffix ids_i)]) for the pairs of one query."""
        pieces = self._pieces(q.completion_ids)
        cand_texts = ["" if a in self.stop_ids else self.tokenizer.decode([a]) for a in q.candidates]
        prompt = self._prompt_text(q.question)
        ends = [self._tail(pieces, q.completion_ids, t, c) for t, c in zip(q.positions, cand_texts)]
        if self.same_ids:
            prefix = self.jtok(prompt, add_special_tokens=False)["input_ids"] + list(q.completion_ids)
            P = len(prefix) - len(q.completion_ids)
            items = [(P + t, ([] if a in self.stop_ids else [a]) + list(q.completion_ids[t + 1:e]) + self.sep_ids)
                     for t, a, e in zip(q.positions, q.candidates, ends)]
            return prefix, items
        starts = [0]
        for p in pieces:
            starts.append(starts[-1] + len(p))
        text = prompt + "".join(pieces)
        enc = self.jtok(text, add_special_tokens=False, return_offsets_mapping=True)
        prefix, offs = enc["input_ids"], [e for _, e in enc["offset_mapping"]]
        items = []
        for t, c, e in zip(q.positions, cand_texts, ends):
            at = len(prompt) + starts[t]
            k = 0
            while k < len(offs) and offs[k] <= at:
                k += 1
            gap_from = offs[k - 1] if k else 0
            tail = "".join(pieces[t + 1:e]) if c else ""
            sfx = self.jtok(text[gap_from:at] + c + tail, add_special_tokens=False)["input_ids"] if \
                (text[gap_from:at] + c + tail) else []
            items.append((k, sfx + self.sep_ids))
        return prefix, items

    @torch.no_grad()
    def _packed(self, prefix: list[int], items: list[tuple[int, list[int]]]) -> torch.Tensor:
        """Scores of ``items`` (k_i, suffix_i) in one forward over the shared prefix."""
        L = max(k for k, _ in items)
        ids, pos, read = list(prefix[:L]), list(range(L)), []
        spans = []
        for k, sfx in items:
            spans.append((k, len(ids), len(sfx)))
            read.append(len(ids) + len(sfx) - 1 if sfx else k - 1)
            ids += sfx
            pos += range(k, k + len(sfx))
        N = len(ids)
        mask = torch.zeros(N, N, dtype=torch.bool)
        mask[:L, :L] = torch.ones(L, L, dtype=torch.bool).tril()
        for k, s, n in spans:
            if n:
                mask[s:s + n, :k] = True
                mask[s:s + n, s:s + n] = torch.ones(n, n, dtype=torch.bool).tril()
        h = self.backbone(input_ids=torch.tensor([ids], device=self.device),
                          attention_mask=mask[None, None].to(self.device),
                          position_ids=torch.tensor([pos], device=self.device)).last_hidden_state[0]  # (N, H)
        return self.read(h[torch.tensor(read, device=self.device)]).cpu()

    def score(self, queries):
        out = []
        for q in queries:
            prefix, items = self._pairs(q)
            parts = [self._packed(prefix, items[i:i + self.pack_size]) for i in range(0, len(items), self.pack_size)]
            out.append(torch.cat(parts) if parts else torch.zeros(0))
        return out


def _value_head(path: Path, hidden: int) -> torch.nn.Linear:
    """The value head of a Skywork-style PRM: the ``v_head`` weights found in the folder's
    safetensors files (``v_head.summary.weight`` / ``v_head.weight`` and their bias)."""
    from safetensors.torch import load_file

    for f in sorted(path.glob("*.safetensors")):
        state = load_file(str(f))
        w = next((v for k, v in state.items() if k.endswith(("v_head.summary.weight", "v_head.weight"))), None)
        if w is not None:
            b = next((v for k, v in state.items() if k.endswith(("v_head.summary.bias", "v_head.bias"))), None)
            head = torch.nn.Linear(hidden, w.shape[0], bias=b is not None)
            with torch.no_grad():
                head.weight.copy_(w)
                if b is not None:
                    head.bias.copy_(b)
            return head
    raise ValueError(f"{path}: no v_head weights in its *.safetensors (a Skywork-style value-head PRM)")


def load_prm(path: str, kind: str = "auto", device="cpu", dtype=torch.float32, trust_remote_code: bool = False):
    """``(backbone, head, kind, tokenizer)`` of a PRM folder or hub name. ``kind="auto"``: a
    config with ``num_labels == 2`` or an architecture naming ``ProcessRewardModel`` /
    ``TokenClassification`` is a ``classifier``; anything else a ``value``-head PRM."""
    from transformers import AutoConfig, AutoModel, AutoModelForTokenClassification, AutoTokenizer

    from .models import resolve_model

    src = resolve_model(path)
    cfg = AutoConfig.from_pretrained(src, trust_remote_code=trust_remote_code)
    if kind == "auto":
        archs = " ".join(getattr(cfg, "architectures", None) or [])
        kind = "classifier" if ("ProcessRewardModel" in archs or "TokenClassification" in archs) else "value"
    kw = dict(dtype=dtype, attn_implementation="sdpa", trust_remote_code=trust_remote_code)
    if kind == "classifier":
        loader = AutoModel if trust_remote_code and "TokenClassification" not in " ".join(cfg.architectures or []) \
            else AutoModelForTokenClassification
        model = loader.from_pretrained(src, **kw).to(device).eval()
        backbone, head = model.base_model, model.score
    elif kind == "value":
        backbone = AutoModel.from_pretrained(src, **kw).to(device).eval()
        head = _value_head(Path(src), backbone.config.hidden_size).to(device=device, dtype=dtype)
    else:
        raise ValueError(f"prm_type must be auto, classifier or value, got {kind!r}")
    return backbone.requires_grad_(False), head.requires_grad_(False), kind, AutoTokenizer.from_pretrained(src)


def build_judge(cfg, ctx) -> Judge:
    """The judge ``cfg.judge`` names, from a VCRD config and the run's ``engine.Context``."""
    stops = list(ctx.teacher_stop_ids or [])
    if cfg.judge == "arith":
        return ArithJudge(ctx.tokenizer, stops)
    if cfg.judge == "prob":
        return ProbJudge(ctx.tokenizer, ctx.teacher, cfg.prob_top_k, cfg.prob_gamma,
                         (cfg.prob_clip_low, cfg.prob_clip_high), cfg.eps, stops)
    if cfg.judge == "prm":
        device = cfg.prm_device or str(ctx.device)
        dtype = torch.bfloat16 if cfg.dtype in ("bfloat16", "bf16") else torch.float32
        backbone, head, kind, jtok = load_prm(cfg.prm_path, cfg.prm_type, device, dtype, cfg.prm_trust_remote_code)
        return PRMJudge(backbone, head, kind, jtok, ctx.tokenizer, separator=cfg.prm_separator,
                        candidate_tokens=cfg.candidate_tokens, stop_ids=stops)
    raise ValueError(f"judge must be one of {JUDGES}, got {cfg.judge!r}")

