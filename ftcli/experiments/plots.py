"""PNG figures of `ft ablate` (matplotlib, Agg canvas; no display, no global pyplot state).

- `training_curves`: reward / accuracy per step of several runs (paper Figs. 4-5), seeds averaged.
- `variant_bars`: one bar per variant with a std error bar (Fig. 6 layer ranges, sweep summaries).
- `intervention_bars`: answer-change and correctness-reversal rates with 95% intervals (Table 1).
- `ranked_tokens`: highest- and lowest-flow tokens as ranked horizontal bars (Fig. 3).
- `overlap_heatmap`: pairwise top-set overlap between answer formats (Sec. 5.2).
- `fidelity_panels`: answer change vs blocked fraction per rule, and a per-rule statistic as bars
  (`ft ablate fidelity`).

Every function writes one PNG (parents created) and returns its path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from ftcli.io import read_jsonl
from ftcli.rundir import RunDir


def _figure(w: float, h: float):
    # imported here: matplotlib is needed only when a figure is drawn
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    tmp.replace(path)
    return path


def read_metrics(path) -> list[dict]:
    """Rows of a run's metrics.jsonl (a torn last line is skipped)."""
    p = Path(path)
    return RunDir(p).metrics() if p.is_dir() else read_jsonl(p)


def _ema(xs: list[float], alpha: float) -> list[float]:
    out, m = [], None
    for x in xs:
        m = x if m is None else alpha * m + (1 - alpha) * x
        out.append(m)
    return out


