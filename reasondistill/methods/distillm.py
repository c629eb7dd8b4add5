"""DistiLLM (Ko et al., ICML 2024): skew KL with an adaptive off-policy schedule of student-generated outputs and a replay buffer.

The VCRD paper's "DistilLLM" baseline (validity_calibrated_distillation.md, Tables 1-4 and 6).
Per token the loss is the skew KL of eq. (2), KL(p || alpha p + (1 - alpha) q) (``losses.skew_kl``;
``divergence=skew_reverse_kl`` gives KL(q || (1 - alpha) p + alpha q)), alpha = 0.1, summed over the
completion tokens of the step and divided by their number. What DistiLLM adds is *where the
completions come from* (its §3.2, "adaptive off-policy approach"). Per micro-batch, with u ~ U(0, 1),
a threshold ``lambda_R`` (the probability of student-generated outputs, SGO) and the decreasing
replay ratio ``s = lambda_R (1 - step / max_steps)``::

    u < s, or u < lambda_R while the buffer is not yet full  -> fresh: sample the student, push the
                                                                rows into the buffer, train on them
    u < lambda_R (buffer full)                               -> replay: a uniform draw without
                                                                replacement from the buffer
    otherwise                                                -> the fixed dataset's completions

and every ``validation_steps`` (default: once per epoch, as DistiLLM's ``eval_interval=-1``, and
once before training) the student's cross-entropy on a validation set's ground truth is measured:
when it has risen by at least ``loss_eps`` above the last reference value, lambda_R grows by
``threshold_step`` (capped at 1) and the reference becomes the new value. The buffer is a FIFO of
``capacity`` rows (the oldest dropped). ``schedule_source`` and ``next_threshold`` are those two
rules as pure functions; ``ReplayBuffer`` is the buffer.

Defaults are those of DistiLLM's released GPT-2 scripts (``init_threshold`` 0, ``loss_eps`` 0.1,
``capacity`` 1000, step 0.1, sampling at temperature 1 with top-p 1); so, as there, no student data
is used until the validation loss first rises.

Deviations and choices:
- ``replay_ratio``: DistiLLM's code offers decreasing (its default; above), constant (s = lambda_R / 2)
  and increasing (s = lambda_R step / max_steps); all three are here, default decreasing.
- Validation loss: token-mean cross-entropy over the whole validation set (DistiLLM averages
  per-batch means); its records are ``validation_dataset`` (loaded like ``dataset``, its test split),
  else the run's ``eval_dataset`` records, else the embedded task's test split; a file dataset with
  neither is refused (a validation set that is the training set would not measure drift).
  ``validation_size`` caps it.
- No language-modelling term on a pre-training corpus (DistiLLM's ``lm_coef``), as the VCRD paper
  says of its own setup (§10.2), and no ground-truth NLL mixed in (``kd_ratio`` = 1 in its scripts).
- One draw per micro-batch, as DistiLLM draws per micro-step; under several processes each keeps
  its own buffer (as DistiLLM's per-rank buffer), the validation loss is the same on every one.
- Resume: the engine checkpoints no method state, so this method writes its own: after the
  micro-batches of step s are prepared (``finalize_step``), ``output_dir/distillm_state/state-{s+1}
  -rank{r}.pt`` holds lambda_R, the validation reference, the buffer and the next validation step;
  ``resume=true`` loads the newest file not newer than the checkpoint it resumes (the random draws
  are in the engine's checkpointed ``ctx.rng`` / ``ctx.generator``). A file is kept for every
  checkpoint still on disk. Without such a file (a checkpoint from elsewhere) the run warns and
  starts the schedule afresh: lambda_R back to ``init_threshold``, the buffer empty.

    reasondistill train distillm teacher=embedded:teacher max_steps=200
"""

from __future__ import annotations

import math
import random
import re
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import losses
from ..config import ConfigError, TrainConfig
from .base import Micro

SOURCES = ("fresh", "replay", "data")
REPLAY_RATIOS = ("decreasing", "constant", "increasing")
STATE_DIR = "distillm_state"


