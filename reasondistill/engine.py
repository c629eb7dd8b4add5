"""The one training loop every method runs through (the contract is ``methods/base.py``).

Per optimizer step the engine: takes the step's examples from a deterministic data stream
(position = generation batch, so resume needs no replay); calls ``prepare`` for every
micro-batch (every ``num_iterations`` steps; in between the same generation batch is reused,
so the importance ratio of the on-policy methods really differs from 1 and clipping acts);
sums the global totals over micro-batches and processes; runs forward/backward per micro-batch
(gradient sync only on the last); stops with a clear message on a non-finite loss (the last
good checkpoint stays); clips the gradient norm and logs it; steps the optimizer and the
warmup + cosine/linear/constant schedule; writes metrics (``tracking.MetricsWriter``);
evaluates every ``eval_steps`` and keeps the best checkpoint; checkpoints every
``save_steps`` (``checkpoints.py``). Because DDP averages gradients over processes, each
micro-batch loss is multiplied by the number of processes before ``backward``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import checkpoints as ck
from .config import ConfigError, TrainConfig, to_yaml
from .methods.base import Max, as_method


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped and kept its last good checkpoint."""


@dataclass
class Context:
    """What a method sees of the run: config, models, tokenizer, seeded randomness, the step."""

    cfg: Any
    accelerator: Any
    model: torch.nn.Module
    """The student as trained: a ``signals.StudentModule`` (DDP-wrapped under several processes)."""
    tokenizer: Any
    teacher: torch.nn.Module | None = None
    shared_vocab: int | None = None
    generator: torch.Generator | None = None
    rng: random.Random = field(default_factory=random.Random)
    step: int = 0
    teacher_stop_ids: list[int] | None = None
    """The teacher's own stop ids (``tokenizer_compat=shared_ids`` lets them differ from the student's)."""
    extras: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def policy(self) -> torch.nn.Module:
        """The student model itself, without the DDP and ``StudentModule`` wrappers (for sampling, saving)."""
        inner = self.accelerator.unwrap_model(self.model)
        return getattr(inner, "lm", inner)

    def render(self, questions: list[str]) -> list[str]:
        from .models import render_prompt

        return [render_prompt(self.tokenizer, q, template=self.cfg.prompt_template) for q in questions]

    def prompt_ids(self, questions: list[str]) -> list[list[int]]:
        """Rendered, tokenised prompts cut from the left to ``max_prompt_length``: what every
        sampled batch (student or teacher) is conditioned on, exactly as in ``encode_pairs``."""
        from .models import encode_prompts

        return [ids[-self.cfg.max_prompt_length:] for ids in encode_prompts(self.tokenizer, self.render(questions))]

    def signals(self, batch, temperature: float = 1.0, teacher_floor: float = 0.0, student=None):
        """A ``signals.TokenPass`` over ``batch``: the trained student (or ``student``, e.g. a frozen
        reference) with grad, the teacher without, plain or chunked as ``loss_chunk_size`` says."""
        from .signals import TokenPass

        if self.cfg.loss_chunk_size and self.teacher is not None and "teacher_head" not in self.extras:
            self.extras["teacher_head"] = self.teacher.get_output_embeddings().weight.detach().to(self.device)
        return TokenPass(batch.to(self.device), student=self.model if student is None else student,
                         teacher=self.teacher if student is None else None, shared_vocab=self.shared_vocab,
                         temperature=temperature, chunk_size=self.cfg.loss_chunk_size, teacher_floor=teacher_floor,
                         device=self.device, teacher_head=self.extras.get("teacher_head"))


def resolve_schedule(cfg, num_records: int, world: int):
    """``num_train_epochs > 0`` sets ``max_steps``; ``warmup_ratio > 0`` sets ``warmup_steps``
    (unless given): the HF Trainer's two ways of sizing a run, resolved before config.yaml is written."""
    if cfg.num_train_epochs > 0:
        per_step = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * world
        gens = math.ceil(cfg.num_train_epochs * num_records / per_step)  # generation batches
        cfg = dataclasses.replace(cfg, max_steps=max(1, gens * cfg.num_iterations))
    if cfg.warmup_ratio > 0 and not cfg.warmup_steps:
        cfg = dataclasses.replace(cfg, warmup_steps=math.ceil(cfg.warmup_ratio * cfg.max_steps))
    return cfg


