"""Loading student and teacher models, and checking that they speak the same tokens.

Two models can only be distilled token by token if a token id means the same thing to both.
When it does not, nothing crashes: the teacher simply scores the wrong tokens and training
runs on noise. So every run calls :func:`assert_compatible` before its first step, and every
prompt is rendered once, by :func:`render_prompt`, with one chat template, so that student
and teacher see exactly the same prompt ids.

The compatibility rule (what :func:`check_compatibility` enforces)
-----------------------------------------------------------------
1. **Vocabulary.** Let ``n = min(len(student_tokenizer), len(teacher_tokenizer))``. For every
   id ``i < n`` (regular, added and special tokens alike, taken from ``get_vocab()``), both
   tokenizers must map ``i`` to the same token string, or both have no token at ``i``.
   Tokens beyond ``n`` exist on one side only; that is reported as a warning (the model with
   the larger tokenizer could emit an id the other does not know).
2. **Tokenization.** A few probe texts must encode to the same ids on both sides (catches
   different merges or pre-tokenizers over an identical vocabulary).
3. **Chat template.** A sample conversation rendered by both templates must give the same
   text (templates that differ only in source but render identically pass). Both missing is
   allowed; one missing is an error.
4. **EOS.** ``eos_token_id`` must be equal. Differing pad ids are only a warning: padding is
   masked everywhere, so it cannot change a number.
5. **Embedding rows.** Extra rows in one model's embedding (Qwen2.5's 151,936 vs 152,064
   rows) are *not* an error. ``CompatReport.shared_vocab = min(student rows, teacher rows)``
   is the number of leading logit columns that losses compare; a model whose tokenizer has
   more tokens than its embedding has rows is an error.

That is ``mode="strict"``. ``mode="shared_ids"`` keeps rules 1, 2 and 5 and turns 3 and 4 into
warnings: it is for a teacher of another family that gives the same ids to the same strings
but has its own chat template and EOS (the TGPO paper's Qwen3 teacher for a Qwen2.5-Math
student). Template differences cannot reach training because one prompt template
(:func:`render_prompt`, e.g. :data:`TGPO_PROMPT_TEMPLATE`) renders every prompt once for both
models, and EOS differences cannot because each model keeps its own stop ids (reported as
``CompatReport.student_stop_ids`` / ``teacher_stop_ids``; only the student's end rollouts).

LoRA and QLoRA (through peft, with TRL's names ``r``, ``alpha``, ``dropout``,
``target_modules="all-linear"``): :func:`apply_lora` wraps a student, :func:`save_pretrained_model`
writes its adapter (optionally also the merged model), :func:`trainable_state_dict` is what a
checkpoint holds, and :func:`load_model` on an adapter folder loads the base model and merges
the adapter, so a LoRA-trained model can be the next run's student, teacher or KL reference as
it was trained, not as its base model.
"""

from __future__ import annotations

import copy
import difflib
import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

__all__ = [
    "TGPO_PROMPT_TEMPLATE",
    "COMPAT_MODES",
    "QUANTIZATIONS",
    "CompatReport",
    "TokenizerMismatchError",
    "assert_compatible",
    "check_compatibility",
    "apply_lora",
    "is_adapter_folder",
    "load_model",
    "load_student",
    "load_teacher",
    "load_tokenizer",
    "load_trainable_state_dict",
    "resolve_model",
    "save_pretrained_model",
    "stop_ids",
    "trainable_state_dict",
    "render_prompt",
    "encode_prompts",
    "shared_vocab_size",
    "SAMPLE_CONVERSATION",
]

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "auto": "auto",
}

# A hub repo id: "name" or "owner/name", letters, digits, "-", "_", ".".
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------
ADAPTER_CONFIG = "adapter_config.json"
"""The file ``PeftModel.save_pretrained`` writes; a folder holding it is a LoRA adapter folder."""

QUANTIZATIONS = ("nf4",)
"""Values of ``load_model(quantization=...)`` besides None: "nf4" is QLoRA's 4-bit NormalFloat."""

_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "tokenizer.model", "vocab.json")


def resolve_model(name: str) -> str:
    """``embedded:teacher`` / ``embedded:student`` → the shipped folders of the arithmetic task.

    Any other name is returned unchanged (a local folder or a hub name, see :func:`load_model`).
    """
    if name.startswith("embedded:"):
        from .tasks import arith

        which = name.split(":", 1)[1]
        path = arith.ASSETS_DIR / which
        if not (path / "config.json").exists():
            raise FileNotFoundError(
                f"embedded model {name!r} not found at {path}; build it with `reasondistill task build`")
        return str(path)
    return name


