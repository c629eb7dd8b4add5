"""The one training loop every method runs through.

A method is a module with a ``Config`` dataclass and two functions::

    prepare(ctx, examples) -> dict   # one micro-batch, built without gradients (e.g. rollouts);
                                     # must hold "num_tokens" and "num_rows" (ints) for normalising
    loss(ctx, micro, totals) -> (loss, metrics)

and optionally ``setup(ctx)`` (load a reference model, ...) and ``finalize_step(ctx, micros)``
(statistics over the whole optimizer step, e.g. GRPO's batch-level reward std). ``totals`` holds the *global*
``tokens`` and ``rows`` summed over every micro-batch of the optimizer step and over every
process, so a method that divides its summed loss by them gets exactly the same gradient
whatever the split into micro-batches and processes (FIELD_NOTES: "gradient accumulation
changes the loss"). Because DDP averages gradients over processes, the engine multiplies each
micro-batch loss by the number of processes before ``backward``.

Per optimizer step the engine: takes the step's examples from a deterministic data stream
(position = step, so resume needs no replay); calls ``prepare`` for every micro-batch; sums the
global totals; runs forward/backward per micro-batch (gradient sync only on the last); stops
with a clear message on a non-finite loss (the last good checkpoint stays); clips the gradient
norm and logs it; steps AdamW and the warmup + cosine/linear/constant schedule; writes
metrics to ``metrics.jsonl`` and TensorBoard; checkpoints every ``save_steps``
(model, optimizer, scheduler, RNG of every process, data position), atomically.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import TrainConfig, to_yaml


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped and kept its last good checkpoint."""


# --------------------------------------------------------------------------------------
# models and data
# --------------------------------------------------------------------------------------
def resolve_model(name: str) -> str:
    """``embedded:teacher`` / ``embedded:student`` → the shipped folders of the arithmetic task."""
    if name.startswith("embedded:"):
        from .tasks import arith

        which = name.split(":", 1)[1]
        path = arith.ASSETS_DIR / which
        if not (path / "config.json").exists():
            raise FileNotFoundError(
                f"embedded model {name!r} not found at {path}; build it with `reasondistill task build`")
        return str(path)
    return name


def load_train_records(cfg: TrainConfig) -> list[dict]:
    """The training examples of ``cfg.dataset`` as dicts with question / answer / solution."""
    if cfg.dataset == "arith":
        from .tasks import arith

        spec = arith.TaskSpec(min_terms=cfg.task_min_terms, max_terms=cfg.task_max_terms,
                              max_operand=cfg.task_max_operand)
        return arith.generate("train", cfg.train_size, seed=cfg.seed, spec=spec, style=cfg.task_style)
    from .data import benchmarks

    if cfg.dataset in benchmarks.BENCHMARKS:
        return benchmarks.load_benchmark(cfg.dataset, cfg.data_dir)
    path = Path(cfg.dataset)
    if not path.exists():
        raise FileNotFoundError(f"dataset {cfg.dataset!r} is neither 'arith', a benchmark name "
                                f"({', '.join(benchmarks.BENCHMARKS)}), nor an existing JSONL file")
    extras = {"_completion": cfg.solution_field} if cfg.solution_field else ()
    records = benchmarks.load_jsonl(path, cfg.question_field, cfg.answer_field, extras=extras)
    for r in records:  # the named solution field wins over a worked solution found in the answer field
        if r.get("_completion") is not None:
            r["solution"] = str(r.pop("_completion"))
        r.pop("_completion", None)
    return records


def check_required_fields(method, cfg, records: list[dict]) -> None:
    """Fail before the first step, naming the record, if a field the method reads is missing."""
    need = method.required_fields(cfg) if hasattr(method, "required_fields") else ()
    for f in need:
        bad = [r for r in records if r.get(f) in (None, "")]
        if bad:
            raise ValueError(f"{len(bad)} of {len(records)} training records have no {f!r} (first: id "
                             f"{bad[0].get('id')!r}, which has {sorted(k for k, v in bad[0].items() if v not in (None, ''))})"
                             f"; set the right field (e.g. solution_field=..., answer_field=...) or fix the data")


