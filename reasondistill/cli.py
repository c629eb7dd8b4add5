"""The ``reasondistill`` command.

    reasondistill demo [--output-dir DIR]
    reasondistill train METHOD [--config FILE.yaml] [key=value ...]     (--list-keys shows every key)
    reasondistill eval --model PATH (--benchmark NAME | --data FILE --question-field F --answer-field G)
                       [--limit N] [--samples K] [--teacher PATH --kl-budget D]
    reasondistill eval --task code --model PATH (--benchmark humaneval | --data FILE.jsonl)
                       [--samples K --temperature T] [--workers N] [--timeout S]
    reasondistill eval --task choice --model PATH (--benchmark mmlu | --data FILE_OR_FOLDER) [--seed S]
    reasondistill eval --task instruct --model PATH (--benchmark alpaca_eval | --data FILE.jsonl)
                       --judge URL --judge-model NAME | --judge PATH   [--limit N]
    reasondistill eval pairwise --a A/eval_examples.jsonl --b B/eval_examples.jsonl [--judge rule|URL|PATH]
    reasondistill report DIR [DIR ...] [--output FILE.md]
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
    if result["context"].accelerator.is_main_process:
        print(json.dumps({k: v for k, v in result.items() if k != "context"}, indent=2))
    leave_distributed()
    return 0


def leave_distributed() -> None:
    """End a multi-process run: every process leaves together (one exiting early makes the other
    abort), then exits without the interpreter's teardown. Tearing down after
    destroy_process_group() aborted a rank with "terminate called without an active exception"
    (a C++ thread destroyed during static destruction) in 4 of 28 two-process runs, 0 of 20 with
    this exit; everything has been written and flushed by then. No-op in a single process."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


_PRESET_FLAGS = ("temperature", "top_p", "samples", "max_new_tokens", "limit", "sample_seed", "system",
                 "question_template")


def _apply_preset(args) -> None:
    """Fill the flags a preset sets and the user left unset (explicit flags win), then the plain defaults."""
    from .eval.selection import get_preset, preset_value

    preset = get_preset(args.preset)
    if preset and preset["task"] != args.task:
        raise SystemExit(f"eval: preset {args.preset} is for --task {preset['task']}, not {args.task}")
    defaults = {"sample_seed": 0}
    for flag in _PRESET_FLAGS:
        if flag == "limit" and args.first is not None:
            continue  # --first replaces the preset's random subsample
        if flag in ("temperature", "top_p") and getattr(args, "scoring", "generate") == "loglik":
            continue  # likelihood scoring samples nothing
        value = preset_value(preset, flag, args.benchmark)
        if value is not None and (getattr(args, flag) is None or getattr(args, flag) == defaults.get(flag)):
            setattr(args, flag, value)
    if preset.get("shuffle") is False:
        args.no_shuffle = True
    args.samples = 1 if args.samples is None else args.samples
    args.max_new_tokens = 512 if args.max_new_tokens is None else args.max_new_tokens


def _cmd_eval(args) -> int:
    if args.mode == "pairwise":
        if args.task != "math":
            raise SystemExit("eval pairwise judges two answer files; --task does not apply to it")
        return _cmd_eval_pairwise(args)
    if bool(args.model) == bool(args.base_url):
        raise SystemExit("eval: give --model PATH (a local model) or --base-url URL --api-model NAME (an endpoint)")
    _apply_preset(args)
    if args.task != "math":
        return _cmd_eval_task(args)
    if args.temperature is None:
        args.temperature = 0.0
    import torch

    from .data.benchmarks import load_jsonl
    from .eval.math_eval import eval_records, evaluate, write_results
    from .eval.selection import select_records
    from .models import assert_compatible, load_model, load_tokenizer, resolve_model

    if bool(args.benchmark) == bool(args.data):
        raise SystemExit("eval: give exactly one of --benchmark NAME or --data FILE")
    if args.benchmark == "arith":  # generated problems: --limit / --first is how many (seeded)
        records, chosen = eval_records("arith", limit=args.limit or args.first, seed=args.seed), {}
    elif args.benchmark:  # --first goes to the loader (its order), --limit subsamples what it read
        records, chosen = select_records(eval_records(args.benchmark, args.data_dir, limit=args.first), args.limit,
                                         args.first, args.sample_seed)
    else:
        if not args.question_field or not args.answer_field:
            raise SystemExit("eval --data needs --question-field and --answer-field")
        records, chosen = select_records(load_jsonl(args.data, args.question_field, args.answer_field,
                                                    limit=args.first), args.limit, args.first, args.sample_seed)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    model, tok = _eval_model(args)
    teacher, shared = None, None
    if args.teacher:
        teacher_path = resolve_model(args.teacher)
        teacher = load_model(teacher_path, dtype=args.dtype, device=args.device)
        report = assert_compatible(tok, load_tokenizer(teacher_path), model.get_input_embeddings().weight.shape[0],
                                   teacher.get_input_embeddings().weight.shape[0], mode=args.tokenizer_compat)
        shared = report.shared_vocab
    torch.manual_seed(args.seed)
    rows, summary = evaluate(model, tok, records, samples=args.samples, temperature=args.temperature,
                             top_p=args.top_p or 1.0,
                             max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, teacher=teacher,
                             kl_budget=args.kl_budget, shared_vocab=shared, seed=args.seed, progress=True,
                             system=args.system, question_template=args.question_template)
    summary.update({"model": args.model or f"{args.api_model} at {args.base_url}", "teacher": args.teacher,
                    "preset": args.preset, "benchmark": args.benchmark or str(args.data), "selection": chosen,
                    "temperature": args.temperature, "top_p": args.top_p or 1.0, "system": args.system,
                    "question_template": args.question_template})
    per, summ = write_results(args.output_dir, rows, summary)
    print(json.dumps(summary, indent=2))
    print(f"wrote {per} and {summ}", file=sys.stderr)
    return 0


