"""Seconds per optimizer step, side by side: reasondistill's gkd / grpo / sft vs TRL's trainers,
and the compute floor of the same steps.

    python benchmarks/bench_steps.py                          # all three pairs + the floor: ~1 min on 2 idle cores
    python benchmarks/bench_steps.py --only gkd --steps 10 --repeats 5 --output steps.md
    python benchmarks/bench_steps.py --no-trl                 # ours and the floor only (TRL not needed)

TRL is the optional extra ``pip install -e ".[bench]"``. What runs, in one process, on the
embedded student (2-layer Qwen2) and teacher (4-layer), fp32, CPU, ``--threads`` threads:

- ``gkd`` with ``lmbda=1, beta=1`` (every batch sampled by the student, reverse KL) vs TRL's
  ``DistillationTrainer`` (``beta=1``; where the installed TRL has no class of that name, its
  GKD trainer with ``lmbda=1, beta=1``; ``--trl-distill`` picks one, the table names it);
- ``grpo`` (``loss_type=dapo``, no reference KL) vs ``GRPOTrainer`` (same settings). Our
  ``per_device_train_batch_size`` counts prompts, TRL's counts completions: ours gets
  ``--batch`` prompts x ``--generations`` answers, TRL ``--batch x --generations`` completions
  with the same ``num_generations``, so both sample, score and train on the same rows a step;
- ``sft`` vs ``SFTTrainer`` (conversational prompt/completion data: completion-only loss).

Same data (the embedded arithmetic task, ``reasondistill.rewards.accuracy_reward`` as TRL's
reward function), batch, ``--completion-length`` cap (completions still stop at EOS, on both
sides; the table prints their mean length), temperature 1, learning rate, AdamW, clipping at
1.0, cosine schedule, no eval, no saving, no trackers, no torch.compile, no gradient
checkpointing, no completion logging. A step's time is the wall time between the ends of two
consecutive optimizer steps (ours: the ``callback`` of ``engine.train``; TRL: ``on_step_end``),
so it includes each loop's own per-step work (data, metrics, logging every step on both
sides). The first ``--warmup`` steps of every run are dropped; each pair runs ``--repeats``
times, interleaved (ours, TRL, TRL, ours, ...) so drift of the machine cancels in the ratio;
the table shows the median over all kept steps and the range of the per-repeat ratios.

Other processes matter on a small machine (one busy neighbour slows a 2-thread run 2-10x): the
script reads /proc/stat around every run, waits up to ``--max-wait`` s for a quiet machine before
each pair, runs a pair again (up to ``--retries`` times) when others kept more than
``--max-other-load`` cores busy during it, stops waiting and rerunning after ``--budget`` s
(so a busy machine costs at most a few minutes more), and prints the load beside each row.

"The floor" times, alone and on the same shapes, what a step cannot avoid: KV-cached sampling
of the same completions (``reasondistill.rollout.generate``), one student forward + backward on
the sampled (or, for sft, the dataset) rows, and one teacher forward under ``no_grad``.
gkd's floor is sampling + student fwd/bwd + teacher forward, grpo's sampling of all answers +
student fwd/bwd, sft's student fwd/bwd.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from reasondistill.tasks import arith

METHODS = ("gkd", "grpo", "sft")


def resolve(name: str) -> str:
    """Folder of an embedded model (``reasondistill.models`` on newer code, ``engine`` on older)."""
    try:
        from reasondistill.models import resolve_model
    except ImportError:
        from reasondistill.engine import resolve_model
    return resolve_model(name)


def step_times(ends: list[float], warmup: int) -> list[float]:
    """Seconds of steps warmup+1 .. N from the times their ends were seen."""
    return [b - a for a, b in zip(ends, ends[1:])][warmup - 1:]


def mean(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


# --------------------------------------------------------------------------------------
# other processes: on a shared 2-core machine one busy neighbour slows a 2-thread run 2-10x
# --------------------------------------------------------------------------------------
def _cpu_now() -> tuple[float, float, float] | None:
    """(busy CPU seconds of the whole machine, of this process, wall) or None off Linux."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    except (OSError, ValueError):
        return None
    hz = os.sysconf("SC_CLK_TCK")
    t = os.times()
    return (sum(v) - v[3] - v[4]) / hz, t.user + t.system, time.perf_counter()


