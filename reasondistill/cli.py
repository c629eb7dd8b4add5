"""The ``reasondistill`` command.

    reasondistill demo [--output-dir DIR]
    reasondistill train METHOD [--config FILE.yaml] [key=value ...]     (--list-keys shows every key)
    reasondistill eval math --model PATH (--benchmark NAME | --data FILE --question-field F --answer-field G)
                       [--limit N | --first N] [--samples K] [--preset NAME] [--teacher PATH --kl-budget D]
    reasondistill eval code --model PATH (--benchmark humaneval | --data FILE.jsonl)
                       [--samples K --temperature T] [--workers N] [--timeout S] [--chat]
    reasondistill eval choice --model PATH (--benchmark mmlu | --data FILE_OR_FOLDER) [--seed S]
                       [--scoring generate|loglik [--loglik-target letter|text]] [--no-shuffle]
    reasondistill eval instruct --model PATH (--benchmark alpaca_eval | --data FILE.jsonl)
                       --judge URL --judge-model NAME | --judge PATH   [--limit N]
    reasondistill eval pairwise --a A/eval_examples.jsonl --b B/eval_examples.jsonl [--judge rule|URL|PATH]
    reasondistill report DIR [DIR ...] [--output FILE.md]
    reasondistill compare CONFIG.yaml
    reasondistill task build [--out DIR] [--teacher-steps N] [--student-steps N]

Every ``eval`` subcommand has only its own flags (``eval TASK --help``), which are the fields of
its config dataclass (``eval/base.py``'s ``EvalConfig`` and the task's subclass): the same keys
work in ``--config FILE.yaml`` and as ``key=value`` (``eval TASK --list-keys``), with the priority
defaults < YAML < key=value < flags. Any model option also takes ``--base-url URL --api-model NAME``
(an OpenAI-compatible endpoint) instead of ``--model``. The command line from before the
subcommands still works: ``eval --task X ...`` is ``eval X ...``, and ``eval --model ...`` is
``eval math ...``.
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


EVAL_SUBCOMMANDS = ("math", "code", "choice", "instruct", "pairwise")


def _eval_config_class(name: str):
    if name == "pairwise":
        from .eval.pairwise import PairwiseConfig

        return PairwiseConfig
    from .eval.tasks import eval_config_class

    return eval_config_class(name)


def _eval_overrides(args, cls) -> list[str]:
    """``key=value`` from the command line, then the flags given (a flag is its field's key=value)."""
    from dataclasses import fields

    given = [f"{f.name}={getattr(args, f.name)}" for f in fields(cls) if hasattr(args, f.name)]
    return [*args.overrides, *given]


def _build_eval_config(args):
    from .config import build_config

    cls = _eval_config_class(args.eval_task)
    return build_config(cls, args.config, _eval_overrides(args, cls))


def _cmd_eval(args) -> int:
    """``eval math|code|choice|instruct``: the config (defaults, --config YAML, key=value, flags),
    then ``eval.base.run_eval``; the summary goes to stdout."""
    if args.list_keys:
        from .config import describe

        print(f"eval {args.eval_task} config keys:\n{describe(_eval_config_class(args.eval_task))}")
        return 0
    from .eval.base import run_eval

    cfg = _build_eval_config(args)
    if cfg.task == "code" and cfg.base_url:
        print("eval code --base-url: asking through the chat instruction (chat=true)", file=sys.stderr)
    _, summary, (per, summ) = run_eval(cfg)
    print(json.dumps(summary, indent=2))
    print(f"wrote {per} and {summ}", file=sys.stderr)
    if summary.get("unparseable_verdicts"):
        print(f"note: {summary['unparseable_verdicts']} of {summary['num_verdicts']} verdicts could not be parsed "
              f"({summary['failed_judge_calls']} failed judge calls); counted, left out of the win rate",
              file=sys.stderr)
    return 0


def _cmd_report(args) -> int:
    if args.dynamics:
        from .report.dynamics import dynamics_report

        print(dynamics_report(args.dirs, args.dynamics))
        print(f"wrote {args.dynamics} and {os.path.splitext(args.dynamics)[0]}.md", file=sys.stderr)
        return 0
    from .report.summaries import summary_report

    text = summary_report(args.dirs, output=args.output)
    print(text)
    if args.output:
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _cmd_eval_pairwise(args) -> int:
    if args.list_keys:
        from .config import describe

        print(f"eval pairwise config keys:\n{describe(_eval_config_class('pairwise'))}")
        return 0
    from .eval.pairwise import run_pairwise

    summary = run_pairwise(_build_eval_config(args))
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


def _add_config_flags(parser, cls) -> None:
    """One flag per field of the config dataclass ``cls`` (``--max-new-tokens`` for
    ``max_new_tokens``; a boolean field defaulting to true is ``--no-NAME``), its help the field's
    documentation. Flags left out stay out of the namespace, so the config's defaults, YAML and
    key=value apply underneath."""
    import typing
    from dataclasses import MISSING, fields

    from .config import field_doc

    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        tp = hints[f.name]
        base = next((a for a in typing.get_args(tp) if a is not type(None)), tp)
        doc = field_doc(cls, f.name).replace("%", "%%")
        flag = "--" + f.name.replace("_", "-")
        if base is bool:
            if f.default is True:
                parser.add_argument(f"--no-{f.name.replace('_', '-')}", dest=f.name, action="store_false",
                                    default=argparse.SUPPRESS, help=doc)
            else:
                parser.add_argument(flag, dest=f.name, action="store_true", default=argparse.SUPPRESS, help=doc)
            continue
        default = "" if f.default in (MISSING, None) else f" (default {f.default})"
        parser.add_argument(flag, dest=f.name, type=base if base in (int, float) else str,
                            default=argparse.SUPPRESS, metavar=f.name.upper(), help=doc + default)


def _eval_alias(argv: list[str]) -> list[str]:
    """The command line before the eval subcommands, still accepted: ``eval --task X ...`` is
    ``eval X ...`` and ``eval --model ...`` (no task) is ``eval math ...``."""
    if len(argv) < 2 or argv[0] != "eval" or argv[1] in ("-h", "--help"):
        return argv
    rest = list(argv[1:])
    task = None
    for i, a in enumerate(rest):
        if a == "--task" and i + 1 < len(rest):
            task = rest[i + 1]
            del rest[i:i + 2]
            break
        if a.startswith("--task="):
            task = a.split("=", 1)[1]
            del rest[i]
            break
    if rest and rest[0] == "pairwise":
        if task is not None:
            raise SystemExit("eval pairwise judges two answer files; --task does not apply to it")
        return argv
    if rest and rest[0] in EVAL_SUBCOMMANDS:
        if task is None:
            return argv
        rest = rest[1:]  # the old positional mode "math" with a --task
    return ["eval", task or "math", *rest]


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

    e = sub.add_parser("eval", help="evaluate a model: eval math (accuracy, KL to a teacher), code (pass@k), choice "
                                    "(multiple choice), instruct (win rate); eval pairwise judges two answer sets",
                       description="Evaluate a model; each task has its own flags (eval TASK --help), a --config "
                                   "YAML and key=value overrides (eval TASK --list-keys).")
    esub = e.add_subparsers(dest="eval_task", required=True, metavar="{" + ",".join(EVAL_SUBCOMMANDS) + "}")
    helps = {"math": "final-answer accuracy (pass@1, avg@k / pass@k); with --teacher the KL and CS",
             "code": "pass@1 / unbiased pass@k by sandboxed execution (HumanEval, MBPP, a JSONL file)",
             "choice": "multiple choice, options shuffled with --seed, scored by generation or --scoring loglik",
             "instruct": "win rate against reference answers by a pairwise --judge, both orders (AlpacaEval)",
             "pairwise": "judge the reasoning of two eval outputs in both orders (RWR / RLR)"}
    for name in EVAL_SUBCOMMANDS:
        cls = _eval_config_class(name)
        sp = esub.add_parser(name, help=helps[name], description=f"{helps[name]}. Writes "
                             + ("pairwise_verdicts.jsonl and pairwise_summary.json" if name == "pairwise" else
                                f"{cls.task_class.prefix}_examples.jsonl and {cls.task_class.prefix}_summary.json")
                             + " into --output-dir. Priority: defaults < --config < key=value < flags.")
        _add_config_flags(sp, cls)
        sp.add_argument("--config", default=None, help="YAML file of key: value (the same keys)")
        sp.add_argument("--list-keys", action="store_true", help="list every key with its default and documentation")
        sp.add_argument("overrides", nargs="*", help="key=value overrides (after the flags)")
        sp.set_defaults(func=_cmd_eval_pairwise if name == "pairwise" else _cmd_eval)

    r = sub.add_parser("report", help="one Markdown table of every *_summary.json under the given folders")
    r.add_argument("dirs", nargs="+", help="folders searched recursively (eval output dirs, a compare output dir)")
    r.add_argument("--output", default=None, help="also write the table to this .md file")
    r.add_argument("--dynamics", default=None, metavar="PNG",
                   help="instead: the dirs are training runs; draw their training dynamics side by side (reward, "
                        "length, gradient norm, entropy, guidance weight, clip ratio; NAME_seedK folders grouped) "
                        "to PNG, with a table in PNG's .md")
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
    from .pipelines import api_commands, api_pipeline, prepare, teacher_traces

    teacher_traces.add_parser(sub)
    prepare.add_parser(sub)  # the offline rollouts of vcrd, distillm2, seqkd
    api_commands.register(sub)  # bank, generate, judge, filter (the API-teacher pipeline)
    api_pipeline.add_parser(sub)  # reasondistill pipeline CONFIG.yaml: every stage, resumable
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(_eval_alias(list(sys.argv[1:] if argv is None else argv)))
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
