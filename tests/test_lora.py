"""models.py: LoRA / QLoRA through peft, adapter folders as models, and checkpoint state."""

import json
import shutil

import pytest
import torch
from peft import PeftModel

from reasondistill.models import (
    apply_lora,
    is_adapter_folder,
    load_model,
    load_student,
    load_teacher,
    load_tokenizer,
    load_trainable_state_dict,
    save_pretrained_model,
    trainable_state_dict,
)

IDS = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]])
ALL_LINEAR = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, tokenizer, make_model):
    """A saved tiny base model with its tokenizer (loading it records the folder as its name)."""
    d = tmp_path_factory.mktemp("lora") / "base"
    make_model(len(tokenizer), hidden_size=32, num_hidden_layers=2).save_pretrained(d)
    tokenizer.save_pretrained(str(d))
    return d


def _logits(model, ids=IDS):
    model.eval()
    with torch.no_grad():
        return model(ids).logits


def _perturbed_lora(base_dir, seed=0, **kw):
    """A LoRA model on the saved base whose B matrices are non-zero (so the adapter is not a no-op)."""
    model = apply_lora(load_model(base_dir), r=4, alpha=8, **kw)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def _lora_param_count(model, r, names=ALL_LINEAR):
    """r * (in + out) for every linear layer named in ``names``: A is (r, in), B is (out, r)."""
    return sum(r * (m.in_features + m.out_features) for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in names)


def _adapted(model) -> set[str]:
    return {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in model.named_parameters() if ".lora_A." in n}


# ---------------------------------------------------------------------------- apply_lora
def test_all_linear_trains_only_the_adapter(base_dir):
    base = load_model(base_dir)
    expected = _lora_param_count(base, r=8)
    before = _logits(base)
    model = apply_lora(base, r=8, alpha=16)
    assert isinstance(model, PeftModel) and model.peft_config["default"].task_type == "CAUSAL_LM"
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert sum(p.numel() for p in trainable.values()) == expected
    assert _adapted(model) == ALL_LINEAR  # every linear layer but the LM head
    assert not any("lm_head" in n for n in trainable)
    assert torch.equal(_logits(model), before)  # B starts at zero: the adapter starts as a no-op


@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], "q_proj, v_proj", ("q_proj", "v_proj")])
def test_explicit_target_modules(base_dir, targets):
    base = load_model(base_dir)
    expected = _lora_param_count(base, r=4, names={"q_proj", "v_proj"})
    model = apply_lora(base, r=4, target_modules=targets)
    assert _adapted(model) == {"q_proj", "v_proj"}
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected


def test_bad_arguments_are_refused(base_dir):
    model = apply_lora(load_model(base_dir), r=4)
    with pytest.raises(ValueError, match="already is a peft.PeftModel.*merge it first"):
        apply_lora(model)
    with pytest.raises(ValueError, match="names no module"):
        apply_lora(load_model(base_dir), target_modules=" , ")
    with pytest.raises(ValueError, match="rank r"):
        apply_lora(load_model(base_dir), r=0)
    with pytest.raises(ValueError, match="no_such_proj"):  # peft names the module it cannot find
        apply_lora(load_model(base_dir), target_modules="no_such_proj")


def test_quantized_flag_prepares_for_kbit_training(base_dir):
    """The QLoRA preparation step runs (on a float model here) and still leaves only the adapter trainable."""
    model = apply_lora(load_model(base_dir), r=4, quantized=True, gradient_checkpointing=False)
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)


# ---------------------------------------------------------------------------- adapter folders
def test_adapter_folder_roundtrips_exactly(tmp_path, base_dir):
    model = _perturbed_lora(base_dir)
    save_pretrained_model(model, tmp_path / "ad")
    assert (tmp_path / "ad" / "adapter_config.json").is_file()
    assert (tmp_path / "ad" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "ad" / "model.safetensors").exists() and not (tmp_path / "ad" / "merged").exists()
    assert is_adapter_folder(tmp_path / "ad") and not is_adapter_folder(base_dir)

    loaded = load_model(tmp_path / "ad", merge_adapter=False)
    assert isinstance(loaded, PeftModel)
    assert torch.equal(_logits(loaded), _logits(model))
    assert all("lora_" in n for n, p in loaded.named_parameters() if p.requires_grad)  # ready to keep training


def test_adapter_folder_loads_as_the_merged_model(tmp_path, base_dir):
    model = _perturbed_lora(base_dir)
    save_pretrained_model(model, tmp_path / "ad")
    merged = load_model(tmp_path / "ad")
    assert not isinstance(merged, PeftModel) and not any("lora_" in n for n, _ in merged.named_parameters())
    want = _logits(model)
    assert torch.allclose(_logits(merged), want, atol=1e-5, rtol=0)
    assert (_logits(load_model(base_dir)) - want).abs().max() > 1e-2  # not the base model

    student, tok = load_student(tmp_path / "ad")
    assert student.training and all(p.requires_grad for p in student.parameters())
    assert torch.allclose(_logits(student), want, atol=1e-5, rtol=0)
    teacher, _ = load_teacher(tmp_path / "ad")
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert tok.get_vocab() == load_tokenizer(base_dir).get_vocab()


