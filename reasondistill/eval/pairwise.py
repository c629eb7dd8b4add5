"""Pairwise reasoning judge: reasoning win / loss rates (RWR / RLR) of constrained_mdp_distillation.md §4.1.

"To assess the logical validity of the reasoning path beyond the final answer, we use an
LLM-as-a-Judge ... to perform pairwise comparisons between generated solutions. The judge is
provided with the correct final answer to isolate its evaluation to the reasoning process."

For two sets of answers to the same questions (the per-example JSONL that ``reasondistill
eval`` writes, matched by ``id`` and ``sample``), the judge sees the question, the correct
answer and both solutions, rendered with a template file (``templates/pairwise_reasoning.txt``
by default; placeholders ``{question}``, ``{answer}``, ``{solution_a}``, ``{solution_b}``), **in
both orders**, and must end with ``[[A]]``, ``[[B]]`` or ``[[C]]`` (tie). Each order scores the
first model 1 / 0.5 / 0 (win / tie / loss); a question's score is the mean of its parseable
orders, so a judge that always says "A" gives a tie, not a win. A question with score > 0.5
is a win, < 0.5 a loss, = 0.5 a tie. Verdicts that cannot be parsed (or judge calls that fail)
are counted and reported, never raised; a question with no parseable order is left out of the
rates and counted as ``unjudged``.

Judges (``make_judge(spec)``):
- ``rule``: for the embedded arithmetic task, a step checker (``tasks.arith``): a solution is
  *sound* when every ``a±b=c`` line is true, it has at least one, and its boxed answer is the
  correct one; the sounder solution wins (then the larger share of true lines), so the metric
  means something on a CPU;
- ``http(s)://HOST:PORT/v1`` (with ``model=``): any OpenAI-compatible endpoint
  (``api/client.py``: retries, rate limits);
- anything else: a local Hugging Face model folder or hub name (``embedded:teacher`` works),
  greedy decoding through ``rollout.generate``.

The matrix over several models (``pairwise_matrix``) gives W[i][j] = share of questions where
i's reasoning beat j's; RWR_i is the mean of row i over the other models and RLR_i the mean of
column i (the paper's Figure 4: "averaging over columns gives RWR and over rows RLR").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

VERDICTS = ("A", "B", "C")
DEFAULT_TEMPLATE = "pairwise_reasoning.txt"
PLACEHOLDERS = ("{question}", "{answer}", "{solution_a}", "{solution_b}")
FIRST_SCORE = {"A": 1.0, "B": 0.0, "C": 0.5}
"""What a verdict scores for the response shown first (win / loss / tie); the second gets 1 minus it."""
_BRACKET = re.compile(r"\[\[\s*([ABC])\s*\]\]")
_WORDS = re.compile(r"verdict\s*[:\-]?\s*(?:response\s*)?\(?((?-i:[AB]))(?![A-Za-z])\)?\s*(?:wins|is better)?|"
                    r"verdict\s*[:\-]?\s*(?:a\s+)?(tie)\b", re.IGNORECASE)  # the letter is case-sensitive: "a tie" is no A


def load_template(path: str | Path | None = None, default: str = DEFAULT_TEMPLATE,
                  placeholders: tuple[str, ...] = PLACEHOLDERS) -> str:
    """The judge prompt template: a file path, or the packaged ``templates/<default>``; it must
    contain every one of ``placeholders`` (other judges, e.g. ``eval/instruct_eval.py``, pass
    their own file name and placeholders)."""
    if path is None:
        text = resources.files("reasondistill").joinpath("templates", default).read_text()
    else:
        text = Path(path).read_text()
    missing = [k for k in placeholders if k not in text]
    if missing:
        raise ValueError(f"judge template {path or default} lacks the placeholders {missing}")
    return text


def fill(template: str, values: dict[str, object]) -> str:
    """Replace each ``{name}`` of ``values`` literally, in one pass (answers contain braces, so no
    str.format; a placeholder written inside one value is not filled by another)."""
    if not values:
        return template
    pattern = re.compile("|".join(re.escape("{" + name + "}") for name in values))
    return pattern.sub(lambda m: str(values[m.group(0)[1:-1]]), template)


def render(template: str, question: str, answer, solution_a: str, solution_b: str) -> str:
    """The reasoning template filled with one question, its answer and two solutions."""
    return fill(template, {"question": question, "answer": answer, "solution_a": solution_a,
                           "solution_b": solution_b})


def parse_verdict(text) -> str | None:
    """The last ``[[A]]``/``[[B]]``/``[[C]]`` in ``text`` (or "Verdict: A wins" / "Verdict: tie");
    None when there is none or ``text`` is not a string (a failed call)."""
    if not isinstance(text, str):
        return None
    found = _BRACKET.findall(text)
    if found:
        return found[-1]
    words = _WORDS.findall(text)
    if words:
        letter, tie = words[-1]
        return "C" if tie else letter.upper()
    return None


# --------------------------------------------------------------------------------------
# judges: judge(prompts: list[str], items: list[dict]) -> list[str | Exception]
# --------------------------------------------------------------------------------------
class RuleJudge:
    """Step checker for the embedded arithmetic task (no model)."""

    name = "rule"

    @staticmethod
    def soundness(question: str, solution: str, answer) -> tuple[int, float]:
        from ..rewards import is_correct
        from ..tasks.arith import check_solution_steps

        steps = check_solution_steps(question, solution)
        share = sum(steps) / len(steps) if steps else 0.0
        sound = bool(steps) and all(steps) and is_correct(solution, answer)
        return int(sound), share

    def __call__(self, prompts: list[str], items: list[dict]) -> list[str]:
        out = []
        for it in items:
            a = self.soundness(it["question"], it["solution_a"], it["answer"])
            b = self.soundness(it["question"], it["solution_b"], it["answer"])
            v = "A" if a > b else "B" if b > a else "C"
            out.append(f"A: sound={a[0]}, true steps {a[1]:.0%}; B: sound={b[0]}, true steps {b[1]:.0%}.\n[[{v}]]")
        return out


class APIJudge:
    """Any OpenAI-compatible chat endpoint."""

    def __init__(self, base_url: str, model: str, workers: int = 4, max_tokens: int = 1024, **client_kw):
        from ..api.client import ChatClient

        self.client = ChatClient(base_url, model, **client_kw)
        self.workers, self.max_tokens = workers, max_tokens
        self.name = f"{model}@{base_url}"

    def __call__(self, prompts: list[str], items: list[dict]) -> list:
        msgs = [[{"role": "user", "content": p}] for p in prompts]
        return self.client.map_chat(msgs, workers=self.workers, temperature=0.0, max_tokens=self.max_tokens)


class HFJudge:
    """A local Hugging Face causal LM, greedy, through ``rollout.generate``."""

    def __init__(self, path: str, max_new_tokens: int = 256, batch_size: int = 16, device: str = "cpu"):
        from ..models import resolve_model
        from ..models import load_model, load_tokenizer

        p = resolve_model(path)
        self.model, self.tokenizer = load_model(p, device=device), load_tokenizer(p)
        self.max_new_tokens, self.batch_size, self.name = max_new_tokens, batch_size, path

    def __call__(self, prompts: list[str], items: list[dict]) -> list[str]:
        from ..models import render_prompt
        from ..rollout import generate

        out = []
        for i in range(0, len(prompts), self.batch_size):
            chunk = [render_prompt(self.tokenizer, p) for p in prompts[i: i + self.batch_size]]
            roll = generate(self.model, self.tokenizer, chunk, max_new_tokens=self.max_new_tokens, do_sample=False)
            out += roll.texts(self.tokenizer)
        return out


def make_judge(spec: str, model: str | None = None, **kw):
    """``rule``, an ``http(s)://.../v1`` endpoint (needs ``model``), or a local model path/name."""
    if spec == "rule":
        return RuleJudge()
    if spec.startswith(("http://", "https://")):
        if not model:
            raise ValueError("an endpoint judge needs the model name (--judge-model)")
        return APIJudge(spec, model, **kw)
    return HFJudge(spec, **kw)


