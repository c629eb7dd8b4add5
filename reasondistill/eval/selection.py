"""Which records an evaluation reads, and the papers' evaluation protocols as named presets.

``--limit N`` draws a *seeded random* subsample of N records (``--sample-seed``, recorded in the
summary): the first rows of a benchmark file are not a random sample of it (files are often
sorted by source, difficulty or subject), and the pipeline paper evaluates a random 200 of
GSM8K test. ``--first N`` keeps the first N (the old ``--limit``). The subsample keeps the
file's order, so two runs with the same seed see the same records in the same order.
"""

from __future__ import annotations

import random

# The pipeline paper's Box 6 prompt (sft_then_grpo_api_teachers.md), the user message for every model.
PIPELINE_BOX6 = ("You are an AI assistant specializing in math.\n\nProblem:\n\n{question}\n\n"
                 "Please solve this step-by-step. Show your reasoning and calculations (be concise, brief, "
                 "essential steps only). Put your final numerical answer after ####")
# Qwen2.5-Math's ``qwen25-math-cot`` format (the VCRD paper's math protocol): this system prompt
# under the model's own chat template.
QWEN25_MATH_COT_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."

PRESETS: dict[str, dict] = {
    "pipeline": dict(
        task="math", question_template=PIPELINE_BOX6, temperature=0.5, samples=2, limit=200, sample_seed=0,
        doc="sft_then_grpo_api_teachers.md: Box 6 prompt, answer after ####, temperature 0.5, two answers "
            "averaged, a random 200 (GSM8K test)"),
    "tgpo": dict(
        task="math", temperature=0.6, samples={"aime24": 32, "aime25": 32, "amc23": 32}, shuffle=True,
        doc="teacher_guided_policy_optimization.md §4: temperature 0.6, avg@32 on AIME24/AIME25/AMC23, pass@1 "
            "(one sample) elsewhere; multiple-choice options shuffled out of distribution"),
    "tgpo-choice": dict(
        task="choice", temperature=0.6, shuffle=True,
        doc="teacher_guided_policy_optimization.md §4, out of distribution (ARC-c, GPQA-Diamond, MMLU-Pro): "
            "temperature 0.6, options shuffled"),
    "vcrd": dict(
        task="math", system=QWEN25_MATH_COT_SYSTEM, temperature=0.0, samples=1,
        doc="validity_calibrated_distillation.md §10.3: qwen25-math-cot prompt, greedy, one sample"),
    "vcrd-code": dict(
        task="code", temperature=0.0, samples=1, max_new_tokens=1024,
        doc="validity_calibrated_distillation.md §10.3: EvalPlus, greedy, 1024 new tokens"),
    "vcrd-instruct": dict(
        task="instruct", temperature=0.8, top_p=0.95, max_new_tokens=512,
        doc="validity_calibrated_distillation.md §10.3: AlpacaEval, sampling at 0.8 / top-p 0.95, 512 tokens"),
}
"""Evaluation protocols by name: each sets defaults that an explicit flag still overrides.
``samples`` may be a dict benchmark -> k (other benchmarks: 1)."""


def preset_value(preset: dict, key: str, benchmark: str | None = None):
    """The preset's value for ``key`` (a per-benchmark dict resolved for ``benchmark``), or None."""
    value = preset.get(key)
    if isinstance(value, dict):
        return value.get(benchmark or "", 1)
    return value


def get_preset(name: str | None) -> dict:
    if not name:
        return {}
    if name not in PRESETS:
        raise ValueError(f"unknown evaluation preset {name!r}; valid: {', '.join(PRESETS)}")
    return PRESETS[name]


def select_records(records: list, limit: int | None = None, first: int | None = None,
                   seed: int = 0) -> tuple[list, dict]:
    """``(records kept, how they were chosen)``: ``first`` keeps the first N; ``limit`` a seeded random
    N in file order; neither keeps everything. The second value goes into the summary."""
    if limit is not None and first is not None:
        raise ValueError("give --limit (a seeded random subsample) or --first (the first N), not both")
    for name, n in (("limit", limit), ("first", first)):
        if n is not None and n < 1:
            raise ValueError(f"--{name} must be >= 1, got {n}")
    if first is not None:
        return records[:first], {"first": first, "num_records": min(first, len(records))}
    if limit is None or limit >= len(records):
        return records, {"num_records": len(records)}
    keep = sorted(random.Random(seed).sample(range(len(records)), limit))
    return [records[i] for i in keep], {"limit": limit, "sample_seed": seed, "num_records": limit,
                                        "num_available": len(records)}
