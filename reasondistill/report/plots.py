"""Plots of one run: training curves from ``metrics.jsonl`` plus optional evaluation points."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(path: str | Path) -> list[dict]:
    rows = []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: malformed metrics line: {e}") from None
    return rows


def _smooth(ys: list[float], k: int) -> list[float]:
    out, acc = [], []
    for y in ys:
        acc.append(y)
        if len(acc) > k:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def training_curves(metrics: list[dict], out_png: str | Path, keys: list[str] | None = None,
                    evals: list[dict] | None = None, eval_keys: tuple[str, ...] = ("accuracy",),
                    title: str = "training") -> Path:
    """One panel per metric key (raw + moving average), plus a panel per evaluation key.

    ``evals`` are dicts with ``step`` and the ``eval_keys``, e.g. held-out accuracy measured
    during training; reference lines (``teacher_<key>``) are drawn if present in ``evals[0]``.
    """
    keys = [k for k in (keys or ["loss", "grad_norm"]) if any(k in m for m in metrics)]
    panels = keys + ([k for k in eval_keys] if evals else [])
    n = max(1, len(panels))
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    for ax, key in zip(axes.flat, panels):
        if key in keys:
            pts = [(m["step"], m[key]) for m in metrics if key in m]
            xs, ys = zip(*pts)
            ax.plot(xs, ys, color="tab:blue", alpha=0.3, lw=1, label="per step")
            ax.plot(xs, _smooth(list(ys), max(1, len(ys) // 25)), color="tab:blue", lw=2, label="moving avg")
        else:
            pts = [(e["step"], e[key]) for e in evals if key in e]
            xs, ys = zip(*pts)
            ax.plot(xs, ys, "o-", color="tab:green", lw=2, label="student (held-out)")
            ref = evals[0].get(f"teacher_{key}")
            if ref is not None:
                ax.axhline(ref, color="tab:red", ls="--", label="teacher")
        ax.set_title(key)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    out = Path(out_png)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