def other_load(start, end) -> float | None:
    """Mean number of cores that other processes kept busy between two ``_cpu_now()`` samples."""
    if start is None or end is None or end[2] <= start[2]:
        return None
    return max(0.0, (end[0] - start[0]) - (end[1] - start[1])) / (end[2] - start[2])


def wait_quiet(limit: float, max_wait: float) -> float | None:
    """Wait (at most ``max_wait`` s) until other processes use under ``limit`` cores; return their load."""
    t0, load = time.perf_counter(), None
    while True:
        s = _cpu_now()
        time.sleep(0.5)
        load = other_load(s, _cpu_now())
        if load is None or load < limit or time.perf_counter() - t0 > max_wait:
            return load


# --------------------------------------------------------------------------------------
# ours: through the public entry points only (config, engine.train, methods)
# --------------------------------------------------------------------------------------
def run_ours(name: str, a, out: Path) -> dict:
    from reasondistill.config import build_config
    from reasondistill.engine import train
    from reasondistill.methods import get_method

    o = dict(student="embedded:student", teacher="embedded:teacher", output_dir=str(out),
             max_steps=a.warmup + a.steps, per_device_train_batch_size=a.batch,
             max_completion_length=a.completion_length, learning_rate=a.lr, report_to="none", progress=False,
             save_final_model=False)
    if name == "gkd":
        o |= dict(lmbda=1.0, beta=1.0, temperature=1.0)
    elif name == "grpo":
        o |= dict(teacher=None, num_generations=a.generations, loss_type="dapo", beta=0.0, temperature=1.0)
    else:
        o |= dict(teacher=None)
    m = get_method(name)
    ends, lengths = [], []

    def on_step(ctx, step, metrics):
        ends.append(time.perf_counter())
        lengths.append(metrics.get("completions/mean_length"))

    train(m, build_config(m.Config, overrides=o), callback=on_step)
    return {"times": step_times(ends, a.warmup), "length": mean(lengths[a.warmup:])}


# --------------------------------------------------------------------------------------
# TRL
# --------------------------------------------------------------------------------------
def trl_distill_class(which: str):
    """(trainer class, its config class, dotted name, class name): TRL's DistillationTrainer,
    else its GKD trainer (``which`` forces one of them)."""
    import importlib

    names = {"DistillationTrainer": [("trl", "DistillationTrainer", "DistillationConfig")],
             "GKDTrainer": [("trl", "GKDTrainer", "GKDConfig"), ("trl.experimental.gkd", "GKDTrainer", "GKDConfig")]}
    order = names["DistillationTrainer"] + names["GKDTrainer"] if which == "auto" else names[which]
    for mod, cls, cfg in order:
        try:
            m = importlib.import_module(mod)
            return getattr(m, cls), getattr(m, cfg), f"{mod}.{cls}", cls
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"no TRL distillation trainer found (tried {', '.join(f'{m}.{c}' for m, c, _ in order)})")


def trl_dataset(name: str, n: int, kind: str):
    from datasets import Dataset

    rows = arith.generate("train", n, seed=0)
    if name == "gkd" and kind == "GKDTrainer":  # the GKD trainer reads whole conversations
        data = [{"messages": [{"role": "user", "content": r["question"]},
                              {"role": "assistant", "content": r["solution"]}]} for r in rows]
    elif name == "sft":
        data = [{"prompt": [{"role": "user", "content": r["question"]}],
                 "completion": [{"role": "assistant", "content": r["solution"]}]} for r in rows]
    else:
        data = [{"prompt": [{"role": "user", "content": r["question"]}], "answer": r["answer"]} for r in rows]
    return Dataset.from_list(data)


