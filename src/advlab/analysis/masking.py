"""Gradient-masking checks (Croce & Hein 2020; Athalye et al. 2018; RECIPES.md §7).

A robust accuracy measured with gradient attacks is only an upper bound; these checks flag the usual
ways it can be a loose one. ``masking_checks`` returns ``checks/<name>`` booleans (True = the check
tripped: suspicious) with the numbers behind them:

* ``randomised``: two forward passes in eval mode give different logits (attacks then need EOT:
  AutoAttack's ``rand`` version);
* ``zero_grad``: the input gradient of the cross-entropy is exactly zero on more than ``tol`` of the
  points (quantisation, saturation, non-differentiable layers);
* ``saturated``: the float32 softmax is exactly 1.0 on more than ``tol`` of the points (the
  cross-entropy and its gradient vanish there: PGD-CE sees nothing);
* ``black_box_wins``: Square (no gradients) breaks points that the white-box attacks (APGD-CE,
  APGD-T) left robust, on more than ``black_box_tol`` of the points;
* ``large_eps_robust``: robust accuracy stays above ``large_eps_tol`` at a budget far beyond the
  threat model (``large_eps``, default 10·ε; for L∞ in [0, 1] that is the whole box at ε ≥ 0.1).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from advlab.analysis.protocol import Analysis, Points, label, stat, write_csv
from advlab.attacks import APGD, APGDT, Square, as_logits, eval_mode

log = logging.getLogger("advlab.apps.evaluate")

CHECKS = ("randomised", "zero_grad", "saturated", "black_box_wins", "large_eps_robust")


def _correct(model, x, y):
    with torch.no_grad():
        logits, yy = as_logits(model(x), y)
    return logits.argmax(dim=1) == yy


def _robust_under(model, attacks, x, y):
    """Per-sample: correct clean and under every attack (each run on the points still robust)."""
    robust = _correct(model, x, y)
    for attack in attacks:
        idx = robust.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        robust[idx] = _correct(model, attack(model, x[idx], y[idx]), y[idx])
    return robust


def randomness(model: nn.Module, x: torch.Tensor) -> float:
    """Largest absolute difference of the logits of two forward passes in eval mode."""
    with eval_mode(model), torch.no_grad():
        return float((model(x) - model(x)).abs().max())


def zero_grad_fraction(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of points whose cross-entropy input gradient is exactly zero."""
    with eval_mode(model), torch.enable_grad():
        xr = x.detach().clone().requires_grad_(True)
        logits, yy = as_logits(model(xr), y)
        (g,) = torch.autograd.grad(F.cross_entropy(logits, yy, reduction="sum"), xr)
    return float((g.reshape(len(x), -1).abs().amax(dim=1) == 0).float().mean())