class DataStream:
    """Deterministic example order: epoch e is a permutation seeded by (seed, e).

    The examples of optimizer step s are the global indices [s*G, (s+1)*G) of the endless
    concatenation of epochs, G = global batch; process r takes micro-batch k as a fixed slice.
    The position is therefore the step number itself: resuming at step s needs no replay.
    """

    def __init__(self, records: list[dict], seed: int, per_device: int, accum: int, world: int, rank: int):
        if not records:
            raise ValueError("the training dataset is empty")
        self.records, self.seed = records, seed
        self.per_device, self.accum, self.world, self.rank = per_device, accum, world, rank
        self._epoch, self._order = -1, []

    def _perm(self, epoch: int) -> list[int]:
        if epoch != self._epoch:  # only the current epoch's order is kept
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._epoch, self._order = epoch, torch.randperm(len(self.records), generator=g).tolist()
        return self._order

    def _at(self, i: int) -> dict:
        n = len(self.records)
        return self.records[self._perm(i // n)[i % n]]

    def step_batches(self, step: int) -> list[list[dict]]:
        g = self.per_device * self.accum * self.world
        base = step * g
        out = []
        for k in range(self.accum):
            start = base + (k * self.world + self.rank) * self.per_device
            out.append([self._at(i) for i in range(start, start + self.per_device)])
        return out


# --------------------------------------------------------------------------------------
# the context handed to methods
# --------------------------------------------------------------------------------------
@dataclass
class Context:
    cfg: Any
    accelerator: Any
    model: torch.nn.Module
    tokenizer: Any
    teacher: torch.nn.Module | None = None
    shared_vocab: int | None = None
    generator: torch.Generator | None = None
    rng: random.Random = field(default_factory=random.Random)
    step: int = 0
    extras: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def policy(self) -> torch.nn.Module:
        """The student without its DDP wrapper (for sampling)."""
        return self.accelerator.unwrap_model(self.model)

    def render(self, questions: list[str]) -> list[str]:
        from .models import render_prompt

        return [render_prompt(self.tokenizer, q) for q in questions]

    def prompt_ids(self, questions: list[str]) -> list[list[int]]:
        """Rendered, tokenised prompts cut from the left to ``max_prompt_length``: what every
        sampled batch (student or teacher) is conditioned on, exactly as in ``encode_pairs``."""
        from .models import encode_prompts

        return [ids[-self.cfg.max_prompt_length:] for ids in encode_prompts(self.tokenizer, self.render(questions))]

    def teacher_logits(self, batch) -> torch.Tensor:
        """Teacher logits at the completion positions of ``batch`` (no grad), shared vocabulary only."""
        from .rollout import forward_logits

        with torch.no_grad():
            dev = next(self.teacher.parameters()).device
            logits = forward_logits(self.teacher, batch.to(dev)).to(self.device)
        return logits[..., : self.shared_vocab].float()  # divergences of bf16 logits are badly wrong

    def token_divergence(self, batch, kind: str, beta: float = 0.5, temperature: float = 1.0) -> torch.Tensor:
        """(B, C) per-token divergence of student vs teacher at the completion positions of
        ``batch`` (gradient w.r.t. the student only), over the shared vocabulary.

        With ``loss_chunk_size > 0`` in the method's config it goes through
        ``losses.chunked_divergence`` on the final hidden states, so the [B, C, V] float32 logits
        of both models never exist at once (V = 151,936 for Qwen2.5); same numbers either way.
        """
        from . import losses

        chunk = getattr(self.cfg, "loss_chunk_size", 0)
        if not chunk:
            t, s = self.teacher_logits(batch), self.student_logits(batch)
            if kind == "generalized_jsd":
                return losses.generalized_jsd(s, t, beta=beta, temperature=temperature)
            return getattr(losses, kind)(s, t, temperature=temperature)
        batch = batch.to(self.device)
        sh, th, w_t = self._chunked_inputs(batch)
        return losses.chunked_divergence(
            sh, th, self.policy.get_output_embeddings().weight, w_t, batch.completion_mask, kind=kind, beta=beta,
            temperature=temperature, chunk_size=chunk, vocab_limit=self.shared_vocab)

    def _chunked_inputs(self, batch):
        """For the vocabulary-chunked losses: the student's final hidden states (with grad), the
        teacher's (no grad), and the teacher's LM head on the student's device (copied once)."""
        if self.accelerator.num_processes > 1:
            raise NotImplementedError("loss_chunk_size > 0 is single-process for now (it bypasses the DDP "
                                      "wrapper's forward); set loss_chunk_size=0 for multi-process runs")
        with torch.no_grad():
            th = completion_hidden(self.teacher, batch.to(next(self.teacher.parameters()).device)).to(self.device)
        sh = completion_hidden(self.policy, batch)
        if "teacher_head" not in self.extras:  # a teacher on another device: copy its LM head once, not per step
            self.extras["teacher_head"] = self.teacher.get_output_embeddings().weight.detach().to(self.device)
        return sh, th, self.extras["teacher_head"]

    def policy_and_teacher(self, batch, temperature: float = 1.0, teacher_floor: float = 0.0) -> dict:
        """One student forward (with grad) and one teacher forward (no grad) on a rollout, for
        the on-policy RL distillation methods. Returns ``(N, C)`` tensors at the completion
        positions, all at the same ``temperature``:

        - ``logp``: log pi_theta(a_t | s_t) of the sampled tokens (with grad, full student vocabulary);
        - ``step_kl``: KL(pi_theta(.|s_t) || mu(.|s_t)) over the shared vocabulary, the teacher
          floored by ``losses.floored_log_probs(., teacher_floor)`` (with grad w.r.t. the student);
        - ``teacher_logp``: log mu(a_t | s_t) of the sampled tokens, floored the same way (no grad).

        With ``loss_chunk_size > 0`` in the config everything comes from final hidden states
        chunk by chunk (``losses.chunked_*``), so no [N, C, V] float32 logits exist.
        """
        from . import losses
        from .rollout import forward_logits

        batch = batch.to(self.device)
        ids, mask = batch.completion_ids, batch.completion_mask
        chunk = getattr(self.cfg, "loss_chunk_size", 0)
        if not chunk:
            t = self.teacher_logits(batch) / temperature  # (N, C, Vs) no grad
            s = forward_logits(self.model, batch)  # (N, C, V) with grad
            logp = losses.sampled_token_logprobs(s, ids, temperature=temperature)  # (N, C)
            t_logp = losses.floored_log_probs(t, teacher_floor)  # (N, C, Vs)
            step_kl = losses.reverse_kl(s[..., : self.shared_vocab].float() / temperature, t_logp)  # (N, C)
            inside = ids.clamp(max=t_logp.shape[-1] - 1)
            teacher_logp = t_logp.gather(-1, inside.unsqueeze(-1)).squeeze(-1)  # (N, C)
            # a token outside the shared vocabulary: the teacher's floor mass (finite), not -inf
            teacher_logp = torch.where(ids < t_logp.shape[-1], teacher_logp,
                                       math.log(max(teacher_floor, 1e-30) / t_logp.shape[-1]))
            return {"logp": logp, "step_kl": step_kl, "teacher_logp": teacher_logp}
        sh, th, head = self._chunked_inputs(batch)
        w_t = head[: self.shared_vocab]
        step_kl = losses.chunked_divergence(sh, th, self.policy.get_output_embeddings().weight, w_t, mask,
                                            kind="reverse_kl", temperature=temperature, chunk_size=chunk,
                                            vocab_limit=self.shared_vocab, teacher_floor=teacher_floor)
        logp = losses.chunked_sampled_token_logprobs(sh, self.policy.get_output_embeddings().weight, ids,
                                                     temperature=temperature, chunk_size=chunk, mask=mask)
        with torch.no_grad():  # log mu(a_t) with the floor applied analytically: log((1-f) mu + f/V)
            raw = losses.chunked_sampled_token_logprobs(th, w_t, ids.clamp(max=w_t.shape[0] - 1),
                                                        temperature=temperature, chunk_size=chunk, mask=mask)
            if teacher_floor:
                raw = torch.logaddexp(raw + math.log1p(-teacher_floor), torch.full_like(
                    raw, math.log(teacher_floor / w_t.shape[0])))
            teacher_logp = torch.where(ids < w_t.shape[0], raw, math.log(max(teacher_floor, 1e-30) / w_t.shape[0]))
        return {"logp": logp, "step_kl": step_kl, "teacher_logp": teacher_logp}

    def student_logits(self, batch) -> torch.Tensor:
        """Student logits at the completion positions of ``batch`` (with grad), shared vocabulary only."""
        from .rollout import forward_logits

        return forward_logits(self.model, batch.to(self.device))[..., : self.shared_vocab].float()


def completion_hidden(model, batch) -> torch.Tensor:
    """(N, C, H) final hidden states at the positions that predict each completion token
    (the decoder's output before the LM head; no logits are computed)."""
    from .rollout import position_ids_from_mask

    C = batch.completion_ids.shape[1]
    ids, mask = batch.full_ids(), batch.full_mask()
    out = model.get_decoder()(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask))
    return out.last_hidden_state[:, -(C + 1):-1]


def encode_pairs(tokenizer, prompts: list[str], completions: list[str], max_prompt: int, max_completion: int,
                 add_eos: bool = True):
    """Tokenise (rendered prompt, completion text) pairs into a ``Rollout`` layout:
    left-padded prompts, right-padded completions ending in EOS, so fixed-data methods
    (SFT, KD, GKD's off-policy batches) share every forward with on-policy ones."""
    from .rollout import Rollout

    pad = tokenizer.pad_token_id
    eos = tokenizer.eos_token_id
    from .models import encode_prompts

    p_ids = [ids[-max_prompt:] for ids in encode_prompts(tokenizer, prompts)]
    c_ids, cut = [], []
    for c in completions:
        ids = tokenizer(c, add_special_tokens=False)["input_ids"]
        room = max_completion - 1 if add_eos else max_completion
        cut.append(len(ids) > room)
        # a completion cut at the limit gets no EOS: teaching it to stop mid-solution would be wrong
        c_ids.append(ids[:max_completion] if cut[-1] else ids + ([eos] if add_eos else []))
    P = max(len(x) for x in p_ids)
    C = max(len(x) for x in c_ids)
    n = len(prompts)
    prompt_ids = torch.full((n, P), pad, dtype=torch.long)
    prompt_mask = torch.zeros((n, P), dtype=torch.long)
    completion_ids = torch.full((n, C), pad, dtype=torch.long)
    completion_mask = torch.zeros((n, C), dtype=torch.long)
    for i, (p, c) in enumerate(zip(p_ids, c_ids)):
        prompt_ids[i, P - len(p):] = torch.tensor(p)
        prompt_mask[i, P - len(p):] = 1
        completion_ids[i, : len(c)] = torch.tensor(c)
        completion_mask[i, : len(c)] = 1
    return Rollout(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids,
                   completion_mask=completion_mask, logprobs=torch.zeros(n, C),
                   truncated=torch.tensor(cut, dtype=torch.bool), group_index=torch.arange(n))


# --------------------------------------------------------------------------------------
# schedule, seeding, checkpoints
# --------------------------------------------------------------------------------------
def lr_lambda(cfg: TrainConfig):
    def f(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_scheduler_type == "constant":
            return 1.0
        span = max(1, cfg.max_steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        if cfg.lr_scheduler_type == "linear":
            decay = 1.0 - progress
        elif cfg.lr_scheduler_type == "cosine":
            decay = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            raise ValueError(f"lr_scheduler_type must be cosine, linear or constant, got {cfg.lr_scheduler_type!r}")
        return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * decay
    return f


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state(ctx: Context) -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "generator": ctx.generator.get_state() if ctx.generator is not None else None,
            "ctx_rng": ctx.rng.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(ctx: Context, state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["generator"] is not None and ctx.generator is not None:
        ctx.generator.set_state(state["generator"])
    ctx.rng.setstate(state["ctx_rng"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


DATA_FIELDS = ("seed", "dataset", "per_device_train_batch_size", "gradient_accumulation_steps", "train_size",
               "task_style", "task_min_terms", "task_max_terms", "task_max_operand")


def data_signature(cfg) -> dict:
    """The settings that decide which examples step s reads; resume refuses to change them."""
    return {k: getattr(cfg, k) for k in DATA_FIELDS if hasattr(cfg, k)}


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    ckpts = [c for c in Path(output_dir).glob("checkpoint-*") if c.name.split("-", 1)[1].isdigit()]
    ckpts = sorted((c for c in ckpts if (c / "trainer_state.json").exists()), key=lambda p: int(p.name.split("-")[1]))
    return ckpts[-1] if ckpts else None


def save_checkpoint(ctx: Context, optimizer, scheduler, step: int, rng_state: dict | None = None) -> Path:
    acc, cfg = ctx.accelerator, ctx.cfg
    out = Path(cfg.output_dir)
    final = out / f"checkpoint-{step}"
    tmp = out / f".tmp-checkpoint-{step}"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    if acc.is_main_process:
        ctx.policy.save_pretrained(tmp / "model", safe_serialization=True)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(rng_state or _rng_state(ctx), tmp / f"rng_{acc.process_index}.pt")
    acc.wait_for_everyone()
    if acc.is_main_process:
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, "world_size": acc.num_processes,
                                                            "data": data_signature(cfg)}))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)  # atomic: a checkpoint folder with trainer_state.json is complete
        ckpts = sorted((c for c in out.glob("checkpoint-*") if c.name.split("-", 1)[1].isdigit()),
                       key=lambda p: int(p.name.split("-")[1]))
        for old in ckpts[: max(0, len(ckpts) - max(1, cfg.save_total_limit))]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
    return final


def load_checkpoint(ctx: Context, optimizer, scheduler, path: Path) -> int:
    from safetensors.torch import load_file

    state = json.loads((path / "trainer_state.json").read_text())
    saved, now = state.get("data"), data_signature(ctx.cfg)
    changed = {k: (saved.get(k), v) for k, v in now.items() if saved.get(k) != v} if saved is not None else {}
    if saved is None:
        print(f"[reasondistill] warning: {path} records no data settings; cannot check they are unchanged",
              file=sys.stderr)
    if changed:
        raise ValueError(f"{path} was written with other data settings, so resuming would read other examples: "
                           + ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items()))
    if state["world_size"] != ctx.accelerator.num_processes:
        raise RuntimeError(f"{path} was written by {state['world_size']} process(es); resume with the same number "
                           f"(now {ctx.accelerator.num_processes})")
    weights = {}
    for f in sorted((path / "model").glob("*.safetensors")):
        weights.update(load_file(str(f)))
    missing, unexpected = ctx.policy.load_state_dict(weights, strict=False)
    tied = set(getattr(ctx.policy, "_tied_weights_keys", None) or [])
    if unexpected or (set(missing) - tied):
        raise RuntimeError(f"{path}: checkpoint does not match the model (missing {missing}, unexpected {unexpected})")
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    _set_rng_state(ctx, torch.load(path / f"rng_{ctx.accelerator.process_index}.pt", weights_only=False))
    return int(state["step"])


# --------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------
class _GracefulInterrupt:
    """First Ctrl-C: finish the current step, checkpoint, stop. Second: stop at once."""

    def __init__(self):
        import signal
        import threading

        self.hit, self._old = False, None
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        if self.hit:
            raise KeyboardInterrupt
        self.hit = True
        print("\n[reasondistill] Ctrl-C: finishing this step and saving a checkpoint (Ctrl-C again to stop now)",
              file=sys.stderr)

    def restore(self) -> None:
        import signal

        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None


class MetricsWriter:
    def __init__(self, cfg: TrainConfig, is_main: bool):
        self.is_main = is_main
        self.path = Path(cfg.output_dir) / "metrics.jsonl"
        self.tb = None
        if is_main and cfg.report_to == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(cfg.output_dir) / "tensorboard"))
            except ImportError:
                print("[reasondistill] tensorboard not installed; metrics go to metrics.jsonl only", file=sys.stderr)

    def write(self, step: int, metrics: dict) -> None:
        if not self.is_main:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _truncate_metrics_after(path: Path, step: int) -> None:
    """On resume, drop metric lines past the checkpoint so the log has no duplicates."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
    path.write_text("".join(ln + "\n" for ln in keep))


def _versions(acc) -> dict:
    import platform

    import accelerate
    import transformers

    from . import __version__

    return {"reasondistill": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "accelerate": accelerate.__version__, "python": platform.python_version(),
            "processes": acc.num_processes, "device": str(acc.device), "torch_threads": torch.get_num_threads()}


def build_context(method, cfg: TrainConfig, accelerator=None) -> Context:
    from accelerate import Accelerator

    from .models import assert_compatible, load_model, load_tokenizer, render_prompt

    if accelerator is None:
        # on a CPU-only machine "auto" must say cpu=True, or accelerate ignores torchrun's processes
        cpu = cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available())
        accelerator = Accelerator(cpu=cpu)
    seed_everything(cfg.seed + accelerator.process_index)
    student_path = resolve_model(cfg.student)
    tokenizer = load_tokenizer(student_path)
    model = load_model(student_path, dtype=cfg.dtype, device="cpu")
    teacher, shared = None, None
    if getattr(method, "NEEDS_TEACHER", False):
        if not cfg.teacher:
            raise ValueError(f"method {method.__name__.rsplit('.', 1)[-1]} needs a teacher: set teacher=PATH")
        teacher_path = resolve_model(cfg.teacher)
        teacher = load_model(teacher_path, dtype=cfg.dtype, device=cfg.teacher_device or str(accelerator.device))
        teacher.requires_grad_(False).eval()
        report = assert_compatible(tokenizer, load_tokenizer(teacher_path),
                                   model.get_input_embeddings().weight.shape[0],
                                   teacher.get_input_embeddings().weight.shape[0])
        if accelerator.is_main_process:
            print(f"[reasondistill] {report.summary()}", file=sys.stderr)
        shared = report.shared_vocab
    if accelerator.is_main_process:  # one template renders every prompt; show it once (FIELD_NOTES)
        print(f"[reasondistill] prompt template, rendered: {render_prompt(tokenizer, '<question>')!r}", file=sys.stderr)
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed * 7919 + accelerator.process_index)
    ctx = Context(cfg=cfg, accelerator=accelerator, model=model, tokenizer=tokenizer, teacher=teacher,
                  shared_vocab=shared, generator=gen, rng=random.Random(cfg.seed * 31 + accelerator.process_index))
    return ctx


def train(method, cfg: TrainConfig, accelerator=None, records: list[dict] | None = None, callback=None) -> dict:
    """Run ``method`` (a module under ``reasondistill.methods``) with ``cfg``; return a summary dict."""
    out = Path(cfg.output_dir)
    used = out.exists() and (latest_checkpoint(out) is not None or (out / "final").exists())
    if used and not cfg.resume and not cfg.overwrite_output_dir:
        raise FileExistsError(f"{out} already holds an earlier run (checkpoints or final/): pass resume=true to "
                              f"continue it, overwrite_output_dir=true to replace it, or another output_dir")
    ctx = build_context(method, cfg, accelerator)
    acc = ctx.accelerator
    if records is None:
        records = load_train_records(cfg)
    check_required_fields(method, cfg, records)  # every input is checked before the folder is touched
    if used and not cfg.resume and acc.is_main_process:
        for old in [*out.glob("checkpoint-*"), out / "final"]:
            shutil.rmtree(old, ignore_errors=True)
    if hasattr(method, "setup"):
        method.setup(ctx)

    params = [p for p in ctx.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                  betas=(cfg.adam_beta1, cfg.adam_beta2))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    ctx.model, optimizer = acc.prepare(ctx.model, optimizer)

    start = 0
    if cfg.resume:
        ckpt = latest_checkpoint(out)
        if ckpt is None:
            print(f"[reasondistill] resume=true but no checkpoint in {out}; starting from scratch", file=sys.stderr)
            if acc.is_main_process and (out / "metrics.jsonl").exists():
                (out / "metrics.jsonl").unlink()
        else:
            start = load_checkpoint(ctx, optimizer, scheduler, ckpt)
            if acc.is_main_process:
                _truncate_metrics_after(out / "metrics.jsonl", start)
                print(f"[reasondistill] resumed from {ckpt} at step {start}", file=sys.stderr)
    elif acc.is_main_process and (out / "metrics.jsonl").exists():
        (out / "metrics.jsonl").unlink()
    if acc.is_main_process:  # after every check (a refused resume leaves the folder as it was)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(to_yaml(cfg))
        (out / "versions.json").write_text(json.dumps(_versions(acc), indent=2) + "\n")
    acc.wait_for_everyone()

    bf16 = cfg.mixed_precision == "bf16"  # autocast of the loss forwards; weights and AdamW state stay float32
    stream = DataStream(records, cfg.seed, cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps,
                        acc.num_processes, acc.process_index)
    writer = MetricsWriter(cfg, acc.is_main_process)
    bar = None
    if cfg.progress and acc.is_main_process:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.max_steps, initial=start, desc=method.__name__.rsplit(".", 1)[-1], dynamic_ncols=True,
                   file=sys.stderr)
    t0 = time.time()
    last_ckpt = latest_checkpoint(out) if cfg.resume else None
    sigint = _GracefulInterrupt()
    step = start
    stopped_early = False
    warned_at = -10**9
    try:
        while step < cfg.max_steps:
            ctx.step = step
            rng_at_step_start = _rng_state(ctx)  # what an interrupted step's checkpoint must hold
            ctx.model.train()
            t_step = time.time()
            with torch.no_grad():
                micros = [method.prepare(ctx, ex) for ex in stream.step_batches(step)]
                if hasattr(method, "finalize_step"):  # step-level statistics over every micro-batch
                    method.finalize_step(ctx, micros)
            t_prep = time.time() - t_step
            totals = torch.tensor([sum(m["num_tokens"] for m in micros), sum(m["num_rows"] for m in micros)],
                                  dtype=torch.float64, device=acc.device)
            totals = acc.reduce(totals, reduction="sum") if acc.num_processes > 1 else totals
            totals = {"tokens": max(1.0, totals[0].item()), "rows": max(1.0, totals[1].item())}
            agg: dict[str, float] = {}
            loss_sum = torch.zeros((), dtype=torch.float64, device=acc.device)
            for i, micro in enumerate(micros):
                sync = i == len(micros) - 1
                cm = contextlib.nullcontext() if sync else acc.no_sync(ctx.model)
                with cm:
                    with torch.autocast(acc.device.type, dtype=torch.bfloat16, enabled=bf16):
                        loss, metrics = method.loss(ctx, micro, totals)
                    finite = torch.isfinite(loss.detach()).float().reshape(1)
                    if acc.num_processes > 1:  # every process must stop together, or the others hang
                        finite = acc.reduce(finite, reduction="sum") / acc.num_processes
                    if finite.item() < 1.0:
                        raise NonFiniteLossError(
                            f"non-finite loss (this process: {loss.item()}) at step {step} micro-batch {i}; stopped without "
                            f"updating. Last good checkpoint: {last_ckpt or 'none (set save_steps)'}. "
                            f"Try a lower learning_rate or max_grad_norm.")
                    acc.backward(loss * acc.num_processes)
                loss_sum += loss.detach().double()
                for k, v in metrics.items():
                    agg[k] = agg.get(k, 0.0) + float(v) / len(micros)
            if cfg.max_grad_norm and cfg.max_grad_norm > 0:
                grad_norm = acc.clip_grad_norm_(ctx.model.parameters(), cfg.max_grad_norm)
            else:
                grad_norm = torch.norm(torch.stack([p.grad.norm() for p in ctx.model.parameters()
                                                    if p.grad is not None]))
            grad_norm = float(grad_norm)
            if not math.isfinite(grad_norm):
                raise NonFiniteLossError(f"non-finite gradient norm at step {step}; stopped without updating. "
                                         f"Last good checkpoint: {last_ckpt or 'none (set save_steps)'}.")
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            rng_at_step_start = None  # the step completed: the current RNG state is the right one
            if acc.num_processes > 1:
                loss_sum = acc.reduce(loss_sum, reduction="sum")
                red = acc.reduce(torch.tensor(list(agg.values()), dtype=torch.float64, device=acc.device),
                                 reduction="mean") if agg else None
                if red is not None:
                    agg = dict(zip(agg.keys(), red.tolist()))
            metrics = {"loss": loss_sum.item(), "grad_norm": grad_norm, "lr": scheduler.get_last_lr()[0],
                       "time/step_s": time.time() - t_step, "time/prepare_s": t_prep,
                       "time/elapsed_s": time.time() - t0, **agg}
            if step % cfg.logging_steps == 0 or step == cfg.max_steps:
                writer.write(step, metrics)
            cut = metrics.get("completions/truncated_share", 0.0)
            if cut > 0.5 and acc.is_main_process and step - warned_at >= 50:
                warned_at = step  # FIELD_NOTES: EOS disagreement shows up as answers that never stop
                print(f"\n[reasondistill] warning: {cut:.0%} of completions hit max_completion_length="
                      f"{cfg.max_completion_length} at step {step}; check the EOS ids of student and teacher",
                      file=sys.stderr)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", gnorm=f"{grad_norm:.2f}")
            out_of_time = bool(cfg.max_time_seconds) and (time.time() - t0) > cfg.max_time_seconds
            flags = [out_of_time, sigint.hit]
            if acc.num_processes > 1:  # every process must agree to stop
                red = acc.reduce(torch.tensor([float(f) for f in flags], device=acc.device), reduction="sum")
                flags = [v > 0 for v in red.tolist()]
            out_of_time, ctrl_c = flags
            if (cfg.save_steps and step % cfg.save_steps == 0) or out_of_time or ctrl_c:
                last_ckpt = save_checkpoint(ctx, optimizer, scheduler, step)
            if ctrl_c:
                if acc.is_main_process:
                    print(f"\n[reasondistill] interrupted after step {step}: saved {last_ckpt}; continue with "
                          f"resume=true", file=sys.stderr)
                raise KeyboardInterrupt
            if callback is not None:
                callback(ctx, step, metrics)
            if out_of_time:
                stopped_early = True
                if acc.is_main_process:
                    print(f"[reasondistill] max_time_seconds={cfg.max_time_seconds} reached at step {step}",
                          file=sys.stderr)
                break
    except KeyboardInterrupt:
        # A second Ctrl-C, or one outside the main thread's handler: parameters only change in
        # optimizer.step(), so the state after the last completed step is intact; save it with
        # the RNG state from the start of the cut step (unless that checkpoint exists already).
        if step > start and (last_ckpt is None or last_ckpt.name != f"checkpoint-{step}"):
            path = save_checkpoint(ctx, optimizer, scheduler, step, rng_state=rng_at_step_start)
            print(f"\n[reasondistill] interrupted: saved {path}; continue with resume=true", file=sys.stderr)
        raise
    finally:
        sigint.restore()
        if bar is not None:
            bar.close()
        writer.close()
    if cfg.save_steps and step % cfg.save_steps != 0 and not stopped_early:
        save_checkpoint(ctx, optimizer, scheduler, step)
    if cfg.save_final_model:
        acc.wait_for_everyone()
        if acc.is_main_process:
            ctx.policy.save_pretrained(out / "final", safe_serialization=True)
            ctx.tokenizer.save_pretrained(str(out / "final"))
    acc.wait_for_everyone()
    return {"steps": step, "wall_seconds": time.time() - t0, "output_dir": str(out), "context": ctx,
            "stopped_early": stopped_early}
