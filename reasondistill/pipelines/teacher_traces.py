"""Verified traces of a local teacher: the off-policy data of the TGPO paper's SFT and LUFFY
baselines (§4, B.1: teacher responses "validated using Math-verify"), written once.

    reasondistill teacher-traces --teacher embedded:teacher-cross --dataset arith:size=2000 \\
        --output runs/traces.jsonl [--samples 1] [--temperature 0] [--max-new-tokens 256]

For every training question the teacher answers ``samples`` times (greedy by default) under
its own chat template (or ``--prompt-template``), stopping at its own stop ids; each answer is
graded by the rule-based verifier (``rewards.accuracy_reward``) and the first correct one is
kept. Each output line is ``{"id", "question", "answer", "solution", "teacher"}``: ``solution``
is the teacher's text, so ``reasondistill train sft dataset=TRACES.jsonl`` is the SFT baseline
and ``train luffy traces=TRACES.jsonl`` mixes the same traces into its groups. Questions with
no verified answer are counted, not written. The file is written to ``OUTPUT.partial`` and
renamed at the end, so an interrupted run leaves no half file under the final name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..config import TrainConfig


def write_teacher_traces(teacher: str, dataset: str, output: str | Path, *, samples: int = 1,
                         temperature: float = 0.0, max_new_tokens: int = 256, batch_size: int = 32,
                         prompt_template: str | None = None, limit: int | None = None, seed: int = 0,
                         progress: bool = True) -> dict:
    """Generate, verify and write the traces; returns counts (questions, kept, dropped)."""
    import torch
    from tqdm.auto import tqdm

    from ..data.train import load_records
    from ..models import load_model, load_tokenizer, render_prompt, resolve_model, resolve_prompt_template, stop_ids
    from ..rewards import accuracy_reward
    from ..rollout import generate

    records = load_records(dataset, TrainConfig(seed=seed, dataset=dataset))[: limit or None]
    path = resolve_model(teacher)
    tok, model = load_tokenizer(path), load_model(path).eval()
    template = resolve_prompt_template(prompt_template)
    stops = stop_ids(tok, model)
    gen = torch.Generator().manual_seed(seed)
    out, tmp = Path(output), Path(f"{output}.partial")
    out.parent.mkdir(parents=True, exist_ok=True)
    kept = 0
    with open(tmp, "w", encoding="utf-8") as f, torch.no_grad():
        for start in tqdm(range(0, len(records), batch_size), desc="teacher traces", disable=not progress):
            chunk = records[start:start + batch_size]
            prompts = [render_prompt(tok, r["question"], template=template) for r in chunk]
            roll = generate(model, tok, prompts, num_generations=samples, max_new_tokens=max_new_tokens,
                            temperature=temperature, do_sample=temperature > 0, eos_token_id=stops, generator=gen)
            texts = roll.texts(tok)
            grades = accuracy_reward(texts, answer=[chunk[i]["answer"] for i in roll.group_index.tolist()])
            for i, r in enumerate(chunk):
                ok = [k for k in range(i * samples, (i + 1) * samples) if grades[k] == 1.0 and not roll.truncated[k]]
                if ok:
                    kept += 1
                    f.write(json.dumps({"id": r.get("id", f"{dataset}#{start + i}"), "question": r["question"],
                                        "answer": r["answer"], "solution": texts[ok[0]].strip(),
                                        "teacher": teacher}) + "\n")
    os.replace(tmp, out)
    return {"questions": len(records), "kept": kept, "dropped": len(records) - kept, "output": str(out)}


def add_parser(sub) -> None:
    p = sub.add_parser("teacher-traces", help="verified answers of a local teacher to the training questions "
                                              "(the SFT / LUFFY baselines' data)")
    p.add_argument("--teacher", required=True, help="model folder, hub name or embedded:teacher[-cross|-flawed]")
    p.add_argument("--dataset", required=True, help="training data: arith[:size=N,...], a benchmark name or a JSONL")
    p.add_argument("--output", required=True, help="the JSONL to write")
    p.add_argument("--samples", type=int, default=1, help="answers per question; the first verified one is kept")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--prompt-template", default=None, help="default: the teacher's chat template")
    p.add_argument("--limit", type=int, default=None, help="only the first N questions")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run)


def _run(args) -> int:
    counts = write_teacher_traces(args.teacher, args.dataset, args.output, samples=args.samples,
                                  temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                                  batch_size=args.batch_size, prompt_template=args.prompt_template,
                                  limit=args.limit, seed=args.seed)
    print(json.dumps(counts, indent=2))
    return 0
