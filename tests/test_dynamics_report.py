"""`reasondistill report --dynamics`: the TGPO paper's training-dynamics figure and table from
several runs' metrics.jsonl, seeds grouped by folder name."""

from __future__ import annotations

import json

import pytest

from reasondistill.report.dynamics import DYNAMICS_KEYS, dynamics_figure, dynamics_report, group_runs, summarize


def _run(d, rewards, grad, length=20, cap=0.0, weight=None):
    d.mkdir(parents=True)
    rows = []
    for i, (r, g) in enumerate(zip(rewards, grad), 1):
        row = {"step": i, "reward/task_mean": r, "grad_norm": g, "completions/mean_length": length,
               "completions/max_length": length + 5, "completions/truncated_share": cap, "policy/entropy": 0.5,
               "pg/clip_ratio": 0.0, "kl/step_mean": 1.0}
        if weight is not None:
            row["tgpo/guidance_weight"] = weight
        rows.append(row)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_seeds_are_grouped_and_summarised(tmp_path):
    _run(tmp_path / "tgpo_seed0", [0.1] * 9 + [0.5], [1.0] * 10, weight=0.002)
    _run(tmp_path / "tgpo_seed1", [0.1] * 9 + [0.7], [1.0, 3.0] * 5, weight=0.002)
    _run(tmp_path / "op_distill", [0.2] * 10, [1.0] * 10, length=40, cap=0.25)
    groups = group_runs([tmp_path / "tgpo_seed0", tmp_path / "tgpo_seed1", tmp_path / "op_distill"])
    assert list(groups) == ["tgpo", "op_distill"] and len(groups["tgpo"]) == 2
    rows = {r["method"]: r for r in summarize(groups)}
    assert rows["tgpo"]["final_reward"] == pytest.approx(0.6)  # last tenth (1 step) of each seed, averaged
    assert rows["tgpo"]["grad_norm_std"] == pytest.approx((0.0 + 1.0) / 2)
    assert rows["op_distill"]["max_length"] == 45 and rows["op_distill"]["max_truncated_share"] == 0.25


def test_every_panel_is_drawn(tmp_path):
    _run(tmp_path / "a_seed0", [0.1] * 10, [1.0] * 10, weight=0.002)
    _run(tmp_path / "b", [0.2] * 10, [2.0] * 10)
    png, keys = dynamics_figure(group_runs([tmp_path / "a_seed0", tmp_path / "b"]), tmp_path / "dyn.png")
    assert keys == list(DYNAMICS_KEYS)
    from PIL import Image

    img = Image.open(png)
    assert img.size[0] > 1000 and img.size[1] > 500  # 2 rows of 4 panels
    table = dynamics_report([tmp_path / "a_seed0", tmp_path / "b"], tmp_path / "out" / "dyn.png")
    assert "| a | 1 |" in table and "| b | 1 |" in table
    assert (tmp_path / "out" / "dyn.md").read_text().startswith("![training dynamics](dyn.png)")


def test_a_folder_without_metrics_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty: no metrics.jsonl"):
        group_runs([tmp_path / "empty"])
