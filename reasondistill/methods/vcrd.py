"""VCRD: validity-calibrated reasoning distillation (validity_calibrated_distillation.md, eqs. 1-4, Algorithm 1).

Per prompt a teacher rollout y^T and a student rollout y^S (Algorithm 1, lines 7-9): by default
written once by the offline stage (``reasondistill prepare``, §12 and DistiLLM-2; ``rollouts=``
names the file; without it ``train vcrd`` runs that stage into ``output_dir/rollouts.jsonl``
first, continuing a matching file there), or, with ``student_rollouts=online``, a fresh
student sample each step (the teacher rollouts stay offline). Then (lines 12-25):

    w^T_t = r(c^T_{t-1}, a^S_t) / (r(c^T_{t-1}, a^T_t) + eps)          eq. (1), teacher prefix
    w^S_t = r(c^S_{t-1}, a^S_t) / (r(c^S_{t-1}, a^T_t) + eps)          eq. (1), student prefix
    L = 1/|B| sum_x [ lambda_T sum_t w^T_t SKL^(alpha)(p||q)(c^T_{t-1})
                    + lambda_S sum_t w^S_t SRKL^(alpha)(p||q)(c^S_{t-1}) ]   eqs. (2)-(4), line 25

with the weights under stop-gradient (computed without grad and detached). SKL/SRKL are
``TokenPass.divergence("skew_kl" / "skew_reverse_kl", alpha)`` (``losses.skew_kl``,
``losses.skew_reverse_kl``), plain or vocabulary-chunked.

Which tokens are compared. Under c^T the teacher's token a^T_t is y^T_t and under c^S the
student's token a^S_t is y^S_t. The other model's token at that prefix is ambiguous in the
paper: Algorithm 1 (lines 14, 18) writes the position-aligned token of the other rollout, while
§2.1 ("for any prefix c ... they propose next tokens a^T ~ p(.|c) and a^S ~ q(.|c)") and §10.4
("the student proposes a greedy next token argmax q(a|c_t)") mean that model's own proposal
under the same prefix. ``proposal``: ``greedy`` (default: what §10.4 states, deterministic, and
it compares two proposals under one context as §2.2 requires), ``sample`` (a draw from the
other model at ``temperature``, §2.1's reading; needs ``loss_chunk_size=0``), ``aligned``
(Algorithm 1 read literally; past the end of the other rollout the candidate is its end of
answer, EOS).

Judges (``reasondistill.judges``): ``prm`` (the paper's PRM judge, ``prm_path`` + adapter),
``arith`` (the embedded task's graded rule) and ``prob`` (VCRD-Prob, §10.4: the §10.4 weight
itself, gamma-smoothed and clipped, with the student token as above; it enters the
switches below as the student-side score with ``weighting=ratio``). Default ``prob``: the only
judge that runs with any teacher/student pair and no third model.

Switches (Tables 5, 10, 12; Figure 3): ``lambda_teacher=0`` / ``lambda_student=0`` (each loss
alone), ``weights=constant`` (w = 1: Table 5's constant rows; ``distillm2`` is this preset, no
judge runs), ``weighting = ratio | student_only | difference`` (Table 10's r_s/(r_t+eps), r_s,
r_s - r_t), ``amplification = keep | cap | uniform`` (Figure 3: ``uniform`` is the paper's words,
"clamping all validity-based weights to 1 ... uniform update strength", i.e. w = 1; ``cap`` is
min(w, 1), attenuation kept and amplification removed), ``judge`` (Table 12's swap), and
``weight_clip`` (an upper bound on w; the paper caps nothing, so off by default).

Deviations and choices where the paper is silent:
- ``alpha`` = 0.1 is DistiLLM-2's default; this paper does not state its alpha.
- Normaliser (``normalize``): ``prompts`` (default) divides the token sums by the number of
  prompts of the optimizer step, Algorithm 1 line 25; ``tokens`` divides by the step's counted
  tokens. A micro-batch holds both prefix kinds, so its rows and tokens count both kinds
  (``prompts`` = global rows / number of active prefix kinds).
- The weights are computed on a micro-batch's first loss call and reused when
  ``num_iterations > 1`` re-uses the batch.
- Logged per prefix kind: weight quantiles (p5, p50, p95, max), the shares of tokens in
  attenuation (w < 1 - parity_band), parity and amplification (w > 1 + parity_band) of the
  applied weights (``vcrd/teacher_prefix/amplification_share`` ...), and with a pair judge the
  share of r_s / r_t >= 1, i.e. r_s >= r_t (Figure 1's statistic), and Figure 1's histogram as
  the step's share of tokens in each of the fixed bins ``RATIO_EDGES`` of log10(r_s / r_t)
  (``vcrd/teacher_prefix/log10_ratio_bin00`` ...: quarter decades from 10^-3 to 10^3, an
  underflow bin that holds r_s = 0, an overflow bin that holds r_t = 0 < r_s; r_s = r_t = 0 counts
  as a ratio of 1, so the bins at and above 1 sum to ``ratio_ge1_share``). ``compare`` pools them
  over the logged steps (``pipelines/compare.py``, ``vcrd_report``). Logging the bins, rather than
  a final pass of the judge over the prepared rollouts, costs nothing extra (the scores exist),
  needs no judge or model at report time, and shows the ratios the run trained with. With
  ``judge=prob`` there is no r_s / r_t pair (the §10.4 weight is one number), so no histogram.

    reasondistill train vcrd --config configs/vcrd_embedded.yaml
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .. import losses
from ..config import ConfigError, TrainConfig
from .base import Max, Micro

PROPOSALS = ("greedy", "sample", "aligned")
RATIO_EDGES = tuple(k / 4 for k in range(-12, 13))
"""Bin edges of log10(r_s / r_t) in the logged Figure-1 histogram; bin k is [edge k-1, edge k)."""


def ratio_bin_key(kind: str, k: int) -> str:
    return f"vcrd/{kind}_prefix/log10_ratio_bin{k:02d}"


def ratio_histogram(r_s: torch.Tensor, r_t: torch.Tensor, mask: torch.Tensor) -> list[tuple[float, float]]:
    """``(count, counted tokens)`` per bin of log10(r_s / r_t) over ``mask`` (len(RATIO_EDGES) + 1 bins)."""
    m = mask.bool()
    rs, rt = r_s[m].double(), r_t[m].double()
    x = torch.where((rs == 0) & (rt == 0), torch.zeros_like(rs), torch.log10(rs) - torch.log10(rt))  # +-inf ok
    idx = torch.bucketize(x, torch.tensor(RATIO_EDGES, dtype=torch.float64), right=True)
    counts = torch.bincount(idx, minlength=len(RATIO_EDGES) + 1)
    n = float(m.sum())
    return [(float(c), n) for c in counts.tolist()]
KINDS = (("teacher", "skew_kl", "skl"), ("student", "skew_reverse_kl", "srkl"))


@dataclass
class Config(TrainConfig):
    rollouts: str | None = None
    """Prepared rollouts (``reasondistill prepare``); empty: prepare into output_dir/rollouts.jsonl first."""
    student_rollouts: str = "offline"
    """offline: the prepared student rollouts; online: a fresh student sample every step."""
    rollout_temperature: float = 1.0
    """Sampling temperature of the rollouts (prepared and online; 0 = greedy)."""
    proposal: str = "greedy"
    """The other model's token at a prefix: greedy | sample | aligned (module docstring)."""
    judge: str = "prob"
    """Validity judge: prob (VCRD-Prob, §10.4) | arith (embedded task) | prm (prm_path)."""
    prm_path: str | None = None
    """PRM folder or hub name (judge=prm)."""
    prm_type: str = "auto"
    """PRM adapter: auto | classifier (Qwen2.5-Math-PRM, <extra_0>) | value (Skywork-o1-Open-PRM)."""
    prm_separator: str = "auto"
    """Token appended before reading the PRM (auto: <extra_0> for classifier, none for value)."""
    prm_device: str | None = None
    """Device of the PRM (default: the student's)."""
    prm_trust_remote_code: bool = False
    """Load the PRM's own modelling code (Qwen2.5-Math-PRM needs it)."""
    candidate_tokens: str = "1"
    """What a PRM scores: 1 (the token) | word | step (completed by the rollout's own tokens)."""
    weights: str = "validity"
    """validity: eq. (1) from the judge; constant: w = 1 (DistiLLM-2, Table 5's constant rows)."""
    weighting: str = "ratio"
    """ratio r_s/(r_t+eps) (eq. 1) | student_only r_s | difference r_s - r_t (Table 10)."""
    amplification: str = "keep"
    """keep | cap (min(w, 1)) | uniform (w = 1, Figure 3's words)."""
    weight_clip: float = 0.0
    """Upper bound on w (0: off; the paper caps nothing)."""
    eps: float = 1e-8
    """Validity smoothing epsilon (Table 9)."""
    alpha: float = 0.1
    """Skew of SKL / SRKL (eq. 2); DistiLLM-2's 0.1, not stated in this paper."""
    lambda_teacher: float = 1.0
    """lambda_T: weight of LV-SKL on teacher prefixes (0 drops that loss)."""
    lambda_student: float = 1.0
    """lambda_S: weight of LV-SRKL on student prefixes (0 drops that loss)."""
    temperature: float = 1.0
    """Temperature of both models' logits in the divergences (and of proposal=sample)."""
    normalize: str = "prompts"
    """prompts: token sums / prompts (Algorithm 1 line 25) | tokens: / counted tokens of both kinds."""
    parity_band: float = 0.05
    """|w - 1| <= band counts as parity in the logged regime shares."""
    prob_top_k: int = 128
    """VCRD-Prob: teacher top-k of the collision baseline (§10.4)."""
    prob_gamma: float = 0.5
    """VCRD-Prob: log-space smoothing factor (§10.4)."""
    prob_clip_low: float = 0.5
    """VCRD-Prob: lower clip of w (§10.4)."""
    prob_clip_high: float = 2.0
    """VCRD-Prob: upper clip of w (§10.4)."""

    def validate(self):
        from ..judges import JUDGES

        choices = dict(student_rollouts=("offline", "online"), proposal=PROPOSALS, judge=JUDGES,
                       weights=("validity", "constant"), weighting=losses.VCRD_WEIGHTINGS,
                       amplification=losses.VCRD_AMPLIFICATION, normalize=("prompts", "tokens"),
                       candidate_tokens=("1", "word", "step"))
        for key, ok in choices.items():
            if str(getattr(self, key)) not in ok:
                raise ConfigError(f"{key} must be one of {', '.join(ok)}, got {getattr(self, key)!r}")
        if self.lambda_teacher < 0 or self.lambda_student < 0 or not (self.lambda_teacher or self.lambda_student):
            raise ConfigError("lambda_teacher and lambda_student must be >= 0 and not both 0")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.proposal == "sample" and self.loss_chunk_size:
            raise ConfigError("proposal=sample needs loss_chunk_size=0 (it samples from the full distributions)")
        if self.weights == "validity" and self.judge == "prm" and not self.prm_path:
            raise ConfigError("judge=prm needs prm_path")
        if self.weights == "validity" and self.judge == "prob" and self.weighting != "ratio":
            raise ConfigError("judge=prob gives the §10.4 weight itself; weighting must be ratio")
        if self.temperature <= 0 or self.rollout_temperature < 0:
            raise ConfigError("temperature must be > 0 and rollout_temperature >= 0")


