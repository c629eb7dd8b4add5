"""DistiLLM (methods/distillm.py): the loss against a float64 reference written here from raw model
logits (one unpadded forward per row); the adaptive schedule and the threshold rule by hand; the
replay buffer's FIFO and sampling; a smoke run through the engine; resume keeps the buffer and
the schedule (an interrupted run resumed equals the uninterrupted one)."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from reasondistill import engine
from reasondistill.config import ConfigError, build_config
from reasondistill.methods import get_method
from reasondistill.methods import distillm as dm
from reasondistill.tasks import arith
from test_vcrd import acc, models  # noqa: F401  (the same tiny student/teacher fixtures)

method = get_method("distillm")


# -- the schedule by hand ---------------------------------------------------------------------------

def test_schedule_source_by_hand():
    # threshold 0: always the dataset (DistiLLM's start)
    assert dm.schedule_source(0.0, 0.0, 0.0, 0, 10) == "data"
    # buffer not full: any u < threshold samples fresh
    assert dm.schedule_source(0.39, 0.4, 0.9, 3, 10) == "fresh"
    assert dm.schedule_source(0.41, 0.4, 0.9, 3, 10) == "data"
    # buffer full, decreasing: s = 0.4 * (1 - 0.25) = 0.3
    assert dm.schedule_source(0.29, 0.4, 0.25, 10, 10) == "fresh"
    assert dm.schedule_source(0.31, 0.4, 0.25, 10, 10) == "replay"
    assert dm.schedule_source(0.40, 0.4, 0.25, 10, 10) == "data"
    # constant: s = 0.2; increasing: s = 0.4 * 0.25 = 0.1
    assert dm.schedule_source(0.19, 0.4, 0.25, 10, 10, "constant") == "fresh"
    assert dm.schedule_source(0.21, 0.4, 0.25, 10, 10, "constant") == "replay"
    assert dm.schedule_source(0.09, 0.4, 0.25, 10, 10, "increasing") == "fresh"
    assert dm.schedule_source(0.11, 0.4, 0.25, 10, 10, "increasing") == "replay"
    # at the end of a decreasing schedule a full buffer is only replayed
    assert dm.schedule_source(0.0001, 1.0, 1.0, 10, 10) == "replay"


def test_next_threshold_by_hand():
    assert dm.next_threshold(0.0, None, 2.0, 0.1, 0.1) == (0.0, 2.0)  # the first loss is the reference
    assert dm.next_threshold(0.0, 2.0, 2.05, 0.1, 0.1) == (0.0, 2.0)  # a rise below eps changes nothing
    assert dm.next_threshold(0.0, 2.0, 1.5, 0.1, 0.1) == (0.0, 2.0)  # a fall keeps the old reference
    t, ref = dm.next_threshold(0.0, 2.0, 2.1, 0.1, 0.1)
    assert t == pytest.approx(0.1) and ref == 2.1
    assert dm.next_threshold(0.95, 2.0, 3.0, 0.1, 0.1) == (1.0, 3.0)  # capped at 1


def test_replay_buffer_fifo_and_sampling():
    buf = dm.ReplayBuffer(3)
    buf.push([[1], [2]], [[10], [20]], [False, True])
    buf.push([[3], [4]], [[30], [40]], [False, False])
    assert len(buf) == 3 and [r[0] for r in buf.rows] == [[2], [3], [4]]  # the oldest dropped
    rows = buf.sample(3, random.Random(0))
    assert sorted(r[1][0] for r in rows) == [20, 30, 40]  # without replacement
    # uniform: every row equally often over many single draws
    g, counts = random.Random(1), {20: 0, 30: 0, 40: 0}
    for _ in range(3000):
        counts[buf.sample(1, g)[0][1][0]] += 1
    assert all(abs(c - 1000) < 120 for c in counts.values())
    # the same rng state draws the same rows
    assert buf.sample(2, random.Random(5)) == buf.sample(2, random.Random(5))


# -- the loss against float64 --------------------------------------------------------------------------



def make_ctx(tokenizer, acc, models, **over):
    from reasondistill.signals import StudentModule

    base = dict(max_prompt_length=64, max_completion_length=24, device="cpu", report_to="none",
                per_device_train_batch_size=3, capacity=6)
    cfg = build_config(method.Config, overrides={**base, **over})
    ctx = engine.Context(cfg=cfg, accelerator=acc, model=StudentModule(models[0]), tokenizer=tokenizer,
                         teacher=models[1], shared_vocab=len(tokenizer), generator=torch.Generator().manual_seed(0),
                         rng=random.Random(0))
    ctx.extras["distillm"] = {"state": {"threshold": cfg.init_threshold, "reference": 1.0, "buffer": [],
                                        "next_validation": 10**9, "last_loss": None},
                              "every": 10**9, "validation": [], "buffer": dm.ReplayBuffer(cfg.capacity),
                              "prepared_step": None}
    return ctx


def raw_logits(model, prompt, completion, grad=False):
    with torch.enable_grad() if grad else torch.no_grad():
        out = model(input_ids=torch.tensor([prompt + completion])).logits[0].double()
    return out[len(prompt) - 1: len(prompt) + len(completion) - 1]


def div_ref(s_logits, t_logits, alpha, kind):
    p, q = torch.softmax(t_logits, -1), torch.softmax(s_logits, -1)
    if kind == "skew_kl":
        return (p * (p.log() - (alpha * p + (1 - alpha) * q).log())).sum(-1)
    return (q * (q.log() - ((1 - alpha) * p + alpha * q).log())).sum(-1)


@pytest.mark.parametrize("over", [dict(), dict(divergence="skew_reverse_kl", alpha=0.3), dict(init_threshold=1.0),
                                  dict(loss_chunk_size=3), dict(temperature=2.0)],
                         ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()) or "default")
def test_loss_matches_float64_reference(tokenizer, acc, models, over):
    ctx = make_ctx(tokenizer, acc, models, **over)
    cfg = ctx.cfg
    examples = arith.generate("train", 3, seed=5, spec=arith.TaskSpec(min_terms=2, max_terms=5))
    with torch.no_grad():
        micro = method.prepare(ctx, examples)
    assert micro.extras["source"] == ("fresh" if cfg.init_threshold == 1.0 else "data")
    got, _ = method.loss(ctx, micro, {"tokens": float(micro.num_tokens), "rows": float(micro.num_rows)})
    b = micro.batch
    ref, n = 0.0, 0
    for i in range(len(b)):
        prompt = b.prompt_ids[i][b.prompt_mask[i].bool()].tolist()
        comp = b.completion_ids[i][b.completion_mask[i].bool()].tolist()
        s_log = raw_logits(ctx.policy, prompt, comp, grad=True) / cfg.temperature
        t_log = raw_logits(ctx.teacher, prompt, comp) / cfg.temperature
        ref = ref + div_ref(s_log, t_log, cfg.alpha, cfg.divergence).sum()
        n += len(comp)
    ref = ref / n
    assert float(got.detach()) == pytest.approx(float(ref.detach()), rel=1e-5, abs=1e-7)
    params = [p for p in ctx.policy.parameters() if p.requires_grad]
    g_got = torch.autograd.grad(got, params, allow_unused=True)
    g_ref = torch.autograd.grad(ref, params, allow_unused=True)
    for a, r in zip(g_got, g_ref):
        if a is not None and r is not None:
            torch.testing.assert_close(a.double(), r.double(), rtol=1e-4, atol=1e-6)
    if cfg.init_threshold == 1.0:  # a fresh batch went into the buffer
        assert len(ctx.extras["distillm"]["buffer"]) == 3


def test_replay_batch_is_the_buffer_rows(tokenizer, acc, models):
    ctx = make_ctx(tokenizer, acc, models, init_threshold=1.0, capacity=3)
    ctx.step, ctx.cfg.max_steps = 100, 100  # progress 1: a full buffer is only replayed
    buf = ctx.extras["distillm"]["buffer"]
    buf.push([[5, 6], [7], [8, 9]], [[11, 12, 2], [13, 2], [14, 2]], [False] * 3)
    examples = arith.generate("train", 2, seed=1)
    with torch.no_grad():
        micro = method.prepare(ctx, examples)
    assert micro.extras["source"] == "replay"
    comps = {tuple(r[m.bool()].tolist()) for r, m in zip(micro.batch.completion_ids, micro.batch.completion_mask)}
    assert comps <= {(11, 12, 2), (13, 2), (14, 2)} and len(comps) == 2


def test_config_refusals():
    with pytest.raises(ConfigError, match="capacity"):
        build_config(method.Config, overrides={"capacity": 2, "per_device_train_batch_size": 4})
    with pytest.raises(ConfigError, match="replay_ratio"):
        build_config(method.Config, overrides={"replay_ratio": "random"})


# -- through the engine ---------------------------------------------------------------------------------

def _train(tiny_models, out, callback=None, **kw):
    from reasondistill.engine import train

    cfg = build_config(method.Config, overrides={**dict(
        student=str(tiny_models / "student"), teacher=str(tiny_models / "teacher"), output_dir=str(out),
        max_steps=4, per_device_train_batch_size=2, gradient_accumulation_steps=2, max_completion_length=8,
        dataset="arith:size=20", report_to="none", progress=False, device="cpu", learning_rate=1e-3,
        init_threshold=0.6, capacity=4, validation_steps=2, validation_size=6, loss_eps=-1.0), **kw})
    return train(method, cfg, callback=callback)


def _rows(path):
    return [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]


def test_smoke_through_the_engine(tiny_models, tmp_path):
    result = _train(tiny_models, tmp_path / "run")
    assert result["steps"] == 4 and (tmp_path / "run" / "final" / "model.safetensors").exists()
    rows = _rows(tmp_path / "run")
    assert len(rows) == 4 and all(math.isfinite(r["loss"]) for r in rows)
    for r in rows:
        assert sum(r[f"distillm/{s}_share"] for s in dm.SOURCES) == pytest.approx(1.0)
    # loss_eps=-1: every validation (steps 0, 2) raises lambda_R by 0.1 (the first only sets the reference)
    assert [round(r["distillm/threshold"], 3) for r in rows] == [0.6, 0.6, 0.7, 0.7]
    assert any(r["distillm/fresh_share"] > 0 for r in rows) and rows[-1]["distillm/buffer_size"] > 0


def test_resume_keeps_buffer_and_schedule(tiny_models, tmp_path):
    from safetensors.torch import load_file

    _train(tiny_models, tmp_path / "full", max_steps=6)
    def stop_after_3(ctx, step, metrics):
        if step == 3:
            raise KeyboardInterrupt  # the engine saves checkpoint-3 and stops

    with pytest.raises(KeyboardInterrupt):
        _train(tiny_models, tmp_path / "cut", max_steps=6, callback=stop_after_3)
    assert (tmp_path / "cut" / "checkpoint-3").exists() and not (tmp_path / "cut" / "final").exists()
    state_dir = tmp_path / "cut" / dm.STATE_DIR
    assert (state_dir / "state-3-rank0.pt").exists()
    _train(tiny_models, tmp_path / "cut", max_steps=6, resume=True)
    full, cut = _rows(tmp_path / "full"), _rows(tmp_path / "cut")
    assert len(cut) == 6 and any(r["distillm/replay_share"] > 0 for r in full)  # the buffer was replayed
    keys = ["loss", "distillm/threshold", "distillm/buffer_size"] + [f"distillm/{s}_share" for s in dm.SOURCES]
    for a, b in zip(full, cut):
        for k in keys:
            assert a[k] == pytest.approx(b[k], rel=1e-5), (a["step"], k)
    wa = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    wb = load_file(str(tmp_path / "cut" / "final" / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k])
    sa = torch.load(tmp_path / "full" / dm.STATE_DIR / "state-6-rank0.pt", weights_only=False)
    sb = torch.load(state_dir / "state-6-rank0.pt", weights_only=False)
    assert sa == sb


def test_resume_without_state_file_warns_and_restarts(tiny_models, tmp_path, capsys):
    import shutil

    _train(tiny_models, tmp_path / "run", max_steps=2, save_steps=2)
    shutil.rmtree(tmp_path / "run" / dm.STATE_DIR)
    _train(tiny_models, tmp_path / "run", max_steps=3, resume=True)
    assert "schedule restarts" in capsys.readouterr().err
