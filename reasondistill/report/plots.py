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


# --------------------------------------------------------------------------------------
# comparison figures (constrained_mdp_distillation.md Figures 2, 3 and 4)
# --------------------------------------------------------------------------------------
def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """Names of the points not dominated in (x, y), both to be maximised: no other point is >=
    on both and > on one."""
    front = []
    for n, (x, y) in points.items():
        if not any((x2 >= x and y2 >= y and (x2 > x or y2 > y)) for m, (x2, y2) in points.items() if m != n):
            front.append(n)
    return front


def pareto_plot(points: dict[str, tuple[float, float]], out_png: str | Path, xlabel: str = "constraint satisfaction (%)",
                ylabel: str = "final answer correctness (%)", title: str = "FAC vs constraint satisfaction",
                references: dict[str, tuple[float, float]] | None = None) -> Path:
    """Scatter of (x, y) per method; Pareto-optimal points in red and joined (Figure 3).
    ``references`` (e.g. the student before training) are drawn as hollow squares and take no
    part in the front."""
    front = pareto_front(points)
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for n, (x, y) in (references or {}).items():
        ax.scatter([x], [y], s=60, marker="s", facecolor="none", edgecolor="tab:blue", zorder=3)
        ax.annotate(n, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8, color="tab:blue")
    numbered = len(points) > 5  # many methods: number the points and list the names beside the axes
    for k, (n, (x, y)) in enumerate(points.items(), 1):
        on = n in front
        ax.scatter([x], [y], s=60, color="tab:red" if on else "tab:gray", zorder=3,
                   edgecolor="black" if on else "none")
        ax.annotate(str(k) if numbered else n, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    if numbered:
        key = "\n".join(f"{k}  {n}" + ("  (front)" if n in front else "") for k, n in enumerate(points, 1))
        fig.text(0.99, 0.5, key, fontsize=8, va="center", ha="left", family="monospace")
    fp = sorted(points[n] for n in front)
    if len(fp) > 1:
        ax.plot([p[0] for p in fp], [p[1] for p in fp], color="tab:red", lw=1, ls="--", zorder=2)
    ax.scatter([], [], color="tab:red", edgecolor="black", label="Pareto front")
    ax.scatter([], [], color="tab:gray", label="dominated")
    if references:
        ax.scatter([], [], marker="s", facecolor="none", edgecolor="tab:blue", label="reference (not a method)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    xs = [p[0] for p in [*points.values(), *(references or {}).values()]]
    ys = [p[1] for p in [*points.values(), *(references or {}).values()]]
    ax.set_xlim(min(xs) - 5, max(xs) + 12)
    ax.set_ylim(min(ys) - 5, max(ys) + 5)
    fig.tight_layout()
    out = Path(out_png)
    fig.savefig(out, dpi=120, bbox_inches="tight")  # keeps the numbered key
    plt.close(fig)
    return out


def radar_plot(values: dict[str, dict[str, float]], axes: list[str], out_png: str | Path,
               title: str = "methods on five metrics (larger is better)") -> Path:
    """One polygon per method over ``axes`` (values already scaled to [0, 1], larger better; Figure 2)."""
    import math

    angles = [2 * math.pi * i / len(axes) for i in range(len(axes))]
    fig = plt.figure(figsize=(7.2, 6.4))
    ax = fig.add_subplot(111, polar=True)
    cmap = plt.get_cmap("tab10")
    for k, (name, v) in enumerate(values.items()):
        ys = [v.get(a, 0.0) or 0.0 for a in axes]
        ax.plot(angles + angles[:1], ys + ys[:1], color=cmap(k % 10), lw=2 if k == 0 else 1.2, label=name)
        ax.fill(angles + angles[:1], ys + ys[:1], color=cmap(k % 10), alpha=0.12 if k == 0 else 0.04)
    ax.set_xticks(angles)
    ax.set_xticklabels(axes, fontsize=9)
    ax.set_ylim(0, 1)
    ax.set_yticks([0.25, 0.5, 0.75, 1.0])
    ax.set_yticklabels(["", "0.5", "", "1"], fontsize=7)
    ax.set_title(title, pad=18)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.08, 1.05))
    out = Path(out_png)
    fig.savefig(out, dpi=120, bbox_inches="tight")  # keeps the legend outside the polar axes
    plt.close(fig)
    return out


