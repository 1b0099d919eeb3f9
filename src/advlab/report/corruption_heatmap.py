"""The heatmap of advlab-eval's corruption accuracy: one panel per model, corruptions as rows and
severities as columns (plus their mean), each cell annotated with its accuracy."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from advlab.report.plots import _save, plt


def corruption_heatmaps(tables: dict[str, list[list[float]]], corruptions: list[str], severities: list[int], path,
                        *, title: str) -> Path:
    """``tables``: {model: accuracy rows (one per corruption, one value per severity)}; a last column
    holds each corruption's mean over the severities, the panel title the model's mean."""
    cols = min(3, len(tables)) or 1
    rows = math.ceil(len(tables) / cols) or 1
    width, height = 2.2 + 0.75 * (len(severities) + 1), 0.8 + 0.32 * len(corruptions)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * width, rows * height), squeeze=False)
    image = None
    for j, (model, table) in enumerate(tables.items()):
        ax = axes[j // cols][j % cols]
        acc = np.asarray(table, dtype=float)
        grid = np.concatenate([acc, acc.mean(axis=1, keepdims=True)], axis=1)
        image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        for (r, c), value in np.ndenumerate(grid):
            ax.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=7, color="white" if value < 0.6 else "black")
        ax.axvline(len(severities) - 0.5, color="white", linewidth=2)
        ax.set_xticks(range(len(severities) + 1), [str(s) for s in severities] + ["mean"], fontsize=8)
        ax.set_yticks(range(len(corruptions)), corruptions if j % cols == 0 else [""] * len(corruptions), fontsize=8)
        ax.set_xlabel("severity", fontsize=8)
        ax.set_title(f"{model}: mean {acc.mean():.3f}", fontsize=9)
    for j in range(len(tables), rows * cols):
        axes[j // cols][j % cols].axis("off")
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="accuracy")
    fig.suptitle(title, fontsize=10)
    return _save(fig, Path(path))
