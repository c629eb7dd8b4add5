"""The API-teacher pipeline's first stages as subcommands: ``bank``, ``generate``, ``judge``, ``filter``.

``register(subparsers)`` adds them to an ``argparse`` sub-parser set and sets ``func`` on each,
so ``args.func(args)`` runs the stage and returns its exit status (0: done; 1: some item still
without a result, the next run retries it; 2: bad input; 130: interrupted). The same commands
run without the main CLI as ``python -m reasondistill.pipelines.api_commands COMMAND ...``.

Typical use (the paper's §3.1-3.2)::

    reasondistill bank --input numina:numina/*.parquet --input jeebench:jeebench/dataset.json \\
        --input gsm8k:gsm8k_train.jsonl --per-source numina=3000 --per-source gsm8k=1000 \\
        --stratify-field source --total 3000 --output bank.jsonl
    OPENROUTER_API_KEY=... reasondistill generate --bank bank.jsonl --output traces_gpt41.jsonl \\
        --base-url https://openrouter.ai/api/v1 --model openai/gpt-4.1 --api-key-env OPENROUTER_API_KEY
    reasondistill judge --traces traces_gpt41.jsonl --output verdicts_gpt41.jsonl \\
        --base-url https://openrouter.ai/api/v1 --model google/gemini-2.5-pro --api-key-env OPENROUTER_API_KEY
    reasondistill filter --verdicts verdicts_gpt41.jsonl --output sft_gpt41.jsonl -n 1000

``--stratify-field`` applies to both the per-source caps and ``--total``; to stratify only
NuminaMath's cap by its sub-source, build in two steps or leave it out of ``--total``'s run.
"""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["register", "main"]


class _InputAction(argparse.Action):
    """``--input SPEC`` starts a new input; the per-input options after it modify that input."""

    def __call__(self, parser, namespace, values, option_string=None):
        inputs = getattr(namespace, "inputs", None) or []
        inputs.append({"spec": values, "fields": {}, "where": [], "meta": None, "name": None, "split": None,
                       "config": None})
        namespace.inputs = inputs


