"""models.py: loading, prompt rendering and the student/teacher compatibility check."""

import pytest
import torch

from reasondistill.models import (
    SAMPLE_CONVERSATION,
    TGPO_PROMPT_TEMPLATE,
    TokenizerMismatchError,
    _resolve_source,
    assert_compatible,
    check_compatibility,
    encode_prompts,
    load_model,
    load_student,
    load_teacher,
    load_tokenizer,
    render_prompt,
    resolve_model,
    shared_vocab_size,
    stop_ids,
)

OTHER_TEMPLATE = (  # same roles, different rendering: no newline after the role, "### " headers
    "{% for message in messages %}{{ '### ' + message['role'] + ': ' + message['content'] + '<|im_end|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '### assistant: ' }}{% endif %}"
)


# ---------------------------------------------------------------------------- compatibility
def test_identical_tokenizers_pass(tokenizer, clone_tok):
    for other in (tokenizer, clone_tok(tokenizer)):
        report = assert_compatible(tokenizer, other)
        assert report.compatible and not report.problems and not report.warnings
        assert report.shared_vocab == report.shared_tokens == len(tokenizer)
        assert report.first_mismatch is None and report.template_diff is None


def _swap_ids(i, j):
    def edit(d):
        vocab = d["model"]["vocab"]
        inv = {v: k for k, v in vocab.items()}
        vocab[inv[i]], vocab[inv[j]] = j, i
    return edit


def test_changed_token_fails_and_names_it(tokenizer, clone_tok):
    i = 150
    a, b = tokenizer.convert_ids_to_tokens([i, i + 1])
    teacher = clone_tok(tokenizer, edit_json=_swap_ids(i, i + 1))
    report = check_compatibility(tokenizer, teacher)
    assert not report.compatible
    assert report.first_mismatch == (i, a, b)
    with pytest.raises(TokenizerMismatchError) as err:
        assert_compatible(tokenizer, teacher)
    assert isinstance(err.value, ValueError)
    msg = str(err.value)
    assert f"first at id {i}" in msg and repr(a) in msg and repr(b) in msg
    assert "2 of" in msg  # the swap changes two ids


def test_same_vocab_different_merges_fails(tokenizer, clone_tok):
    def drop_merges(d):
        d["model"]["merges"] = []
    teacher = clone_tok(tokenizer, edit_json=drop_merges)
    with pytest.raises(TokenizerMismatchError, match="different tokenization"):
        assert_compatible(tokenizer, teacher)