def test_adapter_tokenizer_is_its_own_else_the_base_models(tmp_path, base_dir, tokenizer, clone_tok):
    model = _perturbed_lora(base_dir)
    save_pretrained_model(model, tmp_path / "plain")
    assert load_tokenizer(tmp_path / "plain").chat_template == tokenizer.chat_template  # the base's
    own = clone_tok(tokenizer, chat_template="{{ messages[0]['content'] }}")
    save_pretrained_model(model, tmp_path / "with_tok", tokenizer=own)
    assert load_tokenizer(tmp_path / "with_tok").chat_template == own.chat_template


def test_missing_or_relative_base_is_named(tmp_path, base_dir, monkeypatch):
    model = _perturbed_lora(base_dir)
    ad = tmp_path / "ad"
    save_pretrained_model(model, ad)
    cfg_path = ad / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    moved = tmp_path / "moved_base"
    shutil.copytree(base_dir, moved)

    cfg["base_model_name_or_path"] = "runs/sft/base"  # relative, as written by a run started elsewhere
    cfg_path.write_text(json.dumps(cfg))
    monkeypatch.chdir(tmp_path)
    for loader in (load_model, load_tokenizer):
        with pytest.raises(FileNotFoundError) as err:
            loader(ad)
        msg = str(err.value)
        assert f"LoRA adapter folder {str(ad)!r} expects its base model at 'runs/sft/base'" in msg
        assert "relative path" in msg and "base_model_name_or_path" in msg and "base_model=" in msg
    # the override finds it
    assert torch.allclose(_logits(load_model(ad, base_model=moved)), _logits(model), atol=1e-5, rtol=0)

    cfg["base_model_name_or_path"] = str(tmp_path / "gone")
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(FileNotFoundError, match="expects its base model at .*gone"):
        load_model(ad)
    cfg["base_model_name_or_path"] = None
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="adapter_config.json: field 'base_model_name_or_path' is empty"):
        load_model(ad)


