"""What the minimal-norm attacks share (Carlini–Wagner L2, FMN; DeepFool keeps its own): an optional ε,
the per-sample result, and how a budget turns the closest adversarial point found into an ε-bounded
attack."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from advlab.attacks.base import Attack, lp_norm, optional_eps


@dataclass
class MinimalResult:
    """Per sample: the closest adversarial point found (``x`` where none was), its distance to ``x`` in
    the attack's norm (0 where none was) and whether the attack's goal holds at ``x_adv``."""

    x_adv: torch.Tensor
    distance: torch.Tensor
    success: torch.Tensor


class MinimalNormAttack(Attack):
    """A minimal-norm attack: ``_closest(model, x, y)`` returns the closest adversarial point it finds per
    sample (``x`` where it finds none). ``eps=None`` (the default) returns that point whatever its size;
    a number makes it an ε-bounded attack: points farther than ε are returned as ``x`` (as FAB)."""

    fixed_losses = True  # `loss` has no effect: the objective is part of the method

    eps = optional_eps()

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> MinimalResult:
        """Attack and report per-sample distances and success."""
        x_adv = self(model, x, y)
        return MinimalResult(x_adv, lp_norm(x_adv - x.detach(), self.norm), self.success(model, x_adv, y))

    def _perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = self._closest(model, x, y)
        if self.eps is None:
            return x_adv
        inside = lp_norm(x_adv - x, self.norm) <= self.eps + 1e-12
        return torch.where(inside.view((-1,) + (1,) * (x.dim() - 1)), x_adv, x)

    def _closest(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _goal(self, logits: torch.Tensor, y: torch.Tensor, confidence: float = 0.0) -> torch.Tensor:
        """Per sample: the goal reached with margin ``confidence`` (untargeted: another logit beats y's by
        more than it; targeted: y's beats every other by more than it)."""
        own = logits.gather(1, y[:, None]).squeeze(1)
        other = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
        return own - other > confidence if self.targeted else other - own > confidence
