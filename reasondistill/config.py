"""Flat dataclass configs: one per method, every field documented under its definition.

A method's ``Config`` subclasses ``TrainConfig`` and adds its own fields. Values come from,
in increasing priority: the dataclass defaults, a YAML file (``--config FILE``), and
``key=value`` pairs on the command line. Unknown keys are errors that list the valid keys;
values are parsed to the field's type (``true``/``false``, ints, floats, ``none``).

The resolved config is written to ``<output_dir>/config.yaml`` by the engine, so every run
directory records exactly what ran.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A config key or value that cannot be used; the message says which and what is valid."""


@dataclass
class TrainConfig:
    """Fields shared by every training method."""

    # --- models -------------------------------------------------------------------------
    student: str = "embedded:student"
    """Student model: a local Hugging Face folder, a hub name, or ``embedded:student`` /
    ``embedded:teacher`` for the shipped models of the embedded arithmetic task."""
    teacher: str | None = "embedded:teacher"
    """Teacher model (same forms as ``student``); ``none`` for methods that need none (sft, grpo)."""
    dtype: str = "float32"
    """Parameter dtype of student and teacher: float32, bfloat16, float16. For training in half
    precision prefer ``mixed_precision=bf16`` (float32 master weights and optimizer state)."""
    mixed_precision: str = "no"
    """``bf16``: forward passes under bfloat16 autocast, parameters and AdamW state float32; ``no``."""
    device: str = "auto"
    """``auto`` (accelerate's choice), ``cpu`` or ``cuda``."""
    teacher_device: str | None = None
    """Put the teacher on another device (e.g. ``cuda:1``); default: the student's device."""

    # --- data ---------------------------------------------------------------------------
    dataset: str = "arith"
    """``arith`` (the embedded task), a benchmark name (gsm8k_train, ...), or a JSONL path."""
    question_field: str = "question"
    """For a JSONL dataset: the question field (comma-separated fields are joined)."""
    answer_field: str | None = "answer"
    """For a JSONL dataset: the final-answer field (``none`` for traces without one; sft/kd only)."""
    solution_field: str | None = "solution"
    """For a JSONL dataset: the worked-solution field used as the completion by sft/kd/gkd."""
    data_dir: str | None = None
    """Folder of the benchmark files (else the REASONDISTILL_DATA_DIR environment variable)."""
    train_size: int = 20000
    """For ``arith``: number of distinct training problems drawn."""
    task_style: str = "running"
    """For ``arith``: solution style of the training completions (running, grouped)."""
    task_min_terms: int = 4
    """For ``arith``: fewest operands per problem."""
    task_max_terms: int = 4
    """For ``arith``: most operands per problem."""
    task_max_operand: int = 9
    """For ``arith``: largest operand."""
    max_prompt_length: int = 256
    """Prompts longer than this (in tokens) are truncated from the left."""
    max_completion_length: int = 64
    """Longest completion, for sampling (``max_new_tokens``) and for dataset completions."""

    # --- optimisation -------------------------------------------------------------------
    max_steps: int = 100
    """Optimizer steps."""
    per_device_train_batch_size: int = 32
    """Prompts (examples) per micro-batch on each process."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step. The loss is normalised by the global count over all
    micro-batches and processes, so this does not change the gradient."""
    learning_rate: float = 5e-5
    """Peak learning rate (AdamW). The default (the Hugging Face Trainer's) suits real models;
    the tiny embedded models want ~1e-3 with warmup, as the demo and ``task build`` set."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_beta1: float = 0.9
    """AdamW beta1."""
    adam_beta2: float = 0.999
    """AdamW beta2."""
    lr_scheduler_type: str = "cosine"
    """cosine, linear or constant (after warmup)."""
    warmup_steps: int = 0
    """Linear warmup steps from 0 to the peak learning rate."""
    min_lr_ratio: float = 0.0
    """Learning rate at the end of the decay, as a fraction of the peak."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this (0 disables clipping); the norm is always logged."""
    seed: int = 0
    """Seeds python, numpy, torch and the sampling generator."""

    # --- bookkeeping ----------------------------------------------------------------------
    output_dir: str = "runs/latest"
    """Run directory: config.yaml, metrics.jsonl, TensorBoard events, checkpoints, final model."""
    logging_steps: int = 1
    """Write metrics every N steps."""
    save_steps: int = 0
    """Checkpoint every N steps (0: none periodically; Ctrl-C and max_time_seconds still write
    one, and final/ is always written). Resume with ``resume=true``."""
    save_total_limit: int = 2
    """Keep at most this many checkpoints (oldest removed first)."""
    overwrite_output_dir: bool = False
    """Allow a new run in an output_dir that holds another run's checkpoints (they are removed)."""
    resume: bool = False
    """Continue from the newest checkpoint in output_dir (model, optimizer, scheduler, RNG, data position)."""
    max_time_seconds: float = 0.0
    """Stop after this much wall-clock training time (0: no limit); a checkpoint is written."""
    report_to: str = "tensorboard"
    """``tensorboard`` or ``none`` (metrics.jsonl is always written)."""
    progress: bool = True
    """Show a progress bar with ETA."""
    save_final_model: bool = True
    """Write the trained model and tokenizer to ``<output_dir>/final``."""


