"""Training dynamics of several runs side by side (the TGPO paper's Figures 2, 4 and 6): one
panel per logged metric, one line per method, from each run's ``metrics.jsonl``.

Run folders named ``NAME_seedK`` (what ``compare`` writes for ``seeds:``) are grouped under
``NAME``: the line is the per-step mean over seeds and the band spans their min and max. The
table beside the figure gives, per method, the mean over seeds of: the training reward over the
last tenth of the steps, the longest answer, the largest share of answers at the length cap,
and the standard deviation of the gradient norm over the run (the paper's "variance" of
Figure 4's right panel).

    reasondistill report runs/tgpo_seed0 runs/tgpo_seed1 runs/op_distill_seed0 --dynamics dyn.png
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path

from .plots import plt, read_metrics

DYNAMICS_KEYS = ("reward/task_mean", "completions/mean_length", "grad_norm", "policy/entropy",
                 "tgpo/guidance_weight", "pg/clip_ratio", "completions/truncated_share", "kl/step_mean")
"""The per-step metrics drawn, in order; a key no run logged gets no panel."""

_SEED = re.compile(r"^(?P<name>.+)_seed(?P<seed>\d+)$")


def _metrics_file(d: Path) -> Path:
    f = d / "metrics.jsonl" if d.is_dir() else d
    if not f.is_file():
        raise FileNotFoundError(f"{d}: no metrics.jsonl (is it a training run folder?)")
    return f


def group_runs(dirs: list[str | Path]) -> dict[str, list[list[dict]]]:
    """``{method: [metrics rows of each seed]}``; ``NAME_seedK`` folders are seeds of ``NAME``."""
    groups: dict[str, list[list[dict]]] = {}
    for d in map(Path, dirs):
        m = _SEED.match(d.name)
        groups.setdefault(m["name"] if m else d.name, []).append(read_metrics(_metrics_file(d)))
    return groups


def _series(rows: list[dict], key: str) -> dict[int, float]:
    return {r["step"]: float(r[key]) for r in rows if key in r}


def summarize(groups: dict[str, list[list[dict]]]) -> list[dict]:
    """One row per method: means over seeds (see the module docstring), and the seed count."""
    out = []
    for name, seeds in groups.items():
        finals, longest, capped, gstd = [], [], [], []
        for rows in seeds:
            rew = [r["reward/task_mean"] for r in rows if "reward/task_mean" in r]
            if rew:
                tail = rew[-max(1, len(rew) // 10):]
                finals.append(sum(tail) / len(tail))
            longest += [max((r.get("completions/max_length", 0.0) for r in rows), default=0.0)]
            capped += [max((r.get("completions/truncated_share", 0.0) for r in rows), default=0.0)]
            g = [r["grad_norm"] for r in rows if "grad_norm" in r]
            gstd.append(statistics.pstdev(g) if len(g) > 1 else 0.0)

        def mean(xs):
            return sum(xs) / len(xs) if xs else None

        out.append({"method": name, "seeds": len(seeds), "final_reward": mean(finals), "max_length": mean(longest),
                    "max_truncated_share": mean(capped), "grad_norm_std": mean(gstd)})
    return out


def summary_markdown(rows: list[dict]) -> str:
    def f(x, p=3):
        return "-" if x is None else f"{x:.{p}f}"

    lines = ["| method | seeds | final training reward | longest answer | max share at cap | grad-norm std |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['seeds']} | {f(r['final_reward'])} | {f(r['max_length'], 0)} | "
                     f"{f(r['max_truncated_share'])} | {f(r['grad_norm_std'])} |")
    return "\n".join(lines)


def dynamics_figure(groups: dict[str, list[list[dict]]], out_png: str | Path, keys=DYNAMICS_KEYS,
                    title: str = "training dynamics") -> tuple[Path, list[str]]:
    """Draw the panels; returns (the PNG, the keys drawn)."""
    keys = [k for k in keys if any(k in r for seeds in groups.values() for rows in seeds for r in rows)]
    n = max(1, len(keys))
    cols = min(4, n)
    nrows = (n + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4.4 * cols, 3.3 * nrows), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, key in zip(axes.flat, keys):
        for k, (name, seeds) in enumerate(groups.items()):
            per_seed = [_series(rows, key) for rows in seeds]
            steps = sorted(set().union(*per_seed))
            if not steps:
                continue
            vals = [[s[t] for s in per_seed if t in s] for t in steps]
            mean = [sum(v) / len(v) for v in vals]
            w = max(1, len(steps) // 20)  # a moving average over ~5% of the run
            smooth = [sum(mean[max(0, i - w + 1):i + 1]) / len(mean[max(0, i - w + 1):i + 1]) for i in range(len(mean))]
            label = f"{name} (x{len(seeds)})" if len(seeds) > 1 else name
            ax.plot(steps, smooth, color=cmap(k % 10), lw=1.6, label=label)
            if len(seeds) > 1:
                ax.fill_between(steps, [min(v) for v in vals], [max(v) for v in vals], color=cmap(k % 10), alpha=0.12)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    handles: dict[str, object] = {}  # one legend for the figure: a run may lack the first panel's metric (sft)
    for ax in axes.flat:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    fig.suptitle(title)
    fig.legend(list(handles.values()), list(handles), loc="center right", fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out, keys


def dynamics_report(dirs: list[str | Path], out_png: str | Path, title: str = "training dynamics") -> str:
    """Figure + Markdown table (also written next to the PNG as ``.md``); returns the table."""
    groups = group_runs(dirs)
    png, _ = dynamics_figure(groups, out_png, title=title)
    table = summary_markdown(summarize(groups))
    png.with_suffix(".md").write_text(f"![{title}]({png.name})\n\n{table}\n", encoding="utf-8")
    return table
