"""The training engine: smoke tests per method, exact resume, gradient accumulation, two processes,
non-finite loss handling."""

import json
import math
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from reasondistill.config import build_config
from reasondistill.data.train import DataStream
from reasondistill.engine import NonFiniteLossError, lr_lambda, train
from reasondistill.methods import METHODS, get_method
from reasondistill.tasks import arith

ROOT = Path(__file__).resolve().parents[1]


def _cfg(method, tiny, out, **kw):
    base = dict(student=str(tiny / "student"), teacher=str(tiny / "teacher"), output_dir=str(out),
                max_steps=2, per_device_train_batch_size=4, dataset="arith:size=64", report_to="none", progress=False,
                device="cpu", max_completion_length=16)
    if "num_generations" in {f.name for f in fields(get_method(method).Config)}:
        base.update(num_generations=2, per_device_train_batch_size=2)
    base.update(kw)
    return build_config(get_method(method).Config, overrides=base)


@pytest.mark.parametrize("method", METHODS)  # the registry: a new method gets its smoke test
def test_smoke_each_method(method, tiny_models, tmp_path, monkeypatch):
    if "num_generations" in {f.name for f in fields(get_method(method).Config)}:
        # a random model never answers right: alternate rewards so advantages are non-zero
        import reasondistill.methods.onpolicy as grpo  # grpo grades in the shared prepare

        monkeypatch.setattr(grpo, "accuracy_reward", lambda texts, answer: [float(i % 2) for i in range(len(texts))])
    extra = {}
    if method == "luffy":  # its groups need verified teacher traces: the task's own worked solutions
        from reasondistill.tasks import arith

        traces = tmp_path / "traces.jsonl"
        traces.write_text("".join(json.dumps({"question": r["question"], "answer": r["answer"],
                                              "solution": r["solution"]}) + "\n" for r in arith.generate("train", 8)))
        extra = dict(traces=str(traces), dataset=str(traces), max_completion_length=64)  # whole traces: reward 1
    cfg = _cfg(method, tiny_models, tmp_path / method, save_steps=1, **extra)
    before = {k: v.clone() for k, v in _load_weights(tiny_models / "student").items()}
    res = train(get_method(method), cfg)
    assert res["steps"] == 2
    lines = [json.loads(x) for x in (tmp_path / method / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2]
    assert all(math.isfinite(x["loss"]) and math.isfinite(x["grad_norm"]) for x in lines)
    after = _load_weights(tmp_path / method / "final")
    assert any(not torch.equal(before[k], after[k]) for k in before), "parameters did not move"
    assert (tmp_path / method / "config.yaml").exists() and (tmp_path / method / "checkpoint-2").exists()
    assert json.loads((tmp_path / method / "versions.json").read_text())["torch"] == torch.__version__


def _load_weights(folder):
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))


@pytest.mark.parametrize("method", ["sft", "gkd"])
def test_resume_is_exact(method, tiny_models, tmp_path):
    kw = dict(max_steps=4, save_steps=2, lmbda=0.5) if method == "gkd" else dict(max_steps=4, save_steps=2)
    straight = _cfg(method, tiny_models, tmp_path / "straight", **kw)
    train(get_method(method), straight)
    # 2 steps, interrupted (Ctrl-C after step 2), resume, 2 more
    first = _cfg(method, tiny_models, tmp_path / "split", **kw)

    def interrupt(ctx, step, metrics):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(get_method(method), first, callback=interrupt)
    assert (tmp_path / "split" / "checkpoint-2").exists() and not (tmp_path / "split" / "final").exists()
    second = _cfg(method, tiny_models, tmp_path / "split", **kw, resume=True)
    train(get_method(method), second)
    a, b = _load_weights(tmp_path / "straight" / "final"), _load_weights(tmp_path / "split" / "final")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    steps = [json.loads(x)["step"] for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_gradient_accumulation_does_not_change_the_update(tiny_models, tmp_path):
    """1 micro-batch of 8 == 4 micro-batches of 2 (rows of different lengths), per method family."""
    for method in ("sft", "kd"):
        one = _cfg(method, tiny_models, tmp_path / f"{method}1", per_device_train_batch_size=8, max_steps=1,
                   learning_rate=1e-2, save_final_model=True)
        four = _cfg(method, tiny_models, tmp_path / f"{method}4", per_device_train_batch_size=2,
                    gradient_accumulation_steps=4, max_steps=1, learning_rate=1e-2)
        train(get_method(method), one)
        train(get_method(method), four)
        a, b = _load_weights(tmp_path / f"{method}1" / "final"), _load_weights(tmp_path / f"{method}4" / "final")
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=2e-6)
        m1 = json.loads((tmp_path / f"{method}1" / "metrics.jsonl").read_text().splitlines()[0])
        m4 = json.loads((tmp_path / f"{method}4" / "metrics.jsonl").read_text().splitlines()[0])
        assert m1["loss"] == pytest.approx(m4["loss"], rel=1e-5)
        assert m1["grad_norm"] == pytest.approx(m4["grad_norm"], rel=1e-4)