def heatmap_plot(names: list[str], win: dict[str, dict[str, float | None]], out_png: str | Path,
                 title: str = "pairwise reasoning win rate (row beats column, %)") -> Path:
    """Row-vs-column win rates (Figure 4): the mean of a row over the columns is RWR, of a column
    over the rows RLR."""
    import numpy as np

    n = len(names)
    grid = np.full((n, n), np.nan)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            if win[a][b] is not None:
                grid[i, j] = 100 * win[a][b]
    fig, ax = plt.subplots(figsize=(1.0 * n + 3.0, 0.8 * n + 2.2))
    im = ax.imshow(grid, cmap="Blues", vmin=0, vmax=100)
    for i in range(n):
        for j in range(n):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=8,
                        color="white" if grid[i, j] > 60 else "black")
    ax.set_xticks(range(n))
    ax.set_xticklabels(names, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(n))
    ax.set_yticklabels(names, fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    out = Path(out_png)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def dynamics_plot(runs: dict[str, list[dict]], keys: list[str], out_png: str | Path,
                  title: str = "training dynamics") -> Path:
    """One panel per metric key, one smoothed line per run (e.g. kl/row_mean, reward/task_mean, grad_norm)."""
    keys = [k for k in keys if any(k in m for ms in runs.values() for m in ms)]
    n = max(1, len(keys))
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 3.6), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, key in zip(axes.flat, keys):
        for k, (name, ms) in enumerate(runs.items()):
            pts = [(m["step"], m[key]) for m in ms if key in m]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, _smooth(list(ys), max(1, len(ys) // 15)), color=cmap(k % 10), lw=1.5, label=name)
        ax.set_title(key)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    out = Path(out_png)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def ratio_histogram_plot(hists: dict[str, dict[str, list[float]]], edges: list[float], out_png: str | Path,
                         ge1: dict[str, dict[str, float | None]] | None = None,
                         title: str = "r_s / r_t (validity ratio, Figure 1)") -> Path:
    """One panel per prefix kind: the share of tokens per bin of log10(r_s / r_t) (``edges``;
    the first and last bins are the open ends, drawn one bin wide), one bar set or step line per
    run, the ratio 1 marked and the share >= 1 in the legend (VCRD paper, Figure 1). The share
    axis is logarithmic (from 0.01%), unlike the paper's, so that tails next to a parity spike show."""
    kinds = sorted({k for h in hists.values() for k in h}, key=lambda k: k != "teacher")
    fig, axes = plt.subplots(1, max(1, len(kinds)), figsize=(6.5 * max(1, len(kinds)), 4.2), squeeze=False)
    width = edges[1] - edges[0]
    lefts = [edges[0] - width] + list(edges)  # the bin starts in log10 units, under- and overflow included
    for ax, kind in zip(axes[0], kinds):
        runs = [(n, h[kind]) for n, h in hists.items() if kind in h]
        for i, (name, frac) in enumerate(runs):
            share = (ge1 or {}).get(name, {}).get(kind)
            label = f"{name}: {100 * share:.1f}% >= 1" if share is not None else name
            xs = [10 ** x for x in lefts]
            if len(runs) == 1:
                ax.bar(xs, [100 * f for f in frac], width=[10 ** (x + width) - 10 ** x for x in lefts], align="edge",
                       color="tab:blue", edgecolor="white", label=label)
            else:
                ax.stairs([100 * f for f in frac], xs + [10 ** (lefts[-1] + width)], label=label, linewidth=1.6,
                          linestyle=("-", "--", ":", "-.")[i % 4])
        ax.axvline(1.0, color="tab:red", linestyle="--", linewidth=1.2)
        ax.set_xscale("log")
        ax.set_yscale("log")  # parity usually holds most tokens; the tails are the point
        ax.set_ylim(bottom=1e-2, top=150)
        ax.set_xlabel(f"r_s / r_t ({kind} prefix; outer bins: < 1e{edges[0]:g} incl. r_s = 0, >= 1e{edges[-1]:g})")
        ax.set_ylabel("share of tokens (%)")
        ax.set_title(f"{kind} prefix")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return Path(out_png)
