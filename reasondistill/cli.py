"""The ``reasondistill`` command.

    reasondistill demo [--output-dir DIR]
    reasondistill train METHOD [--config FILE.yaml] [key=value ...]     (--list-keys shows every key)
    reasondistill eval --model PATH (--benchmark NAME | --data FILE --question-field F --answer-field G)
                       [--limit N] [--samples K] [--teacher PATH --kl-budget D]
    reasondistill eval pairwise --a A/eval_examples.jsonl --b B/eval_examples.jsonl [--judge rule|URL|PATH]
    reasondistill compare CONFIG.yaml
    reasondistill task build [--out DIR] [--teacher-steps N] [--student-steps N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.output_dir, num_test=args.num_test, max_steps=args.max_steps, progress=not args.no_progress)
    return 0


def _cmd_train(args) -> int:
    from .config import build_config, describe
    from .engine import train
    from .methods import get_method

    method = get_method(args.method)
    if args.list_keys:
        print(f"{args.method} config keys:\n{describe(method.Config)}")
        return 0
    cfg = build_config(method.Config, args.config, args.overrides)
    result = train(method, cfg)
    import torch.distributed as dist

    if dist.is_initialized():  # processes leave together (one exiting early makes the other abort)
        dist.barrier()
        dist.destroy_process_group()
    if result["context"].accelerator.is_main_process:
        print(json.dumps({k: v for k, v in result.items() if k != "context"}, indent=2))
    return 0


def _cmd_eval(args) -> int:
    if args.mode == "pairwise":
        return _cmd_eval_pairwise(args)
    if not args.model:
        raise SystemExit("eval: --model is required")
    import torch

    from .data.benchmarks import load_jsonl
    from .engine import resolve_model
    from .eval.math_eval import eval_records, evaluate, write_results
    from .models import assert_compatible, load_model, load_tokenizer

    if bool(args.benchmark) == bool(args.data):
        raise SystemExit("eval: give exactly one of --benchmark NAME or --data FILE")
    if args.benchmark:
        records = eval_records(args.benchmark, args.data_dir, limit=args.limit, seed=args.seed)
    else:
        if not args.question_field or not args.answer_field:
            raise SystemExit("eval --data needs --question-field and --answer-field")
        records = load_jsonl(args.data, args.question_field, args.answer_field, limit=args.limit)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    model_path = resolve_model(args.model)
    model = load_model(model_path, dtype=args.dtype, device=args.device)
    tok = load_tokenizer(model_path)
    teacher, shared = None, None
    if args.teacher:
        teacher_path = resolve_model(args.teacher)
        teacher = load_model(teacher_path, dtype=args.dtype, device=args.device)
        report = assert_compatible(tok, load_tokenizer(teacher_path), model.get_input_embeddings().weight.shape[0],
                                   teacher.get_input_embeddings().weight.shape[0])
        shared = report.shared_vocab
    torch.manual_seed(args.seed)
    rows, summary = evaluate(model, tok, records, samples=args.samples, temperature=args.temperature,
                             max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, teacher=teacher,
                             kl_budget=args.kl_budget, shared_vocab=shared, seed=args.seed, progress=True,
                             system=args.system)
    summary.update({"model": args.model, "teacher": args.teacher,
                    "benchmark": args.benchmark or str(args.data)})
    per, summ = write_results(args.output_dir, rows, summary)
    print(json.dumps(summary, indent=2))
    print(f"wrote {per} and {summ}", file=sys.stderr)
    return 0


def _cmd_eval_pairwise(args) -> int:
    from pathlib import Path

    from .eval.pairwise import compare_pair, load_template, make_judge, read_rows

    if not (args.a and args.b):
        raise SystemExit("eval pairwise: give --a and --b (per-example JSONL files written by `reasondistill eval`)")
    judge = make_judge(args.judge, model=args.judge_model) if args.judge.startswith(("http://", "https://", "rule")) \
        else make_judge(args.judge, device="cuda" if args.device == "cuda" else "cpu")
    summary, records = compare_pair(judge, read_rows(args.a), read_rows(args.b), load_template(args.judge_template))
    summary.update({"a": args.a, "b": args.b})
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "pairwise_verdicts.jsonl").open("w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    (out / "pairwise_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    if summary["unparseable_verdicts"]:
        print(f"note: {summary['unparseable_verdicts']} verdicts could not be parsed (counted, not fatal)", file=sys.stderr)
    return 0


def _cmd_compare(args) -> int:
    from .report.compare import run_compare

    run_compare(args.config, progress=not args.no_progress)
    return 0


def _cmd_task(args) -> int:
    from .tasks.build import build_assets

    if args.action != "build":
        raise SystemExit(f"unknown task action {args.action!r}; valid: build")
    build_assets(args.out, teacher_steps=args.teacher_steps, student_steps=args.student_steps)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reasondistill", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="distill the embedded arithmetic student on-policy, end to end")
    d.add_argument("--output-dir", default="runs/demo")
    d.add_argument("--num-test", type=int, default=400, help="held-out problems to evaluate on")
    d.add_argument("--max-steps", type=int, default=None, help="override the GKD step budget")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(func=_cmd_demo)

    t = sub.add_parser("train", help="train with a method: sft, kd, gkd, grpo, cmdp, gkd_rl, gkd_grpo, minillm")
    t.add_argument("method")
    t.add_argument("--config", default=None, help="YAML file of key: value")
    t.add_argument("--list-keys", action="store_true", help="list every config key with its documentation")
    t.add_argument("overrides", nargs="*", help="key=value overrides")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("eval", help="evaluate a model on a benchmark (accuracy, and KL to a teacher); "
                                    "`eval pairwise` judges two answer sets (RWR / RLR)")
    e.add_argument("mode", nargs="?", default="math", choices=["math", "pairwise"],
                   help="math (default): accuracy, KL, CS; pairwise: reasoning judge on two eval outputs")
    e.add_argument("--model", default=None, help="model folder, hub name or embedded:student")
    e.add_argument("--benchmark", default=None, help="gsm8k, math500, ..., or arith (embedded test split)")
    e.add_argument("--data", default=None, help="any JSONL file")
    e.add_argument("--question-field", default=None)
    e.add_argument("--answer-field", default=None)
    e.add_argument("--data-dir", default=None, help="benchmark folder (else $REASONDISTILL_DATA_DIR)")
    e.add_argument("--limit", type=int, default=None)
    e.add_argument("--samples", type=int, default=1, help="k answers per question: avg@k and pass@k")
    e.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (with --samples 1)")
    e.add_argument("--max-new-tokens", type=int, default=512)
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--teacher", default=None, help="report per-example KL(student||teacher) and CS")
    e.add_argument("--kl-budget", type=float, default=0.35, help="d for constraint satisfaction")
    e.add_argument("--dtype", default="float32")
    e.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    e.add_argument("--system", default=None, help="system prompt for every question (e.g. answer format)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--output-dir", default="runs/eval")
    e.add_argument("--a", default=None, help="pairwise: the first model's eval_examples.jsonl")
    e.add_argument("--b", default=None, help="pairwise: the second model's eval_examples.jsonl")
    e.add_argument("--judge", default="rule", help="pairwise: rule (embedded task step checker), "
                   "http(s)://HOST:PORT/v1 (OpenAI-compatible; key from $OPENAI_API_KEY), or a local model")
    e.add_argument("--judge-model", default=None, help="pairwise: model name at the endpoint")
    e.add_argument("--judge-template", default=None, help="pairwise: prompt template file (default: packaged)")
    e.set_defaults(func=_cmd_eval)

    c = sub.add_parser("compare", help="train several methods on one setup, evaluate, judge, and write the "
                                       "Table-1-style report with Pareto, radar and pairwise plots")
    c.add_argument("config", help="compare YAML (see reasondistill/report/compare.py and configs/)")
    c.add_argument("--no-progress", action="store_true")
    c.set_defaults(func=_cmd_compare)

    k = sub.add_parser("task", help="the embedded task: `task build` trains its teacher and student")
    k.add_argument("action", choices=["build"])
    k.add_argument("--out", default=None, help="default: the package's assets/arith")
    k.add_argument("--teacher-steps", type=int, default=700)
    k.add_argument("--student-steps", type=int, default=190)
    k.set_defaults(func=_cmd_task)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "out", "x") is None:
        from .tasks.arith import ASSETS_DIR

        args.out = ASSETS_DIR
    from .config import ConfigError

    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError) as e:
        # bad input (config, data file and line, tokenizer mismatch, ...): the message, not a traceback
        print(f"reasondistill: error: {e}", file=sys.stderr)
        if os.environ.get("REASONDISTILL_TRACEBACK"):
            raise
        return 2


if __name__ == "__main__":
    sys.exit(main())