def _rollout_header(ctx):
    from ..data.rollouts import header

    cfg = ctx.cfg
    return header(cfg.teacher, cfg.student, ctx.tokenizer, prompt_template=cfg.prompt_template,
                  max_prompt_length=cfg.max_prompt_length, max_new_tokens=cfg.max_completion_length,
                  temperature=cfg.rollout_temperature, seed=cfg.seed)


def ensure_rollouts(ctx) -> dict:
    """The prepared rollouts of this run (id -> row), prepared into the run directory first
    when ``rollouts`` is empty; checked against the run's models and tokenizer."""
    from ..data.train import train_and_eval_records
    from ..data.rollouts import load_rollouts, write_rollouts

    cfg = ctx.cfg
    path = cfg.rollouts or str(Path(cfg.output_dir) / "rollouts.jsonl")
    if not cfg.rollouts and ctx.accelerator.is_main_process:
        records, _ = train_and_eval_records(cfg)
        write_rollouts(records, path, teacher=cfg.teacher, student=cfg.student, tokenizer=ctx.tokenizer,
                       teacher_model=ctx.teacher, student_model=ctx.policy, teacher_stop_ids=ctx.teacher_stop_ids,
                       prompt_template=cfg.prompt_template, max_prompt_length=cfg.max_prompt_length,
                       max_new_tokens=cfg.max_completion_length, temperature=cfg.rollout_temperature,
                       seed=cfg.seed, progress=cfg.progress)
    ctx.accelerator.wait_for_everyone()
    return load_rollouts(path, _rollout_header(ctx))