def _resolve_source(path_or_name: str | os.PathLike) -> str:
    """A local folder (checked to exist) or a hub name (passed through to transformers).

    A ``Path``, or a string that starts like a path (``/``, ``./``, ``../``, ``~``) or does
    not look like a hub repo id, is a local path and must exist.
    """
    if isinstance(path_or_name, os.PathLike):
        local = True
        s = os.fspath(path_or_name)
    else:
        s = str(path_or_name)
        local = s.startswith(("/", "./", "../", "~", ".\\", "..\\")) or not _HUB_NAME.match(s)
    expanded = os.path.expanduser(s)
    if os.path.isdir(expanded):
        return expanded
    if os.path.exists(expanded):
        raise NotADirectoryError(f"model path {expanded!r} exists but is not a folder; "
                                 f"pass the folder written by save_pretrained()")
    if local:
        raise FileNotFoundError(f"model folder not found: {expanded!r} (no such directory)")
    return s  # hub name: transformers resolves it (offline machines need it in the HF cache)


@contextmanager
def _explain_hub_failure(src: str, context: str = ""):
    """A name that is not a local folder went to the hub and failed: say both."""
    try:
        yield
    except OSError as e:
        if os.path.isdir(src):
            raise
        raise OSError(f"could not load {src!r}{context}: it is not a local folder ({os.path.abspath(src)!r} does "
                      f"not exist) and loading it as a Hugging Face hub name failed: {e}") from e


def is_adapter_folder(path_or_name) -> bool:
    """True for a local folder holding ``adapter_config.json`` (a saved LoRA adapter)."""
    p = os.path.expanduser(os.fspath(path_or_name))
    return os.path.isfile(os.path.join(p, ADAPTER_CONFIG))


def _adapter_base(folder: str, base_model=None) -> str:
    """The base model a LoRA adapter folder was trained on, resolved like any model source.

    It is ``base_model`` when given, else the ``base_model_name_or_path`` that peft wrote into
    ``adapter_config.json`` (the path or hub name the base was loaded from when training
    started). A path written there may be relative to where that run was started, or may
    not exist on this machine, so a failure names the adapter folder and the folder it expects.
    """
    cfg_path = os.path.join(folder, ADAPTER_CONFIG)
    if base_model is None:
        try:
            with open(cfg_path, encoding="utf-8") as f:
                cfg = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{cfg_path}: not valid JSON ({e})") from e
        base = cfg.get("base_model_name_or_path") if isinstance(cfg, dict) else None
        if not base:
            raise ValueError(f"{cfg_path}: field 'base_model_name_or_path' is empty, so the base model of this "
                             f"LoRA adapter is unknown; pass base_model=... (the folder or hub name of the model "
                             f"the adapter was trained on)")
        origin = f"field 'base_model_name_or_path' of {cfg_path}"
    else:
        base, origin = os.fspath(base_model), "base_model="
    base = resolve_model(str(base))
    try:
        return _resolve_source(base)
    except (FileNotFoundError, NotADirectoryError) as e:
        expanded = os.path.expanduser(base)
        where = "" if os.path.isabs(expanded) else (
            f" (a relative path, so it was looked up from the current directory {os.getcwd()!r}; peft writes the "
            f"path the base was loaded from, relative to where training ran)")
        raise FileNotFoundError(f"LoRA adapter folder {folder!r} expects its base model at {base!r}{where}, from "
                                f"{origin}, but: {e}. Put the base model there, or pass base_model=... "
                                f"(the folder or hub name of the model the adapter was trained on)") from e


def _bnb_config(quantization: str):
    """transformers' ``BitsAndBytesConfig`` for QLoRA, or an error saying what is missing."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {quantization!r}; valid: None, {', '.join(map(repr, QUANTIZATIONS))}")
    import importlib.util

    missing = []
    if not torch.cuda.is_available():
        missing.append("no CUDA GPU is available (torch.cuda.is_available() is False)")
    if importlib.util.find_spec("bitsandbytes") is None:
        missing.append("bitsandbytes is not installed")
    if missing:
        raise RuntimeError(f"quantization={quantization!r} (QLoRA) needs a CUDA GPU and `pip install bitsandbytes`: "
                           f"{' and '.join(missing)}. Use quantization=None (plain LoRA) on this machine")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
                              bnb_4bit_use_double_quant=True)


def _as_dtype(dtype):
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
        return DTYPES[dtype]
    return dtype


def parse_config_overrides(text: str | None) -> dict:
    """``"rope_theta=40000,max_position_embeddings=16384"`` -> ``{"rope_theta": 40000, ...}``:
    comma-separated ``key=value``, values read as int, float, true/false or else string."""
    out: dict = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"config override {item.strip()!r} is not key=value (in {text!r})")
        raw = raw.strip()
        for cast in (int, float):
            try:
                out[key.strip()] = cast(raw)
                break
            except ValueError:
                continue
        else:
            out[key.strip()] = {"true": True, "false": False}.get(raw.lower(), raw)
    return out


def apply_config_overrides(config, overrides: dict, where: str = "model config"):
    """Set each override on a transformers ``PretrainedConfig`` (in place) and return it.
    ``rope_theta`` goes into ``rope_parameters`` where the config keeps it there (transformers 5);
    a key the config does not have is refused, naming the keys it has that look alike."""
    import difflib

    for key, value in overrides.items():
        rope = getattr(config, "rope_parameters", None)
        if key == "rope_theta" and isinstance(rope, dict) and not hasattr(config, "rope_theta"):
            config.rope_parameters = {**rope, "rope_theta": float(value)}
        elif hasattr(config, key):
            setattr(config, key, value)
        else:
            known = list(config.to_dict()) + (["rope_theta"] if isinstance(rope, dict) else [])
            near = difflib.get_close_matches(key, known, n=3)
            hint = f"; did you mean {', '.join(near)}?" if near else ""
            raise ValueError(f"{where} ({type(config).__name__}) has no field {key!r}{hint}")
    return config


def _load_full(src: str, dtype, device, trust_remote_code: bool, quantization: str | None, context: str = "",
               config_overrides: dict | None = None):
    """``AutoModelForCausalLM.from_pretrained`` of a full model folder or hub name, its config
    changed by ``config_overrides`` first (e.g. the TGPO paper's raised RoPE base and context)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = {}
    if config_overrides:
        with _explain_hub_failure(src, context):
            config = AutoConfig.from_pretrained(src, trust_remote_code=trust_remote_code)
        kwargs["config"] = apply_config_overrides(config, config_overrides, f"the config of {src}")
    if quantization is not None:
        kwargs["quantization_config"] = _bnb_config(quantization)
        dev = torch.device(device)
        if dev.type != "cuda":  # 4-bit weights only exist on a GPU: this process's current one
            dev = torch.device("cuda", torch.cuda.current_device())
        kwargs["device_map"] = {"": dev}  # 4-bit weights are placed while loading; .to() cannot move them
    with _explain_hub_failure(src, context):
        model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype, trust_remote_code=trust_remote_code, **kwargs)
    return model if quantization is not None else model.to(device)


