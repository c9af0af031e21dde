"""matplotlib figures of a comparison, returned as PNG bytes (Agg backend, no display needed)."""
from __future__ import annotations

import io

import numpy as np


def _figure(ncols=1):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(6.4 * ncols, 4.2), squeeze=False)
    return plt, fig, axes[0]


def _png(plt, fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _smooth(y: np.ndarray, n: int) -> np.ndarray:
    """Trailing mean over n points (train loss is noisy step to step)."""
    if n <= 1 or len(y) < n:
        return y
    c = np.cumsum(np.insert(y, 0, 0.0))
    head = c[1:n] / np.arange(1, n)
    return np.concatenate([head, (c[n:] - c[:-n]) / n])


def _colors(recipes):
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {r: cmap(i % 10) for i, r in enumerate(recipes)}


def loss_plot(runs: dict) -> bytes:
    """Validation loss (left) and smoothed training loss (right) vs tokens; one line per run."""
    plt, fig, (ax_val, ax_train) = _figure(2)
    colors = _colors(runs)
    for recipe, seeds in runs.items():
        for i, run in enumerate(seeds):
            label = recipe if i == 0 else None
            if run.val:
                ax_val.plot([r["tokens"] for r in run.val], [r["val_loss"] for r in run.val],
                            marker="o", ms=3, color=colors[recipe], label=label, alpha=0.9)
            if run.train:
                y = np.array([r["loss"] for r in run.train], dtype=float)
                ax_train.plot([r["tokens"] for r in run.train], _smooth(y, max(1, len(y) // 50)),
                              color=colors[recipe], label=label, alpha=0.8, lw=1)
    for ax, title in ((ax_val, "validation loss"), (ax_train, "training loss (smoothed)")):
        ax.set_xlabel("tokens")
        ax.set_ylabel("loss (nats/token)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    return _png(plt, fig)


def gap_series(base_runs, runs_r) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, gaps [n_seeds, n_points]) of 100 * (val_r / val_base - 1), paired by seed and step."""
    per_seed, tokens = [], None
    base_by_seed = {r.seed: {v["step"]: v for v in r.val} for r in base_runs}
    for run in runs_r:
        base = base_by_seed.get(run.seed)
        if not base:
            continue
        pts = [(v["tokens"], 100.0 * (v["val_loss"] / base[v["step"]]["val_loss"] - 1.0))
               for v in run.val if v["step"] in base]
        if pts:
            per_seed.append(pts)
    if not per_seed:
        return np.array([]), np.zeros((0, 0))
    n = min(len(p) for p in per_seed)
    tokens = np.array([t for t, _ in per_seed[0][:n]], dtype=float)
    return tokens, np.array([[g for _, g in p[:n]] for p in per_seed], dtype=float)


def gap_plot(runs: dict, baseline: str) -> bytes:
    """Relative validation-loss gap to the baseline (%) vs tokens; mean over seeds, min-max band."""
    plt, fig, (ax,) = _figure(1)
    colors = _colors(runs)
    ax.axhline(0.0, color=colors.get(baseline, "k"), lw=1, label=f"{baseline} (reference)")
    for recipe, seeds in runs.items():
        if recipe == baseline:
            continue
        tokens, gaps = gap_series(runs.get(baseline, []), seeds)
        if gaps.size == 0:
            continue
        mean = gaps.mean(axis=0)
        ax.plot(tokens, mean, marker="o", ms=3, color=colors[recipe],
                label=f"{recipe} (mean of {gaps.shape[0]} seed{'s' if gaps.shape[0] > 1 else ''})")
        if gaps.shape[0] > 1:
            ax.fill_between(tokens, gaps.min(axis=0), gaps.max(axis=0), color=colors[recipe],
                            alpha=0.2, lw=0, label=f"{recipe} min-max over seeds")
    ax.set_xlabel("tokens")
    ax.set_ylabel(f"validation loss gap to {baseline} (%)")
    ax.set_title(f"relative loss gap to {baseline}")
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(plt, fig)


def grad_norm_plot(runs: dict) -> bytes:
    """Global gradient norm (before clipping) vs tokens, log scale."""
    plt, fig, (ax,) = _figure(1)
    colors = _colors(runs)
    for recipe, seeds in runs.items():
        for i, run in enumerate(seeds):
            y = np.array([r["grad_norm"] for r in run.train], dtype=float)
            if len(y):
                ax.plot([r["tokens"] for r in run.train], _smooth(y, max(1, len(y) // 50)),
                        color=colors[recipe], label=recipe if i == 0 else None, lw=1, alpha=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("tokens")
    ax.set_ylabel("gradient norm (global, smoothed)")
    ax.set_title("gradient norm")
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(plt, fig)