@dataclass
class Config(TrainConfig):
    alpha: float = 0.1
    """Skew of the divergence (eq. 2 of the VCRD paper, DistiLLM's skew_alpha 0.1)."""
    divergence: str = "skew_kl"
    """skew_kl (SKL, DistiLLM's adaptive-sfkl) | skew_reverse_kl (SRKL, adaptive-srkl)."""
    temperature: float = 1.0
    """Temperature of both models' logits inside the divergence."""
    gen_temperature: float = 1.0
    """Sampling temperature of the student-generated outputs."""
    gen_top_p: float = 1.0
    """Nucleus sampling of the student-generated outputs."""
    init_threshold: float = 0.0
    """Initial lambda_R, the probability of student-generated outputs."""
    threshold_step: float = 0.1
    """How much lambda_R grows when the validation loss rises."""
    loss_eps: float = 0.1
    """A rise of the validation loss of at least this much grows lambda_R."""
    replay_ratio: str = "decreasing"
    """Fresh-sample share of the SGO batches once the buffer is full: decreasing | constant | increasing."""
    capacity: int = 1000
    """Replay buffer size in rows (FIFO)."""
    validation_steps: int = 0
    """Steps between validations (0: once per epoch of the training records)."""
    validation_dataset: str | None = None
    """Validation records (default: eval_dataset's, else the embedded task's test split)."""
    validation_size: int = 200
    """At most this many validation records."""
    completion_field: str = "solution"
    """Record field used as the completion of dataset batches and of the validation loss."""

    def validate(self):
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.divergence not in ("skew_kl", "skew_reverse_kl"):
            raise ConfigError(f"divergence must be skew_kl or skew_reverse_kl, got {self.divergence!r}")
        if self.replay_ratio not in REPLAY_RATIOS:
            raise ConfigError(f"replay_ratio must be one of {', '.join(REPLAY_RATIOS)}, got {self.replay_ratio!r}")
        if not 0.0 <= self.init_threshold <= 1.0:
            raise ConfigError(f"init_threshold must be in [0, 1], got {self.init_threshold}")
        if self.capacity < self.per_device_train_batch_size:
            raise ConfigError(f"capacity={self.capacity} must hold at least one micro-batch "
                              f"(per_device_train_batch_size={self.per_device_train_batch_size})")
        if self.temperature <= 0 or self.gen_temperature <= 0:
            raise ConfigError("temperature and gen_temperature must be > 0")


def schedule_source(u: float, threshold: float, progress: float, buffer_len: int, capacity: int,
                    replay_ratio: str = "decreasing") -> str:
    """Where a micro-batch comes from (module docstring): ``fresh``, ``replay`` or ``data``.
    ``progress`` is step / max_steps."""
    share = {"decreasing": 1.0 - progress, "constant": 0.5, "increasing": progress}[replay_ratio]
    if u < threshold * share or (u < threshold and buffer_len < capacity):
        return "fresh"
    return "replay" if u < threshold else "data"


def next_threshold(threshold: float, reference: float | None, loss: float, loss_eps: float,
                   step: float) -> tuple[float, float]:
    """(lambda_R, reference) after a validation loss ``loss``: grow lambda_R by ``step`` (at most 1)
    and move the reference when ``loss >= reference + loss_eps``; the first loss is the reference."""
    if reference is None:
        return threshold, loss
    if loss >= reference + loss_eps:
        return min(threshold + step, 1.0), loss
    return threshold, reference


class ReplayBuffer:
    """A FIFO of student-generated rows ``(prompt_ids, completion_ids, truncated)``, at most ``capacity``."""

    def __init__(self, capacity: int, rows=()):
        self.rows = deque(rows, maxlen=capacity)

    def __len__(self) -> int:
        return len(self.rows)

    def push(self, prompts: list[list[int]], completions: list[list[int]], truncated: list[bool]) -> None:
        for p, c, t in zip(prompts, completions, truncated):
            self.rows.append((list(p), list(c), bool(t)))

    def sample(self, k: int, rng: random.Random) -> list[tuple]:
        """``k`` distinct rows, uniformly (DistiLLM's ``random.sample``), drawn with ``rng``."""
        return [self.rows[i] for i in rng.sample(range(len(self.rows)), k)]