def test_different_chat_template_fails_showing_both(tokenizer, clone_tok):
    teacher = clone_tok(tokenizer, chat_template=OTHER_TEMPLATE)
    with pytest.raises(TokenizerMismatchError) as err:
        assert_compatible(tokenizer, teacher)
    msg = str(err.value)
    student_text = tokenizer.apply_chat_template(SAMPLE_CONVERSATION, tokenize=False, add_generation_prompt=True)
    teacher_text = teacher.apply_chat_template(SAMPLE_CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert student_text in msg and teacher_text in msg
    assert "first difference at character 0: student '<|im_start|>system" in msg
    assert "\n+### system: You are a helpful assistant." in msg  # the diff line of the teacher side
    assert check_compatibility(tokenizer, teacher).template_diff


def test_template_source_may_differ_if_rendering_is_equal(tokenizer, clone_tok):
    teacher = clone_tok(tokenizer, chat_template=tokenizer.chat_template + "{# a comment #}")
    assert check_compatibility(tokenizer, teacher).compatible


def test_missing_template_on_one_side_fails(tokenizer, clone_tok):
    with pytest.raises(TokenizerMismatchError, match="teacher has none"):
        assert_compatible(tokenizer, clone_tok(tokenizer, chat_template=None))


def test_different_eos_fails_naming_both_ids(tokenizer, clone_tok):
    teacher = clone_tok(tokenizer, eos_token="<|endoftext|>")
    s_eos, t_eos = tokenizer.eos_token_id, teacher.eos_token_id
    assert s_eos != t_eos
    with pytest.raises(TokenizerMismatchError) as err:
        assert_compatible(tokenizer, teacher)
    msg = str(err.value)
    assert f"student eos_token_id={s_eos}" in msg and f"teacher eos_token_id={t_eos}" in msg


def test_different_pad_only_warns(tokenizer, clone_tok):
    teacher = clone_tok(tokenizer, pad_token="<|im_start|>")
    report = assert_compatible(tokenizer, teacher)
    assert report.warnings and "pad" in report.warnings[0]


def test_padded_embedding_rows_pass_with_shared_vocab(tokenizer, make_model):
    n = len(tokenizer)
    padded = (n + 127) // 128 * 128  # Qwen-style padding of the embedding to a multiple of 128
    report = assert_compatible(tokenizer, tokenizer, student_vocab_size=n, teacher_vocab_size=padded)
    assert report.shared_vocab == n and report.teacher_vocab_size == padded
    report = assert_compatible(tokenizer, tokenizer, student_vocab_size=padded + 28, teacher_vocab_size=padded)
    assert report.shared_vocab == padded

    student, teacher = make_model(n, hidden_size=32, num_hidden_layers=1), make_model(padded, hidden_size=32,
                                                                                       num_hidden_layers=1)
    assert shared_vocab_size(student, teacher, report) == n
    assert shared_vocab_size(teacher, student) == n


def test_model_smaller_than_tokenizer_fails(tokenizer):
    with pytest.raises(TokenizerMismatchError, match="embedding rows"):
        assert_compatible(tokenizer, tokenizer, teacher_vocab_size=len(tokenizer) - 10)


def test_shared_vocab_size_refuses_incompatible_report(tokenizer, clone_tok, make_model):
    report = check_compatibility(tokenizer, clone_tok(tokenizer, eos_token="<|endoftext|>"))
    m = make_model(len(tokenizer), hidden_size=32, num_hidden_layers=1)
    with pytest.raises(TokenizerMismatchError):
        shared_vocab_size(m, m, report)


# ---------------------------------------------------------------------------- shared_ids mode
TEACHER_EOS = "<|teacher_eos|>"


def _other_family(tokenizer, clone_tok):
    """A teacher tokenizer that gives every student id the same string (same ByteLevel BPE) but
    has its own EOS, an added token beyond the student's ids, and another chat template."""
    teacher = clone_tok(tokenizer, eos_token=TEACHER_EOS, chat_template=OTHER_TEMPLATE)
    assert len(teacher) == len(tokenizer) + 1 and teacher.eos_token_id == len(tokenizer)
    return teacher


def test_shared_ids_teacher_strict_refuses_shared_ids_accepts(tokenizer, clone_tok, make_model):
    teacher = _other_family(tokenizer, clone_tok)
    with pytest.raises(TokenizerMismatchError) as err:
        assert_compatible(tokenizer, teacher)
    msg = str(err.value)
    assert "mode strict" in msg and "chat templates render the same conversation differently" in msg
    assert "EOS differs" in msg and f"teacher eos_token_id={len(tokenizer)}" in msg

    s_model = make_model(len(tokenizer), hidden_size=32, num_hidden_layers=1, eos_token_id=tokenizer.eos_token_id)
    s_model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.pad_token_id]  # instruct-style list
    t_model = make_model(len(teacher), hidden_size=32, num_hidden_layers=1, eos_token_id=teacher.eos_token_id)
    report = assert_compatible(tokenizer, teacher, mode="shared_ids", student_model=s_model, teacher_model=t_model)
    assert report.compatible and not report.problems and report.mode == "shared_ids"
    assert report.first_mismatch is None and report.shared_tokens == len(tokenizer)
    assert report.shared_vocab == len(tokenizer) and report.teacher_vocab_size == len(teacher)  # rows of the models
    assert report.student_stop_ids == sorted({tokenizer.eos_token_id, tokenizer.pad_token_id})
    assert report.teacher_stop_ids == [teacher.eos_token_id]
    assert report.template_diff  # the difference is still reported
    warnings = "\n".join(report.warnings)
    assert "chat templates differ" in warnings and "EOS differs" in warnings and "1 extra tokens" in warnings
    summary = report.summary()
    assert "mode shared_ids" in summary
    assert f"student: eos_token_id={tokenizer.eos_token_id}, stop ids {report.student_stop_ids}" in summary
    assert f"teacher: eos_token_id={teacher.eos_token_id}, stop ids {report.teacher_stop_ids}" in summary

    # without models: the tokenizers' own EOS
    report = check_compatibility(tokenizer, teacher, mode="shared_ids")
    assert report.student_stop_ids == [tokenizer.eos_token_id] and report.teacher_stop_ids == [teacher.eos_token_id]


