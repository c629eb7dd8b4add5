"""Training methods, one file each; the contract they follow is ``methods/base.py``.

``get_method(name)`` returns the checked ``base.Method`` of a registered method; ``METHODS`` is
the registry the CLI, the README table and the tests are derived from or checked against.
"""

import importlib

from .base import Method, Micro, as_method  # noqa: F401

METHODS = ("sft", "kd", "gkd", "grpo", "cmdp", "gkd_rl", "gkd_grpo", "minillm", "tgpo", "tgpo_r", "op_distill",
           "kdrl", "grpo_pp", "luffy", "vcrd", "distillm2", "seqkd", "abkd", "distillm")


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid: {', '.join(METHODS)}")
    return as_method(importlib.import_module(f"{__name__}.{name}"), name)