def test_data_stream_partitions_the_global_batch():
    recs = [{"i": i} for i in range(50)]
    whole = DataStream(recs, 0, per_device=8, accum=1, world=1, rank=0).step_batches(3)[0]
    parts = []
    for k in range(2):
        for r in range(2):
            parts += DataStream(recs, 0, per_device=2, accum=2, world=2, rank=r).step_batches(3)[k]
    assert sorted(x["i"] for x in whole) == sorted(x["i"] for x in parts)


def test_schedule_warmup_then_cosine():
    cfg = build_config(get_method("sft").Config, overrides=dict(max_steps=10, warmup_steps=2, min_lr_ratio=0.1))
    f = lr_lambda(cfg)
    assert f(0) == pytest.approx(0.5) and f(1) == pytest.approx(1.0) and f(2) == pytest.approx(1.0)
    assert f(10) == pytest.approx(0.1) and f(6) == pytest.approx(0.55)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tiny_models, tmp_path, monkeypatch):
    method = get_method("sft")
    cfg = _cfg("sft", tiny_models, tmp_path / "nan", max_steps=4, save_steps=2)
    real = method.loss

    def poisoned(ctx, micro, totals):
        loss, m = real(ctx, micro, totals)
        return (loss * float("nan") if ctx.step == 2 else loss), m

    monkeypatch.setattr(method, "loss", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"step 2.*checkpoint-2"):
        train(method, cfg)
    good = _load_weights(tmp_path / "nan" / "checkpoint-2" / "model")
    assert all(torch.isfinite(v).all() for v in good.values())
    assert not (tmp_path / "nan" / "checkpoint-3").exists()


@pytest.mark.slow
@pytest.mark.parametrize("method", [["sft"], ["kd", "loss_chunk_size=5"]], ids=["sft", "kd-chunked"])
def test_two_processes_match_one_process_with_doubled_batch(tiny_models, tmp_path, method):
    """torchrun --nproc_per_node 2 (gloo, CPU) with batch B each == 1 process with batch 2B; also
    for the vocabulary-chunked divergence, whose student forward goes through the DDP wrapper."""
    script = ROOT / "tests" / "ddp_worker.py"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER"))}
    env["OMP_NUM_THREADS"] = "1"
    common = [str(tiny_models), str(tmp_path)]
    one = subprocess.run([sys.executable, str(script), *common, "single", "8", *method], env=env, capture_output=True,
                         text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(script), *common, "ddp", "4", *method], env=env,
                         capture_output=True, text=True, timeout=300)
    (tmp_path / "ddp_stderr.txt").write_text(two.stderr)
    assert two.returncode == 0, two.stderr[-3000:]
    ranks = json.loads((tmp_path / "ddp" / "ranks.json").read_text())
    assert ranks == {"world": 2, "ranks": [0, 1]}, ranks  # really two processes
    a, b = _load_weights(tmp_path / "single" / "final"), _load_weights(tmp_path / "ddp" / "final")
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-5, worst  # float32 all-reduce order differs: stated tolerance 1e-5
    # Adam is nearly scale-invariant, so also compare what it hides: the loss and the gradient norm
    m1 = [json.loads(x) for x in (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    for x, y in zip(m1, m2, strict=True):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-4)


@pytest.mark.slow
def test_cmdp_trains_in_two_processes(tiny_models, tmp_path):
    """The on-policy methods under torchrun (gloo, CPU), with accumulation: both ranks sample,
    gradients are all-reduced (the two copies end identical), no hang, finite metrics."""
    script = ROOT / "tests" / "ddp_worker.py"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER"))}
    env["OMP_NUM_THREADS"] = "1"
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(script), str(tiny_models), str(tmp_path), "ddp", "2", "cmdp"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert json.loads((tmp_path / "ddp" / "ranks.json").read_text()) == {"world": 2, "ranks": [0, 1]}
    rows = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(math.isfinite(r["loss"]) and r["kl/step_mean"] > 0 for r in rows)


def test_teacher_with_padded_vocab_rows_trains_on_the_shared_range(tiny_models, tmp_path):
    """Qwen2.5-7B has 152,064 rows vs 151,936: extra rows are padding, compare the shared range only."""
    from transformers import AutoModelForCausalLM

    tok = arith.build_tokenizer()
    cfg = arith.model_config("student", tok, hidden_size=48, num_hidden_layers=1, intermediate_size=96,
                             vocab_size=len(tok) + 30)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / "padded")
    tok.save_pretrained(str(tmp_path / "padded"))
    res = train(get_method("gkd"), _cfg("gkd", tiny_models, tmp_path / "run", teacher=str(tmp_path / "padded")))
    assert res["context"].shared_vocab == len(tok)


