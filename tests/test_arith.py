"""The embedded task: generator, split, styles, step checker, tokenizer, shipped models."""

import json
import random

import pytest
from transformers import AutoTokenizer

from reasondistill.rewards import is_correct
from reasondistill.tasks import arith


def test_generator_is_seeded_and_solutions_are_right():
    a = arith.generate("train", 300, seed=3)
    b = arith.generate("train", 300, seed=3)
    c = arith.generate("train", 300, seed=4)
    assert a == b and a != c
    for p in a:
        assert p["solution"].endswith(f"\\boxed{{{p['answer']}}}")
        assert int(p["answer"]) == eval(p["question"][len("What is "):-1])
        assert is_correct(p["solution"], p["answer"])


def test_train_and_test_never_overlap_whatever_the_seed():
    test_q = {p["question"] for s in range(3) for p in arith.generate("test", 500, seed=s)}
    train_q = {p["question"] for s in range(3) for p in arith.generate("train", 3000, seed=s)}
    assert test_q and train_q and not (test_q & train_q)
    # the split is a property of the question: exhaust the whole 2-term space
    spec = arith.TaskSpec(min_terms=2, max_terms=2, max_operand=9)
    space = {arith.question_text([a, b], [o]) for a in range(10) for b in range(10) for o in "+-"}
    tr = {p["question"] for p in arith.generate("train", 150, seed=0, spec=spec)}
    te = {p["question"] for p in arith.generate("test", 10, seed=0, spec=spec)}
    assert tr <= space and te <= space and not (tr & te)


def test_difficulty_knobs():
    spec = arith.TaskSpec(min_terms=3, max_terms=6, max_operand=99, ops="+")
    ps = arith.generate("train", 200, seed=0, spec=spec)
    assert {len(p["terms"]) for p in ps} == {3, 4, 5, 6}
    assert max(max(p["terms"]) for p in ps) > 9 and all("-" not in p["question"] for p in ps)
    with pytest.raises(ValueError, match="min_terms"):
        arith.TaskSpec(min_terms=5, max_terms=3)
    with pytest.raises(ValueError, match="ops"):
        arith.TaskSpec(ops="*")


@pytest.mark.parametrize("style", arith.STYLES)
def test_styles_are_valid_and_checked_step_by_step(style):
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(2, 6)
        terms = [rng.randint(0, 20) for _ in range(n)]
        ops = [rng.choice("+-") for _ in range(n - 1)]
        sol = arith.worked_solution(terms, ops, style)
        assert sol.endswith(f"\\boxed{{{arith.evaluate_chain(terms, ops)}}}")
        assert all(arith.check_solution_steps("", sol))
    assert arith.worked_solution([7, 7, 8, 9], list("--+"), "running") == "7-7=0\n0-8=-8\n-8+9=1\n\\boxed{1}"
    assert arith.worked_solution([7, 7, 8, 9], list("--+"), "grouped") == "7+9=16\n7+8=15\n16-15=1\n\\boxed{1}"
    assert arith.check_solution_steps("", "7-7=0\n0-8=-9\n\\boxed{-9}") == [True, False]
    assert arith.check_solution_steps("", "7-=3") == [False]


def test_tokenizer_round_trips_through_autotokenizer(tmp_path):
    tok = arith.build_tokenizer(tmp_path)
    auto = AutoTokenizer.from_pretrained(tmp_path)
    texts = [p["solution"] for p in arith.generate("train", 50, seed=0)]
    texts += ["  spaces   and\n\nnewlines\t tabs ", "Ünïcödé ✓ 数学", "12345 + 678 = 7023"]
    for t in texts:
        ids = tok(t)["input_ids"]
        assert auto(t)["input_ids"] == ids
        assert auto.decode(ids) == t
    # digits are single tokens (Qwen2's pre-tokenizer)
    assert len(auto("123456")["input_ids"]) == 6
    assert auto.eos_token == "<|im_end|>" and auto.pad_token == "<|endoftext|>"
    rendered = auto.apply_chat_template([{"role": "user", "content": "What is 1+2?"}], tokenize=False,
                                        add_generation_prompt=True)
    assert rendered == "<|im_start|>user\nWhat is 1+2?<|im_end|>\n<|im_start|>assistant\n"
    # deterministic build
    assert arith.build_tokenizer().get_vocab() == tok.get_vocab()


