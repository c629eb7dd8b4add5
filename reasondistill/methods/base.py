"""The method contract: what a training method is, written once. This docstring is its documentation.

A method is one module under ``reasondistill/methods/`` named in ``METHODS``
(``methods/__init__.py``), and a row of the README's method table (a test checks both). The
engine (``engine.train``) runs every method through the same loop and never looks inside one.

What a method module defines
----------------------------
``Config``
    A dataclass subclassing ``config.TrainConfig`` (or ``methods.onpolicy.OnPolicyConfig``),
    every field documented by the string under it. ``validate(self)`` (optional) raises
    ``config.ConfigError`` naming the key for a bad value. **Whether the method needs a teacher
    is derived from it**: a method that needs none overrides ``teacher: str | None = None``
    (the shared default is the embedded teacher); nothing else declares it.
``prepare(ctx, examples) -> Micro``
    Called under ``torch.no_grad()`` for every micro-batch of an optimizer step, before any
    loss: build the batch (encode dataset pairs, or sample rollouts with the current policy)
    and whatever the loss needs (rewards, ...). ``examples`` are the records of this
    micro-batch on this process.
``loss(ctx, micro, totals) -> (loss, metrics)``
    The micro-batch's differentiable loss and a dict of metrics: a float is averaged over the
    step's micro-batches and processes; a ``(numerator, denominator)`` pair is summed over them
    and divided, for an exact share (``pg/clip_ratio``: clipped tokens / counted tokens); a
    :class:`Max` is reduced by its maximum (``completions/max_length``). ``totals`` holds the
    *global* ``tokens`` and ``rows`` summed over every micro-batch of the step and every
    process: divide sums by them (not by this micro-batch's counts) and the gradient does not
    depend on how the step is split (FIELD_NOTES: "gradient accumulation changes the loss").
    With ``num_iterations > 1`` the engine calls ``loss`` on the same ``Micro`` several times
    (one optimizer step each); what was computed on the first call can be kept in
    ``micro.extras`` (the on-policy methods keep the sampling policy's log-probs there).

Optional (the defaults below apply when a module does not define them)
``setup(ctx)``  once, after the models are loaded and before the optimizer exists (a frozen
    reference model, ...). Default: nothing.
``finalize_step(ctx, micros)``  after every ``prepare`` of a step, before any ``loss``:
    statistics over the whole step (GRPO's batch-level reward std). Default: nothing.
``required_fields(cfg) -> tuple[str, ...]``  record fields the method reads; the engine checks
    every record before step 1 and names the first one missing a field. Default: question.

The method reaches the models only through ``ctx`` (``engine.Context``): ``ctx.policy`` (the
student, for sampling), ``ctx.signals(batch, ...)`` (a ``signals.TokenPass``: every
teacher/student quantity on completion tokens, plain or vocabulary-chunked), ``ctx.prompt_ids``
(the one rendered prompt both models see), ``ctx.generator`` / ``ctx.rng`` (seeded, in every
checkpoint) and ``ctx.step``.

A minimal method (completion-only cross-entropy)::

    @dataclass
    class Config(TrainConfig):
        teacher: str | None = None

    def prepare(ctx, examples):
        batch = encode_pairs(ctx.tokenizer, ctx.render([e["question"] for e in examples]),
                             [e["solution"] for e in examples], ctx.cfg.max_prompt_length,
                             ctx.cfg.max_completion_length)
        return Micro.of(batch)

    def loss(ctx, micro, totals):
        logp = ctx.signals(micro.batch).student_logp()          # (B, C)
        return -masked_sum(logp, micro.batch.completion_mask) / totals["tokens"], {}

Adding a method touches: its file, ``METHODS`` and the README's table (and its tests).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable

from ..config import TrainConfig


class Max(float):
    """A metric value that the engine reduces by its maximum over micro-batches and processes."""


@dataclass
class Micro:
    """One micro-batch as ``prepare`` returns it."""

    batch: Any
    """The ``rollout.Rollout`` the loss runs on (dataset pairs use the same layout)."""
    num_tokens: int
    """Counted completion tokens it adds to the step's ``totals["tokens"]``."""
    num_rows: int
    """Rows it adds to ``totals["rows"]``."""
    extras: dict = field(default_factory=dict)
    """Anything else the loss needs (rewards, advantages, the sampling policy's log-probs)."""

    @classmethod
    def of(cls, batch, **extras) -> "Micro":
        """A micro-batch counting every completion token and row of ``batch``."""
        return cls(batch=batch, num_tokens=int(batch.completion_mask.sum()), num_rows=len(batch), extras=extras)


def _no_setup(ctx) -> None:
    return None


def _no_finalize(ctx, micros) -> None:
    return None


def _question_only(cfg) -> tuple[str, ...]:
    return ("question",)


@dataclass
class Method:
    """A method module checked against the contract once, optional hooks filled with defaults."""

    name: str
    module: ModuleType
    Config: type
    prepare: Callable
    loss: Callable
    setup: Callable = _no_setup
    finalize_step: Callable = _no_finalize
    required_fields: Callable = _question_only

    @property
    def needs_teacher(self) -> bool:
        """Derived from ``Config``: a method that needs no teacher defaults ``teacher`` to None."""
        f = {x.name: x for x in dataclasses.fields(self.Config)}["teacher"]
        return f.default is not None

    def __getattr__(self, name: str):
        """Anything else the module defines (``cmdp.boundary_loss``, ...)."""
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.module, name)

    @property
    def doc(self) -> str:
        """The first line of the module's docstring."""
        return (self.module.__doc__ or "").strip().splitlines()[0]


def as_method(module: ModuleType | Method, name: str | None = None) -> Method:
    """Check ``module`` against the contract and return its ``Method``; a module that misses a
    required piece is refused naming it."""
    if isinstance(module, Method):
        return module
    name = name or module.__name__.rsplit(".", 1)[-1]
    missing = [a for a in ("Config", "prepare", "loss") if not hasattr(module, a)]
    if missing:
        raise TypeError(f"method {name!r} ({module.__name__}) lacks {', '.join(missing)}; see methods/base.py")
    if not (isinstance(module.Config, type) and issubclass(module.Config, TrainConfig)):
        raise TypeError(f"method {name!r}: Config must subclass config.TrainConfig")
    if not (module.__doc__ or "").strip():
        raise TypeError(f"method {name!r}: the module needs a docstring naming its paper and equation")
    hooks = {h: getattr(module, h) for h in ("setup", "finalize_step", "required_fields") if hasattr(module, h)}
    return Method(name=name, module=module, Config=module.Config, prepare=module.prepare, loss=module.loss, **hooks)