def test_teacher_with_another_tokenizer_is_refused_before_training(tiny_models, tmp_path):
    from reasondistill.models import TokenizerMismatchError
    from transformers import AutoModelForCausalLM

    tok = arith.build_tokenizer()
    other = arith.build_tokenizer()
    other.eos_token = "<|endoftext|>"  # a base model that stops on a different token
    cfg = arith.model_config("student", tok, hidden_size=32, num_hidden_layers=1, intermediate_size=64)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / "t")
    other.save_pretrained(str(tmp_path / "t"))
    with pytest.raises(TokenizerMismatchError, match="(?i)eos"):
        train(get_method("kd"), _cfg("kd", tiny_models, tmp_path / "run", teacher=str(tmp_path / "t")))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.parametrize("method", ["kd", "gkd"])
def test_vocabulary_chunked_loss_gives_the_same_training(method, tiny_models, tmp_path):
    kw = dict(max_steps=2, lmbda=0.0) if method == "gkd" else dict(max_steps=2)
    train(get_method(method), _cfg(method, tiny_models, tmp_path / "plain", **kw))
    train(get_method(method), _cfg(method, tiny_models, tmp_path / "chunk", loss_chunk_size=5, **kw))
    a, b = _load_weights(tmp_path / "plain" / "final"), _load_weights(tmp_path / "chunk" / "final")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5)


def test_warns_when_completions_keep_hitting_the_length_cap(tiny_models, tmp_path, capfd):
    """A random student never emits EOS: the run must say so (FIELD_NOTES: EOS disagreement)."""
    train(get_method("gkd"), _cfg("gkd", tiny_models, tmp_path / "run", lmbda=1.0, max_steps=1,
                                  max_completion_length=6))
    err = capfd.readouterr().err
    assert "hit max_completion_length=6" in err and "EOS" in err
    m = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert m["completions/truncated_share"] > 0.5


@pytest.mark.parametrize("save_steps", [1, 0])
def test_new_run_refuses_a_folder_with_another_run(tiny_models, tmp_path, save_steps):
    train(get_method("sft"), _cfg("sft", tiny_models, tmp_path / "run", save_steps=save_steps))
    with pytest.raises(FileExistsError, match="resume=true.*overwrite_output_dir=true"):
        train(get_method("sft"), _cfg("sft", tiny_models, tmp_path / "run", save_steps=1))
    # a bad input with overwrite_output_dir: refused before anything is deleted
    with pytest.raises(FileNotFoundError):
        train(get_method("sft"), _cfg("sft", tiny_models, tmp_path / "run", overwrite_output_dir=True,
                                      dataset=str(tmp_path / "missing.jsonl")))
    assert (tmp_path / "run" / "final").exists()
    train(get_method("sft"), _cfg("sft", tiny_models, tmp_path / "run", max_steps=1, overwrite_output_dir=True))
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == []  # old ones removed
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1


def test_resume_refuses_changed_data_settings(tiny_models, tmp_path):
    train(get_method("sft"), _cfg("sft", tiny_models, tmp_path / "run", max_steps=2, save_steps=2))
    before = (tmp_path / "run" / "config.yaml").read_text()
    with pytest.raises(ValueError, match="per_device_train_batch_size: 4 -> 8"):
        train(get_method("sft"), _cfg("sft", tiny_models, tmp_path / "run", max_steps=4, resume=True,
                                      per_device_train_batch_size=8))
    assert (tmp_path / "run" / "config.yaml").read_text() == before  # the refused run wrote nothing