def _validation_records(cfg) -> list[dict]:
    from ..data.train import load_records, train_and_eval_records

    if cfg.validation_dataset:
        records = load_records(cfg.validation_dataset, cfg, split="test")
    elif cfg.eval_dataset:
        records = train_and_eval_records(cfg)[1]
    elif cfg.dataset == "arith" or cfg.dataset.startswith("arith:"):
        records = load_records(cfg.dataset, cfg, split="test")
    else:
        raise ConfigError("distillm needs validation records for its adaptive schedule: set validation_dataset= "
                          "or eval_dataset=")
    return records[: cfg.validation_size]


def _state_files(out: Path, rank: int) -> dict[int, Path]:
    found = {}
    for f in (out / STATE_DIR).glob(f"state-*-rank{rank}.pt"):
        m = re.fullmatch(rf"state-(\d+)-rank{rank}\.pt", f.name)
        if m:
            found[int(m.group(1))] = f
    return found


def _checkpoint_steps(out: Path) -> list[int]:
    return sorted(int(c.name.split("-")[1]) for c in out.glob("checkpoint-*")
                  if c.name.split("-")[1].isdigit() and (c / "trainer_state.json").exists())


def setup(ctx) -> None:
    from ..checkpoints import latest_checkpoint
    from ..data.train import train_and_eval_records

    cfg = ctx.cfg
    every = cfg.validation_steps
    if not every:  # once per epoch (DistiLLM's eval_interval = -1)
        per_step = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * ctx.accelerator.num_processes
        every = max(1, len(train_and_eval_records(cfg)[0]) // per_step) * cfg.num_iterations
    state = {"threshold": cfg.init_threshold, "reference": None, "buffer": [], "next_validation": 0,
             "last_loss": None}
    out = Path(cfg.output_dir)
    ckpt = latest_checkpoint(out) if cfg.resume else None
    if ckpt is not None:
        step = int(ckpt.name.split("-")[1])
        files = {n: f for n, f in _state_files(out, ctx.accelerator.process_index).items() if n <= step}
        if files:
            state = torch.load(files[max(files)], weights_only=False)
        else:
            print(f"[reasondistill] warning: no {STATE_DIR}/ file for {ckpt.name}: the DistiLLM schedule restarts "
                  f"(lambda_R = init_threshold, empty replay buffer)", file=sys.stderr)
            state["next_validation"] = step
    ctx.extras["distillm"] = {"state": state, "every": every, "validation": _validation_records(cfg),
                              "buffer": ReplayBuffer(cfg.capacity, state["buffer"]), "prepared_step": None}


def validation_loss(ctx, records: list[dict]) -> float:
    """Token-mean cross-entropy of the student on the validation records' ground truth."""
    from ..rollout import encode_pairs

    cfg = ctx.cfg
    total, count, bs = 0.0, 0, max(1, cfg.per_device_train_batch_size)
    was_training = ctx.model.training
    ctx.model.eval()
    with torch.no_grad():
        for i in range(0, len(records), bs):
            part = records[i: i + bs]
            batch = encode_pairs(ctx.tokenizer, ctx.render([e["question"] for e in part]),
                                 [e[cfg.completion_field] for e in part], cfg.max_prompt_length,
                                 cfg.max_completion_length)
            mask = batch.completion_mask.to(ctx.device)
            logp = ctx.signals(batch).student_logp()
            total -= float(losses.masked_sum(logp, mask))
            count += int(mask.sum())
    ctx.model.train(was_training)
    return total / max(count, 1)


def _new_step(ctx, extra: dict) -> None:
    """The first micro-batch of a step: validate (and update lambda_R) when due."""
    cfg, state = ctx.cfg, extra["state"]
    extra["prepared_step"] = ctx.step
    if ctx.step >= state["next_validation"]:
        loss = validation_loss(ctx, extra["validation"])
        state["threshold"], state["reference"] = next_threshold(state["threshold"], state["reference"], loss,
                                                                cfg.loss_eps, cfg.threshold_step)
        state["last_loss"] = loss
        state["next_validation"] = (ctx.step // extra["every"] + 1) * extra["every"]


def prepare(ctx, examples: list[dict]) -> Micro:
    from ..data.rollouts import completion_lists, rollout_from_ids
    from ..rollout import encode_pairs, generate

    cfg = ctx.cfg
    extra = ctx.extras["distillm"]
    if extra["prepared_step"] != ctx.step:
        _new_step(ctx, extra)
    state, buf = extra["state"], extra["buffer"]
    source = schedule_source(ctx.rng.random(), state["threshold"], ctx.step / max(1, cfg.max_steps), len(buf),
                             cfg.capacity, cfg.replay_ratio)
    questions = [e["question"] for e in examples]
    pad = ctx.tokenizer.pad_token_id if ctx.tokenizer.pad_token_id is not None else ctx.tokenizer.eos_token_id
    if source == "fresh":
        prompts = ctx.prompt_ids(questions)
        batch = generate(ctx.policy, ctx.tokenizer, prompts, num_generations=1,
                         max_new_tokens=cfg.max_completion_length, temperature=cfg.gen_temperature,
                         top_p=cfg.gen_top_p, generator=ctx.generator)
        buf.push(prompts, completion_lists(batch), batch.truncated.tolist())
    elif source == "replay":
        rows = buf.sample(len(examples), ctx.rng)
        batch = rollout_from_ids([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], pad)
    else:
        batch = encode_pairs(ctx.tokenizer, ctx.render(questions), [e[cfg.completion_field] for e in examples],
                             cfg.max_prompt_length, cfg.max_completion_length)
    return Micro.of(batch, source=source)


def finalize_step(ctx, micros) -> None:
    """Write the schedule's state as of the next step (module docstring: Resume)."""
    extra, cfg = ctx.extras["distillm"], ctx.cfg
    state = extra["state"]
    state["buffer"] = list(extra["buffer"].rows)
    out, rank = Path(cfg.output_dir), ctx.accelerator.process_index
    (out / STATE_DIR).mkdir(parents=True, exist_ok=True)
    label = ctx.step + 1
    tmp = out / STATE_DIR / f".tmp-state-{label}-rank{rank}.pt"
    torch.save(state, tmp)
    tmp.replace(out / STATE_DIR / f"state-{label}-rank{rank}.pt")
    files = _state_files(out, rank)
    keep = {label} | {max((n for n in files if n <= c), default=-1) for c in _checkpoint_steps(out)}
    for n, f in files.items():
        if n not in keep:
            f.unlink(missing_ok=True)


def loss(ctx, micro, totals: dict):
    cfg = ctx.cfg
    batch = micro.batch.to(ctx.device)
    mask = batch.completion_mask
    p = ctx.signals(batch, temperature=cfg.temperature)
    d = p.divergence(cfg.divergence, alpha=cfg.alpha)  # (B, C)
    total = losses.masked_sum(d, mask) / totals["tokens"]
    extra = ctx.extras["distillm"]
    state, src = extra["state"], micro.extras["source"]
    metrics = {"distillm/divergence": losses.masked_mean(d.detach(), mask).item(),
               "distillm/threshold": state["threshold"], "distillm/buffer_size": float(len(extra["buffer"])),
               "completions/mean_length": mask.sum(1).float().mean().item()}
    metrics |= {f"distillm/{s}_share": (float(src == s), 1.0) for s in SOURCES}
    if state["last_loss"] is not None and math.isfinite(state["last_loss"]):
        metrics["distillm/validation_loss"] = state["last_loss"]
    return total, metrics


def required_fields(cfg) -> tuple[str, ...]:
    return ("question", cfg.completion_field)