def load_model(path_or_name, dtype: str | torch.dtype = "float32", device: str | torch.device = "cpu",
               trust_remote_code: bool = False, *, quantization: str | None = None, merge_adapter: bool = True,
               base_model=None, config_overrides: dict | None = None):
    """Load a causal LM with ``AutoModelForCausalLM``, or a saved LoRA adapter on its base.

    ``dtype`` is one of "float32", "bfloat16", "float16", "auto" (the checkpoint's own) or a
    ``torch.dtype``. The model is returned as transformers loads it (in eval mode, gradients
    enabled); :func:`load_student` / :func:`load_teacher` set the mode for their role.

    ``quantization="nf4"`` loads the weights in 4-bit NormalFloat with double quantization and
    bfloat16 compute (QLoRA), placed on the GPU while loading: ``device`` when it is a CUDA
    device, else this process's current CUDA device (4-bit weights cannot live on the CPU).
    It needs a CUDA GPU and bitsandbytes, and says which is missing. ``None`` loads the
    weights as stored.

    A folder holding ``adapter_config.json`` (what ``PeftModel.save_pretrained`` writes) is a
    LoRA adapter: its base model (``base_model`` if given, else the config's
    ``base_model_name_or_path``) is loaded with the same settings and the adapter is merged
    into it (``merge_and_unload``), so the result is a plain model equal to the model that was
    trained. This is what makes a LoRA-trained model usable as the next run's student, teacher
    or KL reference "as training started" rather than silently as its base model.
    ``merge_adapter=False`` returns the ``PeftModel`` instead, its adapter trainable. Merging
    into 4-bit weights re-quantizes them, so a merged QLoRA model is close to, not equal to,
    the adapter on its base.

    ``config_overrides`` (:func:`parse_config_overrides`) change the model config before the
    weights load (for an adapter folder: its base's config).
    """
    src = _resolve_source(path_or_name)
    dtype = _as_dtype(dtype)
    if not is_adapter_folder(src):
        return _load_full(src, dtype, device, trust_remote_code, quantization, config_overrides=config_overrides)

    from peft import PeftModel

    base_src = _adapter_base(src, base_model)
    if is_adapter_folder(base_src):  # an adapter trained on a merged adapter: merge the chain in order
        base = load_model(base_src, dtype, device, trust_remote_code, quantization=quantization)
    else:
        base = _load_full(base_src, dtype, device, trust_remote_code, quantization,
                          context=f" (the base model of LoRA adapter folder {src!r})", config_overrides=config_overrides)
    model = PeftModel.from_pretrained(base, src, is_trainable=not merge_adapter)
    if not merge_adapter:
        return model
    merged = model.merge_and_unload()
    for p in merged.parameters():  # peft froze the base; give it back as transformers loads a model
        if p.is_floating_point():
            p.requires_grad_(True)
    # The merged weights are this folder's, not the base's: a new adapter trained on them must
    # record this folder as its base (peft reads name_or_path), or loading it would skip this merge.
    merged.name_or_path = src
    merged.config._name_or_path = src
    return merged


