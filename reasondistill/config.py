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

from .errors import ConfigError  # noqa: F401  (re-exported: config.ConfigError)




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
    student_config_overrides: str | None = None
    """Comma-separated ``key=value`` set on the student's model config before its weights load,
    e.g. ``rope_theta=40000,max_position_embeddings=16384`` (the TGPO paper's B.1 change to
    Qwen2.5-Math); a key the config lacks is refused."""
    teacher_device: str | None = None
    """Put the teacher on another device (e.g. ``cuda:1``); default: the student's device."""
    tokenizer_compat: str = "strict"
    """``strict``: teacher and student tokenizers must agree in vocabulary, tokenization, chat
    template and EOS. ``shared_ids``: the same strings must map to the same ids over the whole
    shared vocabulary, while templates and EOS may differ (each model keeps its own stop ids and
    one prompt template renders the prompt for both): e.g. a Qwen3 teacher, a Qwen2.5 student."""
    prompt_template: str | None = None
    """How a question becomes the prompt both models see: ``none`` (the student tokenizer's chat
    template), a shipped template's name (``tgpo``: the TGPO paper's Appendix B.2 prompt with its
    ``Assistant: <think>`` prefill), the path of a ``.txt`` template file, or a raw template
    string with ``{question}``."""
    loss_chunk_size: int = 0
    """>0: losses and signals from final hidden states this many tokens at a time, so the
    [B, T, V] float32 logits of both models never exist at once (real vocabularies). 0: plain logits."""

    # --- LoRA / QLoRA (TRL's names) -------------------------------------------------------
    use_peft: bool = False
    """Train a LoRA adapter instead of every weight; checkpoints and ``final/`` hold the adapter."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator (the update is scaled by lora_alpha / lora_r)."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA branch."""
    lora_target_modules: str = "all-linear"
    """Modules that get adapters: ``all-linear`` (every linear layer but the LM head) or a
    comma-separated list of module names (e.g. ``q_proj,v_proj``)."""
    load_in_4bit: bool = False
    """QLoRA: load the student in 4-bit NF4 (needs CUDA and bitsandbytes) and train a LoRA adapter."""
    merge_adapter: bool = False
    """With use_peft: also write the merged full model to ``final/merged``."""

    # --- data ---------------------------------------------------------------------------
    dataset: str = "arith"
    """``arith`` (the embedded task; its own knobs as ``arith:size=20000,style=running,min_terms=4,
    max_terms=4,max_operand=9``), a benchmark name (gsm8k_train, ...), or a JSONL path."""
    question_field: str = "question"
    """For a JSONL dataset: the question field (comma-separated fields are joined)."""
    answer_field: str | None = "answer"
    """For a JSONL dataset: the final-answer field (``none`` for traces without one; sft/kd only)."""
    solution_field: str | None = "solution"
    """For a JSONL dataset: the worked-solution field used as the completion by sft/kd/gkd."""
    data_dir: str | None = None
    """Folder of the benchmark files (else the REASONDISTILL_DATA_DIR environment variable)."""
    max_prompt_length: int = 256
    """Prompts longer than this (in tokens) are truncated from the left."""
    max_completion_length: int = 64
    """Longest completion, for sampling (``max_new_tokens``) and for dataset completions."""

    # --- optimisation -------------------------------------------------------------------
    max_steps: int = 100
    """Optimizer steps (``num_train_epochs > 0`` replaces it)."""
    num_train_epochs: float = 0.0
    """>0: train this many passes over the training records; sets max_steps."""
    num_iterations: int = 1
    """Optimizer steps per generation batch (TRL's name): prepare() runs every num_iterations
    steps and the batch is reused in between, so from the second update on the importance ratio
    of the policy-gradient methods differs from 1 and epsilon / epsilon_high clip."""
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
    warmup_ratio: float = 0.0
    """Warmup as a share of max_steps (used when warmup_steps is 0)."""
    optim: str = "adamw_torch"
    """adamw_torch, adamw_8bit or paged_adamw_8bit (the last two: bitsandbytes on CUDA)."""
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
    """Comma-separated trackers: tensorboard, wandb, trackio (optional extras), or none;
    metrics.jsonl is always written."""

    # --- periodic evaluation and the best checkpoint (HF's names) -------------------------
    eval_steps: int = 0
    """Evaluate every N steps and at the end (0: never)."""
    eval_dataset: str | None = None
    """``split`` (hold out eval_size training records, never trained on), a benchmark name, a
    JSONL path or an ``arith:...`` spec (read like dataset); none: no evaluation."""
    eval_size: int = 200
    """Records of the evaluation set (for a file or benchmark: its first N; 0: all)."""
    metric_for_best_model: str = "eval/accuracy"
    """eval/accuracy (greedy, graded), eval/token_accuracy or eval/loss (teacher-forced on the
    records' solutions); the best checkpoint by it is kept whatever save_total_limit says."""
    greater_is_better: bool | None = None
    """Direction of metric_for_best_model (default: false for a *loss*, true otherwise)."""
    load_best_model_at_end: bool = False
    """Write the best checkpoint's model, not the last one, to final/."""
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
        if typing.get_origin(tp) in (list, tuple) and isinstance(raw, (list, tuple)):  # a YAML list
            return [str(x) for x in raw]
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
    if isinstance(cfg, TrainConfig):  # other configs built here (eval/base.py's EvalConfig) check their own
        _validate_common(cfg)
    if hasattr(cfg, "validate"):  # a method's own checks (methods/base.py); plain classes may have none
        try:
            cfg.validate()
        except ConfigError:
            raise
        except ValueError as e:  # every config error is a ConfigError, whoever raised it
            raise ConfigError(str(e)) from None
    return cfg


