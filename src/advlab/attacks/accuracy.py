"""Accuracy under attack.

A sample counts as robust only if the model classifies it correctly both clean and attacked, so a
sample misclassified when clean is non-robust whatever the attack returns.

``stop_early`` (default on): PGD-family attacks that keep their best iterate stop attacking a point
once it is misclassified (``PGD.stop_on_success``, see ``pgd.early_stopping``): the same robust flags
by construction, fewer model evaluations. APGD (and AutoAttack) retire broken points themselves.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from advlab.attacks.base import Attack, as_logits, eval_mode
from advlab.attacks.pgd import early_stopping
from advlab.errors import ConfigError


def _batches(data, batch_size: int):
    """Yield (x, y) from a DataLoader / iterable of batches, or from a pair of tensors (x, y)."""
    if (isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data)
            and data[0].dim() >= 1 and data[1].dim() == 1 and data[0].shape[0] == data[1].shape[0]):
        x, y = data
        for i in range(0, x.shape[0], batch_size):
            yield x[i:i + batch_size], y[i:i + batch_size]
        return
    if not isinstance(data, Iterable):
        raise TypeError("expected a DataLoader / iterable of (x, y) batches or a pair of tensors (x, y)")
    for batch in data:
        if isinstance(batch, Mapping):
            yield batch["x"], batch["y"]
        elif isinstance(batch, Sequence) and len(batch) >= 2:
            yield batch[0], batch[1]
        else:
            raise TypeError(f"cannot read (x, y) from a batch of type {type(batch).__name__}")


def _device_of(model: nn.Module, device):
    if device is not None:
        return torch.device(device)
    p = next(iter(model.parameters()), None)
    if p is None:
        p = next(iter(model.buffers()), None)
    return p.device if p is not None else torch.device("cpu")


def _predict(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample bool: prediction == label (eval mode, no gradients)."""
    with eval_mode(model), torch.no_grad():
        logits, yy = as_logits(model(x), y)
        return logits.argmax(dim=1) == yy


def _stopping(attack: Attack, on: bool):
    """``pgd.early_stopping(attack)`` when ``on``, else the attack as it is."""
    return early_stopping(attack) if on else contextlib.nullcontext(attack)


def _check_untargeted(attack: Attack) -> None:
    if attack.targeted:
        raise ConfigError("attack.targeted", "accuracy under attack needs an untargeted attack; allowed: false")


def evaluate_attack(model: nn.Module, attack: Attack, data, device=None, batch_size: int = 256,
                    stop_early: bool = True) -> dict:
    """Clean and robust accuracy over ``data``.

    Returns ``{"n", "clean_acc", "robust_acc", "success_rate"}``; ``success_rate`` is the fraction
    of clean-correct samples that the attack turns into errors (NaN if none is correct).
    ``stop_early``: see the module docstring.
    """
    _check_untargeted(attack)
    dev = _device_of(model, device)
    n = clean = robust = 0
    for x, y in _batches(data, batch_size):
        x, y = x.to(dev), y.to(dev)
        ok = _predict(model, x, y)
        with _stopping(attack, stop_early):
            x_adv = attack(model, x, y)
        ok_adv = ok & _predict(model, x_adv, y)
        n += x.shape[0]
        clean += int(ok.sum())
        robust += int(ok_adv.sum())
    if n == 0:
        raise ValueError("no samples to evaluate")
    return {"n": n, "clean_acc": clean / n, "robust_acc": robust / n,
            "success_rate": (clean - robust) / clean if clean else float("nan")}


def robust_accuracy(model: nn.Module, attack: Attack, loader_or_tensors, device=None, batch_size: int = 256) -> float:
    """Accuracy under ``attack`` (untargeted): fraction of samples correct clean AND attacked."""
    return evaluate_attack(model, attack, loader_or_tensors, device, batch_size)["robust_acc"]


