"""Texture vs shape probes (Zhang et al. 2022; RECIPES.md §6): input transforms that remove one cue.

* Saturation x' = clip(sign(2x−1)·|2x−1|^(2/p)/2 + 1/2): p = 2 is the identity; as p grows the image
  tends to a binary one, which keeps the shape (the silhouette) and removes texture.
* Patch shuffle: cut the image into a k×k grid of tiles and permute the tiles at random: k = 1 is the
  identity; larger k keeps local texture and breaks the global shape.
"""
from __future__ import annotations

import torch

from advlab.errors import ConfigError


def saturate(x: torch.Tensor, p: float) -> torch.Tensor:
    """Saturation of level p > 0 of images with pixels in [0, 1]."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not p > 0:
        raise ConfigError("probe.saturation", f"levels must be numbers > 0, got {p!r}")
    z = 2.0 * x - 1.0
    return (torch.sign(z) * z.abs().pow(2.0 / float(p)) / 2.0 + 0.5).clamp(0.0, 1.0)


def check_patch_grid(k, shape) -> int:
    """k must be a positive integer dividing the image height and width."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError("probe.patch_shuffle", f"levels must be integers >= 1, got {k!r}")
    if len(shape) != 3 or shape[1] % k or shape[2] % k:
        raise ConfigError("probe.patch_shuffle", f"k={k} must divide the image height and width {tuple(shape[1:])}")
    return k


def patch_shuffle(x: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each image of x (N, C, H, W) cut into k×k tiles of (H/k)×(W/k) pixels, tiles permuted at random
    (one permutation per image, drawn from `generator` on the CPU)."""
    k = check_patch_grid(k, tuple(x.shape[1:]))
    n, c, h, w = x.shape
    th, tw = h // k, w // k
    tiles = x.reshape(n, c, k, th, k, tw).permute(0, 2, 4, 1, 3, 5).reshape(n, k * k, c, th, tw)
    perm = torch.argsort(torch.rand(n, k * k, generator=generator), dim=1).to(x.device)
    tiles = tiles.gather(1, perm.view(n, k * k, 1, 1, 1).expand_as(tiles))
    return tiles.reshape(n, k, k, c, th, tw).permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)
