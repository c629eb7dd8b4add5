"""Shared fixtures: the embedded task's local byte-level BPE tokenizer and tiny random Qwen2
models. Nothing here touches the network."""

from __future__ import annotations

import json
import os

import pytest
import torch

# Tiny models on a small shared CPU: one intra-op thread is several times faster than two
# (no thread hand-off per tiny matmul, no spinning when another process holds a core).
torch.set_num_threads(int(os.environ.get("REASONDISTILL_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No test may reach the Hugging Face Hub (a CI machine might have network): the Hub loaders
    read these at call time and fail with their offline message instead of downloading."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")

@pytest.fixture(scope="session")
def tokenizer():
    """The shared tokenizer. Do not mutate it: use ``clone_tokenizer`` for variants."""
    from reasondistill.tasks.arith import build_tokenizer

    return build_tokenizer()


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


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """A tiny random student and teacher (saved folders) sharing the embedded tokenizer."""
    d = tmp_path_factory.mktemp("tiny")
    from transformers import AutoModelForCausalLM

    from reasondistill.tasks import arith

    tok = arith.build_tokenizer()

    for name, (h, layers, seed) in {"student": (32, 1, 0), "teacher": (48, 2, 1)}.items():
        cfg = arith.model_config("student", tok, hidden_size=h, num_hidden_layers=layers, intermediate_size=2 * h)
        torch.manual_seed(seed)
        m = AutoModelForCausalLM.from_config(cfg)
        m.save_pretrained(d / name)
        tok.save_pretrained(str(d / name))
    return d
