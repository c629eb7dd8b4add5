"""Where a flawed-teacher comparison gains or loses accuracy: on the problems the teacher's flaw
touches, or on the rest.

    python benchmarks/flaw_breakdown.py runs/cmdp_flawed

Reads every ``<out>/eval/<model>/arith_examples.jsonl`` that ``reasondistill compare`` wrote
and splits the held-out problems by the ``sign_loss`` rule of ``embedded:teacher-flawed`` (a
subtraction whose result is -3 or below loses its minus sign): *touched* problems are those
whose sign-loss chain ends in a wrong answer. For each model (seed folders ``NAME_seedK``
averaged, ± the std over seeds) it prints the accuracy on touched and untouched problems and
the share of touched problems answered with the flaw's answer ("follows the flaw").
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from reasondistill.rewards import extract_answer
from reasondistill.tasks import arith

_EXPR = re.compile(r"What is (\d+)((?:[+-]\d+)+)\?")


def terms_ops(question: str) -> tuple[list[int], list[str]]:
    m = _EXPR.fullmatch(question.strip())
    if m is None:
        raise ValueError(f"not an arith question: {question!r}")
    rest = re.findall(r"([+-])(\d+)", m.group(2))
    return [int(m.group(1))] + [int(t) for _, t in rest], [o for o, _ in rest]


def breakdown(rows: list[dict]) -> dict[str, float]:
    touched = untouched = right_t = right_u = follows = 0
    for r in rows:
        terms, ops = terms_ops(r["question"])
        flawed = arith.sign_loss_answer(terms, ops)
        if flawed != str(arith.evaluate_chain(terms, ops)):
            touched += 1
            right_t += bool(r["correct"])
            follows += extract_answer(r["output"]) == flawed
        else:
            untouched += 1
            right_u += bool(r["correct"])
    return {"touched": touched, "acc_touched": 100 * right_t / max(touched, 1),
            "acc_untouched": 100 * right_u / max(untouched, 1), "follows_flaw": 100 * follows / max(touched, 1)}


def main(out: str) -> None:
    groups: dict[str, list[dict]] = defaultdict(list)
    for path in sorted(Path(out).glob("eval/*/arith_examples.jsonl")):
        name = re.sub(r"_seed\d+$", "", path.parent.name)
        rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        groups[name].append(breakdown(rows))
    if not groups:
        raise SystemExit(f"no eval/*/arith_examples.jsonl under {out}")
    n = next(iter(groups.values()))[0]["touched"]
    print(f"touched problems: {n} (the flaw changes their answer)\n")
    print("| model | seeds | acc. touched | acc. untouched | follows the flaw |")
    print("|---|---|---|---|---|")

    def cell(vals: list[float]) -> str:
        return f"{statistics.mean(vals):.1f}" + (f" ± {statistics.stdev(vals):.1f}" if len(vals) > 1 else "")

    for name, bs in groups.items():
        print(f"| {name} | {len(bs)} | " + " | ".join(cell([b[k] for b in bs])
                                                    for k in ("acc_touched", "acc_untouched", "follows_flaw")) + " |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/cmdp_flawed")
