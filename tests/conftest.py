"""Shared fixtures: a local byte-level BPE tokenizer and tiny random Qwen2 models.

Nothing here touches the network. The tokenizer is the embedded task's
(``reasondistill.tasks.arith.build_tokenizer``) when that module is importable, otherwise
a small stand-in built the same way (byte-level BPE, ChatML, eos ``<|im_end|>``, pad
``<|endoftext|>``).
"""

from __future__ import annotations

import json
import os

import pytest
import torch

# Tiny models on a small shared CPU: one intra-op thread is several times faster than two
# (no thread hand-off per tiny matmul, no spinning when another process holds a core).
torch.set_num_threads(int(os.environ.get("REASONDISTILL_TEST_THREADS", "1")))

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _fallback_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [f"What is {a}+{b}-{a % 7}?\n{a}+{b}={a + b}\n\\boxed{{{a + b - a % 7}}}" for a in range(40)
              for b in range(0, 40, 3)] + ["The answer is the final result. Let us think step by step."] * 10
    trainer = trainers.BpeTrainer(vocab_size=340, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                 additional_special_tokens=["<|im_start|>"], clean_up_tokenization_spaces=False)
    hf.chat_template = CHATML
    return hf


def _build_tokenizer():
    try:
        from reasondistill.tasks.arith import build_tokenizer
    except ImportError:
        return _fallback_tokenizer()
    return build_tokenizer()


@pytest.fixture(scope="session")
def tokenizer():
    """The shared tokenizer. Do not mutate it: use ``clone_tokenizer`` for variants."""
    return _build_tokenizer()


def clone_tokenizer(tok, *, eos_token=None, pad_token=None, chat_template="same", edit_json=None):
    """An independent copy of ``tok`` with some properties changed.

    ``edit_json(d)`` may modify the backend tokenizer's JSON dict in place (vocab, merges).
    ``chat_template=None`` removes the template.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    d = json.loads(tok.backend_tokenizer.to_str())
    if edit_json is not None:
        edit_json(d)
    out = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(d)),
                                  eos_token=eos_token or tok.eos_token, pad_token=pad_token or tok.pad_token,
                                  clean_up_tokenization_spaces=False)
    out.chat_template = tok.chat_template if chat_template == "same" else chat_template
    return out


def tiny_qwen2(vocab_size: int, seed: int = 0, hidden_size: int = 64, num_hidden_layers: int = 2,
               eos_token_id=None, pad_token_id=None):
    """A small random ``Qwen2ForCausalLM`` (float32, train mode as ``from_config`` leaves it)."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    cfg = Qwen2Config(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                      num_attention_heads=4, num_key_value_heads=2, intermediate_size=2 * hidden_size,
                      max_position_embeddings=256, tie_word_embeddings=False, eos_token_id=eos_token_id,
                      pad_token_id=pad_token_id, bos_token_id=None)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg)


@pytest.fixture(scope="session")
def tiny_model(tokenizer):
    """A shared tiny random model over ``tokenizer``; tests must not modify its weights."""
    return tiny_qwen2(len(tokenizer), eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


@pytest.fixture(scope="session")
def clone_tok():
    """``clone_tokenizer`` as a fixture (so test modules need not import conftest)."""
    return clone_tokenizer


@pytest.fixture(scope="session")
def make_model():
    """``tiny_qwen2`` as a fixture."""
    return tiny_qwen2