def _eval_model(args):
    """(model, tokenizer): a local model, or an OpenAI-compatible endpoint (tokenizer None)."""
    if args.base_url:
        from .eval.api_model import APIModel

        if not args.api_model:
            raise SystemExit("eval --base-url needs --api-model NAME (the model id at the endpoint)")
        return APIModel(args.base_url, args.api_model, api_key_env=args.api_key_env, workers=args.workers or 4,
                        timeout=args.api_timeout), None
    from .models import load_model, load_tokenizer, resolve_model

    path = resolve_model(args.model)
    return load_model(path, dtype=args.dtype, device=args.device), load_tokenizer(path)


def _cmd_eval_task(args) -> int:
    """``eval --task code|choice|instruct``: records, (judge), model, run, write, print."""
    import torch

    from .eval.math_eval import write_results
    from .eval.task_runner import load_task_records, run_task

    task = args.task
    if args.base_url and task == "code" and not args.chat:
        args.chat = True  # an endpoint answers conversations: the code prompt goes in as a chat instruction
        print("eval --task code --base-url: asking through the chat instruction (--chat)", file=sys.stderr)
    if args.teacher or args.question_field or args.answer_field:
        raise SystemExit(f"eval --task {task}: --teacher, --question-field and --answer-field are for --task math")
    if args.samples != 1 and task != "code":
        raise SystemExit(f"eval --task {task}: --samples is for --task math and code")
    if bool(args.benchmark) == bool(args.data):
        raise SystemExit(f"eval --task {task}: give exactly one of --benchmark NAME or --data FILE")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    judge = template = None
    if task == "instruct":
        from .eval.instruct_eval import load_instruct_template, make_instruct_judge

        if not args.judge:
            raise SystemExit("eval --task instruct needs a judge: --judge http(s)://HOST:PORT/v1 --judge-model NAME, "
                             "or --judge PATH (a local model)")
        template = load_instruct_template(args.judge_template)
        judge = make_instruct_judge(args.judge, args.judge_model, max_tokens=args.judge_max_tokens,
                                    workers=args.workers or 4, device=args.device)
    from .eval.selection import select_records

    source = args.benchmark or args.data
    # --first goes to the loader (multiple choice: spread over the subject files), --limit subsamples
    records, chosen = select_records(load_task_records(task, source, args.data_dir, limit=args.first), args.limit,
                                     args.first, args.sample_seed)
    if not records:
        raise ValueError(f"eval --task {task}: {source} holds no records")
    model, tok = _eval_model(args)
    torch.manual_seed(args.seed)
    rows, summary = run_task(task, model, tok, records, benchmark=str(source), judge=judge, template=template,
                             samples=args.samples, temperature=args.temperature, top_p=args.top_p,
                             max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                             workers=args.workers or 2, timeout=args.timeout, seed=args.seed,
                             shuffle=not args.no_shuffle, chat=args.chat, system=args.system, progress=True,
                             scoring=args.scoring, loglik_target=args.loglik_target)
    summary.update({"model": args.model or f"{args.api_model} at {args.base_url}", "limit": args.limit,
                    "preset": args.preset, "selection": chosen})
    per, summ = write_results(args.output_dir, rows, summary, prefix=task)
    print(json.dumps(summary, indent=2))
    print(f"wrote {per} and {summ}", file=sys.stderr)
    if summary.get("unparseable_verdicts"):
        print(f"note: {summary['unparseable_verdicts']} of {summary['num_verdicts']} verdicts could not be parsed "
              f"({summary['failed_judge_calls']} failed judge calls); counted, left out of the win rate",
              file=sys.stderr)
    return 0


