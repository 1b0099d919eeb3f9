"""Batch-wise augmentation on whatever device the batch lives on: padded random crop + horizontal flip."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def crop_flip(
    x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor, padding: int = 4
) -> torch.Tensor:
    """Zero-pad ``x`` (N, C, H, W) by ``padding``, crop H×W at (top[i], left[i]), then mirror where ``flip[i]``.

    One gather for the whole batch: output[i, c, h, w] = padded[i, c, top[i] + h, left[i] + w'] with
    w' = W - 1 - w for flipped samples.
    """
    n, c, h, w = x.shape
    dev = x.device
    padded = F.pad(x, (padding, padding, padding, padding))
    cols = torch.arange(w, device=dev)
    cols = torch.where(flip.to(dev)[:, None], (w - 1) - cols, cols)  # (N, W)
    rows = top.to(dev)[:, None] + torch.arange(h, device=dev)  # (N, H)
    cols = left.to(dev)[:, None] + cols
    return padded[
        torch.arange(n, device=dev)[:, None, None, None],
        torch.arange(c, device=dev)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


def random_crop_flip(x: torch.Tensor, padding: int = 4, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Random crop with ``padding`` zero pixels on every side plus random horizontal flip, per sample.

    The random numbers are drawn on the CPU (from ``generator``) and moved to ``x``'s device, so the
    same seed gives the same augmentation on any device.
    """
    n = x.shape[0]
    top = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    return crop_flip(x, top, left, flip, padding)
