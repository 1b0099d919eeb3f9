"""Robust accuracy against ε for several attacks (FGSM / PGD, L∞ / L2), per sample.

Every number is a sound upper bound on the model's true robust accuracy: a sample counts as robust at
ε only if it is classified correctly clean and no attack run found an adversarial point within ε.
Three valid ways of attacking at ε are combined per sample:

* smaller ε: a point found at ε' ≤ ε lies in the ε-ball too (curves never rise with ε);
* losses: each attack runs with cross-entropy and with the margin (CW) loss. A model whose softmax
  saturates has vanishing cross-entropy gradients and looks robust to CE attacks only (gradient
  masking); the margin works on the logits and does not saturate. Per-loss curves are kept so the
  gap stays visible;
* weaker attacks: with ``cumulative``, an attack's curve also counts the samples broken by the
  attacks of the same norm listed before it (FGSM before PGD), so a stronger attack's curve never
  sits above a weaker one's. The attack's own curve is kept as ``alone``.
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
                      batch_size: int = 256, device=None, progress: bool = True, desc: str = "") -> dict[str, dict]:
    """Per-sample robustness of ``model`` under each attack (in order) over ``eps_grids[attack.norm]``.

    Returns {attack name: {"norm", "eps": grid, "robust": (len(grid), N) bool (the combined
    worst case above), "alone": the same without the weaker attacks, "by_loss": {loss: mask},
    "attacked" / "attacked_all": attack calls per sample summed over ε and losses, when each ε
    attacks only the points still robust at the previous one (the default) / all points}}.
    """
    if not losses:
        raise ConfigError("robustness.losses", f"needs at least one loss; allowed: {', '.join(LOSSES)}")
    n_batches = -(-len(x) // batch_size)
    total = sum(len(losses) for _ in attacks) * n_batches
    bar = progress_bar(total=total, desc=f"Robustness curves {desc}".strip(), disable=not progress, leave=False)
    results: dict[str, dict] = {}
    robust_so_far: dict[str, torch.Tensor] = {}  # per norm: robust under every attack run so far
    try:
        for name, attack in attacks.items():
            grid = [float(e) for e in eps_grids[attack.norm]]
            by_loss, stats = {}, {}
            # attacks with their own losses (AutoAttack, APGD-T, FAB-T, Square) run once, as "own"
            for loss in ("own",) if getattr(attack, "fixed_losses", False) else losses:
                run = copy.copy(attack)  # same settings and random stream, another loss
                if loss != "own":
                    run.loss = loss
                by_loss[loss] = robust_curve_per_sample(model, run, (x, y), grid, device, batch_size, progress=bar,
                                                        stats=stats)
            alone = torch.stack(list(by_loss.values())).all(dim=0)
            robust = alone & robust_so_far[attack.norm] if cumulative and attack.norm in robust_so_far else alone
            robust_so_far[attack.norm] = robust
            results[name] = {"norm": attack.norm, "eps": grid, "robust": robust, "alone": alone, "by_loss": by_loss,
                             "attacked": stats["attacked"], "attacked_all": stats["attacked_all"]}
    finally:
        bar.close()
    return results


def accuracy(mask: torch.Tensor) -> list[float]:
    """Fraction of robust samples at each ε of a (len(grid), N) mask."""
    return mask.float().mean(dim=1).tolist()