def setup(ctx) -> None:
    from ..judges import build_judge

    cfg = ctx.cfg
    ctx.extras["rollouts"] = ensure_rollouts(ctx)
    if cfg.weights == "validity":
        ctx.extras["judge"] = build_judge(cfg, ctx)


def _cached(ctx, examples, field: str):
    from ..data.rollouts import record_id

    table = ctx.extras["rollouts"]
    try:
        rows = [table[record_id(e)] for e in examples]
    except KeyError as err:
        raise ConfigError(f"record {err.args[0]!r} is not in the prepared rollouts: prepare them for this dataset")
    return [r[f"{field}_ids"] for r in rows], [r[f"{field}_truncated"] for r in rows]


def prepare(ctx, examples: list[dict]) -> Micro:
    from ..data.rollouts import completion_lists, rollout_from_ids
    from ..rollout import generate

    cfg = ctx.cfg
    questions = [e["question"] for e in examples]
    prompts = ctx.prompt_ids(questions)
    pad = ctx.tokenizer.pad_token_id if ctx.tokenizer.pad_token_id is not None else ctx.tokenizer.eos_token_id
    ids = {"teacher": _cached(ctx, examples, "teacher")}
    if cfg.student_rollouts == "online":
        s = generate(ctx.policy, ctx.tokenizer, prompts, num_generations=1, max_new_tokens=cfg.max_completion_length,
                     temperature=cfg.rollout_temperature or 1.0, do_sample=cfg.rollout_temperature > 0,
                     generator=ctx.generator)
        ids["student"] = (completion_lists(s), s.truncated.tolist())
    else:
        ids["student"] = _cached(ctx, examples, "student")
    lam = {"teacher": cfg.lambda_teacher, "student": cfg.lambda_student}
    parts = {k: rollout_from_ids(prompts, *ids[k], pad) for k, _, _ in KINDS if lam[k] > 0}
    from ..rollout import Rollout

    whole = Rollout.cat(list(parts.values()))
    return Micro(batch=whole, num_tokens=int(whole.completion_mask.sum()), num_rows=len(whole),
                 extras={"parts": parts, "questions": questions, "prompts": prompts,
                         "other_ids": {"teacher": ids["student"][0], "student": ids["teacher"][0]}})


