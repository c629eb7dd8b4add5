"""Worker for the two-process tests: trains sft (or the method named by argv[5], e.g. cmdp) for 3
steps and writes the final model. argv[6:] are extra key=value overrides (e.g. loss_chunk_size=5)."""

import json
import sys
from dataclasses import fields
from pathlib import Path

import torch.distributed as dist

from reasondistill.cli import leave_distributed
from reasondistill.config import build_config
from reasondistill.engine import train
from reasondistill.methods import get_method

tiny, out, name, batch = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
method = get_method(sys.argv[5] if len(sys.argv) > 5 else "sft")
keys = {f.name for f in fields(method.Config)}
extra = dict(teacher=str(tiny / "teacher")) if method.needs_teacher else {}
if "num_generations" in keys:
    extra |= dict(num_generations=2, gradient_accumulation_steps=2)
extra |= dict(a.split("=", 1) for a in sys.argv[6:])
cfg = build_config(method.Config, overrides=dict(
    student=str(tiny / "student"), output_dir=str(out / name), max_steps=3, per_device_train_batch_size=batch,
    dataset="arith:size=64", report_to="none", progress=False, learning_rate=1e-2, max_completion_length=16,
    **extra))  # device=auto
res = train(method, cfg)
acc = res["context"].accelerator
if acc.num_processes > 1:
    ranks = [None] * acc.num_processes
    dist.all_gather_object(ranks, acc.process_index)
    if acc.is_main_process:
        (out / name / "ranks.json").write_text(json.dumps({"world": acc.num_processes, "ranks": ranks}))
leave_distributed()  # what `reasondistill train` does: leave together, skip the interpreter teardown
