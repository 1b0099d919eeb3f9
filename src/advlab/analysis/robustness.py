"""Robust accuracy against ε for several attacks (FGSM / PGD, L∞ / L2), per sample.

Every number is a sound upper bound on the model's true robust accuracy: a sample counts as robust at
ε only if it is classified correctly clean and no attack run found an adversarial point within ε.
Three valid ways of attacking at ε are combined per sample:

* smaller ε: a point found at ε' ≤ ε lies in the ε-ball too (curves never rise with ε);
* losses: each attack runs with cross-entropy and with the margin (CW) loss. A model whose softmax
  saturates has vanishing cross-entropy gradients and looks robust to CE attacks only (gradient
  masking); the margin works on the logits and does not saturate;
* weaker attacks: with ``cumulative``, an attack's curve also counts the samples broken by the
  attacks of the same norm listed before it (FGSM before PGD), so a stronger attack's curve never
  sits above a weaker one's.

Robust-only (the default): each run (attack, loss, ε) attacks only the samples that every run before
it left robust at that ε: the samples already broken are non-robust in the worst case whatever the
run returns, so the combined curve ``robust`` is the same, per sample, as attacking every sample
(exactly, for attacks whose result on a sample does not depend on the rest of the batch). What it
does not give are the diagnostic curves of one loss or one attack on its own: a run skips the
samples earlier runs broke. So ``by_loss`` holds only the exact ones (the first run of an attack
when no earlier attack is combined with it) and ``alone`` is None where it would not be exact.
``diagnostics=True`` computes every per-loss and per-attack curve exactly, each run on all samples
correct clean (robust-only over ε only), at the cost of attacking the broken samples again.

Within a run, PGD-family attacks that keep their best iterate stop attacking a point once it is
misclassified (``stop_early``, on by default: ``robust_curve_per_sample``); the masks are the same.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn
from advlab.utils.progress import progress_bar

from advlab.attacks import Attack, robust_curve_per_sample
from advlab.attack_losses import LOSSES
from advlab.errors import ConfigError


def robustness_curves(model: nn.Module, attacks: Mapping[str, Attack], eps_grids: Mapping[str, list[float]],
                      x: torch.Tensor, y: torch.Tensor, *, losses=LOSSES, cumulative: bool = True,
                      robust_only: bool = True, diagnostics: bool = False, batch_size: int = 256, device=None,
                      progress: bool = True, desc: str = "", stop_early: bool = True) -> dict[str, dict]:
    """Per-sample robustness of ``model`` under each attack (in order) over ``eps_grids[attack.norm]``.

    Returns {attack name: {"norm", "eps": grid, "robust": (len(grid), N) bool (the combined worst
    case above), "alone": the same without the weaker attacks (None where not exact, see the module),
    "by_loss": {loss: mask of that loss alone} (exact ones only), "attacked" / "attacked_all": attack
    calls per sample summed over ε and losses, as run / when every run attacks every sample}}.
    ``robust_only=False`` attacks every sample at every ε with every loss (the reference);
    ``stop_early=False`` runs PGD's every step on every attacked sample (see the module docstring).
    """
    if not losses:
        raise ConfigError("robustness.losses", f"needs at least one loss; allowed: {', '.join(LOSSES)}")
    if not isinstance(diagnostics, bool):
        raise ConfigError("robustness.diagnostics", f"must be true or false, got {diagnostics!r}")
    staged = robust_only and not diagnostics  # each run skips what the runs before it broke
    n_batches = -(-len(x) // batch_size)
    total = sum(len(_losses_of(attack, losses)) for attack in attacks.values()) * n_batches
    bar = progress_bar(total=total, desc=f"Robustness curves {desc}".strip(), disable=not progress, leave=False)
    results: dict[str, dict] = {}
    robust_so_far: dict[str, torch.Tensor] = {}  # per norm: robust under every attack run so far
    try:
        for name, attack in attacks.items():
            grid = [float(e) for e in eps_grids[attack.norm]]
            before = robust_so_far.get(attack.norm) if cumulative else None
            robust, by_loss, stats = None, {}, {}
            for loss in _losses_of(attack, losses):
                run = copy.copy(attack)  # same settings and random stream, another loss
                if loss != "own":
                    run.loss = loss
                prior = _both(before, robust) if staged else None
                mask = robust_curve_per_sample(model, run, (x, y), grid, device, batch_size, progress=bar,
                                               robust_only=robust_only, stats=stats, known_robust=prior,
                                               stop_early=stop_early)
                if prior is None:  # every sample correct clean was attacked: this loss's own curve
                    by_loss[loss] = mask
                robust = _both(robust, mask)
            alone = robust if not staged or before is None else None
            robust = robust if staged else _both(before, robust)
            robust_so_far[attack.norm] = robust
            results[name] = {"norm": attack.norm, "eps": grid, "robust": robust, "alone": alone, "by_loss": by_loss,
                             "attacked": stats["attacked"], "attacked_all": stats["attacked_all"]}
    finally:
        bar.close()
    return results


def _losses_of(attack: Attack, losses) -> tuple:
    """Attacks with their own losses (AutoAttack, APGD-T, FAB-T, Square) run once, as "own"."""
    return ("own",) if getattr(attack, "fixed_losses", False) else tuple(losses)


def _both(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    """Robust under both masks (None: no constraint)."""
    return b if a is None else a if b is None else a & b


def accuracy(mask: torch.Tensor) -> list[float]:
    """Fraction of robust samples at each ε of a (len(grid), N) mask."""
    return mask.float().mean(dim=1).tolist()