def proposals(ctx, tp, batch, kind: str, other_ids: list[list[int]]) -> torch.Tensor:
    """``(N, C)`` the other model's token at every prefix of ``batch`` (``proposal``)."""
    cfg = ctx.cfg
    if cfg.proposal == "greedy":
        return tp.student_argmax() if kind == "teacher" else tp.teacher_argmax()
    if cfg.proposal == "aligned":
        N, C = batch.completion_ids.shape
        out = torch.full((N, C), ctx.tokenizer.eos_token_id, dtype=torch.long)
        for i, row in enumerate(other_ids):
            n = min(len(row), C)
            out[i, :n] = torch.tensor(row[:n], dtype=torch.long)
        return out.to(batch.completion_ids.device)
    with torch.no_grad():
        logits = (tp.student_logits() if kind == "teacher" else tp.teacher_logits()).detach().float()  # (N, C, V)
        probs = torch.softmax(logits / cfg.temperature, -1)
        N, C, V = probs.shape
        draw = torch.multinomial(probs.reshape(N * C, V).cpu(), 1, generator=ctx.generator).reshape(N, C)
    return draw.to(batch.completion_ids.device)


def _scores(judge, questions, prompts, batch, cand_s, cand_t) -> tuple[torch.Tensor, torch.Tensor]:
    """(r_s, r_t) ``(N, C)`` from a pair judge: one query per rollout holding both candidates."""
    from ..judges import Query

    mask = batch.completion_mask.bool().cpu()
    ids, cs, ct = batch.completion_ids.cpu(), cand_s.cpu(), cand_t.cpu()
    queries = []
    for i in range(len(questions)):
        n = int(mask[i].sum())
        queries.append(Query(questions[i], prompts[i], ids[i, :n].tolist(), list(range(n)) * 2,
                             cs[i, :n].tolist() + ct[i, :n].tolist()))
    r_s, r_t = torch.zeros(mask.shape), torch.zeros(mask.shape)
    for i, sc in enumerate(judge.score(queries)):
        n = len(sc) // 2
        r_s[i, :n], r_t[i, :n] = sc[:n], sc[n:]
    return r_s, r_t


