"""``reasondistill prepare``: the offline stage of VCRD, DistiLLM-2 and SeqKD (one teacher and
one student rollout per training prompt, written once), loading the models and the dataset by
name; the file format and the writer are ``data/rollouts.py``.

    reasondistill prepare --teacher embedded:teacher-flawed --student embedded:student \\
        --dataset arith:size=2000 --output runs/vcrd/rollouts.jsonl [--max-new-tokens 64] [--temperature 1.0]
"""

from __future__ import annotations

import json

from ..data.rollouts import write_rollouts


def prepare_from_names(teacher: str, student: str, dataset: str, output, *, tokenizer_compat: str = "strict",
                       limit: int | None = None, device: str = "cpu", dtype: str = "float32", **kw) -> dict:
    """Load the models and the dataset by name and :func:`write_rollouts` (the CLI's entry)."""
    from ..config import TrainConfig
    from ..data.train import load_records
    from ..models import assert_compatible, load_model, load_tokenizer, resolve_model

    records = load_records(dataset, TrainConfig(seed=kw.get("seed", 0), dataset=dataset))[: limit or None]
    tok = load_tokenizer(resolve_model(student))
    smodel = load_model(resolve_model(student), dtype=dtype, device=device).eval()
    tmodel = load_model(resolve_model(teacher), dtype=dtype, device=device).eval()
    report = assert_compatible(tok, load_tokenizer(resolve_model(teacher)), smodel.get_input_embeddings().weight.shape[0],
                               tmodel.get_input_embeddings().weight.shape[0], mode=tokenizer_compat,
                               student_model=smodel, teacher_model=tmodel)
    return write_rollouts(records, output, teacher=teacher, student=student, tokenizer=tok, teacher_model=tmodel,
                          student_model=smodel, teacher_stop_ids=report.teacher_stop_ids, **kw)


def add_parser(sub) -> None:
    p = sub.add_parser("prepare", help="write teacher and student rollouts once (the offline stage of vcrd, "
                                       "distillm2 and seqkd)")
    p.add_argument("--teacher", required=True, help="model folder, hub name or embedded:teacher[-cross|-flawed]")
    p.add_argument("--student", required=True, help="model folder, hub name or embedded:student")
    p.add_argument("--dataset", required=True, help="training data: arith[:size=N,...], a benchmark name or a JSONL")
    p.add_argument("--output", required=True, help="the JSONL to write (continued when it exists)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--max-prompt-length", type=int, default=256)
    p.add_argument("--temperature", type=float, default=1.0, help="both models; 0: greedy")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--prompt-template", default=None, help="default: the student's chat template")
    p.add_argument("--tokenizer-compat", default="strict", help="strict | shared_ids (as train's tokenizer_compat)")
    p.add_argument("--limit", type=int, default=None, help="only the first N records")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from ..models import resolve_prompt_template

    counts = prepare_from_names(args.teacher, args.student, args.dataset, args.output,
                                tokenizer_compat=args.tokenizer_compat, limit=args.limit, device=args.device,
                                dtype=args.dtype, prompt_template=resolve_prompt_template(args.prompt_template),
                                max_prompt_length=args.max_prompt_length, max_new_tokens=args.max_new_tokens,
                                temperature=args.temperature, batch_size=args.batch_size, seed=args.seed)
    print(json.dumps(counts, indent=2))
    return 0
