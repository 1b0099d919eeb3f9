"""Figures of the information analyses: the information plane and the texture / shape probes."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import cm, colors  # noqa: E402

from advlab.report.plots import _save  # noqa: E402
from advlab.utils.io import atomic_path  # noqa: E402

_MARKERS = "osD^vP*Xh<>p"
_INPUT_NAMES = {"clean": "clean inputs", "adversarial": "adversarial inputs"}


def information_plane(histories: dict[str, dict], path, *, title: str = "Information plane") -> Path:
    """I(X;T) (x) against I(T;Y) (y) per layer, coloured by epoch.

    `histories`: {label: {"meta": ..., "rows": [{epoch, input, estimator, layer, I_XT, I_TY}]}} (the
    MutualInformation callback's `mi_history.json`); one label per model (e.g. NT, AT). Rows of the
    figure are estimators; columns are label × input (clean, adversarial), side by side. Markers
    name the layers; a thin line joins the layers of one epoch. Dashed lines: the saturation values
    log₂ N and log₂ C.
    """
    estimators = list(dict.fromkeys(r["estimator"] for h in histories.values() for r in h["rows"]))
    columns = [(label, kind) for label, h in histories.items() for kind in ("clean", "adversarial") if any(r["input"] == kind for r in h["rows"])]
    epochs = sorted({r["epoch"] for h in histories.values() for r in h["rows"]})
    norm = colors.Normalize(vmin=min(epochs, default=0), vmax=max(max(epochs, default=1), min(epochs, default=0) + 1))
    cmap = plt.get_cmap("viridis")
    # fixed spacing (constrained layout would take longer than drawing the whole figure)
    height = 3.0 * len(estimators) + 0.8
    # the top margin leaves room for the panel titles under the figure's title (in inches / height)
    fig, axes = plt.subplots(len(estimators), len(columns), figsize=(3.4 * len(columns) + 1, height), squeeze=False,
                             gridspec_kw={"hspace": 0.45, "wspace": 0.3, "right": 0.9, "top": 1 - 0.75 / height})
    for j, (label, kind) in enumerate(columns):
        meta, rows = histories[label]["meta"], [r for r in histories[label]["rows"] if r["input"] == kind]
        layers = list(dict.fromkeys(r["layer"] for r in rows))
        for i, est in enumerate(estimators):
            ax = axes[i][j]
            sel = [r for r in rows if r["estimator"] == est]
            for epoch in sorted({r["epoch"] for r in sel}):
                pts = sorted((r for r in sel if r["epoch"] == epoch), key=lambda r: layers.index(r["layer"]))
                ax.plot([r["I_XT"] for r in pts], [r["I_TY"] for r in pts], color=cmap(norm(epoch)), lw=0.7, alpha=0.6)
            for k, layer in enumerate(layers):  # one scatter per layer (marker), coloured by epoch
                pts = [r for r in sel if r["layer"] == layer]
                ax.scatter([r["I_XT"] for r in pts], [r["I_TY"] for r in pts], c=[r["epoch"] for r in pts], cmap=cmap, norm=norm,
                           marker=_MARKERS[k % len(_MARKERS)], s=22, zorder=3)
            # the saturation values log2 N, log2 C, and the same axes in every panel; the Rényi
            # estimates (median kernel width) stay far below them: their panels zoom in
            fixed = est != "renyi"
            if meta.get("n_points") and fixed:
                ax.axvline(math.log2(meta["n_points"]), ls="--", color="grey", lw=0.8)
                ax.set_xlim(-0.2, 1.05 * math.log2(meta["n_points"]))
            if meta.get("num_classes") and fixed:
                ax.axhline(math.log2(meta["num_classes"]), ls="--", color="grey", lw=0.8)
                ax.set_ylim(-0.1, 1.08 * math.log2(meta["num_classes"]))
            ax.grid(alpha=0.3)
            head = f"{label}: " if label else ""
            ax.set_title(f"{head}{_INPUT_NAMES.get(kind, kind)} — {est}", fontsize=8)
            ax.set_xlabel("I(X;T) [bits]", fontsize=8), ax.set_ylabel("I(T;Y) [bits]", fontsize=8)
            ax.tick_params(labelsize=7)
        handles = [plt.Line2D([], [], ls="", marker=_MARKERS[k % len(_MARKERS)], color="k", label=layer) for k, layer in enumerate(layers)]
        axes[0][j].legend(handles=handles, fontsize=6, title="layer", title_fontsize=6, loc="lower right")
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), cax=fig.add_axes([0.925, 0.3, 0.012, 0.4]), label="epoch")
    fig.suptitle(title, fontsize=10)
    with atomic_path(path) as tmp:  # the layout is fixed: no tight bounding box (a second drawing pass)
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)


def texture_shape(results: dict[str, dict], path, *, title: str = "Texture vs shape") -> Path:
    """Accuracy against the saturation level p (log scale) and the patch-shuffle grid k, one colour
    per model, solid for clean and dashed for adversarial test images.

    `results`: {model: {"saturation": {p: {"clean": acc, "adversarial": acc}}, "patch_shuffle": {k: {...}}}}.
    """
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    palette = plt.get_cmap("tab10")
    for m, (model, res) in enumerate(results.items()):
        for ax, probe in zip(axes, ("saturation", "patch_shuffle")):
            levels = sorted(res.get(probe, {}), key=float)
            for kind, style in (("clean", "-"), ("adversarial", "--")):
                ys = [res[probe][lv].get(kind) for lv in levels]
                if levels and all(v is not None for v in ys):
                    ax.plot([float(lv) for lv in levels], ys, style, marker="o", color=palette(m % 10), label=f"{model} {kind}")
    axes[0].set_xscale("log", base=2)
    axes[0].set_xlabel("saturation p (2 = original; large = binary: shape only)")
    axes[1].set_xlabel("patch shuffle k (k×k tiles; 1 = original: texture only)")
    for ax in axes:
        ax.set_ylabel("accuracy"), ax.set_ylim(0, 1.02), ax.grid(alpha=0.3), ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _save(fig, Path(path))


def texture_shape_information(information: dict[str, list[dict]], path, *, n_points: int, num_classes: int,
                              estimator: str | None = None, title: str = "Per-layer information against the probe level") -> Path:
    """I(X;T) (top) and I(T;Y) (bottom) against the saturation / patch-shuffle level, for clean and
    adversarial inputs (columns), one colour per model and one marker per layer. `estimator`
    (default: renyi when present, else the first one) picks the estimates drawn; the saturating
    estimators (KDE, binning) are drawn on the full range [0, log2 N] / [0, log2 C].

    `information`: {model: [{probe, level, input, estimator, layer, I_XT, I_TY}]}.
    """
    present = list(dict.fromkeys(r["estimator"] for rows in information.values() for r in rows))
    estimator = estimator or ("renyi" if "renyi" in present else present[0])
    columns = [(probe, kind) for probe in ("saturation", "patch_shuffle") for kind in ("clean", "adversarial")
               if any(r["probe"] == probe and r["input"] == kind for rows in information.values() for r in rows)]
    fig, axes = plt.subplots(2, len(columns), figsize=(3.5 * len(columns), 6), squeeze=False, constrained_layout=True)
    palette = plt.get_cmap("tab10")
    for m, (model, rows) in enumerate(information.items()):
        rows = [r for r in rows if r["estimator"] == estimator]
        layers = list(dict.fromkeys(r["layer"] for r in rows))
        for j, (probe, kind) in enumerate(columns):
            for li, layer in enumerate(layers):
                pts = sorted((r for r in rows if r["probe"] == probe and r["input"] == kind and r["layer"] == layer), key=lambda r: r["level"])
                for i, q in enumerate(("I_XT", "I_TY")):
                    axes[i][j].plot([r["level"] for r in pts], [r[q] for r in pts], marker=_MARKERS[li % len(_MARKERS)], ms=4,
                                    color=palette(m % 10), alpha=0.5 + 0.5 * (li + 1) / len(layers), label=f"{model} {layer}")
    caps = (math.log2(n_points), math.log2(num_classes))
    for j, (probe, kind) in enumerate(columns):
        for i, q in enumerate(("I(X;T)", "I(T;Y)")):
            ax = axes[i][j]
            if probe == "saturation":
                ax.set_xscale("log", base=2)
            if estimator != "renyi":
                ax.set_ylim(-0.05 * caps[i], 1.08 * caps[i])
                ax.axhline(caps[i], ls="--", color="grey", lw=0.8)
            ax.ticklabel_format(axis="y", useOffset=False)
            ax.set_title(f"{probe}, {kind}", fontsize=8)
            ax.set_xlabel("p" if probe == "saturation" else "k", fontsize=8), ax.set_ylabel(f"{q} [bits]", fontsize=8)
            ax.grid(alpha=0.3), ax.tick_params(labelsize=7)
    axes[0][-1].legend(fontsize=6, ncol=1)
    fig.suptitle(f"{title} ({estimator})", fontsize=10)
    return _save(fig, Path(path))