def load_tokenizer(path_or_name, trust_remote_code: bool = False, *, base_model=None):
    """Load a tokenizer with ``AutoTokenizer`` (same path rules as :func:`load_model`).

    For a LoRA adapter folder: the tokenizer saved in that folder if there is one, else its
    base model's (``base_model`` or the adapter config's ``base_model_name_or_path``).
    """
    from transformers import AutoTokenizer

    src = _resolve_source(path_or_name)
    if is_adapter_folder(src) and not any(os.path.isfile(os.path.join(src, f)) for f in _TOKENIZER_FILES):
        src = _adapter_base(src, base_model)
    with _explain_hub_failure(src):
        return AutoTokenizer.from_pretrained(src, trust_remote_code=trust_remote_code)


def load_student(path_or_name, dtype="float32", device="cpu", trust_remote_code=False, *, quantization=None,
                 base_model=None):
    """``(model, tokenizer)`` for the model being trained: train mode, gradients on
    (a LoRA adapter folder is merged into its base, see :func:`load_model`)."""
    model = load_model(path_or_name, dtype=dtype, device=device, trust_remote_code=trust_remote_code,
                       quantization=quantization, base_model=base_model)
    model.train()
    return model, load_tokenizer(path_or_name, trust_remote_code=trust_remote_code, base_model=base_model)


def load_teacher(path_or_name, dtype="float32", device="cpu", trust_remote_code=False, *, quantization=None,
                 base_model=None):
    """``(model, tokenizer)`` for the frozen teacher: eval mode, ``requires_grad_(False)``
    (a LoRA adapter folder is merged into its base, see :func:`load_model`)."""
    model = load_model(path_or_name, dtype=dtype, device=device, trust_remote_code=trust_remote_code,
                       quantization=quantization, base_model=base_model)
    model.requires_grad_(False)
    model.eval()
    return model, load_tokenizer(path_or_name, trust_remote_code=trust_remote_code, base_model=base_model)


# --------------------------------------------------------------------------------------
# LoRA / QLoRA (peft)
# --------------------------------------------------------------------------------------
def _is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def _target_modules(target_modules) -> str | list[str]:
    """``"all-linear"`` as is; a list, or a comma-separated string, of module names as a list."""
    if isinstance(target_modules, str):
        if target_modules.strip() == "all-linear":
            return "all-linear"
        names = [t.strip() for t in target_modules.split(",")]
    else:
        names = [str(t).strip() for t in target_modules]
    names = [t for t in names if t]
    if not names:
        raise ValueError(f"target_modules={target_modules!r} names no module; use 'all-linear' or module names "
                         f"such as 'q_proj,k_proj,v_proj,o_proj'")
    return names


def apply_lora(model, r: int = 16, alpha: float = 32, dropout: float = 0.05, target_modules="all-linear", *,
               quantized: bool = False, gradient_checkpointing: bool = True):
    """Wrap ``model`` in a LoRA adapter: a ``peft.PeftModel`` (task CAUSAL_LM) whose only
    trainable parameters are the adapter's ``lora_A`` / ``lora_B`` matrices.

    ``r``, ``alpha`` (peft's ``lora_alpha``; the update is scaled by alpha / r) and ``dropout``
    are TRL's names. ``target_modules="all-linear"`` adapts every linear layer except the
    output head (peft's own rule); a list or a comma-separated string names modules instead
    (e.g. ``"q_proj,v_proj"``). The adapter starts as a no-op (``B = 0``), so the wrapped
    model computes exactly what ``model`` did.

    ``quantized=True`` (a model loaded with ``quantization="nf4"``) first runs peft's
    ``prepare_model_for_kbit_training`` (norms in float32, input gradients on, and gradient
    checkpointing unless ``gradient_checkpointing=False``).

    peft injects the adapter layers into ``model`` itself; keep using the returned object. The
    adapter config records ``model.name_or_path`` as its base model (made absolute here when
    it is a relative local folder). A model that already is a ``PeftModel`` is refused: stacking a second adapter on an
    unmerged one is almost always a mistake.
    """
    from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training

    if _is_peft(model):
        raise ValueError("apply_lora: the model already is a peft.PeftModel (it has a LoRA adapter); merge it first "
                         "(model.merge_and_unload(), or load_model() on the adapter folder, which merges) to train "
                         "a new adapter on top, or keep training the existing adapter")
    if not (isinstance(r, int) and r > 0):
        raise ValueError(f"LoRA rank r must be a positive integer, got {r!r}")
    if not alpha > 0:
        raise ValueError(f"LoRA alpha must be positive, got {alpha!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout!r}")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=_target_modules(target_modules),
                        bias="none", task_type=TaskType.CAUSAL_LM)
    name = model.__dict__.get("name_or_path") or ""
    if name and not os.path.isabs(name) and os.path.isdir(name):
        # peft records name_or_path as the adapter's base; a relative one would only resolve
        # from the directory this run was started in
        model.name_or_path = model.config._name_or_path = os.path.abspath(name)
    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    return get_peft_model(model, config)


