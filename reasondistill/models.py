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
"""

from __future__ import annotations

import difflib
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

__all__ = [
    "CompatReport",
    "TokenizerMismatchError",
    "assert_compatible",
    "check_compatibility",
    "load_model",
    "load_student",
    "load_teacher",
    "load_tokenizer",
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
def _explain_hub_failure(src: str):
    """A name that is not a local folder went to the hub and failed: say both."""
    try:
        yield
    except OSError as e:
        if os.path.isdir(src):
            raise
        raise OSError(f"could not load {src!r}: it is not a local folder ({os.path.abspath(src)!r} does not "
                      f"exist) and loading it as a Hugging Face hub name failed: {e}") from e


def load_model(path_or_name, dtype: str | torch.dtype = "float32", device: str | torch.device = "cpu",
               trust_remote_code: bool = False):
    """Load a causal LM with ``AutoModelForCausalLM``.

    ``dtype`` is one of "float32", "bfloat16", "float16", "auto" (the checkpoint's own) or a
    ``torch.dtype``. The model is returned as transformers loads it (in eval mode, gradients
    enabled); :func:`load_student` / :func:`load_teacher` set the mode for their role.
    """
    from transformers import AutoModelForCausalLM

    src = _resolve_source(path_or_name)
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
        dtype = DTYPES[dtype]
    with _explain_hub_failure(src):
        model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype, trust_remote_code=trust_remote_code)
    return model.to(device)


def load_tokenizer(path_or_name, trust_remote_code: bool = False):
    """Load a tokenizer with ``AutoTokenizer`` (same path rules as :func:`load_model`)."""
    from transformers import AutoTokenizer

    src = _resolve_source(path_or_name)
    with _explain_hub_failure(src):
        return AutoTokenizer.from_pretrained(src, trust_remote_code=trust_remote_code)


def load_student(path_or_name, dtype="float32", device="cpu", trust_remote_code=False):
    """``(model, tokenizer)`` for the model being trained: train mode, gradients on."""
    model = load_model(path_or_name, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    model.train()
    return model, load_tokenizer(path_or_name, trust_remote_code=trust_remote_code)


def load_teacher(path_or_name, dtype="float32", device="cpu", trust_remote_code=False):
    """``(model, tokenizer)`` for the frozen teacher: eval mode, ``requires_grad_(False)``."""
    model = load_model(path_or_name, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    model.requires_grad_(False)
    model.eval()
    return model, load_tokenizer(path_or_name, trust_remote_code=trust_remote_code)


# --------------------------------------------------------------------------------------
# Chat rendering: one template, one place
# --------------------------------------------------------------------------------------
def render_prompt(tokenizer, question: str, system: str | None = None) -> str:
    """The prompt text for ``question``: the tokenizer's chat template with
    ``add_generation_prompt=True`` (so the text ends where the assistant starts writing).

    Every model of a run gets the ids of this one string, encoded by :func:`encode_prompts`.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat_template; set tokenizer.chat_template (e.g. ChatML) "
                         "or pass already-rendered prompts")
    messages = ([{"role": "system", "content": system}] if system is not None else [])
    messages.append({"role": "user", "content": question})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


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

    def summary(self) -> str:
        head = "tokenizers compatible" if self.compatible else "tokenizers INCOMPATIBLE"
        lines = [f"{head}: shared_vocab={self.shared_vocab} (student {self.student_vocab_size}, "
                 f"teacher {self.teacher_vocab_size}), eos {self.student_eos_id}/{self.teacher_eos_id}, "
                 f"pad {self.student_pad_id}/{self.teacher_pad_id}"]
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
                        teacher_vocab_size: int | None = None) -> CompatReport:
    """Compare two tokenizers under the rule in this module's docstring.

    ``student_vocab_size`` / ``teacher_vocab_size`` are the models' embedding rows (e.g.
    ``model.get_output_embeddings().weight.shape[0]``); without them the tokenizer lengths
    stand in. Never raises for a mismatch: see :func:`assert_compatible`.
    """
    s_tok, t_tok = student_tokenizer, teacher_tokenizer
    s_len, t_len = len(s_tok), len(t_tok)
    s_rows = int(student_vocab_size) if student_vocab_size is not None else s_len
    t_rows = int(teacher_vocab_size) if teacher_vocab_size is not None else t_len
    problems: list[str] = []
    warnings: list[str] = []

    for side, n_tok, rows in (("student", s_len, s_rows), ("teacher", t_len, t_rows)):
        if n_tok > rows:
            problems.append(f"{side} tokenizer has {n_tok} tokens but its model has only {rows} embedding rows")

    # 1. id -> token string over the shared id range
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
        problems.append(f"only one side has a chat template ({missing} has none)")
    elif s_txt != t_txt:
        diff = _diff(s_txt, t_txt)
        problems.append("chat templates render the same conversation differently:\n"
                        f"--- student renders:\n{s_txt}\n--- teacher renders:\n{t_txt}\n--- diff:\n{diff}")

    # 4. EOS and pad
    s_eos, t_eos = s_tok.eos_token_id, t_tok.eos_token_id
    s_pad, t_pad = s_tok.pad_token_id, t_tok.pad_token_id
    if s_eos != t_eos:
        problems.append(f"EOS differs: student eos_token_id={s_eos} ({s_tok.eos_token!r}) vs teacher "
                        f"eos_token_id={t_eos} ({t_tok.eos_token!r}); the models would disagree on when to stop")
    if s_pad != t_pad:
        warnings.append(f"pad differs: student pad_token_id={s_pad} vs teacher pad_token_id={t_pad} "
                        f"(harmless: padding is masked)")

    return CompatReport(
        compatible=not problems, shared_vocab=min(s_rows, t_rows), shared_tokens=shared_tokens,
        student_vocab_size=s_rows, teacher_vocab_size=t_rows, student_eos_id=s_eos, teacher_eos_id=t_eos,
        student_pad_id=s_pad, teacher_pad_id=t_pad, first_mismatch=first, template_diff=diff,
        problems=problems, warnings=warnings,
    )


def assert_compatible(student_tokenizer, teacher_tokenizer, student_vocab_size: int | None = None,
                      teacher_vocab_size: int | None = None) -> CompatReport:
    """:func:`check_compatibility`, raising :class:`TokenizerMismatchError` on any problem."""
    report = check_compatibility(student_tokenizer, teacher_tokenizer, student_vocab_size, teacher_vocab_size)
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