def training_curves(
    runs: Mapping[str, Sequence],
    path,
    keys: Sequence[str] = ("reward_mean", "accuracy"),
    smooth: float = 0.0,
    title: str | None = None,
) -> Path:
    """runs: {label: [run dir or metrics.jsonl, ...one per seed]}; the seeds' mean per step,
    optionally EMA-smoothed (`smooth` = EMA weight of the past, 0 = raw)."""
    fig = _figure(5.0 * len(keys), 3.6)
    axes = [fig.add_subplot(1, len(keys), i + 1) for i in range(len(keys))]
    for label, paths in runs.items():
        per_seed = [read_metrics(p) for p in paths]
        for ax, key in zip(axes, keys, strict=True):
            by_step: dict[int, list[float]] = {}
            for rows in per_seed:
                for r in rows:
                    if r.get(key) is not None and "step" in r:
                        by_step.setdefault(int(r["step"]), []).append(float(r[key]))
            if not by_step:
                continue
            steps = sorted(by_step)
            ys = [sum(by_step[s]) / len(by_step[s]) for s in steps]
            if smooth > 0:
                ys = _ema(ys, smooth)
            ax.plot(steps, ys, label=label, marker="o" if len(steps) < 12 else None, ms=3)
    for ax, key in zip(axes, keys, strict=True):
        ax.set_xlabel("step")
        ax.set_ylabel(key.replace("_", " "))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def variant_bars(
    labels: Sequence[str],
    means: Sequence[float],
    stds: Sequence[float] | None,
    path,
    ylabel: str = "accuracy (%)",
    title: str | None = None,
    baseline: float | None = None,
) -> Path:
    """One bar per variant (values as given), std error bars, optional dashed baseline."""
    fig = _figure(max(4.0, 0.9 * len(labels) + 1.5), 3.6)
    ax = fig.add_subplot(1, 1, 1)
    x = list(range(len(labels)))
    ax.bar(x, means, yerr=stds if stds is not None and any(stds) else None, capsize=4, color="#4C72B0")
    if baseline is not None:
        ax.axhline(baseline, ls="--", color="gray", lw=1, label="baseline")
        ax.legend(fontsize=8)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=20 if len(labels) > 5 else 0, ha="right" if len(labels) > 5 else "center")
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def intervention_bars(arms: Sequence[str], stats: Mapping[str, Mapping], path, title: str | None = None) -> Path:
    """Grouped bars: answer change and correctness reversal (%) per arm, Wilson 95% intervals.
    stats[arm][metric] = {"rate", "ci": [lo, hi]} for metric in ("changed", "reversed")."""
    fig = _figure(6.0, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(arms))
    for j, arm in enumerate(arms):
        xs, ys, lo, hi = [], [], [], []
        for i, metric in enumerate(("changed", "reversed")):
            s = stats[arm][metric]
            r = 100 * (s["rate"] or 0.0)
            xs.append(i + (j - (len(arms) - 1) / 2) * width)
            ys.append(r)
            lo.append(max(0.0, r - 100 * s["ci"][0]))
            hi.append(max(0.0, 100 * s["ci"][1] - r))
        ax.bar(xs, ys, width=width, yerr=[lo, hi], capsize=3, label=arm)
    ax.set_xticks([0, 1])
    ax.set_xticklabels(["answer change", "correctness reversal"])
    ax.set_ylabel("% of problems")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def ranked_tokens(
    top: Sequence[tuple[str, float]], bottom: Sequence[tuple[str, float]], path,
    xlabel: str = "mean relative throughput", title: str | None = None,
) -> Path:
    """Two panels of horizontal bars: the highest- and the lowest-flow tokens (label, value)."""
    n = max(len(top), len(bottom), 1)
    fig = _figure(9.0, 0.28 * n + 1.4)
    for k, (items, name, color) in enumerate(((top, "highest flow", "#C44E52"), (bottom, "lowest flow", "#4C72B0"))):
        ax = fig.add_subplot(1, 2, k + 1)
        labels = [t for t, _ in items][::-1]
        ax.barh(range(len(labels)), [v for _, v in items][::-1], color=color)
        ax.set_yticks(range(len(labels)))
        ax.set_yticklabels(labels, fontsize=8, family="monospace")
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.grid(axis="x", alpha=0.3)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def overlap_heatmap(names: Sequence[str], matrix: Sequence[Sequence[float]], path, title: str | None = None) -> Path:
    """Square heat map of pairwise overlaps in [0, 1], values printed in the cells."""
    fig = _figure(1.1 * len(names) + 2.0, 1.0 * len(names) + 1.2)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names)
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if v < 0.6 else "black", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def fidelity_panels(curves: Mapping[str, Mapping[str, Sequence]], bars: Mapping[str, Sequence], groups: Sequence[str],
                    path, ylabel: str = "Spearman with the causal effect", title: str | None = None,
                    points: Mapping[str, tuple[float, float]] | None = None) -> Path:
    """Two or three panels. Left: answer-change rate (%) against the blocked fraction k (%), one
    line per rule with Wilson 95% intervals (curves[label] = {"k": [...], "rate": [...], "ci":
    [[lo, hi], ...]}, rates in [0, 1]). Middle: grouped bars of a per-rule statistic with 95%
    intervals (bars[label] = one (mean, lo, hi) per group of `groups`; None values are left out).
    Right, when `points` is given: each rule's (gradient share, cosine) as a labelled point."""
    cols = 3 if points else 2
    fig = _figure(6.0 * cols, 4.2)
    ax = fig.add_subplot(1, cols, 1)
    for label, c in curves.items():
        ys = [100 * (r or 0.0) for r in c["rate"]]
        err = [[max(0.0, y - 100 * ci[0]) for y, ci in zip(ys, c["ci"], strict=True)],
               [max(0.0, 100 * ci[1] - y) for y, ci in zip(ys, c["ci"], strict=True)]]
        ax.errorbar(c["k"], ys, yerr=err, marker="o", ms=3, capsize=3, label=label, ls="--" if "bottom" in label else "-")
    ax.set_xlabel("blocked reasoning tokens (%)")
    ax.set_ylabel("answer change (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax = fig.add_subplot(1, cols, 2)
    labels = list(bars)
    width = 0.8 / max(1, len(groups))
    for j, group in enumerate(groups):
        xs, ys, lo, hi = [], [], [], []
        for i, label in enumerate(labels):
            m, a, b = bars[label][j]
            if m is None:
                continue
            xs.append(i + (j - (len(groups) - 1) / 2) * width)
            ys.append(m)
            lo.append(max(0.0, m - a) if a is not None else 0.0)
            hi.append(max(0.0, b - m) if b is not None else 0.0)
        ax.bar(xs, ys, width=width, yerr=[lo, hi], capsize=3, label=group)
    ax.axhline(0.0, color="gray", lw=0.8)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    if points:
        ax = fig.add_subplot(1, cols, 3)
        for label, (share, cos) in points.items():
            ax.scatter([share], [cos], s=18)
            ax.annotate(label, (share, cos), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlim(0.0, 1.05)
        ax.set_ylim(min(0.0, *(c for _, c in points.values())) - 0.05, 1.05)
        ax.set_xlabel("share of GRPO's gradient norm")
        ax.set_ylabel("cosine with GRPO's gradient")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return _save(fig, path)
