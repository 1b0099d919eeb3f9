"""Image grids with one row per kind of image (e.g. target / start / constructed)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from advlab.report.plots import _as_image, _save  # noqa: E402


def image_rows(rows, path, *, title: str, max_cols: int = 8) -> Path:
    """`rows`: [(row label, images (n, C, H, W) or (n, D) in [0, 1], captions)] drawn top to bottom."""
    n = min(max_cols, max(len(images) for _, images, _ in rows))
    fig, axes = plt.subplots(len(rows), n, figsize=(1.6 * n, 1.75 * len(rows) + 0.3), squeeze=False)
    for i, (label, images, captions) in enumerate(rows):
        for j in range(n):
            ax = axes[i][j]
            ax.set_xticks([]), ax.set_yticks([])
            if j < len(images):
                data, cmap = _as_image(images[j])
                ax.imshow(data, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
                ax.set_title(captions[j] if j < len(captions) else "", fontsize=7)
        axes[i][0].set_ylabel(label, fontsize=9)
    fig.suptitle(title, fontsize=9)
    return _save(fig, Path(path))