def _validate_common(cfg) -> None:
    """Checks of the shared fields, before anything touches the output folder."""
    choices = {"tokenizer_compat": ("strict", "shared_ids"), "optim": ("adamw_torch", "adamw_8bit", "paged_adamw_8bit"),
               "metric_for_best_model": ("eval/accuracy", "eval/token_accuracy", "eval/loss")}
    for name, valid in choices.items():
        if getattr(cfg, name) not in valid:
            raise ConfigError(f"{name} must be one of {', '.join(valid)}, got {getattr(cfg, name)!r}")
    from .models import parse_config_overrides, resolve_prompt_template

    try:  # a shipped template's name or a .txt file becomes its text, so config.yaml records what was used
        cfg.prompt_template = resolve_prompt_template(cfg.prompt_template)
    except FileNotFoundError as e:
        raise ConfigError(f"prompt_template: {e}") from None
    if cfg.prompt_template is not None and cfg.prompt_template != "chat" and "{question}" not in cfg.prompt_template:
        raise ConfigError(f"prompt_template must be none, chat, a shipped template's name (tgpo), a .txt file or "
                          f"a raw template containing {{question}}, got {cfg.prompt_template!r}")
    try:
        parse_config_overrides(cfg.student_config_overrides)
    except ValueError as e:
        raise ConfigError(f"student_config_overrides: {e}") from None
    if cfg.load_in_4bit and not cfg.use_peft:
        raise ConfigError("load_in_4bit=true (QLoRA) trains a LoRA adapter: set use_peft=true too")
    if cfg.merge_adapter and not cfg.use_peft:
        raise ConfigError("merge_adapter=true needs use_peft=true")
    if cfg.load_best_model_at_end and not (cfg.eval_steps and cfg.eval_dataset):
        raise ConfigError("load_best_model_at_end=true needs eval_steps > 0 and an eval_dataset")
    if cfg.eval_steps and not cfg.eval_dataset:
        raise ConfigError("eval_steps > 0 needs eval_dataset (split, a benchmark, a file)")
    if not 0.0 <= cfg.warmup_ratio < 1.0:
        raise ConfigError(f"warmup_ratio must be in [0, 1), got {cfg.warmup_ratio}")
    if not 0.0 <= cfg.lora_dropout < 1.0 or cfg.lora_alpha <= 0:
        raise ConfigError(f"lora_dropout must be in [0, 1) and lora_alpha > 0, got {cfg.lora_dropout}, {cfg.lora_alpha}")
    for name in ("eval_size", "num_train_epochs", "eval_steps", "save_steps", "loss_chunk_size"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{name} must be >= 0, got {getattr(cfg, name)}")
    for name in ("dataset", "eval_dataset"):
        spec = getattr(cfg, name)
        if spec and (spec == "arith" or spec.startswith("arith:")):
            from .tasks.arith import DatasetSpec

            try:
                DatasetSpec.parse(spec)
            except ValueError as e:
                raise ConfigError(f"{name}: {e}") from None
    from .tracking import require_installed, validate_report_to

    require_installed(validate_report_to(cfg.report_to))
    if cfg.mixed_precision not in ("no", "bf16"):
        raise ConfigError(f"mixed_precision must be no or bf16, got {cfg.mixed_precision!r}")
    if cfg.lr_scheduler_type not in ("cosine", "linear", "constant"):
        raise ConfigError(f"lr_scheduler_type must be cosine, linear or constant, got {cfg.lr_scheduler_type!r}")
    if cfg.lr_scheduler_type == "constant" and cfg.min_lr_ratio:
        raise ConfigError(f"min_lr_ratio={cfg.min_lr_ratio} is the floor of a cosine or linear decay; "
                          f"lr_scheduler_type=constant never decays, so it would be ignored: drop it or set "
                          f"lr_scheduler_type")
    for name in ("max_steps", "per_device_train_batch_size", "gradient_accumulation_steps", "max_completion_length",
                 "num_iterations", "lora_r", "save_total_limit", "logging_steps"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name} must be >= 1, got {getattr(cfg, name)}")


def _yaml_line(path: Path, key: str) -> int | None:
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.split(":", 1)[0].strip() == key:
            return i
    return None


def to_yaml(cfg) -> str:
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)