def test_adapter_on_a_merged_adapter_records_it_as_its_base(tmp_path, base_dir):
    """LoRA SFT, then a new LoRA (e.g. GRPO) on the merged SFT model: loading the second adapter
    must give SFT + GRPO, not base + GRPO (the TRL #3194 failure one level down)."""
    save_pretrained_model(_perturbed_lora(base_dir, seed=0), tmp_path / "sft")
    sft = load_model(tmp_path / "sft")
    assert sft.name_or_path == str(tmp_path / "sft")
    second = apply_lora(sft, r=4, alpha=8)
    with torch.no_grad():
        for name, p in second.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.2)
    save_pretrained_model(second, tmp_path / "grpo")
    cfg = json.loads((tmp_path / "grpo" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(tmp_path / "sft")
    loaded = load_model(tmp_path / "grpo")
    want = _logits(second)
    assert torch.allclose(_logits(loaded), want, atol=1e-5, rtol=0)
    assert (_logits(load_model(tmp_path / "sft")) - want).abs().max() > 1e-2


def test_relative_base_is_recorded_absolute(tmp_path, base_dir, monkeypatch):
    monkeypatch.chdir(base_dir.parent)
    model = apply_lora(load_model(base_dir.name), r=4)
    save_pretrained_model(model, tmp_path / "ad")
    cfg = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(base_dir)
    monkeypatch.chdir(tmp_path)  # another working directory: still found
    assert not isinstance(load_model(tmp_path / "ad"), PeftModel)


def test_merge_true_writes_a_loadable_merged_model(tmp_path, base_dir, tokenizer):
    model = _perturbed_lora(base_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    save_pretrained_model(model, tmp_path / "ad", merge=True, tokenizer=tokenizer)
    merged_dir = tmp_path / "ad" / "merged"
    assert (merged_dir / "model.safetensors").is_file() and (merged_dir / "config.json").is_file()
    assert not is_adapter_folder(merged_dir)
    # the model being trained is untouched: still a PeftModel with the same (unmerged) weights
    assert isinstance(model, PeftModel)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
    merged = load_model(merged_dir)
    assert torch.allclose(_logits(merged), _logits(model), atol=1e-5, rtol=0)
    assert torch.allclose(_logits(merged), _logits(load_model(tmp_path / "ad")), atol=1e-6, rtol=0)
    assert load_tokenizer(merged_dir).get_vocab() == tokenizer.get_vocab()


def test_plain_model_saves_itself(tmp_path, base_dir):
    model = load_model(base_dir)
    save_pretrained_model(model, tmp_path / "full", merge=True)  # nothing to merge: merge is a no-op
    assert (tmp_path / "full" / "model.safetensors").is_file() and not is_adapter_folder(tmp_path / "full")
    assert torch.equal(_logits(load_model(tmp_path / "full")), _logits(model))


# ---------------------------------------------------------------------------- checkpoint state
def test_trainable_state_dict_roundtrips_into_a_fresh_lora_model(base_dir):
    model = _perturbed_lora(base_dir, seed=1)
    state = {k: v.clone() for k, v in trainable_state_dict(model).items()}
    n_lora = sum(1 for n, _ in model.named_parameters() if "lora_" in n)
    assert len(state) == n_lora and all("lora_" in k for k in state)  # the adapter only, no base weights

    fresh = apply_lora(load_model(base_dir), r=4, alpha=8)
    assert not torch.equal(_logits(fresh), _logits(model))
    load_trainable_state_dict(fresh, state)
    got = trainable_state_dict(fresh)
    assert got.keys() == state.keys() and all(torch.equal(got[k], state[k]) for k in state)
    assert torch.equal(_logits(fresh), _logits(model))

    key = sorted(state)[0]
    with pytest.raises(RuntimeError, match=f"missing \\['{key}'\\]"):
        load_trainable_state_dict(fresh, {k: v for k, v in state.items() if k != key})
    with pytest.raises(RuntimeError, match="unexpected \\['extra.weight'\\]"):
        load_trainable_state_dict(fresh, state | {"extra.weight": torch.zeros(1)})
    with pytest.raises(RuntimeError, match="unexpected"):  # adapter state into a plain model
        load_trainable_state_dict(load_model(base_dir), state)


def test_saved_model_folder_is_the_checkpoint_state(tmp_path, base_dir, tokenizer, make_model):
    """What save_pretrained_model writes (safetensors) loads back through load_trainable_state_dict."""
    from safetensors.torch import load_file

    model = _perturbed_lora(base_dir, seed=2)
    save_pretrained_model(model, tmp_path / "lora")
    saved = load_file(str(tmp_path / "lora" / "adapter_model.safetensors"))
    assert saved.keys() == trainable_state_dict(model).keys()
    fresh = apply_lora(load_model(base_dir), r=4, alpha=8)
    load_trainable_state_dict(fresh, saved)
    assert torch.equal(_logits(fresh), _logits(model))

    plain = make_model(len(tokenizer), seed=3, hidden_size=32, num_hidden_layers=1)
    save_pretrained_model(plain, tmp_path / "plain")
    other = make_model(len(tokenizer), seed=4, hidden_size=32, num_hidden_layers=1)
    load_trainable_state_dict(other, load_file(str(tmp_path / "plain" / "model.safetensors")))
    assert torch.equal(_logits(other), _logits(plain))


def test_plain_model_state_is_the_full_state_dict(tokenizer, make_model):
    from transformers import AutoModelForCausalLM, Qwen2Config

    model = make_model(len(tokenizer), seed=1, hidden_size=32, num_hidden_layers=1)
    state = {k: v.clone() for k, v in trainable_state_dict(model).items()}
    assert state.keys() == model.state_dict().keys()
    fresh = make_model(len(tokenizer), seed=2, hidden_size=32, num_hidden_layers=1)
    load_trainable_state_dict(fresh, state)
    assert torch.equal(_logits(fresh), _logits(model))
    # an untied head must be present ...
    with pytest.raises(RuntimeError, match="missing \\['lm_head.weight'\\]"):
        load_trainable_state_dict(fresh, {k: v for k, v in state.items() if k != "lm_head.weight"})
    # ... a head tied to the embedding may be left out
    cfg = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, tie_word_embeddings=True)
    tied = AutoModelForCausalLM.from_config(cfg)
    tied_state = {k: v.clone() + 1 for k, v in tied.state_dict().items() if k != "lm_head.weight"}
    load_trainable_state_dict(tied, tied_state)
    assert torch.equal(tied.lm_head.weight, tied_state["model.embed_tokens.weight"])


# ---------------------------------------------------------------------------- QLoRA
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_nf4_without_cuda_says_what_is_missing(base_dir):
    import importlib.util

    with pytest.raises(RuntimeError) as err:
        load_model(base_dir, quantization="nf4")
    msg = str(err.value)
    assert "QLoRA" in msg and "needs a CUDA GPU and `pip install bitsandbytes`" in msg
    assert "no CUDA GPU is available" in msg
    assert ("bitsandbytes is not installed" in msg) == (importlib.util.find_spec("bitsandbytes") is None)
    save_pretrained_model(_perturbed_lora(base_dir), base_dir.parent / "ad_nf4")
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):  # an adapter folder's base goes the same way
        load_student(base_dir.parent / "ad_nf4", quantization="nf4")


def test_unknown_quantization_is_refused(base_dir):
    with pytest.raises(ValueError, match="unknown quantization 'int3'.*'nf4'"):
        load_model(base_dir, quantization="int3")