def test_stop_ids_match_the_rollout_rule(tokenizer, make_model):
    from reasondistill.rollout import _eos_ids

    model = make_model(len(tokenizer), hidden_size=32, num_hidden_layers=1)
    for gen in (None, tokenizer.eos_token_id, [tokenizer.pad_token_id, tokenizer.eos_token_id, 7]):
        model.generation_config.eos_token_id = gen
        assert stop_ids(tokenizer, model) == _eos_ids(tokenizer, None, model)
    assert stop_ids(tokenizer) == _eos_ids(tokenizer, None) == [tokenizer.eos_token_id]


def test_vocab_differing_at_one_id_is_refused_in_both_modes(tokenizer, clone_tok):
    student, teacher = clone_tok(tokenizer), clone_tok(tokenizer)
    student.add_tokens(["<|student_only|>"], special_tokens=True)
    teacher.add_tokens(["<|teacher_only|>"], special_tokens=True)
    i = len(tokenizer)  # the same id, another string on each side
    for mode in ("strict", "shared_ids"):
        report = check_compatibility(student, teacher, mode=mode)
        assert not report.compatible and report.first_mismatch == (i, "<|student_only|>", "<|teacher_only|>")
        with pytest.raises(TokenizerMismatchError) as err:
            assert_compatible(student, teacher, mode=mode)
        msg = str(err.value)
        assert f"1 of {i + 1} shared ids; first at id {i}: student '<|student_only|>' vs teacher '<|teacher_only|>'" \
            in msg


def test_shared_ids_still_refuses_different_tokenization(tokenizer, clone_tok):
    def drop_merges(d):
        d["model"]["merges"] = []
    teacher = clone_tok(tokenizer, edit_json=drop_merges, chat_template=OTHER_TEMPLATE)
    with pytest.raises(TokenizerMismatchError, match="different tokenization"):
        assert_compatible(tokenizer, teacher, mode="shared_ids")


def test_unknown_mode_is_refused(tokenizer):
    for fn in (check_compatibility, assert_compatible):
        with pytest.raises(ValueError, match="unknown tokenizer compatibility mode 'loose'.*strict, shared_ids"):
            fn(tokenizer, tokenizer, mode="loose")


# ---------------------------------------------------------------------------- rendering
def test_render_prompt_uses_chat_template(tokenizer, clone_tok):
    text = render_prompt(tokenizer, "What is 1+2?")
    assert text == "<|im_start|>user\nWhat is 1+2?<|im_end|>\n<|im_start|>assistant\n"
    with_sys = render_prompt(tokenizer, "What is 1+2?", system="Be brief.")
    assert with_sys.startswith("<|im_start|>system\nBe brief.<|im_end|>\n") and with_sys.endswith(text)
    ids = encode_prompts(tokenizer, [text])[0]
    assert tokenizer.decode(ids) == text  # nothing added, nothing lost
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    with pytest.raises(ValueError, match="chat_template"):
        render_prompt(clone_tok(tokenizer, chat_template=None), "hi")


def test_render_prompt_chat_is_the_default(tokenizer):
    assert render_prompt(tokenizer, "q?", template="chat") == render_prompt(tokenizer, "q?")
    assert render_prompt(tokenizer, "q?", "sys", template="chat") == render_prompt(tokenizer, "q?", "sys")


