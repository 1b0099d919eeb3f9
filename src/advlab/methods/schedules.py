"""Per-step learning-rate schedules of the fast-training recipes (RECIPES.md §8) and Paknezhad et
al.'s constant-then-cosine one. All take the optimiser's configured lr as the peak; `total_steps` is
filled in with the run's optimiser steps by `ClassifierModule.configure_optimizers` when the config
leaves it null."""
from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR, OneCycleLR

from advlab.errors import ConfigError


def _steps(total_steps) -> int:
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ConfigError("method.scheduler.total_steps", f"expected an integer >= 1 (or null: the run's steps), got {total_steps!r}")
    return total_steps


def _fraction(key: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"method.scheduler.{key}", f"expected a number in [0, 1], got {value!r}")
    return float(value)


def warmup_linear(optimizer: torch.optim.Optimizer, total_steps: int, warmup: float = 0.2, final: float = 0.0) -> LambdaLR:
    """airbench-style triangle: lr rises linearly from 0 to the peak over the first `warmup`
    fraction of the steps, then falls linearly to `final` × peak at the last step."""
    n, w, end = _steps(total_steps), _fraction("warmup", warmup), _fraction("final", final)
    n_warm = max(1, int(round(w * n))) if w > 0 else 0

    def factor(step: int) -> float:
        if step < n_warm:
            return (step + 1) / n_warm
        left = max(n - n_warm, 1)
        return 1.0 - (1.0 - end) * min(step - n_warm + 1, left) / left

    return LambdaLR(optimizer, factor)


def one_cycle(optimizer: torch.optim.Optimizer, total_steps: int, pct_start: float = 0.25, div_factor: float = 25.0,
              final_div_factor: float = 1.0e4, anneal_strategy: str = "cos", cycle_momentum: bool = False) -> OneCycleLR:
    """torch's OneCycleLR (Smith & Topin) peaking at the optimiser's configured lr."""
    peak = [group["lr"] for group in optimizer.param_groups]
    steps, pct = _steps(total_steps), _fraction("pct_start", pct_start)
    # torch divides by each phase's length, pct·T − 1 steps: a run of a few steps (a quick check with
    # little data) would end in ZeroDivisionError; warm up for at least 1.5 steps where there are 2
    if steps >= 2:
        pct = min(max(pct, 1.5 / steps), 1.0 - 0.5 / steps)
    return OneCycleLR(optimizer, max_lr=peak, total_steps=steps, pct_start=pct,
                      div_factor=div_factor, final_div_factor=final_div_factor, anneal_strategy=anneal_strategy,
                      cycle_momentum=cycle_momentum)


def linear_cosine(optimizer: torch.optim.Optimizer, total_steps: int, constant: float = 0.5) -> LambdaLR:
    """Paknezhad et al.'s LinearCosineLR (MahsaPaknezhad/AdversariallyRobustTraining, Scheduler.py via getScheduler.py):
    the configured lr for the first ⌈`constant`·T⌉ steps, then a cosine from it down to 0 at step T."""
    n, frac = _steps(total_steps), _fraction("constant", constant)
    flat = math.ceil(n * frac)
    decay = max(n - flat, 1)

    def factor(step: int) -> float:
        return 1.0 if step <= flat else 0.5 * (math.cos(math.pi * min(step - flat, decay) / decay) + 1.0)

    return LambdaLR(optimizer, factor)