def test_interrupt_in_the_middle_of_a_step_resumes_exactly(tiny_models, tmp_path, monkeypatch):
    """Ctrl-C while step 4 is sampling/backpropagating: checkpoint-3 holds the RNG state from the
    start of step 4, so the resumed run samples the same completions as an uninterrupted one."""
    method = get_method("gkd")
    kw = dict(max_steps=5, lmbda=0.5)  # no periodic checkpoints: only Ctrl-C writes one
    train(method, _cfg("gkd", tiny_models, tmp_path / "straight", **kw))
    real = method.loss

    def cut(ctx, micro, totals):
        if ctx.step == 3:
            raise KeyboardInterrupt
        return real(ctx, micro, totals)

    monkeypatch.setattr(method, "loss", cut)
    with pytest.raises(KeyboardInterrupt):
        train(method, _cfg("gkd", tiny_models, tmp_path / "split", **kw))
    monkeypatch.setattr(method, "loss", real)
    assert [p.name for p in (tmp_path / "split").glob("checkpoint-*")] == ["checkpoint-3"]
    train(method, _cfg("gkd", tiny_models, tmp_path / "split", resume=True, **kw))
    a, b = _load_weights(tmp_path / "straight" / "final"), _load_weights(tmp_path / "split" / "final")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_grpo_reference_model_sits_on_the_training_device(tiny_models, tmp_path, monkeypatch):
    import reasondistill.methods.onpolicy as onpolicy  # grpo grades in the shared prepare

    monkeypatch.setattr(onpolicy, "accuracy_reward", lambda texts, answer: [float(i % 2) for i in range(len(texts))])
    res = train(get_method("grpo"), _cfg("grpo", tiny_models, tmp_path / "run", beta=0.1, max_steps=1))
    ctx = res["context"]
    assert next(ctx.extras["ref"].parameters()).device == ctx.device
    assert not any(p.requires_grad for p in ctx.extras["ref"].parameters())


def test_bf16_with_the_chunked_loss(tiny_models, tmp_path):
    """Chunked projections run outside autocast (float32 master weights), backward included."""
    train(get_method("kd"), _cfg("kd", tiny_models, tmp_path / "plain", mixed_precision="bf16"))
    train(get_method("kd"), _cfg("kd", tiny_models, tmp_path / "chunk", mixed_precision="bf16", loss_chunk_size=5))
    a, b = _load_weights(tmp_path / "plain" / "final"), _load_weights(tmp_path / "chunk" / "final")
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 5e-3, worst  # same training; only the student forward differs in bf16 rounding


def test_first_ctrl_c_finishes_the_step_and_checkpoints(tiny_models, tmp_path):
    """A real SIGINT during step 2: step 2 completes, checkpoint-2 is written, resume is exact."""
    import signal

    method = get_method("gkd")
    kw = dict(max_steps=4, lmbda=0.5)
    train(method, _cfg("gkd", tiny_models, tmp_path / "straight", **kw))

    def ctrl_c(ctx, step, metrics):
        if step == 1:
            os.kill(os.getpid(), signal.SIGINT)  # lands while the loop is between steps 1 and 2

    # the handler an interactive Python has (a job started in the background inherits SIG_IGN)
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            train(method, _cfg("gkd", tiny_models, tmp_path / "split", **kw), callback=ctrl_c)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    finally:
        signal.signal(signal.SIGINT, outer)
    assert [p.name for p in (tmp_path / "split").glob("checkpoint-*")] == ["checkpoint-2"]
    train(method, _cfg("gkd", tiny_models, tmp_path / "split", resume=True, **kw))
    a, b = _load_weights(tmp_path / "straight" / "final"), _load_weights(tmp_path / "split" / "final")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_bf16_mixed_precision_trains_with_float32_master_weights(tiny_models, tmp_path):
    train(get_method("kd"), _cfg("kd", tiny_models, tmp_path / "fp32"))
    train(get_method("kd"), _cfg("kd", tiny_models, tmp_path / "run", mixed_precision="bf16"))
    a, w = _load_weights(tmp_path / "fp32" / "final"), _load_weights(tmp_path / "run" / "final")
    assert all(v.dtype == torch.float32 for v in w.values())
    assert any(not torch.equal(a[k], w[k]) for k in a)  # autocast really changed the arithmetic
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(x) for x in (tmp_path / "fp32" / "metrics.jsonl").read_text().splitlines()]
    for x, y in zip(lines, ref):
        assert x["loss"] == pytest.approx(y["loss"], rel=0.05)  # same training, bf16 rounding