def _cmd_report(args) -> int:
    from .report.summaries import summary_report

    text = summary_report(args.dirs, output=args.output)
    print(text)
    if args.output:
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _cmd_eval_pairwise(args) -> int:
    from pathlib import Path

    from .eval.pairwise import compare_pair, load_template, make_judge, read_rows

    if not (args.a and args.b):
        raise SystemExit("eval pairwise: give --a and --b (per-example JSONL files written by `reasondistill eval`)")
    spec = args.judge or "rule"
    judge = make_judge(spec, model=args.judge_model) if spec.startswith(("http://", "https://", "rule")) \
        else make_judge(spec, device="cuda" if args.device == "cuda" else "cpu")
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
    from .pipelines.compare import run_compare

    run_compare(args.config, progress=not args.no_progress)
    return 0


def _cmd_task(args) -> int:
    from .pipelines.build_task import build_assets

    if args.action != "build":
        raise SystemExit(f"unknown task action {args.action!r}; valid: build")
    if args.scenario:
        from .pipelines.build_task import build_scenario

        build_scenario(args.scenario, args.out)
        return 0
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

    from .methods import METHODS

    t = sub.add_parser("train", help=f"train with a method: {', '.join(METHODS)}")
    t.add_argument("method", choices=METHODS)
    t.add_argument("--config", default=None, help="YAML file of key: value")
    t.add_argument("--list-keys", action="store_true", help="list every config key with its documentation")
    t.add_argument("overrides", nargs="*", help="key=value overrides")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("eval", help="evaluate a model: math accuracy and KL to a teacher (default), code pass@k, "
                                    "multiple choice, instruction-following win rate; `eval pairwise` judges two "
                                    "answer sets (RWR / RLR)")
    e.add_argument("mode", nargs="?", default="math", choices=["math", "pairwise"],
                   help="math (default): evaluate a model (see --task); pairwise: reasoning judge on two eval outputs")
    e.add_argument("--task", default="math", choices=["math", "code", "choice", "instruct"],
                   help="math (default): boxed-answer accuracy, KL, CS; code: pass@1/pass@k by sandboxed execution; "
                        "choice: multiple choice, options shuffled with --seed; instruct: win rate against reference "
                        "answers by a pairwise --judge, both orders. Writes <task>_examples.jsonl and "
                        "<task>_summary.json (math: eval_*)")
    e.add_argument("--model", default=None, help="model folder, hub name or embedded:student")
    e.add_argument("--base-url", default=None, help="instead of --model: an OpenAI-compatible endpoint "
                   "(http(s)://HOST:PORT/v1) as the model under evaluation (every task; choice: --scoring generate)")
    e.add_argument("--api-model", default=None, help="with --base-url: the model id at the endpoint")
    e.add_argument("--api-key-env", default="OPENAI_API_KEY", help="with --base-url: the environment variable "
                   "holding the key (none sent when unset)")
    e.add_argument("--api-timeout", type=float, default=120.0, help="with --base-url: seconds per read")
    e.add_argument("--benchmark", default=None, help="math: gsm8k, math500, ..., or arith (embedded test split); "
                   "code: humaneval; choice: mmlu (the data dir's mmlu/ folder); instruct: alpaca_eval")
    e.add_argument("--data", default=None, help="any JSONL file (math: with --question-field/--answer-field; code: "
                   "HumanEval schema; choice: a CSV/JSONL file or a folder of them; instruct: instruction, output)")
    e.add_argument("--question-field", default=None)
    e.add_argument("--answer-field", default=None)
    e.add_argument("--data-dir", default=None, help="benchmark folder (else $REASONDISTILL_DATA_DIR)")
    e.add_argument("--limit", type=int, default=None,
                   help="a seeded random subsample of N records (--sample-seed; recorded in the summary)")
    e.add_argument("--first", type=int, default=None, help="the first N records instead (the file's order)")
    e.add_argument("--sample-seed", type=int, default=0, help="seed of the --limit subsample")
    e.add_argument("--preset", default=None, help="a paper's evaluation protocol (explicit flags still win): "
                   "pipeline, tgpo, tgpo-choice, vcrd, vcrd-code, vcrd-instruct (see eval/selection.py)")
    e.add_argument("--question-template", default=None,
                   help="math: the user message, with {question} (the pipeline preset uses the paper's Box 6)")
    e.add_argument("--samples", type=int, default=None,
                   help="math, code: k answers per question: avg@k / pass@k (default 1)")
    e.add_argument("--temperature", type=float, default=None,
                   help="0 = greedy (with --samples 1); default 0, instruct 0.8 (the paper's)")
    e.add_argument("--top-p", type=float, default=None, help="nucleus sampling; default 1, instruct 0.95")
    e.add_argument("--max-new-tokens", type=int, default=None, help="default 512")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--teacher", default=None, help="report per-example KL(student||teacher) and CS")
    e.add_argument("--kl-budget", type=float, default=0.35, help="d for constraint satisfaction")
    e.add_argument("--tokenizer-compat", default="strict", choices=["strict", "shared_ids"],
                   help="with --teacher: shared_ids accepts a teacher with the same ids but another template / EOS")
    e.add_argument("--dtype", default="float32")
    e.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    e.add_argument("--system", default=None, help="system prompt for every question (e.g. answer format)")
    e.add_argument("--seed", type=int, default=0, help="sampling seed; choice: also the option shuffle")
    e.add_argument("--no-shuffle", action="store_true", help="choice: keep the options in file order")
    e.add_argument("--scoring", default="generate", choices=["generate", "loglik"],
                   help="choice: generate an answer and read its letter, or loglik: the log-likelihood of each "
                        "option after the prompt (no parsing; lm-evaluation-harness's standard)")
    e.add_argument("--loglik-target", default="letter", choices=["letter", "text"],
                   help="choice --scoring loglik: score each option's letter, or its text (per-character mean)")
    e.add_argument("--workers", type=int, default=None,
                   help="code: programs run at once (default 2); instruct: judge requests at once (default 4)")
    e.add_argument("--timeout", type=float, default=10.0, help="code: seconds per program")
    e.add_argument("--chat", action="store_true", help="code: ask through the chat template instead of letting "
                   "the model continue the raw prompt")
    e.add_argument("--output-dir", default="runs/eval")
    e.add_argument("--a", default=None, help="pairwise: the first model's eval_examples.jsonl")
    e.add_argument("--b", default=None, help="pairwise: the second model's eval_examples.jsonl")
    e.add_argument("--judge", default=None, help="pairwise: rule (default; embedded task step checker), "
                   "http(s)://HOST:PORT/v1 (OpenAI-compatible; key from $OPENAI_API_KEY), or a local model; "
                   "instruct (required): an endpoint or a local model")
    e.add_argument("--judge-model", default=None, help="pairwise, instruct: model name at the endpoint")
    e.add_argument("--judge-template", default=None,
                   help="pairwise, instruct: prompt template file (default: the packaged one)")
    e.add_argument("--judge-max-tokens", type=int, default=None,
                   help="instruct: the judge's reply length (default 1024 at an endpoint, 256 locally)")
    e.set_defaults(func=_cmd_eval)

    r = sub.add_parser("report", help="one Markdown table of every *_summary.json under the given folders")
    r.add_argument("dirs", nargs="+", help="folders searched recursively (eval output dirs, a compare output dir)")
    r.add_argument("--output", default=None, help="also write the table to this .md file")
    r.set_defaults(func=_cmd_report)

    c = sub.add_parser("compare", help="train several methods on one setup, evaluate, judge, and write the "
                                       "Table-1-style report with Pareto, radar and pairwise plots")
    c.add_argument("config", help="compare YAML (see reasondistill/pipelines/compare.py and configs/)")
    c.add_argument("--no-progress", action="store_true")
    c.set_defaults(func=_cmd_compare)

    k = sub.add_parser("task", help="the embedded task: `task build` trains its teacher and student")
    k.add_argument("action", choices=["build"])
    k.add_argument("--out", default=None, help="default: the package's assets/arith")
    k.add_argument("--teacher-steps", type=int, default=700)
    k.add_argument("--student-steps", type=int, default=190)
    k.add_argument("--scenario", default=None, choices=["flawed", "cross"],
                   help="instead: fine-tune the shipped teacher into a scenario teacher (embedded:teacher-flawed, "
                        "embedded:teacher-cross) where imitating the teacher is not solving the task")
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
