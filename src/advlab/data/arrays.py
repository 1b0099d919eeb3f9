"""The arrays datamodules hold and the checks of their settings: float images in [0, 1], int64
labels, seeded stratified splits, fractions and positive integers (one-line ``ConfigError``s)."""
from __future__ import annotations

import logging
import math
from typing import Any, Optional

import torch

from advlab.errors import ConfigError

log = logging.getLogger(__name__)


def stratified_split(y: torch.Tensor, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded stratified (train_idx, test_idx), each sorted, for datasets without an official test split."""
    from sklearn.model_selection import train_test_split

    idx = torch.arange(len(y)).numpy()
    counts = torch.bincount(y)
    n_classes = int((counts > 0).sum())
    n_test = math.ceil(float(test_fraction) * len(y))
    stratify = y.numpy()
    if int(counts[counts > 0].min()) < 2 or n_test < n_classes or len(y) - n_test < n_classes:
        log.warning("too few examples (%d, %d classes) to stratify a %.2f test split; splitting at random",
                    len(y), n_classes, float(test_fraction))
        stratify = None
    tr, te = train_test_split(idx, test_size=float(test_fraction), random_state=int(seed), stratify=stratify)
    return torch.as_tensor(sorted(tr), dtype=torch.long), torch.as_tensor(sorted(te), dtype=torch.long)


def check_fraction(key: str, value: Any, allow_zero: bool) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    lo_ok = v >= 0 if allow_zero else v > 0
    if not (lo_ok and v < 1):
        rng = "[0, 1)" if allow_zero else "(0, 1)"
        raise ConfigError(key, f"must be a number in {rng}, got {value!r}")
    return v


def as_float_images(x: Any, what: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    if not torch.is_floating_point(x):
        raise TypeError(f"{what}: expected uint8 or float data, got {x.dtype}")
    return x.to(torch.float32).contiguous()


def as_labels(y: Any) -> torch.Tensor:
    return torch.as_tensor(y).to(torch.int64).reshape(-1).contiguous()


def centring_shift(x_train: torch.Tensor, center: bool, constant: Optional[float]) -> Optional[torch.Tensor]:
    """What every split is shifted by (subtracted): the training mean image (``center``), the number
    ``constant`` (a 0-d tensor), or None for no centring."""
    if center:
        return x_train.mean(0, keepdim=True)
    if constant is not None:
        return torch.tensor(float(constant), dtype=x_train.dtype)
    return None


def channel_statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (mean, std) of images (N, C, H, W), or of all values of vector data (N, D), as (1,);
    a std of zero spread is 1."""
    if len(x) == 0:
        c = x.shape[1] if x.dim() == 4 else 1
        return torch.zeros(c), torch.ones(c)
    if x.dim() == 4:  # one channel at a time: no full-size temporary
        pairs = [torch.var_mean(x[:, c], correction=0) for c in range(x.shape[1])]
        var = torch.stack([v for v, _ in pairs])
        mean = torch.stack([m for _, m in pairs])
    else:
        var, mean = torch.var_mean(x, correction=0)
        var, mean = var.reshape(1), mean.reshape(1)
    std = var.sqrt()
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    return mean.float(), std.float()


def is_sorted_by_class(y: torch.Tensor) -> bool:
    """Labels in non-decreasing order with more than one class: a split read class folder by class folder."""
    return len(y) > 1 and bool((y[1:] >= y[:-1]).all()) and bool(y[0] != y[-1])


def interleaved_by_class(y: torch.Tensor) -> torch.Tensor:
    """The order that takes each class's first example, then each class's second, and so on (classes in
    label order, each class's examples in their given order), so that every prefix is as balanced as
    the class sizes allow. No randomness: the same points on every machine and seed."""
    rank = torch.empty_like(y)
    for c in torch.unique(y):
        where = (y == c).nonzero().flatten()
        rank[where] = torch.arange(len(where))
    return torch.argsort(rank * (int(y.max()) + 1) + y, stable=True)
