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


# --------------------------------------------------------------------------------------
# scenarios where the teacher is not the answer (`reasondistill task build --scenario NAME`)
# --------------------------------------------------------------------------------------
CROSS_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}\n"
                  "{% elif m['role'] == 'user' %}### Problem\n{{ m['content'] }}\n"
                  "{% else %}### Solution\n{{ m['content'] }}<|endoftext|>\n{% endif %}{% endfor %}"
                  "{% if add_generation_prompt %}### Solution\n{% endif %}")
"""The cross-family teacher's prompt format: another chat template and another stop token
(``<|endoftext|>``) over the same token ids, like a Qwen3 teacher beside a Qwen2.5-Math student."""

SCENARIOS = {
    "flawed": dict(folder="teacher-flawed", style="sign_loss", steps=150, lr=5e-4,
                   doc="the shipped teacher fine-tuned on sign-loss solutions: right except where a "
                       "subtraction's result is -3 or below (its sign is dropped and the chain goes on)"),
    "cross": dict(folder="teacher-cross", style="grouped", steps=900, lr=1e-3,
                  doc="the shipped teacher fine-tuned to write grouped sums under another prompt format "
                      "and stop token, sharing token ids with the student"),
}


def flaw_consistency(path: Path, n: int = 400, seed: int = 0) -> float:
    """Share of held-out problems whose greedy answer is the sign-loss chain's answer."""
    from ..eval.math_eval import evaluate
    from ..models import load_model, load_tokenizer
    from ..rewards import extract_answer

    test = arith.generate("test", n, seed=seed)
    model, tok = load_model(str(path)), load_tokenizer(str(path))
    rows, _ = evaluate(model, tok, test, max_new_tokens=64, batch_size=100)
    flawed = [arith.sign_loss_answer(r["terms"], r["ops"]) for r in test]
    return sum(extract_answer(row["output"]) == f for row, f in zip(rows, flawed)) / n


def build_scenario(name: str, out_dir: str | Path = arith.ASSETS_DIR, progress: bool = True) -> dict:
    """Fine-tune the shipped teacher into a scenario teacher (``SCENARIOS``), write it to
    ``out_dir/<folder>`` with a ``scenario_card.json`` of its measured accuracy."""
    from ..models import load_model, load_tokenizer

    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}; valid: {', '.join(SCENARIOS)}")
    sc, out = SCENARIOS[name], Path(out_dir)
    base = arith.ASSETS_DIR / "teacher"
    work = Path(tempfile.mkdtemp(prefix=f"arith-{name}-"))
    try:
        init = base
        if name == "cross":  # the same weights and ids, another template and stop token
            tok = load_tokenizer(str(base))
            tok.eos_token, tok.chat_template = "<|endoftext|>", CROSS_TEMPLATE
            model = load_model(str(base))
            model.config.eos_token_id = model.generation_config.eos_token_id = tok.eos_token_id
            init = work / "init"
            model.save_pretrained(init, safe_serialization=True)
            tok.save_pretrained(str(init))
        t0 = time.time()
        train_model("teacher", out / sc["folder"], sc["steps"], sc["lr"], 64, style=sc["style"], seed=2,
                    progress=progress, init_from=str(init))
        card = {"scenario": name, "doc": sc["doc"], "steps": sc["steps"], "lr": sc["lr"], "style": sc["style"],
                "train_seconds": round(time.time() - t0, 1), "accuracy@400": held_out_accuracy(out / sc["folder"]),
                "command": f"reasondistill task build --scenario {name}"}
        if name == "flawed":
            card["flaw_consistency@400"] = flaw_consistency(out / sc["folder"])
        (out / sc["folder"] / "scenario_card.json").write_text(json.dumps(card, indent=2) + "\n")
        print(json.dumps(card, indent=2))
        return card
    finally:
        shutil.rmtree(work, ignore_errors=True)