# --------------------------------------------------------------------------------------
# comparisons
# --------------------------------------------------------------------------------------
def _key(row: dict) -> tuple:
    return (str(row.get("id")), int(row.get("sample", 0)))


def read_rows(path: str | Path) -> list[dict]:
    """The per-example rows of an eval JSONL (errors name the file and line)."""
    from ..data.benchmarks import iter_json_objects

    return [row for _, _, row in iter_json_objects(path)]


def compare_pair(judge, rows_a: list[dict], rows_b: list[dict], template: str | None = None) -> tuple[dict, list[dict]]:
    """Judge A's vs B's answers to the same questions in both orders; (summary, per-question records).

    Rows need ``id``, ``question``, ``gold`` and ``output`` (the eval's per-example JSONL)."""
    template = template or load_template()
    by_b = {_key(r): r for r in rows_b}
    pairs = [(a, by_b[_key(a)]) for a in rows_a if _key(a) in by_b]
    if not pairs:
        raise ValueError("the two answer sets share no (id, sample): were they evaluated on the same questions?")
    items, prompts = [], []
    for a, b in pairs:
        for first, second in ((a, b), (b, a)):
            it = {"question": a["question"], "answer": a["gold"], "solution_a": first["output"],
                  "solution_b": second["output"]}
            items.append(it)
            prompts.append(render(template, it["question"], it["answer"], it["solution_a"], it["solution_b"]))
    raw = judge(prompts, items)
    records, wins, losses, ties, unparseable, unjudged = [], 0, 0, 0, 0, 0
    for k, (a, _) in enumerate(pairs):
        v1, v2 = parse_verdict(raw[2 * k]), parse_verdict(raw[2 * k + 1])
        scores = []
        if v1 is not None:
            scores.append(FIRST_SCORE[v1])
        if v2 is not None:  # second order: B is model A
            scores.append(1.0 - FIRST_SCORE[v2])
        unparseable += (v1 is None) + (v2 is None)
        score = sum(scores) / len(scores) if scores else None
        if score is None:
            unjudged += 1
        elif score > 0.5:
            wins += 1
        elif score < 0.5:
            losses += 1
        else:
            ties += 1
        records.append({"id": a.get("id"), "sample": a.get("sample", 0), "verdict_ab": v1, "verdict_ba": v2,
                        "score_a": score, "judge_ab": _text(raw[2 * k]), "judge_ba": _text(raw[2 * k + 1])})
    judged = wins + losses + ties
    summary = {"questions": len(pairs), "judged": judged, "wins": wins, "losses": losses, "ties": ties,
               "win_rate": wins / judged if judged else 0.0, "loss_rate": losses / judged if judged else 0.0,
               "tie_rate": ties / judged if judged else 0.0, "unparseable_verdicts": unparseable,
               "unjudged": unjudged, "judge": getattr(judge, "name", type(judge).__name__)}
    return summary, records