def run_trl(name: str, a, out: Path) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, ProgressCallback, TrainerCallback

    student_path, teacher_path = resolve("embedded:student"), resolve("embedded:teacher")
    # the same settings as ours, and nothing TRL would do on top by default
    common = dict(output_dir=str(out), max_steps=a.warmup + a.steps, learning_rate=a.lr, lr_scheduler_type="cosine",
                  warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch", seed=0,
                  gradient_accumulation_steps=1, bf16=False, fp16=False, use_cpu=True, gradient_checkpointing=False,
                  torch_compile=False, report_to="none", logging_steps=1, save_strategy="no", eval_strategy="no",
                  disable_tqdm=True, dataloader_num_workers=0, log_level="error")
    tok = AutoTokenizer.from_pretrained(student_path)
    model = AutoModelForCausalLM.from_pretrained(student_path, dtype=torch.float32)
    n_rows = a.batch * (a.warmup + a.steps)
    if name == "gkd":
        cls, cfg_cls, _, kind = trl_distill_class(a.trl_distill)
        tok.padding_side = "left"
        teacher = AutoModelForCausalLM.from_pretrained(teacher_path, dtype=torch.float32)
        if kind == "DistillationTrainer":
            cfg = cfg_cls(**common, per_device_train_batch_size=a.batch, max_completion_length=a.completion_length,
                          beta=1.0, temperature=1.0, top_p=1.0, log_completions=False)
        else:
            cfg = cfg_cls(**common, per_device_train_batch_size=a.batch, max_new_tokens=a.completion_length,
                          lmbda=1.0, beta=1.0, temperature=1.0, seq_kd=False)
        trainer = cls(model=model, teacher_model=teacher, args=cfg, train_dataset=trl_dataset(name, n_rows, kind),
                      processing_class=tok)
    elif name == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        from reasondistill.rewards import accuracy_reward

        tok.padding_side = "left"
        cfg = GRPOConfig(**common, per_device_train_batch_size=a.batch * a.generations, num_generations=a.generations,
                         max_completion_length=a.completion_length, temperature=1.0, top_p=1.0, beta=0.0,
                         loss_type="dapo", scale_rewards="group", num_iterations=1, epsilon=0.2,
                         mask_truncated_completions=False, log_completions=False)
        trainer = GRPOTrainer(model=model, reward_funcs=[accuracy_reward], args=cfg,
                              train_dataset=trl_dataset(name, n_rows, "grpo"), processing_class=tok)
    else:
        from trl import SFTConfig, SFTTrainer

        cfg = SFTConfig(**common, per_device_train_batch_size=a.batch, max_length=None, packing=False,
                        completion_only_loss=True)
        trainer = SFTTrainer(model=model, args=cfg, train_dataset=trl_dataset(name, n_rows, "sft"),
                             processing_class=tok)

    class StepEnds(TrainerCallback):
        def __init__(self):
            self.ends, self.lengths, self.checkpointing = [], [], None

        def on_train_begin(self, args, state, control, model=None, **kw):
            self.checkpointing = bool(getattr(model, "is_gradient_checkpointing", False))

        def on_step_end(self, args, state, control, **kw):
            self.ends.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                self.lengths.append(logs["completions/mean_length"])

    timer = StepEnds()
    trainer.add_callback(timer)
    for cb in (PrinterCallback, ProgressCallback):  # ours prints nothing per step either (progress=False)
        trainer.remove_callback(cb)
    trainer.train()
    if timer.checkpointing:
        raise RuntimeError(f"TRL's {type(trainer).__name__} trained with gradient checkpointing on; ours has none")
    return {"times": step_times(timer.ends, a.warmup), "length": mean(timer.lengths[a.warmup:])}


