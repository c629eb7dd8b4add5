"""The demo end to end (shortened budget; the full run's numbers are in the issue note)."""

import json

import pytest
from PIL import Image

from reasondistill.cli import main


@pytest.mark.slow
def test_demo_writes_summary_plot_and_improves(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--output-dir", str(out), "--num-test", "200", "--max-steps", "60", "--no-progress"]) == 0
    s = json.loads((out / "summary.json").read_text())
    for k in ("teacher_accuracy", "student_accuracy_before", "student_accuracy_after", "kl_before", "kl_after",
              "wall_seconds"):
        assert k in s
    assert s["teacher_accuracy"] >= 0.9
    assert s["kl_after"] < s["kl_before"]  # even 60 on-policy steps pull the student toward the teacher
    assert s["student_accuracy_after"] > s["student_accuracy_before"]
    img = Image.open(out / "training_curves.png")
    assert img.size[0] > 800 and img.size[1] > 300
    assert len(img.getcolors(1 << 20)) > 50  # a real plot, not a blank canvas
    table = capsys.readouterr().out
    assert "student after GKD" in table and "teacher" in table
    for prefix in ("eval_teacher", "eval_student_before", "eval_student_after"):
        assert len((out / f"{prefix}_examples.jsonl").read_text().splitlines()) == 200
