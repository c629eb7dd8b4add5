"""``reasondistill compare`` on two tiny configs: trains, evaluates, judges, and writes the
Table-1-style table and the four figures; a second call reuses everything; bad configs fail
with the file and the key."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from reasondistill.config import ConfigError
from reasondistill.pipelines import compare as C


def write_cfg(tmp_path, tiny_models, runs, **eval_over):
    ev = dict(benchmarks=["arith"], limit=6, max_new_tokens=12, batch_size=6, judge="rule", kl_budget=0.35)
    ev.update(eval_over)
    cfg = {"output_dir": str(tmp_path / "cmp"),
           "common": dict(student=str(tiny_models / "student"), teacher=str(tiny_models / "teacher"), max_steps=2,
                          per_device_train_batch_size=2, num_generations=2, max_completion_length=8, dataset="arith:size=40",
                          report_to="none", device="cpu", learning_rate=1e-3, seed=0),
           "runs": runs, "eval": ev}
    import yaml

    p = tmp_path / "compare.yaml"
    p.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return p


def test_compare_two_tiny_configs_end_to_end(tmp_path, tiny_models, capsys):
    from PIL import Image

    p = write_cfg(tmp_path, tiny_models, [{"name": "CMDP", "method": "cmdp"},
                                          {"name": "GRPO λ=0", "method": "gkd_grpo", "lmbda": 0.0}])
    res = C.run_compare(p, progress=False)
    out = tmp_path / "cmp"
    for f in ("table.md", "table.csv", "pareto.png", "radar.png", "pairwise_heatmap.png", "dynamics.png", "results.json"):
        assert (out / f).exists(), f
    for f in ("pareto.png", "radar.png", "pairwise_heatmap.png", "dynamics.png"):
        with Image.open(out / f) as im:
            assert im.size[0] > 300 and im.size[1] > 200
            assert len(np.unique(np.asarray(im.convert("L")))) > 20  # drawn, not blank
    rows = list(csv.reader((out / "table.csv").open()))
    assert rows[0][:6] == ["Method", "arith FAC ↑", "arith RWR ↑", "arith RLR ↓", "arith KL ↓", "arith CS ↑"]
    assert [r[0] for r in rows[1:]] == ["CMDP", "GRPO λ=0", "Student model", "Teacher model"]
    # method rows have every metric; the teacher has FAC only; the student no judge numbers
    assert all(x != "" for x in rows[1][1:]) and rows[4][1] != "" and rows[4][2:] == ["", "", "", ""]
    assert rows[3][2] == "" and rows[3][4] != ""
    table = {r["model"]: r["arith"] for r in res["table"]}
    # win and loss rates of the two methods mirror each other
    assert table["CMDP"]["rwr"] == pytest.approx(table["GRPO λ=0"]["rlr"])
    ev = json.loads((out / "eval" / "CMDP" / "arith_summary.json").read_text())
    assert ev["num_questions"] == 6 and "constraint_satisfaction" in ev
    assert table["CMDP"]["fac"] == ev["accuracy"] and table["CMDP"]["cs"] == ev["constraint_satisfaction"]
    md = (out / "table.md").read_text()
    assert "| CMDP |" in md and "Teacher model" in md
    # a second call trains nothing and evaluates nothing: it reuses the run folders and caches
    mtime = (out / "runs" / "CMDP" / "final" / "model.safetensors").stat().st_mtime
    capsys.readouterr()
    C.run_compare(p, progress=False)
    err = capsys.readouterr().err
    assert "already trained" in err and "training" not in err.replace("already trained", "")
    assert "evaluating" not in err and "judging" not in err
    assert (out / "runs" / "CMDP" / "final" / "model.safetensors").stat().st_mtime == mtime
    # changed evaluation settings are not served from the cache: evaluated and judged again
    import yaml

    cfg = yaml.safe_load(p.read_text())
    cfg["eval"]["kl_budget"] = 0.1
    p.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    C.run_compare(p, progress=False)
    err = capsys.readouterr().err
    assert "evaluating CMDP" in err and "judging" in err and "already trained" in err
    assert json.loads((out / "eval" / "CMDP" / "arith_summary.json").read_text())["kl_budget"] == 0.1


def test_typo_in_common_is_refused(tmp_path, tiny_models):
    import yaml

    p = write_cfg(tmp_path, tiny_models, [{"name": "x", "method": "cmdp"}])
    cfg = yaml.safe_load(p.read_text())
    cfg["common"]["lerning_rate"] = 1.0
    p.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="lerning_rate"):
        C.load_config(p)


def test_sweep_expands_and_names(tmp_path, tiny_models):
    p = write_cfg(tmp_path, tiny_models, [{"name": "GKD-GRPO λ={lmbda}", "method": "gkd_grpo",
                                           "sweep": {"lmbda": [0.01, 1.0]}}, {"method": "cmdp"}])
    cfg = C.load_config(p)
    assert [r["name"] for r in cfg["runs"]] == ["GKD-GRPO λ=0.01", "GKD-GRPO λ=1.0", "cmdp"]
    assert cfg["runs"][1]["overrides"] == {"lmbda": 1.0}


@pytest.mark.parametrize("runs,match", [
    ([{"name": "x", "method": "cmdp", "budgett": 0.3}], "budgett"),
    ([{"name": "x", "method": "nope"}], "unknown method"),
    ([{"name": "x", "method": "cmdp"}, {"name": "x", "method": "gkd_rl"}], "unique"),
    ([{"name": "G λ=1", "method": "cmdp"}, {"name": "G lambda=1", "method": "gkd_rl"}], "same folder"),
    ([{"name": "Student model", "method": "cmdp"}], "reference rows"),
    ([{"name": "x", "method": "gkd_grpo", "sweep": {"lmbda": 0.1}}], "non-empty list"),
    ([{"name": "x {beta}", "method": "gkd_grpo", "sweep": {"lmbda": [0.1]}}], "swept key"),
])
def test_bad_configs_fail_before_any_training(tmp_path, tiny_models, runs, match):
    p = write_cfg(tmp_path, tiny_models, runs)
    with pytest.raises((ConfigError, ValueError), match=match):
        C.run_compare(p, progress=False)
    assert not (tmp_path / "cmp" / "runs").exists()


def test_shared_bootstrap_stage_feeds_every_run(tmp_path, tiny_models):
    """Appendix D.4: one KL-only stage, trained once; every run starts from it (same seed)."""
    import yaml

    p = write_cfg(tmp_path, tiny_models, [{"name": "CMDP", "method": "cmdp", "max_steps": 1},
                                          {"name": "GKD", "method": "gkd_rl", "max_steps": 1}], limit=3)
    cfg = yaml.safe_load(p.read_text())
    cfg["bootstrap"] = {"method": "gkd", "lmbda": 1.0, "beta": 1.0, "max_steps": 1}
    p.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    res = C.run_compare(p, progress=False)
    out = tmp_path / "cmp"
    boot = out / "bootstrap" / "final"
    assert (boot / "model.safetensors").exists()
    assert yaml.safe_load((out / "bootstrap" / "config.yaml").read_text())["beta"] == 1.0
    for run in ("CMDP", "GKD"):
        rc = yaml.safe_load((out / "runs" / run / "config.yaml").read_text())
        assert rc["student"] == str(boot) and rc["max_steps"] == 1
    assert [r["model"] for r in res["table"]] == ["CMDP", "GKD", "Student model", "Bootstrapped student",
                                                  "Teacher model"]
    # the same config again reuses every folder (no setting reads as changed) ...
    C.train_runs(C.load_config(p), progress=False)
    # ... but a changed setting is refused, naming the run, the folder and the field, before
    # anything trains: the old run would be reported under the new settings
    mtime = (out / "runs" / "GKD" / "final" / "model.safetensors").stat().st_mtime
    for where, key, value, who in [(("runs", 0), "max_steps", 2, "CMDP"), (("bootstrap",), "beta", 0.5, "bootstrap"),
                                   (("common",), "learning_rate", 5e-4, "bootstrap")]:  # common feeds the bootstrap too
        changed = yaml.safe_load(p.read_text())
        section = changed[where[0]] if len(where) == 1 else changed[where[0]][where[1]]
        section[key] = value
        q = tmp_path / f"changed_{key}.yaml"
        q.write_text(yaml.safe_dump(changed, allow_unicode=True))
        with pytest.raises(ConfigError, match=rf"{who}.*{key}: .* there, {value} now.*delete that folder"):
            C.run_compare(q, progress=False)
    assert (out / "runs" / "GKD" / "final" / "model.safetensors").stat().st_mtime == mtime


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.mark.parametrize("sample_seed", [None, 3])
def test_compare_and_eval_choose_the_same_records(tmp_path, sample_seed):
    """One selection rule: compare's `limit` (+ `sample_seed`) reads the rows `eval TASK` reads with
    --first (sample_seed null) or --limit --sample-seed; arith generates `limit` problems either way."""
    from reasondistill.cli import main
    from reasondistill.config import build_config
    from reasondistill.eval.base import load_records

    d = tmp_path / "data"
    (d / "mc").mkdir(parents=True)
    (d / "gsm8k_test.jsonl").write_text("".join(json.dumps({"question": f"What is {k}+0?", "answer": f"#### {k}"})
                                                + "\n" for k in range(30)))
    for subject in ("algebra", "physics"):
        (d / "mc" / f"{subject}_test.csv").write_text("".join(f'"{subject} {k}?",a,b,c,d,B\n' for k in range(8)))
    ev = build_config(C.CompareEval, overrides={"benchmarks": ["gsm8k", "arith"], "limit": 5, "choice": str(d / "mc"),
                                                "choice_limit": 3, "sample_seed": sample_seed, "data_dir": str(d)})
    pick = ["--first", "5"] if sample_seed is None else ["--limit", "5", "--sample-seed", str(sample_seed)]
    common = ["--model", "embedded:student", "--max-new-tokens", "1", "--no-progress"]
    for bench in ("gsm8k", "arith"):
        out = tmp_path / bench
        assert main(["eval", "math", "--benchmark", bench, "--data-dir", str(d), *pick, *common,
                     "--output-dir", str(out)]) == 0
        want = [r["question"] for r in load_records(ev.task_config("math", bench))[0]]
        assert [r["question"] for r in _rows(out / "eval_examples.jsonl")] == want and len(want) == 5
    if sample_seed is not None:  # a random draw, not the first rows
        assert want != [r["question"] for r in load_records(ev.task_config("math", "gsm8k", limit=None,
                                                                           sample_seed=0, first=5))[0]]
    pick = ["--first", "3"] if sample_seed is None else ["--limit", "3", "--sample-seed", str(sample_seed)]
    out = tmp_path / "choice"
    assert main(["eval", "choice", "--data", str(d / "mc"), *pick, *common, "--output-dir", str(out)]) == 0
    want = [r["id"] for r in load_records(ev.task_config("choice", str(d / "mc")))[0]]
    assert [r["id"] for r in _rows(out / "choice_examples.jsonl")] == want and len(want) == 3


def test_compare_eval_keys_go_through_build_config(tmp_path, tiny_models):
    """A typo in eval: is named with its closest valid key; a value of the wrong type is named too."""
    import yaml

    p = write_cfg(tmp_path, tiny_models, [{"name": "x", "method": "cmdp"}])
    cfg = yaml.safe_load(p.read_text())
    cfg["eval"]["kl_budgett"] = 0.1
    p.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=r"compare.yaml: eval: .*'kl_budgett'.*Did you mean kl_budget"):
        C.load_config(p)
    del cfg["eval"]["kl_budgett"]
    cfg["eval"]["limit"] = "many"
    p.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="limit='many' is not a valid int"):
        C.load_config(p)


def test_seeds_avg_k_and_no_judge(tmp_path, tiny_models):
    """``seeds:`` trains each run once per seed (NAME_seedK, its seed set), ``avg_k`` adds the
    sampled avg@k column, ``judge: none`` skips the pairwise judge; seeds.md has mean ± std."""
    import statistics

    import yaml

    p = write_cfg(tmp_path, tiny_models, [{"name": "GRPO", "method": "grpo", "teacher": "none"},
                                          {"name": "TGPO", "method": "tgpo"}], avg_k=2, judge="none",
                  student=False, teacher=False)
    cfg = yaml.safe_load(p.read_text())
    cfg["seeds"] = [0, 1]
    p.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    loaded = C.load_config(p)
    assert [(r["name"], r["overrides"]["seed"]) for r in loaded["runs"]] == [
        ("GRPO_seed0", 0), ("GRPO_seed1", 1), ("TGPO_seed0", 0), ("TGPO_seed1", 1)]
    res = C.run_compare(p, progress=False)
    out = tmp_path / "cmp"
    assert json.loads((out / "runs" / "TGPO_seed1" / "final" / "config.json").read_text())
    rows = list(csv.reader((out / "table.csv").open()))
    assert rows[0][6] == "arith avg@2 ↑" and [r[0] for r in rows[1:]] == ["GRPO_seed0", "GRPO_seed1", "TGPO_seed0",
                                                                          "TGPO_seed1"]
    assert all(r[2] == "" and r[3] == "" for r in rows[1:])  # no judge: no RWR / RLR
    s = json.loads((out / "eval" / "TGPO_seed0" / "arith_avg2_summary.json").read_text())
    assert s["samples"] == 2 and s["temperature"] == 0.6 and s["num_questions"] == 6
    facs = [t["arith"]["fac"] for t in res["table"] if t["model"].startswith("TGPO")]
    seeds_md = (out / "seeds.md").read_text()
    want = f"{100 * sum(facs) / 2:.2f} ± {100 * statistics.pstdev(facs):.2f}"
    assert f"| TGPO | 2 | {want} |" in seeds_md
    assert (out / "dynamics.png").exists() and "| TGPO | 2 |" in (out / "dynamics.md").read_text()
    with pytest.raises(ConfigError, match="seeds must be"):
        cfg["seeds"] = [0, 0]
        p.write_text(yaml.safe_dump(cfg, allow_unicode=True))
        C.load_config(p)