# --------------------------------------------------------------------------------------
# the floor
# --------------------------------------------------------------------------------------
class Floor:
    """Each part alone, on the shapes of the steps above: every timed call gets its own batch of
    prompts and its own fresh rollout (the padded width of a batch is set by its longest row)."""

    PARTS = {"gkd": ("gen1", "fb1", "teacher1"), "grpo": ("genG", "fbG"), "sft": ("fb_sft",)}

    def __init__(self, a):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.a = a
        path = resolve("embedded:student")
        self.tok = AutoTokenizer.from_pretrained(path)
        self.student = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).train()
        self.teacher = AutoModelForCausalLM.from_pretrained(resolve("embedded:teacher"), dtype=torch.float32).eval()
        rows = arith.generate("train", a.batch * (a.steps + 1), seed=1)
        self.batches = [rows[i:i + a.batch] for i in range(0, len(rows), a.batch)]  # one per call, [0]: warm-up
        self.times: dict[str, list[float]] = {}
        self.shapes: dict[str, list[tuple[int, int, float]]] = {}  # rows, padded completion width, mean length
        self.loads: list[float | None] = []

    def render(self, question: str) -> str:
        return self.tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                            add_generation_prompt=True)

    def sft_batch(self, rows):
        tok = self.tok
        seqs, labels = [], []
        for r in rows:
            pi = tok(self.render(r["question"]), add_special_tokens=False)["input_ids"]
            ci = tok(r["solution"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            seqs.append(pi + ci)
            labels.append([-100] * len(pi) + ci)
        T = max(map(len, seqs))
        ids = torch.tensor([x + [tok.pad_token_id] * (T - len(x)) for x in seqs])  # (B, T)
        mask = torch.tensor([[1] * len(x) + [0] * (T - len(x)) for x in seqs])  # (B, T)
        lab = torch.tensor([x + [-100] * (T - len(x)) for x in labels])  # (B, T)
        n = (lab != -100).sum(1).float()
        return (ids, mask, lab), (len(rows), int(n.max()), float(n.mean()))

    def generate(self, rows, g: int, seed: int):
        from reasondistill.rollout import generate

        roll = generate(self.student, self.tok, [self.render(r["question"]) for r in rows], num_generations=g,
                        max_new_tokens=self.a.completion_length, temperature=1.0, top_p=1.0,
                        generator=torch.Generator().manual_seed(seed))
        shape = (roll.completion_ids.shape[0], roll.completion_ids.shape[1],
                 float(roll.completion_mask.sum(1).float().mean()))
        return roll, shape

    @staticmethod
    def _inputs(roll):
        ids = torch.cat([roll.prompt_ids, roll.completion_ids], 1)  # (N, P + C)
        mask = torch.cat([roll.prompt_mask, roll.completion_mask], 1)  # (N, P + C)
        return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0), roll.completion_ids.shape[1]

    def student_fwd_bwd(self, roll):
        ids, mask, pos, C = self._inputs(roll)
        logits = self.student(input_ids=ids, attention_mask=mask, position_ids=pos,
                              logits_to_keep=C + 1).logits[:, :-1]  # (N, C, V)
        logp = torch.log_softmax(logits, -1).gather(-1, roll.completion_ids[..., None])[..., 0]  # (N, C)
        m = roll.completion_mask.float()
        (-(logp * m).sum() / m.sum().clamp(min=1)).backward()
        self.student.zero_grad(set_to_none=True)

    def teacher_fwd(self, roll):
        ids, mask, pos, C = self._inputs(roll)
        with torch.no_grad():
            self.teacher(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=C + 1)

    def sft_fwd_bwd(self, batch):
        ids, mask, lab = batch
        self.student(input_ids=ids, attention_mask=mask, labels=lab).loss.backward()
        self.student.zero_grad(set_to_none=True)

    def measure(self, only):
        for i, rows in enumerate(self.batches):
            keep = i > 0  # the first batch warms every part up

            def timed(name, fn, *args):
                t = time.perf_counter()
                out = fn(*args)
                if keep:
                    self.times.setdefault(name, []).append(time.perf_counter() - t)
                return out

            def shapes(method, shape):
                for name in self.PARTS[method] if keep else ():
                    self.shapes.setdefault(name, []).append(shape)

            if "gkd" in only:
                roll, shape = timed("gen1", self.generate, rows, 1, i)
                timed("fb1", self.student_fwd_bwd, roll)
                timed("teacher1", self.teacher_fwd, roll)
                shapes("gkd", shape)
            if "grpo" in only:
                roll, shape = timed("genG", self.generate, rows, self.a.generations, i)
                timed("fbG", self.student_fwd_bwd, roll)
                shapes("grpo", shape)
            if "sft" in only:
                batch, shape = self.sft_batch(rows)
                timed("fb_sft", self.sft_fwd_bwd, batch)
                shapes("sft", shape)

    def parts(self, only) -> list[str]:
        return [p for m in only for p in self.PARTS[m]]

    def median(self, name) -> float:
        return statistics.median(self.times[name])

    def shape(self, name) -> tuple[int, float, float]:
        """rows, mean padded completion width, mean completion length."""
        s = self.shapes[name]
        return s[0][0], sum(x[1] for x in s) / len(s), sum(x[2] for x in s) / len(s)

    def of(self, method) -> float:
        return sum(self.median(p) for p in self.PARTS[method])


# --------------------------------------------------------------------------------------
def report(a, only, ours, trl, floor, trl_info, redone) -> str:
    B, G, L = a.batch, a.generations, a.completion_length
    f = lambda x: "n/a" if x is None else f"{x:.3f}"
    fl = lambda x: "-" if x is None else f"{x:.1f}"
    most = lambda xs: "n/a" if all(x is None for x in xs) else f"{max(x for x in xs if x is not None):.2f}"
    med = lambda runs: statistics.median([t for r in runs for t in r["times"]])
    lines = [f"## Seconds per optimizer step: reasondistill vs TRL{' ' + trl_info['version'] if trl else ''}", "",
             f"Embedded student (2-layer Qwen2) and teacher (4-layer), fp32, CPU, {a.threads} thread(s), torch "
             f"{torch.__version__}. {B} prompts a step (grpo: {B} x {G} answers), completions capped at {L} tokens "
             f"(EOS still stops them), temperature 1, lr {a.lr:g}. Median over {a.repeats} repeat(s) x {a.steps} "
             f"step(s) after {a.warmup} warm-up step(s) per run, repeats interleaved ours/TRL; s/step = wall time "
             f"between the ends of consecutive optimizer steps.", ""]
    gkd_trl = f"`{trl_info.get('distill', '?')}` (" + ("beta=1)" if trl_info.get("kind") == "DistillationTrainer"
                                                        else "lmbda=1, beta=1)")
    names = {"gkd": ("gkd (lmbda=1, beta=1)", gkd_trl),
             "grpo": (f"grpo ({B} prompts x G={G}, dapo, beta=0)",
                      f"`GRPOTrainer` ({B * G} completions, G={G}, dapo, beta=0)"),
             "sft": ("sft", "`SFTTrainer` (prompt/completion, completion-only loss)")}
    if trl:
        lines += ["| ours vs TRL | ours s/step | TRL s/step | ours / TRL | per-repeat ratios | floor s/step | "
                  "ours / floor | TRL / floor | completion tokens ours / TRL | other processes (cores, max) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
    else:
        lines += ["| ours | ours s/step | floor s/step | ours / floor | completion tokens | "
                  "other processes (cores, max) |", "|---|---|---|---|---|---|"]
    for m in only:
        o, fm = med(ours[m]), floor.of(m)
        ol = mean(r["length"] for r in ours[m])
        if trl:
            t = med(trl[m])
            per = [statistics.median(ro["times"]) / statistics.median(rt["times"]) for ro, rt in zip(ours[m], trl[m])]
            tl = mean(r["length"] for r in trl[m])
            load = most([r["load"] for r in ours[m] + trl[m]])
            lines.append(f"| {names[m][0]} vs {names[m][1]} | {f(o)} | {f(t)} | **{o / t:.2f}x** | "
                         f"{min(per):.2f}-{max(per):.2f} | {f(fm)} | {o / fm:.1f}x | {t / fm:.1f}x | "
                         f"{fl(ol)} / {fl(tl)} | {load} |")
        else:
            lines.append(f"| {names[m][0]} | {f(o)} | {f(fm)} | {o / fm:.1f}x | {fl(ol)} | "
                         f"{most([r['load'] for r in ours[m]])} |")
    lines += ["", f"The floor: each part alone on the same shapes, median seconds (other processes: "
              f"{most(floor.loads)} cores at most).", "",
              "| part | rows | padded completion width (mean) | completion tokens (mean) | s |",
              "|---|---|---|---|---|"]
    labels = {"gen1": f"sample {B} x 1, KV cache (`rollout.generate`), cap {L}",
              "fb1": "student forward + backward on those rows", "teacher1": "teacher forward (no grad) on those rows",
              "genG": f"sample {B} x {G}, KV cache (`rollout.generate`), cap {L}",
              "fbG": "student forward + backward on those rows",
              "fb_sft": "student forward + backward on prompt + solution (+ EOS) rows (sft)"}
    for name in floor.parts(only):
        rows, width, ln = floor.shape(name)
        lines.append(f"| {labels[name]} | {rows} | {width:.1f} | {ln:.1f} | {floor.median(name):.4f} |")
    lines += ["", "Notes:",
              f"- grpo: TRL's `per_device_train_batch_size` counts completions, ours counts prompts: TRL got "
              f"{B * G} = {B} x {G}, ours {B}, both `num_generations={G}`, so both do the same rows a step.",
              "- Both sides sample from the same student with the same settings; their completion lengths differ "
              "only by sampling (column above). gkd's floor = sampling + student fwd/bwd + teacher forward; grpo's "
              "= sampling + student fwd/bwd; sft's = student fwd/bwd.",
              f"- Other processes: mean cores kept busy by the rest of the machine during a run (/proc/stat); a pair "
              f"above {a.max_other_load} was run again (up to {a.retries} time(s); {redone} rerun(s) here). Numbers "
              f"measured next to a busy neighbour are not comparable."]
    if trl:
        lines += ["- Work TRL does that has no switch: GRPOTrainer computes per-token entropies in its loss, "
                  "SFTTrainer entropy and token accuracy; SFTTrainer tokenizes the dataset before training (outside "
                  "the timed steps), ours tokenizes each batch inside its step.",
                  f"- TRL {trl_info['version']}, transformers {trl_info['transformers']}, "
                  f"accelerate {trl_info['accelerate']}."]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=10, help="timed optimizer steps per run (after the warm-up)")
    ap.add_argument("--warmup", type=int, default=2, help="steps dropped at the start of every run (>= 1)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per side and method, interleaved")
    ap.add_argument("--batch", type=int, default=16, help="prompts per step (grpo: each answered --generations times)")
    ap.add_argument("--generations", type=int, default=4, help="grpo num_generations")
    ap.add_argument("--completion-length", type=int, default=64, help="max_completion_length")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default=",".join(METHODS), help="comma-separated subset of gkd,grpo,sft")
    ap.add_argument("--no-trl", action="store_true", help="only ours and the floor")
    ap.add_argument("--trl-distill", default="auto", choices=["auto", "DistillationTrainer", "GKDTrainer"],
                    help="TRL class to compare gkd with (auto: DistillationTrainer if the installed TRL has it)")
    ap.add_argument("--max-other-load", type=float, default=0.25,
                    help="cores other processes may keep busy during a run before the pair is run again")
    ap.add_argument("--retries", type=int, default=2, help="times a pair on a busy machine is run again")
    ap.add_argument("--max-wait", type=float, default=15.0,
                    help="seconds to wait for a quiet machine before each pair")
    ap.add_argument("--budget", type=float, default=240.0,
                    help="seconds after which the run stops waiting for a quiet machine and rerunning busy pairs")
    ap.add_argument("--output", help="also write the Markdown table to this file")
    a = ap.parse_args()
    only = [m.strip() for m in a.only.split(",") if m.strip()]
    if bad := [m for m in only if m not in METHODS]:
        ap.error(f"--only: unknown {bad}; valid: {','.join(METHODS)}")
    if a.warmup < 1 or a.steps < 1 or a.repeats < 1:
        ap.error("--warmup, --steps and --repeats must be >= 1 (a step's time needs the end of the one before)")
    torch.set_num_threads(a.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars of every model load
    trl_info = {}
    if not a.no_trl:
        import accelerate
        import transformers
        import trl

        transformers.logging.set_verbosity_error()

        trl_info = {"version": trl.__version__, "transformers": transformers.__version__,
                    "accelerate": accelerate.__version__}
        if "gkd" in only:
            _, _, trl_info["distill"], trl_info["kind"] = trl_distill_class(a.trl_distill)
    import reasondistill

    print(f"reasondistill from {Path(reasondistill.__file__).parent}; TRL {trl_info.get('version', 'not used')}"
          + (f" ({trl_info['distill']} for gkd)" if "distill" in trl_info else ""), flush=True)

    ours = {m: [] for m in only}
    trl = {m: [] for m in only} if not a.no_trl else None
    floor = Floor(a)
    t0 = time.time()
    redone = 0
    with tempfile.TemporaryDirectory(prefix="bench_steps_") as tmp:
        for rep in range(a.repeats):
            for m in only:
                sides = [("ours", run_ours, ours)] + ([("trl", run_trl, trl)] if trl is not None else [])
                if rep % 2:
                    sides.reverse()  # ours first, then TRL first, ...: an order effect cancels too
                for attempt in range(a.retries + 1):
                    if time.time() - t0 < a.budget:  # past the budget: no more waiting or reruns
                        wait_quiet(a.max_other_load, a.max_wait)
                    got = {}
                    for side, fn, _ in sides:
                        log = io.StringIO()  # whatever a trainer prints; shown if the run fails
                        c0 = _cpu_now()
                        try:
                            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                                r = fn(m, a, Path(tmp) / f"{side}_{m}_{rep}_{attempt}")
                        except Exception:
                            print(log.getvalue(), file=sys.stderr)
                            raise
                        r["load"] = other_load(c0, _cpu_now())
                        got[side] = r
                        load = "" if r["load"] is None else f", other processes {r['load']:.2f} cores"
                        print(f"  repeat {rep + 1}/{a.repeats} {m:<4} {side:<4} median "
                              f"{statistics.median(r['times']):.3f} s/step  ({time.time() - t0:.0f} s{load})",
                              flush=True)
                    busy = [r["load"] for r in got.values() if r["load"] is not None and r["load"] > a.max_other_load]
                    if not busy or attempt == a.retries or time.time() - t0 > a.budget:
                        break
                    redone += 1
                    print(f"  busy machine (other processes {max(busy):.2f} cores > {a.max_other_load}): "
                          f"running this pair again", flush=True)
                for side, _, store in sides:
                    store[m].append(got[side])
            if time.time() - t0 < a.budget:
                wait_quiet(a.max_other_load, a.max_wait)
            c0 = _cpu_now()
            floor.measure(only)
            floor.loads.append(other_load(c0, _cpu_now()))
    text = report(a, only, ours, trl, floor, trl_info, redone)
    print()
    print(text, end="")
    print(f"(wall clock {time.time() - t0:.0f} s)")
    if a.output:
        Path(a.output).write_text(text)


if __name__ == "__main__":
    main()
