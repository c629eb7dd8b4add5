"""Training methods, one file each. ``get_method(name)`` returns the module.

Every method module has a ``Config`` dataclass, ``prepare(ctx, examples)`` and
``loss(ctx, micro, totals)`` (see engine.py), and a docstring naming its paper and equation.
"""

import importlib

METHODS = ("sft", "kd", "gkd", "grpo", "cmdp", "gkd_rl", "gkd_grpo", "minillm")


def get_method(name: str):
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid: {', '.join(METHODS)}")
    return importlib.import_module(f"{__name__}.{name}")
