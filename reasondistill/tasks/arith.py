"""The embedded default task: multi-step arithmetic chains with worked solutions.

Nothing can be downloaded on a CPU-only machine, so the project owns a task small enough to
train a real teacher and student from scratch in minutes, and rich enough that distillation
is visible:

    question : What is 7-7-8+9?
    solution : 7-7=0
               0-8=-8
               -8+9=1
               \\boxed{1}

Pieces (each used by the same code path as a real Hugging Face model would be):
- a seeded problem generator with difficulty knobs (`TaskSpec`: number of terms, largest
  operand, operators);
- several valid worked-solution *styles* (`running` totals left to right, `grouped`:
  positives and negatives summed separately, then subtracted). Teacher and student can be
  trained on different styles, so a correct answer can be reached far from the teacher
  (needed by the constrained-distillation comparisons);
- a train/test split that can never overlap: a problem belongs to the test split iff a hash
  of its question text falls in the test fraction, whatever seed or count generated it;
- a byte-level BPE tokenizer built locally in Qwen2's format (Qwen2's pre-tokenizer regex, so
  digits are single tokens; ChatML chat template; EOS ``<|im_end|>``, pad ``<|endoftext|>``),
  which round-trips exactly through ``AutoTokenizer``;
- tiny Qwen2 configs for the teacher and the student.

Training the teacher from scratch is ``reasondistill task build`` (see ``build_assets``);
its output ships in ``reasondistill/assets/arith`` and a test checks its accuracy.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets" / "arith"
SYSTEM_PROMPT = None  # the embedded task uses no system prompt
STYLES = ("running", "grouped")
FLAWED_STYLES = ("sign_loss",)
"""Worked solutions with one systematic, rule-describable error (the flawed teacher's scenario):
``sign_loss`` writes running totals, but a subtraction whose result is -3 or below loses its
minus sign, and the chain goes on from the wrong value. Not a valid style: its answers are wrong
exactly where the rule fires."""


@dataclass(frozen=True)
class TaskSpec:
    """Difficulty knobs of the arithmetic task."""

    min_terms: int = 4
    """Smallest number of operands in a chain."""
    max_terms: int = 4
    """Largest number of operands in a chain."""
    max_operand: int = 9
    """Operands are drawn uniformly from 0..max_operand."""
    ops: str = "+-"
    """Operators to draw from (a subset of '+-')."""
    test_fraction: float = 0.1
    """Share of the problem space reserved for the test split (by hash of the question)."""

    def __post_init__(self):
        if not 2 <= self.min_terms <= self.max_terms:
            raise ValueError(f"TaskSpec: need 2 <= min_terms <= max_terms, got {self.min_terms}, {self.max_terms}")
        if self.max_operand < 1:
            raise ValueError(f"TaskSpec.max_operand must be >= 1, got {self.max_operand}")
        if not self.ops or set(self.ops) - set("+-"):
            raise ValueError(f"TaskSpec.ops must be a non-empty subset of '+-', got {self.ops!r}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"TaskSpec.test_fraction must be in (0, 1), got {self.test_fraction}")


def question_text(terms: list[int], ops: list[str]) -> str:
    expr = str(terms[0]) + "".join(f"{o}{t}" for o, t in zip(ops, terms[1:]))
    return f"What is {expr}?"


def evaluate_chain(terms: list[int], ops: list[str]) -> int:
    value = terms[0]
    for o, t in zip(ops, terms[1:]):
        value = value + t if o == "+" else value - t
    return value


def worked_solution(terms: list[int], ops: list[str], style: str = "running") -> str:
    """A worked solution ending in ``\\boxed{answer}``; one line per step."""
    lines: list[str] = []
    if style in ("running", "sign_loss"):
        acc = terms[0]
        for o, t in zip(ops, terms[1:]):
            new = acc + t if o == "+" else acc - t
            if style == "sign_loss" and o == "-" and new <= -3:
                new = -new  # the flaw: the minus sign is lost, and the chain goes on from there
            lines.append(f"{acc}{o}{t}={new}")
            acc = new
    elif style == "grouped":
        pos = [terms[0]] + [t for o, t in zip(ops, terms[1:]) if o == "+"]
        neg = [t for o, t in zip(ops, terms[1:]) if o == "-"]
        p, n = _sum_lines(pos, lines), _sum_lines(neg, lines)
        if neg:
            lines.append(f"{p}-{n}={p - n}")
        acc = p - n
    else:
        raise ValueError(f"unknown solution style {style!r}; valid: {', '.join(STYLES + FLAWED_STYLES)}")
    lines.append(f"\\boxed{{{acc}}}")
    return "\n".join(lines)


def sign_loss_answer(terms: list[int], ops: list[str]) -> str:
    """The boxed answer of the ``sign_loss`` chain (what the flawed teacher answers)."""
    return worked_solution(terms, ops, "sign_loss").rsplit("{", 1)[1].rstrip("}")


def _sum_lines(values: list[int], lines: list[str]) -> int:
    if len(values) <= 1:
        return values[0] if values else 0
    total = sum(values)
    lines.append("+".join(map(str, values)) + f"={total}")
    return total


def check_solution_steps(question: str, solution: str) -> list[bool]:
    """Rule-based step checker: is each ``a±b±…=c`` line of a worked solution arithmetically true?

    Used as a cheap judge on the embedded task. Lines that are not equations (the boxed
    answer) are skipped.
    """
    out = []
    for line in solution.strip().splitlines():
        if "=" not in line:
            continue
        lhs, _, rhs = line.partition("=")
        try:
            out.append(_eval_plus_minus(lhs) == int(rhs.strip()))
        except ValueError:
            out.append(False)
    return out


def _eval_plus_minus(expr: str) -> int:
    expr = expr.replace(" ", "")
    if not expr:
        raise ValueError("empty")
    total, num, sign, i = 0, "", 1, 0
    if expr[0] in "+-":
        sign, i = (1 if expr[0] == "+" else -1), 1
    for ch in expr[i:] + "+":
        if ch.isdigit():
            num += ch
        elif ch in "+-":
            if not num:
                raise ValueError(expr)
            total += sign * int(num)
            num, sign = "", (1 if ch == "+" else -1)
        else:
            raise ValueError(expr)
    return total


def _in_test_split(question: str, spec: TaskSpec) -> bool:
    h = int.from_bytes(hashlib.sha256(question.encode()).digest()[:8], "big")
    return (h % 1_000_000) < spec.test_fraction * 1_000_000


def make_problem(rng: random.Random, spec: TaskSpec, style: str = "running") -> dict:
    n = rng.randint(spec.min_terms, spec.max_terms)
    terms = [rng.randint(0, spec.max_operand) for _ in range(n)]
    ops = [rng.choice(spec.ops) for _ in range(n - 1)]
    q = question_text(terms, ops)
    ans = evaluate_chain(terms, ops)
    return {"id": q, "question": q, "answer": str(ans), "solution": worked_solution(terms, ops, style),
            "terms": terms, "ops": ops}


def generate(split: str, n: int, seed: int = 0, spec: TaskSpec = TaskSpec(), style: str = "running",
             unique: bool = True) -> list[dict]:
    """``n`` problems of ``split`` ("train" or "test"), deterministic in ``seed``.

    The split is decided by a hash of the question, so train and test never share a
    problem. ``unique`` draws distinct questions (the test split of 4-term single-digit chains
    holds ~8,000, so ask for fewer than that).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    want_test = split == "test"
    rng = random.Random(f"arith-{split}-{seed}")
    out, seen, tries = [], set(), 0
    while len(out) < n:
        tries += 1
        if tries > 200 * n + 10_000:
            raise ValueError(f"could not draw {n} distinct {split} problems from {spec}; the space is too small")
        p = make_problem(rng, spec, style)
        if _in_test_split(p["question"], spec) != want_test or (unique and p["id"] in seen):
            continue
        seen.add(p["id"])
        out.append(p)
    for p in out:
        p["source"] = f"arith-{split}"
    return out


# --------------------------------------------------------------------------------------
# A graded validity judge (VCRD's r(c, a): can this prefix still become a correct solution?)
# --------------------------------------------------------------------------------------
VALIDITY_FLOOR = 0.05
"""The lowest score: a prefix that can no longer be completed still gets this much, so a validity
ratio r_s / (r_t + 1e-8) stays within [0.05, 20] instead of jumping between 0 and 1e8."""

_QUESTION_RE = re.compile(r"What is ([0-9+\-]+)\?")
_EXPR_PREFIX_RE = re.compile(r"^-?(?:\d+(?:[+-]\d+)*[+-]?)?$")  # "", "-", "7", "7-", "7-8", "-8+9"


def question_answer(question: str) -> int:
    """The value of an embedded-task question ``What is 7-7-8+9?``."""
    m = _QUESTION_RE.search(question)
    if m is None:
        raise ValueError(f"not an embedded-task question: {question!r}")
    return _eval_plus_minus(m.group(1))


def _line_can_continue(line: str, answer: int) -> bool:
    """Whether a partial (unfinished) line can still become a true equation or the right box."""
    if line.startswith("\\"):
        return f"\\boxed{{{answer}}}".startswith(line)
    lhs, eq, rhs = line.partition("=")
    if not eq:
        return bool(_EXPR_PREFIX_RE.match(lhs))
    if not lhs or lhs[-1] in "+-" or not _EXPR_PREFIX_RE.match(lhs):
        return False
    return str(_eval_plus_minus(lhs)).startswith(rhs)


def validity_score(question: str, prefix: str, token: str | None) -> float:
    """A graded score in [VALIDITY_FLOOR, 1] of whether ``prefix + token`` can still be completed
    into a correct worked solution (``token=None``: the answer ends here, EOS).

    The rule (deliberately generous about style, so that running totals, grouped sums and any
    other chain of true steps all count): a solution is lines ``expr=value`` that are each
    arithmetically true, then ``\\boxed{answer}`` with the question's answer, then nothing.
    ``prefix + token`` scores 1 when every finished line obeys this and the unfinished line can
    still be completed to a true equation or to the right box (``7-8=-`` can: -1; ``7-8=2``
    cannot; ``\\boxed{1`` can when the answer is 1 or 10..19). Otherwise the score is
    ``VALIDITY_FLOOR + 0.45 x`` the share of finished equation lines that are true, so a prefix
    that went wrong late keeps more than one wrong from the start, and no score is 0.
    """
    answer = question_answer(question)
    text = prefix + (token or "")
    *done, partial = text.split("\n")
    ok, good, counted, boxed = True, 0, 0, False
    for line in done:
        if boxed and line.strip():
            ok = False  # nothing may follow the boxed answer
        elif line.startswith("\\"):
            boxed = True
            ok &= line.strip() == f"\\boxed{{{answer}}}"
        elif line.strip():
            counted += 1
            lhs, eq, rhs = line.partition("=")
            try:
                true = bool(eq) and _eval_plus_minus(lhs) == int(rhs)
            except ValueError:
                true = False
            good += true
            ok &= true
    if token is None:  # the end: the solution must be finished with the right box
        ok &= (boxed and not partial.strip()) or partial.strip() == f"\\boxed{{{answer}}}"
    elif boxed:
        ok &= not partial.strip()
    else:
        ok &= _line_can_continue(partial, answer)
    if ok:
        return 1.0
    return VALIDITY_FLOOR + 0.45 * (good / counted if counted else 0.0)


@dataclass(frozen=True)
class DatasetSpec:
    """The embedded task as a training dataset, written ``arith`` or
    ``arith:size=20000,style=running,min_terms=4,max_terms=4,max_operand=9`` (the ``dataset``
    key of a training config). The task's own knobs live here, not in the generic config."""

    size: int = 20000
    """Number of distinct training problems drawn."""
    style: str = "running"
    """Solution style of the training completions (one of STYLES, or a FLAWED_STYLES scenario)."""
    min_terms: int = 4
    max_terms: int = 4
    max_operand: int = 9

    @classmethod
    def parse(cls, text: str) -> "DatasetSpec":
        """``arith[:key=value,...]`` -> DatasetSpec; a ValueError names an unknown key or bad value."""
        name, _, args = text.partition(":")
        if name != "arith":
            raise ValueError(f"not an arith dataset spec: {text!r}")
        valid = {f: type(getattr(cls(), f)) for f in cls.__dataclass_fields__}
        values = {}
        for item in filter(None, (a.strip() for a in args.split(","))):
            key, eq, val = item.partition("=")
            key = key.strip()
            if not eq or key not in valid:
                raise ValueError(f"dataset={text!r}: {item!r} is not key=value with a key of "
                                 f"{', '.join(valid)}")
            try:
                values[key] = valid[key](val.strip())
            except ValueError:
                raise ValueError(f"dataset={text!r}: {key}={val!r} is not a valid {valid[key].__name__}") from None
        spec = cls(**values)
        if spec.style not in STYLES + FLAWED_STYLES:
            raise ValueError(f"dataset={text!r}: style must be one of {STYLES + FLAWED_STYLES}, got {spec.style!r}")
        if spec.size < 1:
            raise ValueError(f"dataset={text!r}: size must be >= 1")
        TaskSpec(min_terms=spec.min_terms, max_terms=spec.max_terms, max_operand=spec.max_operand)  # checks
        return spec

    def records(self, seed: int, split: str = "train") -> list[dict]:
        """``size`` problems of ``split``: training reads "train"; an evaluation set "test", which
        never shares a problem with it."""
        task = TaskSpec(min_terms=self.min_terms, max_terms=self.max_terms, max_operand=self.max_operand)
        return generate(split, self.size, seed=seed, spec=task, style=self.style)


# --------------------------------------------------------------------------------------
# Tokenizer: byte-level BPE in Qwen2's format
# --------------------------------------------------------------------------------------
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _tokenizer_corpus(n: int = 4000) -> list[str]:
    rng = random.Random("tokenizer-corpus")
    spec = TaskSpec(min_terms=2, max_terms=6, max_operand=99)
    texts = []
    for _ in range(n):
        p = make_problem(rng, spec, rng.choice(STYLES))
        texts.append(f"<|im_start|>user\n{p['question']}<|im_end|>\n<|im_start|>assistant\n{p['solution']}<|im_end|>\n")
    # a little English so prompts from other sources tokenize into something shorter than bytes
    texts += ["The answer is the final result. Let us think step by step about the question and the solution."] * 20
    return texts


def build_tokenizer(out_dir: str | Path | None = None, vocab_size: int = 384):
    """Build the byte-level BPE tokenizer (deterministic) and optionally save it to ``out_dir``.

    Returns a ``transformers.PreTrainedTokenizerFast`` whose saved folder loads back through
    ``AutoTokenizer`` to the same ids and text.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_tokenizer_corpus(), trainer=trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                 additional_special_tokens=["<|im_start|>"], clean_up_tokenization_spaces=False,
                                 model_max_length=4096)
    hf.chat_template = CHATML_TEMPLATE
    hf.padding_side = "left"
    if out_dir is not None:
        hf.save_pretrained(str(out_dir))
    return hf


# --------------------------------------------------------------------------------------
# Tiny Qwen2 configs
# --------------------------------------------------------------------------------------
MODEL_SIZES = {
    # ~3.5M parameters: strong on the default task after a few minutes of CPU training
    "teacher": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                    intermediate_size=704),
    # ~0.5M parameters: clearly weaker at the same budget
    "student": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                    intermediate_size=352),
}


def model_config(size: str, tokenizer, **overrides):
    """A ``Qwen2Config`` for the embedded teacher ("teacher") or student ("student");
    ``overrides`` replace size fields (hidden_size=..., num_hidden_layers=...)."""
    from transformers import Qwen2Config

    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {size!r}; valid: {', '.join(MODEL_SIZES)}")
    kw = dict(vocab_size=len(tokenizer), max_position_embeddings=512, tie_word_embeddings=False,
              rope_theta=10000.0, rms_norm_eps=1e-6, bos_token_id=None,
              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return Qwen2Config(**(kw | MODEL_SIZES[size] | overrides))


def init_model(size: str, tokenizer, seed: int = 0):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(model_config(size, tokenizer))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def task_card(spec: TaskSpec, style: str) -> dict:
    return {"task": "arith", "spec": asdict(spec), "style": style}


def write_task_card(path: Path, spec: TaskSpec, style: str, extra: dict | None = None) -> None:
    card = task_card(spec, style) | (extra or {})
    Path(path).write_text(json.dumps(card, indent=2) + "\n")