def _text(x) -> str:
    return x if isinstance(x, str) else f"<judge call failed: {x}>"


def pairwise_matrix(judge, answers: dict[str, list[dict]], template: str | None = None) -> dict:
    """Every ordered pair of models: ``win[i][j]`` (i beat j), RWR / RLR per model, unparseable count."""
    names = list(answers)
    win = {i: {j: None for j in names} for i in names}
    unparseable = 0
    for x, i in enumerate(names):
        for j in names[x + 1:]:
            s, _ = compare_pair(judge, answers[i], answers[j], template)
            win[i][j], win[j][i] = s["win_rate"], s["loss_rate"]
            unparseable += s["unparseable_verdicts"]
    rwr = {i: _mean([win[i][j] for j in names if j != i]) for i in names}
    rlr = {i: _mean([win[j][i] for j in names if j != i]) for i in names}
    return {"models": names, "win": win, "rwr": rwr, "rlr": rlr, "unparseable_verdicts": unparseable}


def _mean(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


@dataclass
class PairwiseConfig:
    """``reasondistill eval pairwise``: the reasoning of two answer sets judged in both orders (RWR / RLR)."""

    a: str | None = None
    """The first model's per-example JSONL (eval_examples.jsonl written by ``reasondistill eval math``)."""
    b: str | None = None
    """The second model's per-example JSONL."""
    judge: str = "rule"
    """rule (the embedded task's step checker), http(s)://HOST:PORT/v1 (OpenAI-compatible; key from
    $OPENAI_API_KEY) or a local model."""
    judge_model: str | None = None
    """With an endpoint judge: the model name at the endpoint."""
    judge_template: str | None = None
    """Judge prompt file (default: the packaged templates/pairwise_reasoning.txt)."""
    device: str = "auto"
    """A local judge's device: cuda, else the CPU."""
    output_dir: str = "runs/eval"
    """Where pairwise_verdicts.jsonl and pairwise_summary.json are written."""

    def validate(self) -> None:
        if not (self.a and self.b):
            raise ValueError("eval pairwise: give a and b (--a, --b: per-example JSONL files written by "
                             "`reasondistill eval`)")


def run_pairwise(cfg: PairwiseConfig) -> dict:
    """Judge ``cfg.a`` against ``cfg.b``; writes the verdicts and the summary, returns the summary."""
    import json

    spec = cfg.judge
    judge = make_judge(spec, model=cfg.judge_model) if spec.startswith(("http://", "https://", "rule")) \
        else make_judge(spec, device="cuda" if cfg.device == "cuda" else "cpu")
    summary, records = compare_pair(judge, read_rows(cfg.a), read_rows(cfg.b), load_template(cfg.judge_template))
    summary.update({"a": cfg.a, "b": cfg.b})
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "pairwise_verdicts.jsonl").open("w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    (out / "pairwise_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
