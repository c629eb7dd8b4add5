"""``reasondistill demo``: on-policy distillation of the embedded arithmetic task, end to end.

1. obtain the shipped teacher and the weaker student (``reasondistill task build`` made them);
2. evaluate both on held-out problems (greedy pass@1; the student also gets its mean
   per-token KL(student || teacher) on its own answers);
3. distill the student on-policy with GKD (lmbda = 1: every batch sampled by the student;
   generalized JSD with beta = 0.5) for a fixed number of steps, measuring held-out accuracy
   on a small slice along the way;
4. evaluate again, print the table, and write ``summary.json``, the per-example evaluations,
   the training metrics and ``training_curves.png`` into the run directory.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .config import build_config
from .engine import train
from .models import resolve_model
from .eval.math_eval import evaluate, write_results
from .methods import gkd
from .models import load_model, load_tokenizer
from .report.plots import read_metrics, training_curves
from .tasks import arith

DEMO_DEFAULTS = dict(lmbda=1.0, beta=0.5, temperature=1.0, learning_rate=1e-3, per_device_train_batch_size=64,
                     max_steps=240, warmup_steps=10, lr_scheduler_type="cosine", min_lr_ratio=0.1,
                     max_completion_length=48, max_grad_norm=1.0, save_steps=80, seed=0)


def run_demo(output_dir: str | Path = "runs/demo", num_test: int = 400, max_steps: int | None = None,
             curve_every: int = 40, curve_size: int = 100, progress: bool = True) -> dict:
    t0 = time.time()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    teacher_path, student_path = resolve_model("embedded:teacher"), resolve_model("embedded:student")
    teacher, student = load_model(teacher_path), load_model(student_path)
    teacher.requires_grad_(False)
    tok = load_tokenizer(student_path)
    test = arith.generate("test", num_test, seed=1234)
    ev = dict(max_new_tokens=DEMO_DEFAULTS["max_completion_length"], batch_size=100)

    print(f"[demo] evaluating teacher and student on {num_test} held-out problems ...", flush=True)
    t_rows, t_sum = evaluate(teacher, tok, test, **ev)
    s_rows, s_before = evaluate(student, tok, test, teacher=teacher, **ev)
    write_results(out, t_rows, t_sum, prefix="eval_teacher")
    write_results(out, s_rows, s_before, prefix="eval_student_before")
    del student

    curve_set = test[:curve_size]
    evals = []

    def on_step(ctx, step, metrics):
        if step % curve_every == 0:
            _, s = evaluate(ctx.policy, ctx.tokenizer, curve_set, **ev)
            evals.append({"step": step, "accuracy": s["accuracy"], "teacher_accuracy": t_sum["accuracy"]})
            ctx.policy.train()

    evals.append({"step": 0, "accuracy": sum(r["correct"] for r in s_rows[:curve_size]) / curve_size,
                  "teacher_accuracy": t_sum["accuracy"]})
    overrides = dict(DEMO_DEFAULTS, student="embedded:student", teacher="embedded:teacher",
                     output_dir=str(out / "gkd"), progress=progress, device="cpu",
                     overwrite_output_dir=True)  # the demo owns its folder: a rerun replaces it
    if max_steps is not None:
        overrides["max_steps"] = max_steps
    cfg = build_config(gkd.Config, overrides=overrides)
    print(f"[demo] distilling with GKD (on-policy, lmbda={cfg.lmbda}, beta={cfg.beta}) for {cfg.max_steps} steps",
          flush=True)
    t_train = time.time()
    result = train(gkd, cfg, callback=on_step)
    train_seconds = time.time() - t_train
    student_after = result["context"].policy.eval()
    a_rows, s_after = evaluate(student_after, tok, test, teacher=teacher, **ev)
    write_results(out, a_rows, s_after, prefix="eval_student_after")

    metrics = read_metrics(out / "gkd" / "metrics.jsonl")
    png = training_curves(metrics, out / "training_curves.png",
                          keys=["loss", "kl/reverse_per_token", "grad_norm", "completions/mean_length", "lr"],
                          evals=evals, title="reasondistill demo: on-policy GKD on the embedded arithmetic task")
    summary = {
        "teacher_accuracy": t_sum["accuracy"],
        "student_accuracy_before": s_before["accuracy"],
        "student_accuracy_after": s_after["accuracy"],
        "kl_before": s_before["kl_mean"],
        "kl_after": s_after["kl_mean"],
        "kl_std_before": s_before["kl_std"],
        "kl_std_after": s_after["kl_std"],
        "constraint_satisfaction_before": s_before["constraint_satisfaction"],
        "constraint_satisfaction_after": s_after["constraint_satisfaction"],
        "num_test": num_test,
        "train_steps": result["steps"],
        "train_seconds": train_seconds,
        "accuracy_curve": evals,
        "wall_seconds": time.time() - t0,
        "plot": png.name,
        "teacher": teacher_path,
        "student": student_path,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(format_table(summary))
    print(f"[demo] wrote {out / 'summary.json'}, {png}, per-example evaluations and {out / 'gkd'}")
    return summary


def format_table(s: dict) -> str:
    rows = [("teacher", s["teacher_accuracy"], None),
            ("student before", s["student_accuracy_before"], s["kl_before"]),
            ("student after GKD", s["student_accuracy_after"], s["kl_after"])]
    lines = [f"{'model':<20} {'accuracy':>9} {'KL(student||teacher)':>22}", "-" * 53]
    for name, acc, kl in rows:
        lines.append(f"{name:<20} {100 * acc:>8.1f}% {'' if kl is None else f'{kl:.3f}':>22}")
    lines.append(f"(held-out problems: {s['num_test']}; wall clock {s['wall_seconds']:.0f} s)")
    return "\n".join(lines)
