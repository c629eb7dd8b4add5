"""Build the embedded task's assets from scratch: tokenizer, teacher, and a weaker student.

    reasondistill task build [--out DIR] [--teacher-steps N] [--student-steps N]

1. builds the byte-level BPE tokenizer (deterministic);
2. initialises the tiny Qwen2 teacher and trains it with the ``sft`` method on ground-truth
   worked solutions (``running`` style) — the same engine every method uses;
3. initialises the smaller student and gives it a short SFT budget, so it starts clearly
   weaker than the teacher but can already produce the answer format;
4. evaluates both on held-out problems and writes ``task_card.json`` with the accuracies.

The shipped copy in ``reasondistill/assets/arith`` was produced by this command with its
defaults; ``tests/test_arith.py`` checks the shipped teacher's accuracy.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from ..tasks import arith


def _init_folder(size: str, tokenizer, path: Path, seed: int) -> None:
    model = arith.init_model(size, tokenizer, seed=seed)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(str(path))


def train_model(size: str, out: Path, steps: int, lr: float, batch: int, style: str = "running",
                seed: int = 0, progress: bool = True, init_from: str | None = None) -> Path:
    """Train an embedded model with the sft method; returns the final model folder."""
    from ..config import build_config
    from ..engine import train
    from ..methods import sft

    work = Path(tempfile.mkdtemp(prefix=f"arith-{size}-"))
    try:
        tok = arith.build_tokenizer()
        init = Path(init_from) if init_from else work / "init"
        if not init_from:
            _init_folder(size, tok, init, seed)
        cfg = build_config(sft.Config, overrides=dict(
            student=str(init), dataset=f"arith:style={style}", max_steps=steps, learning_rate=lr,
            per_device_train_batch_size=batch, warmup_steps=max(1, steps // 20), lr_scheduler_type="cosine",
            min_lr_ratio=0.05, output_dir=str(work / "run"), report_to="none", progress=progress, seed=seed,
            device="cpu", max_grad_norm=1.0, weight_decay=0.01))
        train(sft, cfg)
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(work / "run" / "final", out)
        shutil.copy(work / "run" / "metrics.jsonl", out / "train_metrics.jsonl")
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def held_out_accuracy(path: Path, n: int = 400, seed: int = 0) -> float:
    from ..eval.math_eval import evaluate
    from ..models import load_model, load_tokenizer

    model, tok = load_model(str(path)), load_tokenizer(str(path))
    _, summary = evaluate(model, tok, arith.generate("test", n, seed=seed), max_new_tokens=64, batch_size=100)
    return summary["accuracy"]


def build_assets(out_dir: str | Path = arith.ASSETS_DIR, teacher_steps: int = 700, student_steps: int = 190,
                 teacher_lr: float = 2e-3, student_lr: float = 3e-3, batch: int = 64, progress: bool = True) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    train_model("teacher", out / "teacher", teacher_steps, teacher_lr, batch, progress=progress, seed=0)
    t1 = time.time()
    train_model("student", out / "student", student_steps, student_lr, batch, progress=progress, seed=1)
    t2 = time.time()
    card = {"teacher_accuracy@400": held_out_accuracy(out / "teacher"),
            "student_accuracy@400": held_out_accuracy(out / "student"),
            "teacher_steps": teacher_steps, "student_steps": student_steps, "teacher_lr": teacher_lr,
            "student_lr": student_lr, "batch": batch, "teacher_train_seconds": round(t1 - t0, 1),
            "student_train_seconds": round(t2 - t1, 1),
            "command": f"reasondistill task build --teacher-steps {teacher_steps} --student-steps {student_steps}"}
    arith.write_task_card(out / "task_card.json", arith.TaskSpec(), "running", card)
    print(json.dumps(card, indent=2))
    return card