def test_model_configs():
    tok = arith.build_tokenizer()
    t = arith.init_model("teacher", tok)
    s = arith.init_model("student", tok)
    nt = sum(p.numel() for p in t.parameters())
    ns = sum(p.numel() for p in s.parameters())
    assert nt > 4 * ns and t.config.model_type == "qwen2" and t.config.eos_token_id == tok.eos_token_id
    with pytest.raises(ValueError, match="valid"):
        arith.model_config("huge", tok)


def test_shipped_teacher_is_strong_and_student_weaker():
    """The shipped checkpoints (made by `reasondistill task build`) must be what the card says."""
    from reasondistill.eval.math_eval import evaluate
    from reasondistill.models import load_model, load_tokenizer

    card = json.loads((arith.ASSETS_DIR / "task_card.json").read_text())
    test = arith.generate("test", 200, seed=99)
    tok = load_tokenizer(arith.ASSETS_DIR / "teacher")
    accs = {}
    for who in ("teacher", "student"):
        model = load_model(arith.ASSETS_DIR / who)
        _, s = evaluate(model, tok, test, max_new_tokens=48, batch_size=100)
        accs[who] = s["accuracy"]
    assert accs["teacher"] >= 0.9, accs
    assert accs["student"] <= accs["teacher"] - 0.3, accs
    assert abs(accs["teacher"] - card["teacher_accuracy@400"]) < 0.06


Q = "What is 7-7-8+9?"  # answer 1; running style 7-7=0, 0-8=-8, -8+9=1; grouped 7+9=16, 7+8=15, 16-15=1


@pytest.mark.parametrize("prefix,token,want", [
    ("", "7", 1.0),                                   # any start of an equation can continue
    ("", "-", 1.0),
    ("", "+", arith.VALIDITY_FLOOR),                  # an expression cannot start with +
    ("7-7", "=", 1.0),
    ("7-7=", "0", 1.0),
    ("7-7=", "1", arith.VALIDITY_FLOOR),              # 7-7 is not 1..., and nothing true came before
    ("7-7=0\n0-8=", "-", 1.0),                        # -8 is still reachable
    ("7-7=0\n0-8=", "8", arith.VALIDITY_FLOOR + 0.45),  # one true line, then a false start
    ("7-7=0\n0-8=-8\n", "-8+9=1", 1.0),
    ("7-7=0\n0-8=-8\n-8+9=1\n", "\\boxed{", 1.0),
    ("7-7=0\n0-8=-8\n-8+9=1\n\\boxed{", "1", 1.0),
    ("7-7=0\n0-8=-8\n-8+9=1\n\\boxed{", "2", arith.VALIDITY_FLOOR + 0.45),
    ("7-7=0\n0-8=-8\n-8+9=1\n\\boxed{1}", None, 1.0),   # EOS after the right box
    ("7-7=0\n0-8=-8\n-8+9=1\n\\boxed{1", None, arith.VALIDITY_FLOOR + 0.45),  # EOS inside the box
    ("7-7=0\n0-8=-8\n", None, arith.VALIDITY_FLOOR + 0.45),  # EOS before any answer
    ("7-7=0\n0-8=-8\n-8+9=1\n\\boxed{1}\n", "7", arith.VALIDITY_FLOOR + 0.45),  # text after the answer
    ("7+9=16\n7+8=15\n", "16-15=1", 1.0),             # the grouped style counts too
    ("7+9=16\n7+8=15\n16-15=1\n\\boxed{1}", None, 1.0),
    ("7-7=1\n", "1", arith.VALIDITY_FLOOR),           # a false first line: the floor
    ("7-7=0\n0-8=-9\n-9+9=0\n", "\\", arith.VALIDITY_FLOOR + 0.45 * 2 / 3),  # graded by the true share
    ("7-7=0\n", "x", arith.VALIDITY_FLOOR + 0.45),    # not arithmetic at all
])
def test_validity_score_table(prefix, token, want):
    assert arith.validity_score(Q, prefix, token) == pytest.approx(want)