def _is_quantized(model) -> bool:
    m = model.get_base_model() if _is_peft(model) else model
    return bool(getattr(m, "is_loaded_in_4bit", False) or getattr(m, "is_loaded_in_8bit", False)
                or getattr(m, "hf_quantizer", None) is not None)


def save_pretrained_model(model, folder, merge: bool = False, tokenizer=None) -> None:
    """Save a model so that :func:`load_model` loads it back.

    A ``PeftModel`` saves its adapter only (``adapter_config.json`` +
    ``adapter_model.safetensors``; the config names the base model). With ``merge=True`` it
    also writes the merged full model into ``folder/"merged"``, for tools that cannot read
    adapters; ``model`` itself is left untouched (a copy is merged; for a quantized base the
    base is reloaded in bfloat16 on the CPU from the adapter's base path and merged there,
    since merging into 4-bit weights would re-quantize them). A plain model saves itself
    (``save_pretrained``, safetensors); ``merge`` has nothing to do for it.

    ``tokenizer``, when given, is saved next to each model written.
    """
    folder = os.fspath(folder)
    if not _is_peft(model):
        model.save_pretrained(folder, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
        return
    model.save_pretrained(folder, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    if not merge:
        return
    merged_dir = os.path.join(folder, "merged")
    if _is_quantized(model):
        merged = load_model(folder, dtype="bfloat16", device="cpu")
    else:
        merged = copy.deepcopy(model).merge_and_unload()
    merged.save_pretrained(merged_dir, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(merged_dir)
    del merged


def trainable_state_dict(model) -> dict[str, torch.Tensor]:
    """The tensors a checkpoint must hold to resume training exactly.

    For a ``PeftModel``: the adapter weights only (peft's ``get_peft_model_state_dict``, keys
    without the adapter name), since the frozen base is reloaded from its own folder. For a
    plain model: its full ``state_dict()``. The tensors are the live ones, not copies: save
    them (``torch.save`` / safetensors) before the next optimizer step.
    """
    if _is_peft(model):
        from peft import get_peft_model_state_dict

        return dict(get_peft_model_state_dict(model))
    return model.state_dict()


def _tied_aliases(model) -> dict[str, set[str]]:
    """For each state-dict key, the other keys that name the very same tensor (tied weights)."""
    by_tensor: dict[int, set[str]] = {}
    entries = model.state_dict(keep_vars=True)
    for k, v in entries.items():
        by_tensor.setdefault(id(v), set()).add(k)
    return {k: by_tensor[id(v)] - {k} for k, v in entries.items()}


def load_trainable_state_dict(model, state: dict[str, torch.Tensor]) -> None:
    """Load what :func:`trainable_state_dict` returned into ``model`` (in place), strictly.

    Every expected key must be present and no other key may be: a key that is missing is
    allowed only when it is tied to a key that is present (e.g. ``lm_head.weight`` sharing
    the embedding's tensor). A ``RuntimeError`` names the missing and unexpected keys;
    shape mismatches raise from ``load_state_dict``.
    """
    if _is_peft(model):
        from peft import get_peft_model_state_dict, set_peft_model_state_dict

        expected = set(get_peft_model_state_dict(model))
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise RuntimeError(f"adapter state does not match the LoRA model: missing {missing}, unexpected "
                               f"{unexpected} (was it saved from a model with another r / target_modules, or "
                               f"from a plain model?)")
        result = set_peft_model_state_dict(model, state)
        if result.unexpected_keys:
            raise RuntimeError(f"adapter state does not match the LoRA model: unexpected {result.unexpected_keys}")
        return
    aliases = _tied_aliases(model)
    unexpected = sorted(set(state) - set(aliases))
    missing = sorted(k for k in aliases if k not in state and not (aliases[k] & set(state)))
    if missing or unexpected:
        raise RuntimeError(f"state does not match the model: missing {missing}, unexpected {unexpected} (was it "
                           f"saved from a LoRA model, or from another architecture?)")
    model.load_state_dict(state, strict=False)


# --------------------------------------------------------------------------------------
# Chat rendering: one template, one place
# --------------------------------------------------------------------------------------
TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"


def resolve_prompt_template(value: str | None) -> str | None:
    """A ``prompt_template`` setting -> the template text: None / ``chat`` stay as they are
    (the chat template); a shipped template's name (``tgpo``: ``templates/tgpo_prompt.txt``) or
    the path of a ``.txt`` file -> its text (one trailing newline dropped); anything else is
    already a raw template."""
    if value is None or value == "chat":
        return value
    named = TEMPLATES_DIR / f"{value}_prompt.txt"
    if "{question}" not in value and (named.is_file() or value.endswith(".txt")):
        path = named if named.is_file() else Path(value).expanduser()
        if not path.is_file():
            shipped = sorted(p.name.removesuffix("_prompt.txt") for p in TEMPLATES_DIR.glob("*_prompt.txt"))
            raise FileNotFoundError(f"prompt template file {value!r} not found (shipped templates: {', '.join(shipped)})")
        return path.read_text(encoding="utf-8").removesuffix("\n")
    return value


TGPO_PROMPT_TEMPLATE = resolve_prompt_template("tgpo")
"""The TGPO paper's prompt (teacher_guided_policy_optimization.md, Appendix B.2), a raw
template for :func:`render_prompt`, read from ``templates/tgpo_prompt.txt`` (``prompt_template=tgpo``): the text as printed there (curly quotes, the literal
``\\n`` inside them, the backquoted ``\\boxed{}``, blank lines between paragraphs), with the
paper's ``{QUESTION}`` written ``{question}``. It ends with ``Assistant: <think>``, so the
model's answer starts inside its reasoning. Plain text, no special tokens: it renders to the
same ids for any two tokenizers that share ids, whatever their chat templates."""

_PLACEHOLDERS = re.compile(r"\{question\}|\{system\}")


def render_prompt(tokenizer, question: str, system: str | None = None, template: str | None = None) -> str:
    """The prompt text for ``question``, rendered once for every model of a run.

    ``template=None`` (or ``"chat"``): the tokenizer's chat template with
    ``add_generation_prompt=True`` (so the text ends where the assistant starts writing), with
    ``system`` as a system message. Any other string is a raw template (e.g.
    :data:`TGPO_PROMPT_TEMPLATE`): it must contain ``{question}``, which is replaced by the
    question; ``{system}``, if present, by ``system`` (empty when None). Only those two exact
    placeholders are replaced, in one pass, so other braces (``\\boxed{}``, JSON) and braces
    inside the question stay as they are. A ``system`` message with a raw template that has no
    ``{system}`` is refused rather than dropped.

    Every model of a run gets the ids of this one string, encoded by :func:`encode_prompts`;
    that is why a teacher with another chat template can still score the student's prompts.
    """
    if template is None or template == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the tokenizer has no chat_template; set tokenizer.chat_template (e.g. ChatML), pass a "
                             "raw prompt template containing {question} (e.g. TGPO_PROMPT_TEMPLATE), or pass "
                             "already-rendered prompts")
        messages = ([{"role": "system", "content": system}] if system is not None else [])
        messages.append({"role": "user", "content": question})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if not isinstance(template, str):
        raise TypeError(f"prompt template must be None, 'chat' or a string, got {type(template).__name__}")
    if "{question}" not in template:
        hint = " (write the paper's {QUESTION} as {question})" if "{QUESTION}" in template else ""
        raise ValueError(f"raw prompt template has no {{question}} placeholder{hint}, so the question would not "
                         f"appear in the prompt: {template[:120]!r}{'...' if len(template) > 120 else ''}")
    if system is not None and "{system}" not in template:
        raise ValueError("a system message was given but the raw prompt template has no {system} placeholder; "
                         "put {system} where it belongs in the template, or pass system=None")
    values = {"{question}": question, "{system}": system or ""}
    return _PLACEHOLDERS.sub(lambda m: values[m.group(0)], template)


def encode_prompts(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of rendered prompts. No special tokens are added: the chat template
    already wrote every special token the prompt needs."""
    return [list(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]


# --------------------------------------------------------------------------------------
# Compatibility
# --------------------------------------------------------------------------------------
class TokenizerMismatchError(ValueError):
    """Student and teacher tokenizers disagree in a way that would silently corrupt training."""


SAMPLE_CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is 12+7-3?"},
    {"role": "assistant", "content": "12+7=19\n19-3=16\n\\boxed{16}"},
    {"role": "user", "content": "And 5-9?"},
]

_PROBE_TEXTS = [
    "What is 7-7-8+9?\n7-7=0\n0-8=-8\n-8+9=1\n\\boxed{1}",
    "  The answer is 12,345.67 -- isn't it?\tDone.\n\n",
    "Ünïcödé ✓ 数学 🙂",
]


COMPAT_MODES = ("strict", "shared_ids")
"""``tokenizer_compat`` values: see this module's docstring."""


def stop_ids(tokenizer, model=None) -> list[int]:
    """The ids that end a sequence for this model: the tokenizer's ``eos_token_id`` plus the
    model's ``generation_config.eos_token_id`` (an int or a list; instruct models often list
    several), sorted and without duplicates. The same rule as the rollout's default stop ids."""
    ids = [getattr(tokenizer, "eos_token_id", None)]
    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += list(gen) if isinstance(gen, (list, tuple)) else [gen]
    return sorted({int(i) for i in ids if i is not None})


@dataclass
class CompatReport:
    """Outcome of :func:`check_compatibility`."""

    compatible: bool
    """False when any of ``problems`` is non-empty."""
    shared_vocab: int
    """Leading logit columns to compare: min of the two embedding sizes (or tokenizer sizes)."""
    shared_tokens: int
    """Token ids compared one by one: min(len(student_tokenizer), len(teacher_tokenizer))."""
    student_vocab_size: int
    teacher_vocab_size: int
    student_eos_id: int | None
    teacher_eos_id: int | None
    student_pad_id: int | None
    teacher_pad_id: int | None
    first_mismatch: tuple[int, str | None, str | None] | None = None
    """(id, student token, teacher token) of the first id whose strings differ."""
    template_diff: str | None = None
    """Unified diff of the sample conversation rendered by each template, if they differ."""
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    mode: str = "strict"
    """The rule applied: "strict" or "shared_ids" (see the module docstring)."""
    student_stop_ids: list[int] = field(default_factory=list)
    """Ids that end the student's sequences (:func:`stop_ids`): these end rollouts."""
    teacher_stop_ids: list[int] = field(default_factory=list)
    """Ids that end the teacher's own sequences (:func:`stop_ids`)."""

    def summary(self) -> str:
        head = "tokenizers compatible" if self.compatible else "tokenizers INCOMPATIBLE"
        lines = [f"{head} (mode {self.mode}): shared_vocab={self.shared_vocab} (student {self.student_vocab_size}, "
                 f"teacher {self.teacher_vocab_size}), eos {self.student_eos_id}/{self.teacher_eos_id}, "
                 f"pad {self.student_pad_id}/{self.teacher_pad_id}"]
        if self.mode == "shared_ids":
            lines.append(f"- student: eos_token_id={self.student_eos_id}, stop ids {self.student_stop_ids}; "
                         f"teacher: eos_token_id={self.teacher_eos_id}, stop ids {self.teacher_stop_ids}")
        lines += [f"- {p}" for p in self.problems]
        lines += [f"- warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    __str__ = summary


def _id_to_token(tokenizer) -> dict[int, str]:
    return {i: t for t, i in tokenizer.get_vocab().items()}


def _render_sample(tokenizer) -> str | None:
    if not getattr(tokenizer, "chat_template", None):
        return None
    return tokenizer.apply_chat_template(SAMPLE_CONVERSATION, tokenize=False, add_generation_prompt=True)


def _diff(a: str, b: str) -> str:
    """Where two renderings first differ (repr, so whitespace shows), then a line diff."""
    k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    lo = max(0, k - 20)
    head = (f"first difference at character {k}: student {a[lo:k + 20]!r} vs teacher {b[lo:k + 20]!r}")
    lines = difflib.unified_diff(a.splitlines(keepends=True), b.splitlines(keepends=True), "student template",
                                 "teacher template", n=1)
    return head + "\n" + "".join(lines).rstrip("\n")


def check_compatibility(student_tokenizer, teacher_tokenizer, student_vocab_size: int | None = None,
                        teacher_vocab_size: int | None = None, *, mode: str = "strict", student_model=None,
                        teacher_model=None) -> CompatReport:
    """Compare two tokenizers under the rule in this module's docstring.

    ``student_vocab_size`` / ``teacher_vocab_size`` are the models' embedding rows (e.g.
    ``model.get_output_embeddings().weight.shape[0]``); without them the rows of
    ``student_model`` / ``teacher_model`` stand in when given, else the tokenizer lengths.
    The models also contribute their ``generation_config`` stop ids to the report.
    ``mode`` is "strict" or "shared_ids". Never raises for a mismatch: see
    :func:`assert_compatible`.
    """
    if mode not in COMPAT_MODES:
        raise ValueError(f"unknown tokenizer compatibility mode {mode!r}; valid: {', '.join(COMPAT_MODES)}")
    s_tok, t_tok = student_tokenizer, teacher_tokenizer
    s_len, t_len = len(s_tok), len(t_tok)

    def rows(given, model, n_tok):
        if given is not None:
            return int(given)
        return _embedding_rows(model) if model is not None else n_tok

    s_rows, t_rows = rows(student_vocab_size, student_model, s_len), rows(teacher_vocab_size, teacher_model, t_len)
    s_stop, t_stop = stop_ids(s_tok, student_model), stop_ids(t_tok, teacher_model)
    problems: list[str] = []
    warnings: list[str] = []
    # strict: a difference is a problem; shared_ids: the prompt template and stop ids are per model
    template_or_eos = problems if mode == "strict" else warnings

    for side, n_tok, n_rows in (("student", s_len, s_rows), ("teacher", t_len, t_rows)):
        if n_tok > n_rows:
            problems.append(f"{side} tokenizer has {n_tok} tokens but its model has only {n_rows} embedding rows")

    # 1. id -> token string over the whole shared id range
    shared_tokens = min(s_len, t_len)
    s_map, t_map = _id_to_token(s_tok), _id_to_token(t_tok)
    first = None
    n_diff = 0
    for i in range(shared_tokens):
        a, b = s_map.get(i), t_map.get(i)
        if a != b:
            n_diff += 1
            if first is None:
                first = (i, a, b)
    if first is not None:
        i, a, b = first
        problems.append(f"vocabulary differs at {n_diff} of {shared_tokens} shared ids; first at id {i}: "
                        f"student {a!r} vs teacher {b!r}")
    if s_len != t_len:
        bigger = "student" if s_len > t_len else "teacher"
        warnings.append(f"{bigger} tokenizer has {abs(s_len - t_len)} extra tokens (ids {shared_tokens}.."
                        f"{max(s_len, t_len) - 1}) the other side does not know")

    # 2. same text -> same ids (only meaningful when the vocabularies agree)
    if first is None:
        for text in _PROBE_TEXTS:
            a = s_tok(text, add_special_tokens=False)["input_ids"]
            b = t_tok(text, add_special_tokens=False)["input_ids"]
            if list(a) != list(b):
                problems.append(f"same vocabulary but different tokenization of {text!r}: "
                                f"student {list(a)} vs teacher {list(b)}")
                break

    # 3. chat template, compared by what it renders
    diff = None
    s_txt, t_txt = _render_sample(s_tok), _render_sample(t_tok)
    if (s_txt is None) != (t_txt is None):
        missing = "student" if s_txt is None else "teacher"
        template_or_eos.append(f"only one side has a chat template ({missing} has none)" + (
            "" if mode == "strict" else "; harmless in shared_ids mode: one prompt template renders the prompts "
                                        "for both models"))
    elif s_txt != t_txt:
        diff = _diff(s_txt, t_txt)
        if mode == "strict":
            problems.append("chat templates render the same conversation differently:\n"
                            f"--- student renders:\n{s_txt}\n--- teacher renders:\n{t_txt}\n--- diff:\n{diff}")
        else:
            warnings.append("chat templates differ (" + diff.split("\n", 1)[0] + "); harmless in shared_ids mode: "
                            "one prompt template renders every prompt for both models (full diff in "
                            "CompatReport.template_diff)")

    # 4. EOS and pad
    s_eos, t_eos = s_tok.eos_token_id, t_tok.eos_token_id
    s_pad, t_pad = s_tok.pad_token_id, t_tok.pad_token_id
    if s_eos != t_eos:
        if mode == "strict":
            problems.append(f"EOS differs: student eos_token_id={s_eos} ({s_tok.eos_token!r}) vs teacher "
                            f"eos_token_id={t_eos} ({t_tok.eos_token!r}); the models would disagree on when to stop")
        else:
            warnings.append(f"EOS differs: student eos_token_id={s_eos} ({s_tok.eos_token!r}), stop ids {s_stop}; "
                            f"teacher eos_token_id={t_eos} ({t_tok.eos_token!r}), stop ids {t_stop}. Each model "
                            f"keeps its own stop ids; the student's end rollouts, and the teacher scores the "
                            f"student's stop token, which is not its own")
    if s_pad != t_pad:
        warnings.append(f"pad differs: student pad_token_id={s_pad} vs teacher pad_token_id={t_pad} "
                        f"(harmless: padding is masked)")
    outside = [i for i in s_stop if i >= min(shared_tokens, s_rows, t_rows)]
    if outside:
        warnings.append(f"student stop ids {outside} lie outside the shared vocabulary "
                        f"({min(shared_tokens, s_rows, t_rows)} ids): the teacher cannot score the student's "
                        f"final token")

    return CompatReport(
        compatible=not problems, shared_vocab=min(s_rows, t_rows), shared_tokens=shared_tokens,
        student_vocab_size=s_rows, teacher_vocab_size=t_rows, student_eos_id=s_eos, teacher_eos_id=t_eos,
        student_pad_id=s_pad, teacher_pad_id=t_pad, first_mismatch=first, template_diff=diff,
        problems=problems, warnings=warnings, mode=mode, student_stop_ids=s_stop, teacher_stop_ids=t_stop,
    )


def assert_compatible(student_tokenizer, teacher_tokenizer, student_vocab_size: int | None = None,
                      teacher_vocab_size: int | None = None, *, mode: str = "strict", student_model=None,
                      teacher_model=None) -> CompatReport:
    """:func:`check_compatibility`, raising :class:`TokenizerMismatchError` on any problem."""
    report = check_compatibility(student_tokenizer, teacher_tokenizer, student_vocab_size, teacher_vocab_size,
                                 mode=mode, student_model=student_model, teacher_model=teacher_model)
    if not report.compatible:
        raise TokenizerMismatchError(report.summary())
    return report


def _embedding_rows(model) -> int:
    out = model.get_output_embeddings()
    if out is not None and getattr(out, "weight", None) is not None:
        return int(out.weight.shape[0])
    return int(model.config.get_text_config().vocab_size)


def shared_vocab_size(student_model, teacher_model, report: CompatReport | None = None) -> int:
    """Number of leading logit columns both models have: ``min`` of their output rows.

    With a ``report``, also refuses an incompatible pair and a range that would leave out
    tokens both tokenizers define.
    """
    n = min(_embedding_rows(student_model), _embedding_rows(teacher_model))
    if report is not None:
        if not report.compatible:
            raise TokenizerMismatchError(report.summary())
        if n < report.shared_tokens:
            raise TokenizerMismatchError(f"models share only {n} logit columns but the tokenizers share "
                                         f"{report.shared_tokens} tokens")
    return n
