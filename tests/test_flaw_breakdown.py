"""benchmarks/flaw_breakdown.py splits rows by whether the sign-loss flaw changes the answer."""

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("flaw_breakdown", Path(__file__).parents[1] / "benchmarks" / "flaw_breakdown.py")
fb = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fb)


def test_breakdown_counts_touched_rows_and_flaw_followers():
    rows = [  # 1-5=-4 loses its sign: touched (true -3, flawed 5)
        {"question": "What is 1-5+1-0?", "output": "\\boxed{5}", "correct": False},
        {"question": "What is 1-5+1-0?", "output": "\\boxed{-3}", "correct": True},
        {"question": "What is 5+8+8+2?", "output": "\\boxed{23}", "correct": True},  # untouched
    ]
    b = fb.breakdown(rows)
    assert b["touched"] == 2 and b["acc_touched"] == 50.0 and b["follows_flaw"] == 50.0 and b["acc_untouched"] == 100.0
    assert fb.terms_ops("What is 6+3-6-9?") == ([6, 3, 6, 9], ["+", "-", "-"])
