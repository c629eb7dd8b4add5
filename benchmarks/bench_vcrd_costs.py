"""Seconds per training iteration of KD, DistiLLM-2, VCRD (arith judge) and VCRD-Prob, in one run
(validity_calibrated_distillation.md, Table 11), excluding the shared offline stage.

    python benchmarks/bench_vcrd_costs.py                      # ~2-3 min of one core
    python benchmarks/bench_vcrd_costs.py --steps 12 --repeats 3 --batch 32 --threads 2 --output costs.md

As in Table 11 ("all methods use a shared offline data-preparation stage ... the reported times
exclude this shared offline stage"): the teacher and student rollouts are prepared once
(``reasondistill prepare``'s ``prepare_from_names``) into a temporary file that every VCRD-family
run reads (``rollouts=``); KD reads the dataset's worked solutions, as the paper's KD baseline
does. Every method runs through ``engine.train`` on the embedded student and the
``--teacher`` (default embedded:teacher-flawed, configs/vcrd_embedded.yaml's scenario), same
batch of prompts, completion cap, learning rate, fp32, CPU, ``--threads`` threads, no eval, no
saving, no trackers. A step's time is the engine's own ``time/step_s`` (prepare + every loss
and backward + the optimizer step). The first ``--warmup`` steps of every run are dropped; the
methods run ``--repeats`` times interleaved (kd, distillm2, vcrd, vcrd-prob, then the reverse
order, ...) so drift of the machine cancels in the ratios; the table shows the median over all
kept steps and the ratio of medians to KD. DistiLLM-2 and VCRD train on two rollouts per prompt
(teacher and student prefixes), KD on one sequence per prompt: that, not the judge, is most of
their difference to KD here, as in the paper's table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

METHODS = [("KD", "kd", {}), ("DistiLLM-2", "distillm2", {}), ("VCRD (arith judge)", "vcrd", {"judge": "arith"}),
           ("VCRD-Prob", "vcrd", {"judge": "prob"})]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", default="embedded:student")
    ap.add_argument("--teacher", default="embedded:teacher-flawed")
    ap.add_argument("--prompts", type=int, default=256, help="records prepared once (and trained on)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--completion-length", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: a 2-core machine shared with other jobs slows 2 threads many-fold)")
    ap.add_argument("--output", default=None, help="also write the table to this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from reasondistill.config import build_config
    from reasondistill.engine import train
    from reasondistill.methods import get_method
    from reasondistill.pipelines.prepare import prepare_from_names

    dataset = f"arith:size={args.prompts}"
    base = get_method("vcrd").Config()
    with tempfile.TemporaryDirectory() as tmp:
        rollouts = Path(tmp) / "rollouts.jsonl"
        t0 = time.time()
        prepare_from_names(args.teacher, args.student, dataset, rollouts, prompt_template=base.prompt_template,
                           max_prompt_length=base.max_prompt_length, max_new_tokens=args.completion_length,
                           temperature=base.rollout_temperature, seed=base.seed, progress=False)
        offline = time.time() - t0
        times: dict[str, list[float]] = {label: [] for label, _, _ in METHODS}
        for rep in range(args.repeats):
            order = METHODS if rep % 2 == 0 else METHODS[::-1]
            for label, name, extra in order:
                method = get_method(name)
                over = dict(student=args.student, teacher=args.teacher, dataset=dataset, max_steps=args.steps,
                            per_device_train_batch_size=args.batch, max_completion_length=args.completion_length,
                            learning_rate=1e-3, report_to="none", progress=False, device="cpu",
                            save_steps=0, save_final_model=False, overwrite_output_dir=True,
                            output_dir=str(Path(tmp) / f"{name}_{rep}"), **extra)
                if name != "kd":
                    over["rollouts"] = str(rollouts)
                steps: list[float] = []
                train(method, build_config(method.Config, overrides=over),
                      callback=lambda ctx, step, m, steps=steps: steps.append(m["time/step_s"]))
                times[label] += steps[args.warmup:]
                print(f"[bench] repeat {rep + 1}/{args.repeats} {label}: median "
                      f"{statistics.median(steps[args.warmup:]):.3f} s/it", file=sys.stderr, flush=True)
    kd = statistics.median(times["KD"])
    lines = ["| Method | s / iteration (median) | vs KD | steps kept |", "|---|---|---|---|"]
    for label, ts in times.items():
        med = statistics.median(ts)
        lines.append(f"| {label} | {med:.3f} | {med / kd:.2f}x | {len(ts)} |")
    note = (f"\nEmbedded student, teacher {args.teacher}, batch {args.batch} prompts, completions <= "
            f"{args.completion_length} tokens, {args.threads} threads, {args.repeats} interleaved repeats of "
            f"{args.steps} steps ({args.warmup} dropped each). Offline stage (shared, excluded): {offline:.1f} s "
            f"for {args.prompts} prompts.\n")
    table = "\n".join(lines) + "\n" + note
    print(table)
    if args.output:
        Path(args.output).write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
