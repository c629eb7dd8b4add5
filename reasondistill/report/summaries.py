"""``reasondistill report DIR [DIR ...]``: one Markdown table of every evaluation summary.

Every ``*_summary.json`` under the given folders (searched recursively) that an evaluation
wrote (``reasondistill eval`` for any ``--task``, the evaluations of ``reasondistill compare``)
becomes one row; the columns are the metrics that at least one of them has, in this order:

- math (constrained_mdp_distillation.md §4.1): FAC (accuracy of the final answer), pass@1,
  pass@k, KL (mean ± std of the per-answer mean KL to the teacher), CS (constraint
  satisfaction);
- code (validity_calibrated_distillation.md §10.3): pass@1, pass@k (unbiased, largest k);
- multiple choice (teacher_guided_policy_optimization.md §4): MC accuracy, unparseable share;
- instruction following (§10.3 / §10.3.1 of the VCRD paper): win rate against the reference
  answers (both orders averaged), unparseable verdicts (of all verdicts).

Rates are in %, KL in nats; "n/a" marks a rate the summary has but could not compute. Other
JSON files named ``*_summary.json`` (``eval pairwise``'s summary, anything unreadable) are
skipped with a note on stderr.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

__all__ = ["find_summaries", "summary_report", "summary_table", "task_of"]


def find_summaries(dirs: list[str | Path]) -> list[Path]:
    """Every ``*_summary.json`` under ``dirs`` (a file given directly counts too), sorted, once."""
    found: list[Path] = []
    for d in map(Path, dirs):
        if d.is_file():
            found.append(d)
        elif d.is_dir():
            found += sorted(d.rglob("*_summary.json"))
        else:
            raise FileNotFoundError(f"report: {d} does not exist")
    seen, out = set(), []
    for p in found:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def task_of(summary: dict) -> str | None:
    """math / code / choice / instruct, or None for a summary that is no evaluation's."""
    if not isinstance(summary, dict):
        return None
    if summary.get("task") in ("math", "code", "choice", "instruct"):
        return summary["task"]
    if "judge" in summary and "a" in summary and "b" in summary:
        return None  # eval pairwise
    if "accuracy" in summary and "num_questions" in summary:
        return "math"  # math summaries carry no task field
    return None


def _pct(x) -> str:
    return "" if x is None else f"{100 * x:.2f}"


def _pass_k(s: dict, task: str) -> str:
    if task == "math" and "pass@k" in s:
        return f"{_pct(s['pass@k'])} (k={s.get('samples', '?')})"
    ks = [int(k[5:]) for k in s if k.startswith("pass@") and k[5:].isdigit() and int(k[5:]) > 1]
    if not ks:
        return ""
    k = max(ks)
    return f"{_pct(s[f'pass@{k}'])} (k={k})"


def _kl(s: dict, task: str) -> str:
    if "kl_mean" not in s:
        return ""
    return f"{s['kl_mean']:.3f} ± {s.get('kl_std', 0.0):.3f}"


def _verdicts(s: dict, task: str) -> str:
    if task != "instruct":
        return ""
    return f"{s.get('unparseable_verdicts', 0)}/{s.get('num_verdicts', 0)}"


def _only(task: str, key: str) -> Callable[[dict, str], str]:
    """The rate ``key`` of ``task``'s summaries; "n/a" when it is there but null (e.g. no
    parseable verdict at all, so no win rate)."""
    def value(s: dict, t: str) -> str:
        if t != task or key not in s:
            return ""
        return "n/a" if s[key] is None else _pct(s[key])
    return value


METRICS: list[tuple[str, Callable[[dict, str], str]]] = [
    ("FAC", _only("math", "accuracy")),
    ("pass@1", lambda s, t: _pct(s.get("pass@1")) if t in ("math", "code") else ""),
    ("pass@k", _pass_k),
    ("KL", _kl),
    ("CS", lambda s, t: _pct(s.get("constraint_satisfaction"))),
    ("MC acc", _only("choice", "accuracy")),
    ("unparseable share", _only("choice", "unparseable_share")),
    ("instruct win", _only("instruct", "win_rate")),
    ("unparseable verdicts", _verdicts),
]
"""(column, value of one summary) for every metric column, in table order."""


def _label(path: Path, root: Path) -> str:
    stem = path.name[: -len("_summary.json")] if path.name.endswith("_summary.json") else path.stem
    try:
        rel = path.parent.relative_to(root)
    except ValueError:
        return str(path.parent / stem)
    return "/".join([root.resolve().name, *rel.parts, stem])


def summary_table(dirs: list[str | Path]) -> list[list[str]]:
    """[header, row, ...]: summary, model, task, benchmark, then the metric columns present."""
    roots = [Path(d) for d in dirs]
    lines = []
    for path in find_summaries(roots):
        try:
            s = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            print(f"report: skipping {path}: {e}", file=sys.stderr)
            continue
        task = task_of(s)
        if task is None:
            print(f"report: skipping {path}: not an evaluation summary", file=sys.stderr)
            continue
        root = next((r for r in roots if r.is_dir() and path.is_relative_to(r)), path.parent)
        ident = [_label(path, root), str(s.get("model") or ""), task, str(s.get("benchmark") or "")]
        lines.append((ident, [fn(s, task) for _, fn in METRICS]))
    if not lines:
        raise FileNotFoundError(f"report: no evaluation *_summary.json under {', '.join(map(str, dirs))}")
    keep = [i for i in range(len(METRICS)) if any(vals[i] for _, vals in lines)]
    header = ["summary", "model", "task", "benchmark"] + [METRICS[i][0] for i in keep]
    return [header] + [ident + [vals[i] for i in keep] for ident, vals in lines]


def summary_report(dirs: list[str | Path], output: str | Path | None = None) -> str:
    """The Markdown table (with a note on units); written to ``output`` when given."""
    rows = summary_table(dirs)
    md = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    md += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows[1:]]
    text = "\n".join(md) + ("\n\nRates in %; KL = mean per-token KL(student || teacher) per answer, mean ± std "
                            "over answers, in nats; pass@k unbiased at the largest k sampled; instruct win = "
                            "win rate against the reference answers, both orders averaged, ties half, "
                            "unparseable verdicts left out.\n")
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(text)
    return text
