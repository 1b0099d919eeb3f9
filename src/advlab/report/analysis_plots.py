"""PNG figures of advlab-eval: robustness curves with SEM bands, DeepFool perturbation sizes,
off-support softmax statistics and logits along the FGSM direction (Goodfellow et al.)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from advlab.report.plots import _save, plt

_COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]


def _color(i: int) -> str:
    return _COLORS[i % len(_COLORS)]


def robustness_curves(curves: dict, path, *, title: str, points: str = "") -> Path:
    """One panel per attack, one line per model: mean robust accuracy against ε with a ± SEM band.

    ``curves``: {model: {attack: {"norm", "eps", "mean", "sem", "n"}}}.
    """
    attacks = list(dict.fromkeys(a for per_model in curves.values() for a in per_model))
    cols = min(2, len(attacks)) or 1
    rows = math.ceil(len(attacks) / cols) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
    for j, attack in enumerate(attacks):
        ax = axes[j // cols][j % cols]
        for i, (model, per_model) in enumerate(curves.items()):
            if attack not in per_model:
                continue
            c = per_model[attack]
            eps, mean, sem = np.asarray(c["eps"]), np.asarray(c["mean"]), np.asarray(c["sem"])
            ax.plot(eps, mean, marker="o", ms=3, color=_color(i), label=f"{model} (n={c['n']})")
            ax.fill_between(eps, mean - sem, mean + sem, color=_color(i), alpha=0.2, linewidth=0)
        norm = next(iter(p[attack]["norm"] for p in curves.values() if attack in p))
        ax.set_title(attack, fontsize=10)
        ax.set_xlabel(f"ε ({'L∞' if norm == 'linf' else 'L2'}, pixel units)")
        ax.set_ylabel("robust accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for j in range(len(attacks), rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.suptitle(f"{title}\nmean ± SEM over seeds{'; ' + points if points else ''}", fontsize=10)
    fig.tight_layout()
    return _save(fig, Path(path))


def deepfool_norms(norms: dict, path, *, title: str) -> Path:
    """Box plots of the DeepFool ‖r‖ per model (successful samples of every seed pooled), one panel
    per norm; the legend gives ρ = mean ‖r‖/‖x‖ ± SEM. ``norms``: {norm: {model: (r array, rho, sem)}}."""
    fig, axes = plt.subplots(1, len(norms), figsize=(5.2 * len(norms), 3.8), squeeze=False)
    for ax, (norm, per_model) in zip(axes[0], norms.items()):
        names = list(per_model)
        data = [np.asarray(per_model[m][0], dtype=float) for m in names]
        ax.boxplot(data, showfliers=False)
        ax.set_xticks(range(1, len(names) + 1), [f"{m}\nρ={per_model[m][1]:.4f}±{per_model[m][2]:.4f}" for m in names], fontsize=7)
        ax.set_ylabel(f"DeepFool ‖r‖{'∞' if norm == 'linf' else '₂'}")
        ax.set_title(f"minimal perturbation ({'L∞' if norm == 'linf' else 'L2'})", fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, Path(path))


def off_support_bars(stats: dict, path, *, title: str) -> Path:
    """Grouped bars: mean max-softmax and entropy / log C per input kind (test data first) and model,
    with ± SEM. ``stats``: {model: {inputs: {"max_softmax": (mean, sem), "entropy_ratio": (mean, sem)}}}."""
    models = list(stats)
    kinds = list(dict.fromkeys(k for per_model in stats.values() for k in per_model))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    width = 0.8 / max(len(models), 1)
    for ax, metric, label in ((axes[0], "max_softmax", "mean max-softmax"), (axes[1], "entropy_ratio", "mean entropy / log C")):
        for i, model in enumerate(models):
            xs = np.arange(len(kinds)) + (i - (len(models) - 1) / 2) * width
            vals = [stats[model].get(k, {}).get(metric, (math.nan, 0.0)) for k in kinds]
            ax.bar(xs, [v[0] for v in vals], width, yerr=[v[1] for v in vals], capsize=3, color=_color(i), label=model)
        ax.set_xticks(np.arange(len(kinds)), kinds)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, Path(path))


def logit_lines(eps, logits, labels, r2, path, *, title: str, class_names=None) -> Path:
    """One panel per example: every class's logit of x + ε·sign(∇x L) against ε (the true class bold),
    with the straight-line R² of the example."""
    eps = np.asarray(eps, dtype=float)
    n = len(logits)
    cols = min(4, n) or 1
    rows = math.ceil(n / cols) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), squeeze=False)
    for j in range(rows * cols):
        ax = axes[j // cols][j % cols]
        if j >= n:
            ax.axis("off")
            continue
        z = np.asarray(logits[j], dtype=float)
        for c in range(z.shape[1]):
            bold = c == int(labels[j])
            name = class_names[c] if class_names else str(c)
            ax.plot(eps, z[:, c], color=_color(c), linewidth=2.2 if bold else 0.9, label=name)
        ax.axvline(0, color="grey", linewidth=0.6)
        ax.set_title(f"y={class_names[int(labels[j])] if class_names else int(labels[j])}  R²={float(r2[j]):.3f}", fontsize=9)
        ax.set_xlabel("ε along sign(∇x L)")
        if j % cols == 0:
            ax.set_ylabel("logit")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6, ncol=2)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, Path(path))


def robustness_bars(header: list[str], rows: list[list], path, *, title: str) -> Path:
    """Grouped bars: per model, its clean accuracy and each attack's accuracy (advlab.analysis.robustness_table)."""
    columns = header[1:-1]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(rows) * len(columns) / 2 + 2), 3.8))
    width = 0.8 / max(1, len(columns))
    for j, column in enumerate(columns):
        values = [np.nan if r[1 + j] is None else r[1 + j] for r in rows]
        bars = ax.bar(np.arange(len(rows)) + (j - (len(columns) - 1) / 2) * width, values, width, color=_color(j), label=column)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(np.arange(len(rows)), [r[0] for r in rows])
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, Path(path))
