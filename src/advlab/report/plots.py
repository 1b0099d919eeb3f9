"""PNG figures of a run: training curves and clean / perturbation / adversarial image grids."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from advlab.utils.io import atomic_path  # noqa: E402


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _as_image(x: torch.Tensor):
    """(C,H,W) or (D,) tensor → something imshow can draw (vectors become a near-square tile)."""
    x = x.detach().cpu().float()
    if x.dim() == 1:
        side = math.ceil(math.sqrt(x.numel()))
        x = torch.nn.functional.pad(x, (0, side * side - x.numel())).reshape(1, side, side)
    if x.shape[0] == 1:
        return x[0].numpy(), "gray"
    return x.permute(1, 2, 0).clamp(0, 1).numpy(), None


def adversarial_grid(x_clean, x_adv, labels_clean, labels_adv, path, *, title: str, class_names=None, amplify=None, max_cols: int = 8):
    """Rows: clean image, perturbation (amplified to the full grey range), adversarial image.

    `labels_clean` / `labels_adv`: captions per column (e.g. "true 3 / f: 3", "target 4 / f: 4").
    """
    n = min(len(x_clean), max_cols)
    fig, axes = plt.subplots(3, n, figsize=(1.6 * n, 5.2), squeeze=False)
    delta = (x_adv[:n] - x_clean[:n]).detach().cpu().float()
    scale = amplify or float(0.5 / delta.abs().max().clamp_min(1e-12))
    for j in range(n):
        for i, (img, caption) in enumerate(((x_clean[j], labels_clean[j]), (0.5 + scale * delta[j], f"δ ×{scale:.1f}"), (x_adv[j], labels_adv[j]))):
            ax = axes[i][j]
            data, cmap = _as_image(img)
            ax.imshow(data, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(caption, fontsize=7)
    for i, row in enumerate(("clean", "perturbation", "adversarial")):
        axes[i][0].set_ylabel(row, fontsize=9)
    fig.suptitle(title, fontsize=10)
    return _save(fig, Path(path))


def training_curves(metrics_csv, path, *, title: str = "training"):
    """Plot per-epoch train/val loss and accuracy from Lightning's CSVLogger file."""
    rows = list(csv.DictReader(open(metrics_csv)))
    series: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        epoch = row.get("epoch")
        if not epoch:
            continue
        for key in ("train/loss_epoch", "train/acc", "val/loss", "val/acc"):
            if row.get(key) not in (None, ""):
                series.setdefault(key, []).append((float(epoch), float(row[key])))
    if not series:
        return None
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.4))
    for key, points in series.items():
        ax = ax_loss if "loss" in key else ax_acc
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker=".", label=key)
    for ax, name in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.set_xlabel("epoch"), ax.set_ylabel(name), ax.grid(alpha=0.3), ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, Path(path))


def heatmap(mean, std, rows, cols, path, *, title: str, row_label: str = "source", col_label: str = "target",
            value_label: str = "", vmin: float = 0.0, vmax: float = 1.0):
    """A matrix as colours with `mean ± std` written in every cell (NaN cells stay blank)."""
    import numpy as np

    mean = np.asarray(mean, dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 + 1.25 * len(cols), 1.0 + 0.8 * len(rows)))
    image = ax.imshow(np.ma.masked_invalid(mean), cmap="viridis", vmin=vmin, vmax=vmax)
    for i in range(len(rows)):
        for j in range(len(cols)):
            if math.isnan(mean[i, j]):
                ax.text(j, i, "n/a", ha="center", va="center", fontsize=8, color="gray")
                continue
            text = f"{mean[i, j]:.3f}"
            if std is not None and not math.isnan(std[i][j]):
                text += f"\n±{std[i][j]:.3f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if mean[i, j] < (vmin + vmax) / 2 else "black")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel(col_label), ax.set_ylabel(row_label)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label=value_label)
    ax.set_title(title, fontsize=10)
    return _save(fig, Path(path))


def transfer_scatter(points, path, *, title: str, x_label: str, y_label: str):
    """Ilyas et al. Fig. 3: one point per (source, architecture); `points` are dicts with
    source, target, x, y, x_err, y_err. Colour: source; text: architecture."""
    fig, ax = plt.subplots(figsize=(5.2, 4.2))
    sources = sorted({p["source"] for p in points})
    colours = plt.get_cmap("tab10")
    for k, source in enumerate(sources):
        mine = [p for p in points if p["source"] == source]
        ax.errorbar([p["x"] for p in mine], [p["y"] for p in mine],
                    xerr=[0 if math.isnan(p["x_err"]) else p["x_err"] for p in mine],
                    yerr=[0 if math.isnan(p["y_err"]) else p["y_err"] for p in mine],
                    fmt="o", color=colours(k % 10), label=f"source {source}", capsize=3)
        for p in mine:
            ax.annotate(p["target"], (p["x"], p["y"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(x_label), ax.set_ylabel(y_label), ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return _save(fig, Path(path))