def lr_lambda(cfg: TrainConfig):
    def f(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_scheduler_type == "constant":
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
        decay = 1.0 - progress if cfg.lr_scheduler_type == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
        return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * decay
    return f


def make_optimizer(cfg, params):
    """``optim``: adamw_torch (torch's AdamW), adamw_8bit / paged_adamw_8bit (bitsandbytes, CUDA)."""
    kw = dict(lr=cfg.learning_rate, weight_decay=cfg.weight_decay, betas=(cfg.adam_beta1, cfg.adam_beta2))
    if cfg.optim == "adamw_torch":
        return torch.optim.AdamW(params, **kw)
    if not torch.cuda.is_available():
        raise ConfigError(f"optim={cfg.optim} needs a CUDA GPU (bitsandbytes' 8-bit optimizers); use adamw_torch")
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise ConfigError(f"optim={cfg.optim} needs bitsandbytes: pip install bitsandbytes") from None
    return (bnb.optim.AdamW8bit if cfg.optim == "adamw_8bit" else bnb.optim.PagedAdamW8bit)(params, **kw)


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

    from .models import (apply_lora, assert_compatible, load_model, load_tokenizer, parse_config_overrides,
                         render_prompt, resolve_model)
    from .signals import StudentModule

    method = as_method(method)
    if accelerator is None:
        # on a CPU-only machine "auto" must say cpu=True, or accelerate ignores torchrun's processes
        cpu = cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available())
        accelerator = Accelerator(cpu=cpu)
    ck.seed_everything(cfg.seed + accelerator.process_index)
    student_path = resolve_model(cfg.student)
    tokenizer = load_tokenizer(student_path)
    model = load_model(student_path, dtype=cfg.dtype, device="cpu", quantization="nf4" if cfg.load_in_4bit else None,
                       config_overrides=parse_config_overrides(cfg.student_config_overrides))
    if cfg.use_peft:
        targets = cfg.lora_target_modules
        model = apply_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                           target_modules=targets if targets == "all-linear" else targets.split(","),
                           quantized=cfg.load_in_4bit)
    teacher, shared, stops = None, None, None
    if method.needs_teacher:
        if not cfg.teacher:
            raise ConfigError(f"method {method.name} needs a teacher: set teacher=PATH")
        teacher_path = resolve_model(cfg.teacher)
        teacher = load_model(teacher_path, dtype=cfg.dtype, device=cfg.teacher_device or str(accelerator.device))
        teacher.requires_grad_(False).eval()
        report = assert_compatible(tokenizer, load_tokenizer(teacher_path),
                                   model.get_input_embeddings().weight.shape[0],
                                   teacher.get_input_embeddings().weight.shape[0], mode=cfg.tokenizer_compat,
                                   student_model=model, teacher_model=teacher)
        if accelerator.is_main_process:
            print(f"[reasondistill] {report.summary()}", file=sys.stderr)
        shared, stops = report.shared_vocab, report.teacher_stop_ids
    if accelerator.is_main_process:  # one template renders every prompt; show it once (FIELD_NOTES)
        shown = render_prompt(tokenizer, "<question>", template=cfg.prompt_template)
        print(f"[reasondistill] prompt template, rendered: {shown!r}", file=sys.stderr)
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed * 7919 + accelerator.process_index)
    return Context(cfg=cfg, accelerator=accelerator, model=StudentModule(model), tokenizer=tokenizer,
                   teacher=teacher, shared_vocab=shared, generator=gen, teacher_stop_ids=stops,
                   rng=random.Random(cfg.seed * 31 + accelerator.process_index))


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


def _truncate_metrics_after(path: Path, step: int) -> None:
    """On resume, drop metric lines past the checkpoint so the log has no duplicates."""
    if path.exists():
        keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
        path.write_text("".join(ln + "\n" for ln in keep))


def _reduce(acc, values: list[float], op: str) -> list[float]:
    if acc.num_processes == 1 or not values:
        return values
    return acc.reduce(torch.tensor(values, dtype=torch.float64, device=acc.device), reduction=op).tolist()


