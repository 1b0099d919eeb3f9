"""PGD as Kumano et al. (ICLR'24) craft their perturbation datasets (s-kumano/learning-from-adversarial-perturbations,
utils/attacks.py `PGDL2`, `PGDLinf`; utils/create.py; create.py)."""
from __future__ import annotations

import torch
from torch.nn import functional as F

from advlab.attacks.pgd import PGD


class KumanoPGD(PGD):
    """The authors' PGD, in either norm p (``linf`` or ``l2``), from ``x`` itself (no random start):

    * step along the p-normalised gradient, ``x ← x + α·g/‖g‖_p`` (L∞: ``g/‖g‖∞``, a dense step, not ``sign g``);
    * project by rescaling the WHOLE perturbation, ``δ ← δ·min(1, ε/(‖δ‖_p + 1e-7))`` (``torch.renorm``, as theirs),
      not by clipping each pixel to [−ε, ε]; then clip ``x + δ`` to ``bounds``;
    * keep, per sample, the iterate of the best loss over the start and every step (theirs: the lowest targeted
      cross-entropy; ties keep the earlier one), by the loss alone, whether or not the goal is reached.

    Their MNIST / FMNIST setting: 100 steps, α = ε/5 (``rel_step_size=0.2``). In L2 the step and the projection are
    PGD's own (up to renorm's 1e-7). In L∞ they differ: PGD's sign steps with clipping push every pixel towards
    ±ε (dense, large perturbations in the box's corners); these keep the gradient's shape, a few pixels at ε."""

    name = "kumano_pgd"

    def __init__(self, eps: float, norm: str = "linf", steps: int = 100, step_size: float | None = None,
                 rel_step_size: float | None = 0.2, keep_best: bool = True, targeted: bool = False, bounds=(0.0, 1.0),
                 seed: int = 0, loss: str = "ce"):
        super().__init__(eps=eps, norm=norm, steps=steps, step_size=step_size, rel_step_size=rel_step_size,
                         random_start=False, restarts=1, keep_best=keep_best, targeted=targeted, bounds=bounds,
                         seed=seed, loss=loss)

    @property
    def p(self) -> float:
        return float("inf") if self.norm == "linf" else 2.0

    def _feasible_box(self, x: torch.Tensor):
        return None, None  # no per-pixel box: the whole δ is rescaled

    def _step(self, x, xa, g, dst, view, lower, upper) -> None:
        n = x.shape[0]
        direction = F.normalize(g.reshape(n, -1), p=self.p, dim=1).view_as(g)  # g / max(‖g‖_p, 1e-12)
        delta = torch.add(xa, direction, alpha=self.alpha).sub_(x)
        torch.add(x, delta.renorm(p=self.p, dim=0, maxnorm=self.eps), out=dst)
        if self.bounds is not None:
            dst.clamp_(self.bounds[0], self.bounds[1])

    def _score(self, out, y, loss=None):
        """The best iterate by the loss alone (the authors' `_replace_best`): no iterate counts as a success first."""
        reached, score = super()._score(out, y, loss)
        return torch.zeros_like(reached), score
