"""The demo end to end, at its real budget: the acceptance bar of the foundation issue."""

import json

import pytest
import torch
from PIL import Image

from reasondistill.cli import main


@pytest.fixture
def all_threads():
    n = torch.get_num_threads()
    torch.set_num_threads(2)  # the demo runs as a user would run it (conftest pins tests to 1 thread)
    yield
    torch.set_num_threads(n)


@pytest.mark.slow
def test_demo_closes_the_gap_and_writes_its_outputs(tmp_path, capsys, all_threads):
    out = tmp_path / "demo"
    assert main(["demo", "--output-dir", str(out), "--no-progress"]) == 0
    s = json.loads((out / "summary.json").read_text())
    for k in ("teacher_accuracy", "student_accuracy_before", "student_accuracy_after", "kl_before", "kl_after",
              "wall_seconds"):
        assert k in s
    assert s["num_test"] >= 200 and s["teacher_accuracy"] >= 0.9
    assert s["student_accuracy_after"] - s["student_accuracy_before"] >= 0.15, s
    assert s["kl_after"] < s["kl_before"], s
    print(f"demo: {s['student_accuracy_before']:.3f} -> {s['student_accuracy_after']:.3f}, "
          f"KL {s['kl_before']:.3f} -> {s['kl_after']:.3f}, {s['wall_seconds']:.0f} s")
    img = Image.open(out / "training_curves.png")
    assert img.size[0] > 800 and img.size[1] > 300
    assert len(img.getcolors(1 << 20)) > 50  # a real plot, not a blank canvas
    table = capsys.readouterr().out
    assert "student after GKD" in table and "teacher" in table
    for prefix in ("eval_teacher", "eval_student_before", "eval_student_after"):
        assert len((out / f"{prefix}_examples.jsonl").read_text().splitlines()) == s["num_test"]