def train(method, cfg: TrainConfig, accelerator=None, records: list[dict] | None = None, callback=None) -> dict:
    """Run ``method`` (a ``methods.base.Method`` or a method module) with ``cfg``; return a summary dict."""
    from .data.train import DataStream, check_required_fields, train_and_eval_records
    from .eval.in_training import evaluate_in_training, improved
    from .tracking import MetricsWriter

    method = as_method(method)
    out = Path(cfg.output_dir)
    used = out.exists() and (ck.latest_checkpoint(out) is not None or (out / "final").exists())
    if used and not cfg.resume and not cfg.overwrite_output_dir:
        raise FileExistsError(f"{out} already holds an earlier run (checkpoints or final/): pass resume=true to "
                              f"continue it, overwrite_output_dir=true to replace it, or another output_dir")
    eval_records = []
    if records is None:
        records, eval_records = train_and_eval_records(cfg)
    elif cfg.eval_dataset:
        raise ConfigError("eval_dataset: pass the evaluation records with the training records, or leave it empty")
    check_required_fields(method.required_fields(cfg), records)  # every input is checked before the folder is touched
    need = "answer" if cfg.metric_for_best_model == "eval/accuracy" else "solution"  # what the metric reads
    check_required_fields(("question", need) if cfg.eval_steps else ("question",), eval_records, "evaluation")
    ctx = build_context(method, cfg, accelerator)
    acc = ctx.accelerator
    cfg = ctx.cfg = resolve_schedule(cfg, len(records), acc.num_processes)
    if used and not cfg.resume and acc.is_main_process:
        for old in [*out.glob("checkpoint-*"), out / "final"]:
            shutil.rmtree(old, ignore_errors=True)
        (out / ck.BEST_FILE).unlink(missing_ok=True)
    method.setup(ctx)

    optimizer = make_optimizer(cfg, [p for p in ctx.model.parameters() if p.requires_grad])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    ctx.model, optimizer = acc.prepare(ctx.model, optimizer)

    start, micros = 0, None
    if cfg.resume and (ckpt := ck.latest_checkpoint(out)) is not None:
        start, micros = ck.load_checkpoint(ctx, optimizer, scheduler, ckpt)
        if acc.is_main_process:
            _truncate_metrics_after(out / "metrics.jsonl", start)
            print(f"[reasondistill] resumed from {ckpt} at step {start}", file=sys.stderr)
    elif acc.is_main_process:
        if cfg.resume:
            print(f"[reasondistill] resume=true but no checkpoint in {out}; starting from scratch", file=sys.stderr)
        (out / "metrics.jsonl").unlink(missing_ok=True)
    if acc.is_main_process:  # after every check (a refused resume leaves the folder as it was)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(to_yaml(cfg))
        (out / "versions.json").write_text(json.dumps(_versions(acc), indent=2) + "\n")
    acc.wait_for_everyone()

    bf16 = cfg.mixed_precision == "bf16"  # autocast of the loss forwards; weights and optimizer state stay float32
    stream = DataStream(records, cfg.seed, cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps,
                        acc.num_processes, acc.process_index)
    writer = MetricsWriter(cfg, acc.is_main_process, config=dataclasses.asdict(cfg))
    bar = None
    if cfg.progress and acc.is_main_process:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.max_steps, initial=start, desc=method.name, dynamic_ncols=True, file=sys.stderr)
    t0 = time.time()
    last_ckpt = ck.latest_checkpoint(out) if cfg.resume else None
    best = ck.best_checkpoint(out) if cfg.resume else None
    if best is not None and best["metric"] != cfg.metric_for_best_model:
        raise ConfigError(f"metric_for_best_model={cfg.metric_for_best_model!r}, but {out} kept its best checkpoint "
                          f"by {best['metric']!r}; resume with the same metric")
    sigint, step, stopped_early, warned_at = _GracefulInterrupt(), start, False, -10**9
    try:
        while step < cfg.max_steps:
            ctx.step = step
            rng_at_step_start = ck.rng_state(ctx)  # what an interrupted step's checkpoint must hold
            ctx.model.train()
            t_step = time.time()
            if step % cfg.num_iterations == 0 or micros is None:  # a new generation batch
                with torch.no_grad():
                    micros = [method.prepare(ctx, ex) for ex in stream.step_batches(step // cfg.num_iterations)]
                    method.finalize_step(ctx, micros)
            t_prep = time.time() - t_step
            tok, rows = _reduce(acc, [sum(m.num_tokens for m in micros), sum(m.num_rows for m in micros)], "sum")
            totals = {"tokens": max(1.0, tok), "rows": max(1.0, rows)}
            agg: dict[str, float] = {}  # mean over micro-batches (and processes) of plain values
            shares: dict[str, list[float]] = {}  # (numerator, denominator) values: summed, then divided
            maxes: dict[str, float] = {}  # methods.base.Max values: the maximum
            loss_sum = 0.0
            for i, micro in enumerate(micros):
                with contextlib.nullcontext() if i == len(micros) - 1 else acc.no_sync(ctx.model):
                    with torch.autocast(acc.device.type, dtype=torch.bfloat16, enabled=bf16):
                        loss, metrics = method.loss(ctx, micro, totals)
                    finite = _reduce(acc, [float(torch.isfinite(loss.detach()))], "mean")[0]
                    if finite < 1.0:  # every process must stop together, or the others hang
                        raise NonFiniteLossError(
                            f"non-finite loss (this process: {loss.item()}) at step {step} micro-batch {i}; stopped "
                            f"without updating. Last good checkpoint: {last_ckpt or 'none (set save_steps)'}. "
                            f"Try a lower learning_rate or max_grad_norm.")
                    acc.backward(loss * acc.num_processes)
                loss_sum += float(loss.detach())
                for k, v in metrics.items():
                    if isinstance(v, tuple):
                        shares[k] = [a + float(b) for a, b in zip(shares.get(k, [0.0, 0.0]), v)]
                    elif isinstance(v, Max):
                        maxes[k] = max(maxes.get(k, -math.inf), float(v))
                    else:
                        agg[k] = agg.get(k, 0.0) + float(v) / len(micros)
            if cfg.max_grad_norm and cfg.max_grad_norm > 0:
                grad_norm = float(acc.clip_grad_norm_(ctx.model.parameters(), cfg.max_grad_norm))
            else:
                grad_norm = float(torch.norm(torch.stack([p.grad.norm() for p in ctx.model.parameters()
                                                          if p.grad is not None])))
            if not math.isfinite(grad_norm):
                raise NonFiniteLossError(f"non-finite gradient norm at step {step}; stopped without updating. "
                                         f"Last good checkpoint: {last_ckpt or 'none (set save_steps)'}.")
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            rng_at_step_start = None  # the step completed: the current RNG state is the right one
            loss_sum = _reduce(acc, [loss_sum], "sum")[0]
            agg = dict(zip(agg, _reduce(acc, list(agg.values()), "mean")))
            summed = _reduce(acc, [x for num_den in shares.values() for x in num_den], "sum")
            agg |= {k: summed[2 * i] / max(summed[2 * i + 1], 1e-12) for i, k in enumerate(shares)}
            agg |= dict(zip(maxes, _reduce(acc, list(maxes.values()), "max")))
            metrics = {"loss": loss_sum, "grad_norm": grad_norm, "lr": scheduler.get_last_lr()[0],
                       "time/step_s": time.time() - t_step, "time/prepare_s": t_prep,
                       "time/elapsed_s": time.time() - t0, **agg}
            new_best = False
            if cfg.eval_steps and eval_records and (step % cfg.eval_steps == 0 or step == cfg.max_steps):
                metrics |= evaluate_in_training(ctx, eval_records)
                if improved(cfg, metrics, best):
                    best, new_best = {"step": step, "metric": cfg.metric_for_best_model,
                                      "value": metrics[cfg.metric_for_best_model], "checkpoint": f"checkpoint-{step}"}, True
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
            out_of_time, ctrl_c = (v > 0 for v in _reduce(acc, [float(out_of_time), float(sigint.hit)], "sum"))
            if new_best and acc.is_main_process:  # before the save, so rotation keeps it
                (out / ck.BEST_FILE).write_text(json.dumps(best) + "\n")
            reuse = micros if step % cfg.num_iterations else None
            if (cfg.save_steps and step % cfg.save_steps == 0) or out_of_time or ctrl_c or new_best:
                last_ckpt = ck.save_checkpoint(ctx, optimizer, scheduler, step, micros=reuse)
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
            path = ck.save_checkpoint(ctx, optimizer, scheduler, step, rng=rng_at_step_start,
                                      micros=micros if step % cfg.num_iterations else None)
            print(f"\n[reasondistill] interrupted: saved {path}; continue with resume=true", file=sys.stderr)
        raise
    finally:
        sigint.restore()
        if bar is not None:
            bar.close()
        writer.close()
    if cfg.save_steps and step % cfg.save_steps != 0 and not stopped_early:
        ck.save_checkpoint(ctx, optimizer, scheduler, step, micros=micros if step % cfg.num_iterations else None)
    if cfg.load_best_model_at_end and best is not None:
        ck.load_weights(ctx, out / best["checkpoint"])
        if acc.is_main_process:
            print(f"[reasondistill] loaded the best model: {best}", file=sys.stderr)
    if cfg.save_final_model:
        acc.wait_for_everyone()
        if acc.is_main_process:
            from .models import save_pretrained_model

            save_pretrained_model(ctx.policy, out / "final", merge=cfg.merge_adapter)
            ctx.tokenizer.save_pretrained(str(out / "final"))
    acc.wait_for_everyone()
    return {"steps": step, "wall_seconds": time.time() - t0, "output_dir": str(out), "context": ctx,
            "stopped_early": stopped_early, "best": best}