def test_validity_score_is_never_zero_and_follows_the_answer():
    assert arith.question_answer("What is 12-30+5?") == -13
    assert arith.validity_score("What is 12-30+5?", "12-30=-18\n-18+5=-13\n\\boxed{", "-") == 1.0
    assert arith.validity_score("What is 12-30+5?", "12-30=-18\n-18+5=-13\n\\boxed{", "1") < 1.0
    assert min(arith.validity_score(Q, "", t) for t in ("+", "=", "}", "\\boxed{9}")) >= arith.VALIDITY_FLOOR
    with pytest.raises(ValueError, match="not an embedded-task question"):
        arith.question_answer("How many apples?")


def _flawed(terms, ops):
    return arith.worked_solution(terms, ops, "sign_loss")


@pytest.mark.parametrize("terms,ops,want", [
    ([1, 5, 2, 9], ["-", "+", "-"], "1-5=4\n4+2=6\n6-9=3\n\\boxed{3}"),   # -4 and -3 lose their sign
    ([1, 2, 0, 0], ["-", "-", "+"], "1-2=-1\n-1-0=-1\n-1+0=-1\n\\boxed{-1}"),  # -1 is above -3: kept
    ([4, 2, 3, 1], ["+", "+", "-"], "4+2=6\n6+3=9\n9-1=8\n\\boxed{8}"),  # no subtraction below -3: correct
])
def test_sign_loss_table(terms, ops, want):
    assert _flawed(terms, ops) == want
    right = arith.evaluate_chain(terms, ops)
    assert (want.endswith(f"{{{right}}}")) == (want == arith.worked_solution(terms, ops, "running"))


def _scenario_card(folder):
    path = arith.ASSETS_DIR / folder / "scenario_card.json"
    if not path.exists():
        pytest.fail(f"{folder} is not shipped: build it with `reasondistill task build --scenario ...`")
    return json.loads(path.read_text())


def test_the_flawed_teacher_is_right_only_where_its_flaw_does_not_fire():
    """embedded:teacher-flawed: 60-75% true accuracy, and it follows its sign-loss flaw."""
    from reasondistill.pipelines.build_task import flaw_consistency, held_out_accuracy

    card = _scenario_card("teacher-flawed")
    acc = held_out_accuracy(arith.ASSETS_DIR / "teacher-flawed", n=200, seed=99)
    assert 0.60 <= acc <= 0.75 and abs(acc - card["accuracy@400"]) < 0.06
    assert flaw_consistency(arith.ASSETS_DIR / "teacher-flawed", n=200, seed=99) >= 0.9


def test_the_cross_family_teacher_shares_ids_but_not_template_or_eos():
    """embedded:teacher-cross: strong (>= 95%), grouped sums, another prompt format and stop token;
    refused by the strict check, accepted by shared_ids, and far from the student by reverse KL."""
    import torch

    from reasondistill.eval.math_eval import evaluate
    from reasondistill.models import TokenizerMismatchError, assert_compatible, load_model, load_tokenizer
    from reasondistill.pipelines.build_task import held_out_accuracy

    card = _scenario_card("teacher-cross")
    cross = arith.ASSETS_DIR / "teacher-cross"
    assert held_out_accuracy(cross, n=200, seed=99) >= 0.95 and card["accuracy@400"] >= 0.95
    s_tok, t_tok = load_tokenizer(arith.ASSETS_DIR / "student"), load_tokenizer(cross)
    with pytest.raises(TokenizerMismatchError):
        assert_compatible(s_tok, t_tok)
    report = assert_compatible(s_tok, t_tok, mode="shared_ids")
    assert report.teacher_stop_ids != report.student_stop_ids
    rows, _ = evaluate(load_model(cross), t_tok, arith.generate("test", 5, seed=3), max_new_tokens=64)
    assert all("+" in r["output"].splitlines()[0] or "-" in r["output"].splitlines()[0] for r in rows)
    # the student's own answers scored by each teacher: the cross-family one is much further away
    student = load_model(arith.ASSETS_DIR / "student")
    test = arith.generate("test", 40, seed=4)
    kl = {}
    for name in ("teacher", "teacher-cross"):
        with torch.no_grad():
            _, s = evaluate(student, s_tok, test, max_new_tokens=48, teacher=load_model(arith.ASSETS_DIR / name),
                            shared_vocab=report.shared_vocab)
        kl[name] = s["kl_mean"]
    assert kl["teacher-cross"] > 2 * kl["teacher"], kl