def saturated_fraction(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of points whose float32 softmax reaches exactly 1.0."""
    with eval_mode(model), torch.no_grad():
        logits, _ = as_logits(model(x), y)
    return float((logits.float().softmax(dim=1).amax(dim=1) == 1.0).float().mean())


def masking_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "linf", *,
                   steps: int = 100, n_target_classes: int = 9, queries: int = 1000, large_eps: float | None = None,
                   bounds=(0.0, 1.0), seed: int = 0, tol: float = 0.01, black_box_tol: float = 0.0,
                   large_eps_tol: float = 0.0) -> dict:
    """All checks on the points ``(x, y)`` at the threat model (``eps``, ``norm``); see the module."""
    x, y = x.detach(), y.detach()
    n = len(x)
    large_eps = 10.0 * eps if large_eps is None else float(large_eps)

    def white(e):
        return [APGD(e, norm=norm, steps=steps, bounds=bounds, seed=seed),
                APGDT(e, norm=norm, steps=steps, n_target_classes=n_target_classes, bounds=bounds, seed=seed)]

    diff = randomness(model, x)
    zero = zero_grad_fraction(model, x, y)
    sat = saturated_fraction(model, x, y)
    robust_white = _robust_under(model, white(eps), x, y)
    robust_black = _robust_under(model, [Square(eps, norm=norm, n_queries=queries, bounds=bounds, seed=seed)], x, y)
    black_only = float((robust_white & ~robust_black).float().mean())
    large_acc = float(_robust_under(model, white(large_eps), x, y).float().mean())
    out = {
        "checks/randomised": diff > 0, "checks/randomised_max_diff": diff,
        "checks/zero_grad": zero > tol, "checks/zero_grad_fraction": zero,
        "checks/saturated": sat > tol, "checks/saturated_fraction": sat,
        "checks/black_box_wins": black_only > black_box_tol, "checks/black_box_only_fraction": black_only,
        "checks/white_box_acc": float(robust_white.float().mean()), "checks/black_box_acc": float(robust_black.float().mean()),
        "checks/large_eps_robust": large_acc > large_eps_tol, "checks/large_eps": large_eps, "checks/large_eps_acc": large_acc,
        "checks/n": n,
    }
    out["checks/any"] = any(out[f"checks/{c}"] for c in CHECKS)
    return out


def masking_warning(checks: dict) -> str | None:
    """One warning line naming the tripped checks, or None when none tripped."""
    tripped = [c for c in CHECKS if checks.get(f"checks/{c}")]
    if not tripped:
        return None
    numbers = {"randomised": "randomised_max_diff", "zero_grad": "zero_grad_fraction", "saturated": "saturated_fraction",
               "black_box_wins": "black_box_only_fraction", "large_eps_robust": "large_eps_acc"}
    parts = ", ".join(f"{c} ({checks[f'checks/{numbers[c]}']:.3g})" for c in tripped)
    return f"possible gradient masking: {parts}; report AutoAttack (version rand if randomised), not PGD alone"


class Masking(Analysis):
    """advlab-eval's `masking` analysis (conf/analysis/masking.yaml): the checks on the first `n`
    evaluated points of every member, a warning line per member that trips one."""

    key = "masking"

    def __init__(self, eps: float, norm: str, n: int, steps: int, n_target_classes: int, queries: int,
                 large_eps=None, seed: int = 0, bounds=None):
        from advlab.errors import ConfigError
        from advlab.errors import check_number

        if norm not in ("linf", "l2"):
            raise ConfigError("norm", f"unknown value {norm!r}; allowed: linf, l2")
        if large_eps is not None:
            check_number("large_eps", large_eps, 0, strict=True)
        self.eps, self.norm, self.bounds, self.seed = check_number("eps", eps, 0, strict=True), str(norm), bounds, int(seed)
        self.n = check_number("n", n, 1, integer=True)
        self.options = {key: check_number(key, value, 1, integer=True)
                        for key, value in (("steps", steps), ("n_target_classes", n_target_classes), ("queries", queries))}
        self.options["large_eps"] = large_eps

    def run(self, member, points: Points) -> dict:
        n = min(self.n, len(points.x))
        x, y = points.x[:n].to(points.device), points.y[:n].to(points.device)
        checks = masking_checks(member.model, x, y, self.eps, self.norm, bounds=self.bounds, seed=self.seed, **self.options)
        warning = masking_warning(checks)
        if warning:
            log.warning("%s: %s", label(member), warning)
        return checks

    def summarise(self, results: list[dict], points: Points) -> dict:
        # booleans: the fraction of members that trip the check
        return {"masking": {k: stat([float(r["masking"][k]) for r in results]) for k in results[0]["masking"]}}

    def write(self, out_dir: Path, per_member: dict, summary: dict, points: Points, loggers) -> dict[str, Path]:
        keys = list(next(r for results in per_member.values() for r in results)["masking"])
        rows = [[name, r["member"], *[r["masking"][k] for k in keys]] for name, results in per_member.items() for r in results]
        write_csv(out_dir / "masking.csv", ["model", "member", *keys], rows)
        return {}

    def headline(self, summary: dict) -> list[str]:
        tripped = [c for c in CHECKS if summary["masking"][f"checks/{c}"]["mean"] > 0]
        return [f"masking checks: {', '.join(tripped) if tripped else 'none tripped'}"]