def test_raw_template_replaces_only_the_placeholders(tokenizer, clone_tok):
    template = "Q: {question}\nAnswer in \\boxed{} or {json: 1}; {{question}} {x}\nA:"
    question = "What is {2}+{system}?"
    text = render_prompt(tokenizer, question, template=template)
    assert text == "Q: What is {2}+{system}?\nAnswer in \\boxed{} or {json: 1}; {What is {2}+{system}?} {x}\nA:"
    # no chat template needed for a raw template
    assert render_prompt(clone_tok(tokenizer, chat_template=None), "1+1", template="{question}=") == "1+1="
    assert render_prompt(tokenizer, "1+1", system="S", template="[{system}] {question}") == "[S] 1+1"
    assert render_prompt(tokenizer, "1+1", template="[{system}] {question}") == "[] 1+1"
    with pytest.raises(ValueError, match="no \\{system\\} placeholder"):
        render_prompt(tokenizer, "1+1", system="S", template="{question}")
    with pytest.raises(ValueError, match="no \\{question\\} placeholder"):
        render_prompt(tokenizer, "1+1", template="Question: {q}\nAnswer:")
    with pytest.raises(ValueError, match="write the paper's \\{QUESTION\\} as \\{question\\}"):
        render_prompt(tokenizer, "1+1", template="User: {QUESTION}")


def test_tgpo_template_renders_and_encodes_alike_for_shared_id_tokenizers(tokenizer, clone_tok):
    teacher = _other_family(tokenizer, clone_tok)
    assert_compatible(tokenizer, teacher, mode="shared_ids")
    question = "What is 7-7-8+9?"
    text = render_prompt(tokenizer, question, template=TGPO_PROMPT_TEMPLATE)
    assert text.endswith("User: What is 7-7-8+9?\n\nAssistant: <think>")
    assert text.startswith("Your task is to follow a systematic, thorough reasoning process")
    assert "`\\boxed{}`" in text and "{question}" not in text
    assert render_prompt(teacher, question, template=TGPO_PROMPT_TEMPLATE) == text  # the template, not the tokenizer
    s_ids, t_ids = encode_prompts(tokenizer, [text])[0], encode_prompts(teacher, [text])[0]
    assert s_ids == t_ids and max(s_ids) < len(tokenizer)
    assert tokenizer.decode(s_ids) == text


# ---------------------------------------------------------------------------- loading
def test_resolve_model(tmp_path, monkeypatch):
    from reasondistill.tasks import arith

    for which in ("student", "teacher"):
        assert resolve_model(f"embedded:{which}") == str(arith.ASSETS_DIR / which)
    assert resolve_model("Qwen/Qwen2.5-Math-1.5B") == "Qwen/Qwen2.5-Math-1.5B"
    assert resolve_model("runs/sft/final") == "runs/sft/final"
    monkeypatch.setattr(arith, "ASSETS_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="'embedded:student' not found.*reasondistill task build"):
        resolve_model("embedded:student")


def test_save_and_load_roundtrip(tmp_path, tokenizer, make_model):
    model = make_model(len(tokenizer), hidden_size=32, num_hidden_layers=1)
    folder = tmp_path / "tiny"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)

    loaded = load_model(folder)
    assert loaded.dtype == torch.float32
    for (name, p), q in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(p, q), name
    ids = torch.tensor([[5, 6, 7, 8]])
    model.eval()
    assert torch.allclose(model(ids).logits, loaded(ids).logits, atol=1e-6)

    tok = load_tokenizer(str(folder))
    text = render_prompt(tokenizer, "What is 12 + 7 - 3?\n  ok")
    assert render_prompt(tok, "What is 12 + 7 - 3?\n  ok") == text
    assert tok(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert tok.decode(tok(text)["input_ids"]) == text
    assert_compatible(tok, tokenizer)

    assert load_model(folder, dtype="bfloat16").dtype == torch.bfloat16
    teacher, _ = load_teacher(folder)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    student, _ = load_student(folder)
    assert student.training and all(p.requires_grad for p in student.parameters())
    with pytest.raises(ValueError, match="unknown dtype"):
        load_model(folder, dtype="float8")


def test_missing_path_error_names_it(tmp_path):
    missing = tmp_path / "no_such_model"
    for loader in (load_model, load_tokenizer):
        with pytest.raises(FileNotFoundError, match="no_such_model"):
            loader(missing)
        with pytest.raises(FileNotFoundError, match="no_such_model"):
            loader(str(missing))
    with pytest.raises(FileNotFoundError, match="not-here"):
        load_model("./not-here")


def test_hub_names_pass_through(tmp_path):
    assert _resolve_source("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert _resolve_source("gpt2") == "gpt2"
    assert _resolve_source(tmp_path) == str(tmp_path)