def field_doc(cls: type, name: str) -> str:
    """The docstring under a dataclass field (read from the source), for --help listings."""
    import ast
    import inspect

    for klass in cls.__mro__:
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body
        for a, b in zip(body, body[1:]):
            if isinstance(a, ast.AnnAssign) and getattr(a.target, "id", None) == name and isinstance(b, ast.Expr) \
                    and isinstance(getattr(b, "value", None), ast.Constant) and isinstance(b.value.value, str):
                return " ".join(b.value.value.split())
    return ""


def describe(cls: type) -> str:
    """Every field of a config class with its type, default and documentation."""
    lines = []
    for f in fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else "(required)"
        lines.append(f"  {f.name} = {default!r}\n      {field_doc(cls, f.name)}")
    return "\n".join(lines)


def _parse_value(cls: type, name: str, raw, where: str):
    hints = typing.get_type_hints(cls)
    tp = hints[name]
    if not isinstance(raw, str):
        base = next((a for a in typing.get_args(tp) if a is not type(None)), tp)
        if base is str and isinstance(raw, bool):  # YAML 1.1 reads `no`/`yes` as booleans
            return "yes" if raw else "no"
        if (base is int and (isinstance(raw, bool) or not isinstance(raw, int))) or \
                (base is float and (isinstance(raw, bool) or not isinstance(raw, (int, float)))) or \
                (base is bool and not isinstance(raw, bool)) or (base is str and raw is not None):
            if not (raw is None and base is not tp):
                raise ConfigError(f"{where}: {name}={raw!r} is not a valid {getattr(base, '__name__', base)}")
        return float(raw) if base is float and raw is not None else raw
    s = raw.strip()
    optional = False
    args = typing.get_args(tp)
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        optional = type(None) in args
        tp = next(a for a in args if a is not type(None))
    if optional and s.lower() in ("none", "null", ""):
        return None
    try:
        if tp is bool:
            if s.lower() in ("true", "1", "yes", "on"):
                return True
            if s.lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError(s)
        if tp is int:
            return int(float(s)) if s.lower().count("e") else int(s)
        if tp is float:
            return float(s)
        if typing.get_origin(tp) in (list, tuple):
            return [x.strip() for x in s.split(",") if x.strip()]
        return s
    except ValueError:
        raise ConfigError(f"{where}: {name}={raw!r} is not a valid {getattr(tp, '__name__', tp)}") from None


def build_config(cls: type, yaml_path: str | Path | None = None, overrides: list[str] | dict | None = None):
    """Make a ``cls`` from defaults, then a YAML file, then ``key=value`` overrides."""
    valid = {f.name for f in fields(cls)}
    values: dict = {}

    def put(key, val, where):
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"{where}: unknown config key {key!r} for {cls.__module__}.{cls.__name__}.{hint}"
                              f" Valid keys: {', '.join(sorted(valid))}")
        values[key] = _parse_value(cls, key, val, where)

    if yaml_path is not None:
        path = Path(yaml_path)
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of key: value, got {type(data).__name__}")
        for k, v in data.items():
            line = _yaml_line(path, k)
            put(k, v, f"{path}:{line}" if line else str(path))
    if isinstance(overrides, dict):
        for k, v in overrides.items():
            put(k, v, "override")
    else:
        for item in overrides or []:
            if "=" not in item:
                raise ConfigError(f"command line: expected key=value, got {item!r}")
            k, v = item.split("=", 1)
            put(k.strip().replace("-", "_"), v, "command line")
    cfg = cls(**values)
    _validate_common(cfg)
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


def _validate_common(cfg) -> None:
    """Checks of the shared fields, before anything touches the output folder."""
    if cfg.mixed_precision not in ("no", "bf16"):
        raise ConfigError(f"mixed_precision must be no or bf16, got {cfg.mixed_precision!r}")
    if cfg.lr_scheduler_type not in ("cosine", "linear", "constant"):
        raise ConfigError(f"lr_scheduler_type must be cosine, linear or constant, got {cfg.lr_scheduler_type!r}")
    for name in ("max_steps", "per_device_train_batch_size", "gradient_accumulation_steps", "max_completion_length"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name} must be >= 1, got {getattr(cfg, name)}")


def _yaml_line(path: Path, key: str) -> int | None:
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.split(":", 1)[0].strip() == key:
            return i
    return None


def to_yaml(cfg) -> str:
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)
