"""The evaluation tasks by name: their config classes, kept apart from ``eval/base.py`` so the
task modules can build on the base without the base importing them back."""

from __future__ import annotations

from .base import EVAL_TASKS, EvalConfig
from .choice_eval import ChoiceEvalConfig
from .code_eval import CodeEvalConfig
from .instruct_eval import InstructEvalConfig
from .math_eval import MathEvalConfig

CONFIGS: dict[str, type[EvalConfig]] = {"math": MathEvalConfig, "code": CodeEvalConfig, "choice": ChoiceEvalConfig,
                                        "instruct": InstructEvalConfig}
assert tuple(CONFIGS) == EVAL_TASKS


def eval_config_class(task: str) -> type[EvalConfig]:
    """The config class of ``task`` (math, code, choice, instruct)."""
    if task not in CONFIGS:
        raise ValueError(f"unknown evaluation task {task!r}; valid: {', '.join(EVAL_TASKS)}")
    return CONFIGS[task]