def token_weights(ctx, tp, batch, kind: str, micro) -> tuple[torch.Tensor, dict]:
    """``(N, C)`` weights (0 on padding, no grad) of one prefix kind and their metrics."""
    cfg = ctx.cfg
    mask = batch.completion_mask.bool()
    if cfg.weights == "constant":
        return mask.float(), {}
    judge = ctx.extras["judge"]
    own = batch.completion_ids
    other = proposals(ctx, tp, batch, kind, micro.extras["other_ids"][kind])
    student_tok, teacher_tok = (other, own) if kind == "teacher" else (own, other)
    clip = cfg.weight_clip or None
    metrics = {}
    with torch.no_grad():
        if judge.name == "prob":  # the §10.4 weight is the whole student-side score
            w = losses.vcrd_weights(judge.pass_weights(tp, student_tok), torch.zeros(mask.shape, device=mask.device),
                                    "student_only", cfg.amplification, clip, cfg.eps)
        else:
            r_s, r_t = _scores(judge, micro.extras["questions"], micro.extras["prompts"], batch, student_tok,
                               teacher_tok)
            w = losses.vcrd_weights(r_s, r_t, cfg.weighting, cfg.amplification, clip, cfg.eps).to(mask.device)
            ge1 = (r_s >= r_t).to(mask.device)  # r_s / r_t >= 1 (Figure 1), ties counted, without eps
            metrics[f"vcrd/{kind}_prefix/ratio_ge1_share"] = (float((ge1 & mask).sum()), float(mask.sum()))
            for k, pair in enumerate(ratio_histogram(r_s, r_t, mask.cpu())):
                metrics[ratio_bin_key(kind, k)] = pair
        w = torch.where(mask, w, 0.0).detach()
        for name, pair in losses.regime_shares(w, mask, cfg.parity_band).items():
            metrics[f"vcrd/{kind}_prefix/{name}_share"] = pair
        vals = w[mask].float()
        if vals.numel():
            q = torch.quantile(vals, torch.tensor([0.05, 0.5, 0.95], device=vals.device))
            metrics |= {f"vcrd/{kind}_prefix/w_p5": q[0].item(), f"vcrd/{kind}_prefix/w_p50": q[1].item(),
                        f"vcrd/{kind}_prefix/w_p95": q[2].item(), f"vcrd/{kind}_prefix/w_max": Max(vals.max().item())}
    return w, metrics


def loss(ctx, micro, totals: dict):
    cfg = ctx.cfg
    parts = micro.extras["parts"]
    norm = totals["tokens"] if cfg.normalize == "tokens" else totals["rows"] / len(parts)
    lam = {"teacher": cfg.lambda_teacher, "student": cfg.lambda_student}
    cached = micro.extras.setdefault("weights", {})
    total, metrics = 0.0, {}
    for kind, div, short in KINDS:
        if kind not in parts:
            continue
        batch = parts[kind].to(ctx.device)
        mask = batch.completion_mask
        tp = ctx.signals(batch, temperature=cfg.temperature)
        # the divergence first: its student forward (with grad) is the one the pass caches; a
        # no-grad quantity asked first (student_argmax) would cache a forward without grad
        d = tp.divergence(div, alpha=cfg.alpha)  # (N, C), grad w.r.t. the student
        if kind not in cached:
            cached[kind] = token_weights(ctx, tp, batch, kind, micro)
        w, wm = cached[kind]
        total = total + lam[kind] * losses.masked_sum(w.to(d.device) * d, mask) / norm
        metrics |= wm
        metrics[f"vcrd/{short}"] = losses.masked_mean(d.detach(), mask).item()
        metrics[f"vcrd/{kind}_prefix/mean_length"] = mask.sum(1).float().mean().item()
    return total, metrics


def required_fields(cfg) -> tuple[str, ...]:
    return ("question",)