class _PerInputAction(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        inputs = getattr(namespace, "inputs", None)
        if not inputs:
            parser.error(f"{option_string} applies to the --input before it; give --input first")
        cur = inputs[-1]
        if self.dest == "field":
            key, sep, col = values.partition("=")
            if not sep or key not in ("question", "final_answer", "reasoning", "id") or not col:
                parser.error(f"{option_string} {values!r}: expected question=COLUMN, final_answer=COLUMN, "
                             f"reasoning=COLUMN or id=COLUMN")
            cur["fields"][key] = col
        elif self.dest == "where":
            if "=" not in values:
                parser.error(f"{option_string} {values!r}: expected COLUMN=V1|V2 or COLUMN!=V")
            cur["where"].append(values)
        elif self.dest == "meta":
            cur["meta"] = [c.strip() for c in values.split(",") if c.strip()]
        else:
            cur[self.dest] = values


def _api_flags(p: argparse.ArgumentParser, *, temperature: float, max_tokens: int) -> None:
    p.add_argument("--base-url", required=True, help="the OpenAI-compatible API root, http(s)://HOST:PORT/v1")
    p.add_argument("--model", required=True, help="the model id at the endpoint")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the API key (never printed or written; may be unset for "
                        "a 127.0.0.1 / localhost server)")
    p.add_argument("--template", default=None, help="prompt template file (default: the paper's box, packaged)")
    p.add_argument("--temperature", type=float, default=temperature)
    p.add_argument("--max-tokens", type=int, default=max_tokens)
    p.add_argument("--timeout", type=float, default=360.0, help="seconds per attempt (connect, and each read)")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight at most")
    p.add_argument("--max-retries", type=int, default=5,
                   help="retries per item after the first attempt (429, 5xx, timeouts, cut or unusable bodies)")
    p.add_argument("--rpm", type=float, default=None, help="at most this many requests per minute")
    p.add_argument("--tpm", type=float, default=None,
                   help="at most this many tokens per minute (a request counts prompt chars/4 + --max-tokens "
                        "until its usage is known)")
    p.add_argument("--limit", type=int, default=None, help="only the first N items of the input file")
    p.add_argument("--extra-body", default=None, help="JSON object of extra request fields (provider options)")
    p.add_argument("--fsync", action="store_true", help="fsync after every line (survives a power cut)")
    p.add_argument("--no-progress", action="store_true")


def _extra_body(args) -> dict | None:
    if not args.extra_body:
        return None
    try:
        obj = json.loads(args.extra_body)
    except json.JSONDecodeError as e:
        raise ValueError(f"--extra-body is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ValueError("--extra-body must be a JSON object")
    return obj


def _cmd_bank(args) -> int:
    from .bank import Source, build_bank, format_summary, parse_input

    sources = []
    for raw in args.inputs or []:
        src = parse_input(raw["spec"], args.data_dir)
        src.fields, src.where, src.meta, src.name = raw["fields"], raw["where"], raw["meta"], raw["name"]
        src.split = raw["split"] or src.split
        src.config = raw["config"]
        sources.append(src)
    if not sources:
        raise ValueError("bank: give at least one --input")
    summary = build_bank(sources, args.output, per_source=args.per_source, total=args.total,
                         stratify_field=args.stratify_field, seed=args.seed, data_dir=args.data_dir,
                         id_prefix=args.id_prefix)
    print(format_summary(summary))
    return 0


def _cmd_generate(args) -> int:
    from .traces import check_output_path, generate, parse_counts

    check_output_path(args.output, [args.bank])
    report = generate(args.bank, args.output, base_url=args.base_url, model=args.model,
                      api_key_env=args.api_key_env, template=args.template, temperature=args.temperature,
                      max_tokens=args.max_tokens, top_p=args.top_p, seed=args.seed, timeout=args.timeout,
                      concurrency=args.concurrency, max_retries=args.max_retries, rpm=args.rpm, tpm=args.tpm,
                      limit=args.limit, system=args.system, extra_body=_extra_body(args),
                      progress=not args.no_progress, fsync=args.fsync)
    print(report.line())
    pc = parse_counts(args.output)
    print(f"generate: answers found by tag {pc['tag']}, open tag {pc['open_tag']}, last line {pc['last_line']}; "
          f"parse failures {pc['parse_error']} (recorded, not judged)")
    return report.exit_code


def _cmd_judge(args) -> int:
    from .judging import judge
    from .traces import check_output_path

    check_output_path(args.output, [args.traces])
    report, info = judge(args.traces, args.output, base_url=args.base_url, model=args.model,
                         api_key_env=args.api_key_env, template=args.template, temperature=args.temperature,
                         max_tokens=args.max_tokens, timeout=args.timeout, concurrency=args.concurrency,
                         max_retries=args.max_retries, rpm=args.rpm, tpm=args.tpm, limit=args.limit,
                         json_mode=args.json_mode, extra_body=_extra_body(args), progress=not args.no_progress,
                         fsync=args.fsync)
    print(report.line())
    print(f"judge: {info['traces']} traces read, {info['unparsed']} skipped (no parsed answer), "
          f"{info['trace_errors']} bank ids with only generate errors")
    return report.exit_code


def _cmd_filter(args) -> int:
    from .judging import filter_verdicts
    from .traces import check_output_path

    check_output_path(args.output, [args.verdicts])
    s = filter_verdicts(args.verdicts, args.output, min_correct=args.min_correct, min_quality=args.min_quality,
                        n=args.n, stratify_field=args.stratify_field, seed=args.seed)
    per = ", ".join(f"{src} {k} -> {w}" for src, (k, w) in s["by_source"].items())
    print(f"filter: {s['verdicts']} verdicts, {s['kept']} with is_correct >= {s['min_correct']} and "
          f"reasoning_quality >= {s['min_quality']}, {s['written']} written to {s['output']} ({per})")
    return 0


def register(subparsers) -> None:
    """Add ``bank``, ``generate``, ``judge`` and ``filter`` to ``subparsers`` (from
    ``ArgumentParser.add_subparsers``), each with ``func`` set."""
    b = subparsers.add_parser(
        "bank", help="standardise math sources into one question bank (ids, dedupe, stratified sampling)",
        description="Per-input options (--name, --field, --where, --meta, --split, --config) apply to the --input "
                    "before them. See reasondistill/pipelines/bank.py for the adapters.")
    b.add_argument("--input", action=_InputAction, dest="inputs", metavar="SOURCE:PATH", required=True,
                   help="gsm8k:FILE, numina:FILE, math:FILE, jeebench:FILE, jsonl:/json:/parquet:FILE, hub:ID_OR_FOLDER, "
                        "or a benchmark name (gsm8k_train, math500, ...; from --data-dir)")
    b.add_argument("--name", action=_PerInputAction, help="the bank's source name for this input")
    b.add_argument("--field", action=_PerInputAction, metavar="KEY=COLUMN",
                   help="map a column: question=, final_answer=, reasoning=, id= (repeatable)")
    b.add_argument("--where", action=_PerInputAction, metavar="COLUMN=V1|V2",
                   help="keep rows whose column is one of the values (COLUMN!=V: is not); repeatable, all must hold")
    b.add_argument("--meta", action=_PerInputAction, metavar="COL,COL",
                   help="columns kept in meta ('*': every unmapped column)")
    b.add_argument("--split", action=_PerInputAction, help="hub: the split (default train)")
    b.add_argument("--config", action=_PerInputAction, help="hub: the dataset config")
    b.add_argument("--output", required=True)
    b.add_argument("--per-source", action="append", default=None, metavar="N|SOURCE=N",
                   help="cap a source (or every source) at N, a seeded sample; repeatable")
    b.add_argument("--total", type=int, default=None, help="stratify the bank by source down to N")
    b.add_argument("--stratify-field", default=None, help="also stratify by this meta field (e.g. numina's source)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--data-dir", default=None, help="benchmark folder for benchmark names "
                                                    "(else $REASONDISTILL_DATA_DIR)")
    b.add_argument("--id-prefix", default="math-q-")
    b.set_defaults(func=_cmd_bank)

    g = subparsers.add_parser("generate", help="teacher traces for a bank over an OpenAI-compatible API "
                                               "(resumable, exactly once)")
    g.add_argument("--bank", required=True, help="BANK.jsonl from `bank`")
    g.add_argument("--output", required=True, help="TRACES.jsonl (appended to; a rerun skips done problems)")
    _api_flags(g, temperature=0.2, max_tokens=8192)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--seed", type=int, default=None, help="sent as the request's seed (where the server honours it)")
    g.add_argument("--system", default=None, help="a system message before the prompt")
    g.set_defaults(func=_cmd_generate)

    j = subparsers.add_parser("judge", help="score traces with an LLM judge (Box 2; resumable, exactly once)")
    j.add_argument("--traces", required=True, help="TRACES.jsonl from `generate`")
    j.add_argument("--output", required=True, help="VERDICTS.jsonl (appended to)")
    _api_flags(j, temperature=0.0, max_tokens=1024)
    j.add_argument("--json-mode", action="store_true", help='send response_format={"type": "json_object"}')
    j.set_defaults(func=_cmd_judge)

    f = subparsers.add_parser("filter", help="keep the perfect verdicts, stratified by source down to N")
    f.add_argument("--verdicts", required=True, help="VERDICTS.jsonl from `judge`")
    f.add_argument("--output", required=True)
    f.add_argument("--min-correct", type=int, default=1, help="keep is_correct >= this (paper: 1)")
    f.add_argument("--min-quality", type=int, default=10, help="keep reasoning_quality >= this (paper: 10)")
    f.add_argument("-n", "--n", type=int, default=None, help="stratify down to N (paper: 1000); default all")
    f.add_argument("--stratify-field", default=None, help="also stratify by this meta field")
    f.add_argument("--seed", type=int, default=0)
    f.set_defaults(func=_cmd_filter)


def main(argv: list[str] | None = None) -> int:
    """``python -m reasondistill.pipelines.api_commands COMMAND ...`` (what the main CLI will run)."""
    from ..data.records import DataError

    p = argparse.ArgumentParser(prog="reasondistill", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    register(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    try:
        return args.func(args)
    except (DataError, ValueError, FileNotFoundError) as e:
        print(f"reasondistill: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