def robust_curve_per_sample(model: nn.Module, attack: Attack, loader_or_tensors, eps_grid, device=None,
                            batch_size: int = 256, progress=None, robust_only: bool = True,
                            stats: dict | None = None, known_robust: torch.Tensor | None = None,
                            stop_early: bool = True) -> torch.Tensor:
    """Per-sample robustness at each ε of ``eps_grid`` (ascending): a bool tensor (len(grid), N).

    A sample is robust at ε if the model classifies it correctly clean and the attack broke it at no
    ε' ≤ ε: the point found at ε' lies in the ε-ball too, so this is a valid attack at ε that is at
    least as strong as the independent run, and robustness never rises with ε. Independent attacks
    at each ε carry no such guarantee (a local search can do worse at a larger ε).

    ``robust_only``: at each ε only the samples still robust are attacked (the others are non-robust
    whatever the attack returns). Per sample the result is the same as attacking every sample for an
    attack whose result on a sample does not depend on the rest of the batch (no random draws; with
    random starts the draws differ, not their distribution). ``known_robust`` ((len(grid), N) bool,
    non-increasing in ε: what other attacks left robust) makes the result the worst case of both, and
    with ``robust_only`` the samples it already marks broken at ε are not attacked there.
    ``stats`` (a dict) receives ``attacked`` / ``attacked_all``: attacked samples summed over ε, with
    robust-only and when attacking all. ``attack.eps`` is restored afterwards. ``progress`` (a tqdm
    bar or None) is advanced per batch. ``stop_early``: see the module docstring.
    """
    _check_untargeted(attack)
    grid = [float(e) for e in eps_grid]
    if not grid or any(b < a for a, b in zip(grid, grid[1:])) or grid[0] < 0:
        raise ConfigError("attack.eps_grid", f"must be a non-empty ascending list of eps >= 0, got {list(eps_grid)!r}")
    dev = _device_of(model, device)
    saved_eps = attack.eps
    masks, counts, start = [], {"attacked": 0, "attacked_all": 0}, 0
    try:
        with _stopping(attack, stop_early):
            for x, y in _batches(loader_or_tensors, batch_size):
                x, y = x.to(dev), y.to(dev)
                prior = None if known_robust is None else known_robust[:, start:start + len(x)].to(dev)
                start += len(x)
                masks.append(_curve_of_batch(model, attack, x, y, grid, robust_only, prior, counts))
                if progress is not None:
                    progress.update(1)
    finally:
        attack.eps = saved_eps
    if stats is not None:
        for key, value in counts.items():
            stats[key] = stats.get(key, 0) + value
    if not masks:
        raise ValueError("no samples to evaluate")
    return torch.cat(masks, dim=1)


def _curve_of_batch(model, attack, x, y, grid, robust_only, prior, counts) -> torch.Tensor:
    """(len(grid), len(x)) robustness of one batch; see ``robust_curve_per_sample``."""
    ok = _predict(model, x, y)
    rows = []
    for k, eps in enumerate(grid):
        attack.eps = eps
        counts["attacked_all"] += x.shape[0]
        if prior is not None:
            ok = ok & prior[k]
        if robust_only:
            idx = ok.nonzero().squeeze(1)
            if idx.numel() and eps > 0:
                xi, yi = x.index_select(0, idx), y.index_select(0, idx)
                ok[idx] = _predict(model, attack(model, xi, yi), yi)
                counts["attacked"] += idx.numel()
        else:
            ok = ok & _predict(model, attack(model, x, y), y)
            counts["attacked"] += x.shape[0]
        rows.append(ok.cpu().clone())
    return torch.stack(rows)


def robust_accuracy_curve(model: nn.Module, attack: Attack, loader_or_tensors, eps_grid, device=None,
                          batch_size: int = 256) -> list[float]:
    """Robust accuracy at each ε of ``eps_grid`` (ascending), non-increasing by construction (see
    ``robust_curve_per_sample``). ``attack.eps`` is restored afterwards."""
    mask = robust_curve_per_sample(model, attack, loader_or_tensors, eps_grid, device, batch_size)
    return mask.float().mean(dim=1).tolist()
