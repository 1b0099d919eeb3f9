"""Mean ± standard error of the mean over seeds (the spread the papers report)."""
from __future__ import annotations

import math

import numpy as np


def mean_sem(values) -> tuple[np.ndarray, np.ndarray]:
    """Mean and SEM (sample std / √n) over the first axis; the SEM of a single value is 0.
    NaNs (e.g. a ratio with no sample) are left out per entry."""
    arr = np.asarray(values, dtype=float)
    if arr.ndim == 0 or arr.shape[0] == 0:
        raise ValueError("mean_sem needs at least one value")
    n = np.sum(~np.isnan(arr), axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nanmean(arr, axis=0) if np.any(n) else np.full(arr.shape[1:], math.nan)
        dev = np.where(np.isnan(arr), 0.0, arr - mean)
        var = np.sum(dev * dev, axis=0) / np.maximum(n - 1, 1)
        sem = np.where(n > 1, np.sqrt(var / np.maximum(n, 1)), 0.0)
    return mean, sem
