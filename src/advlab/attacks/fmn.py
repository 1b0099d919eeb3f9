"""FMN, the fast minimum-norm attack (Pintor et al., NeurIPS 2021, "Fast Minimum-norm Adversarial Attacks
through Adaptive Norm Constraints"; pralab/Fast-Minimum-Norm-FMN-Attack, adversarial-library's ``fmn``)
for L∞, L2 and L1."""
from __future__ import annotations

import math

import torch
from torch import nn

from advlab.attacks.base import as_logits, lp_norm
from advlab.attacks.l1_ball import l1_box_correction
from advlab.attacks.minimal import MinimalNormAttack
from advlab.attacks.pgd import _int_at_least_one
from advlab.errors import ConfigError, check_number

_DUAL = {"linf": "l1", "l2": "l2", "l1": "linf"}


class FMN(MinimalNormAttack):
    r"""FMN in the paper 'Fast Minimum-norm Adversarial Attacks through Adaptive Norm Constraints'
    [https://arxiv.org/abs/2102.12827]

    Distance Measure : Linf, L2, L1

    A perturbation δ (from 0) and a per-sample radius ε (from ∞). Step k (cosine-annealed ``α_k`` from
    ``alpha_init`` to ``alpha_final``, ``γ_k`` from ``gamma_init`` to ``gamma_final``), with the margin
    loss ``L = max_{j≠y} z_j − z_y`` (targeted: ``z_t − max_{j≠t} z_j``) and its gradient g at ``x + δ``:

    * the closest adversarial iterate so far is kept;
    * ε: adversarial → ``min(ε·(1 − γ), best norm)``; not yet adversarial ever → ``(‖δ‖ + |L|/‖g‖_dual)·(1 + γ)``
      (the linearised distance to the boundary, and a margin: the reference has none, and on a locally
      linear model it lands on the boundary and stays there); not adversarial after one was → ``ε·(1 + γ)``;
      then at most the largest perturbation the box allows;
    * ``δ ← δ + α·g/‖g‖₂``, projected onto the ε-ball of the norm (L1: onto the ball ∩ the box, exactly),
      then clipped so that ``x + δ`` stays in ``bounds``.

    Unlike the reference, the last iterate is scored too (one more forward pass).

    Arguments:
        norm (str): ``linf``, ``l2`` or ``l1``.
        eps (float or None): None (the default): the closest point found, whatever its size; a number:
            points farther than ε are returned as x (an ε-bounded attack).
        steps (int): iterations. (Default: 100, as foolbox's FMN; the paper's curves run to 1000)
        alpha_init (float): the first step size. (Default: 1.0)
        alpha_final (float or None): the last step size; None: alpha_init / 100. (Default: None)
        gamma_init (float): the first ε factor, in (0, 1). (Default: 0.05)
        gamma_final (float): the last ε factor, in (0, gamma_init]. (Default: 0.001)
        targeted, bounds, seed: as every attack's (no randomness is drawn).

    Shape:
        - x: :math:`(N, ...)` in ``bounds``; y: :math:`(N)` (targets when targeted); output: the shape of x.

    Examples::
        >>> attack = FMN(norm="l2", steps=100)
        >>> x_adv = attack(model, x, y)
        >>> r = attack.run(model, x, y)   # r.distance: ‖x_adv − x‖₂ per sample, r.success
    """

    name = "fmn"
    norms = ("linf", "l2", "l1")

    def __init__(self, norm: str = "linf", eps: float | None = None, steps: int = 100, alpha_init: float = 1.0,
                 alpha_final: float | None = None, gamma_init: float = 0.05, gamma_final: float = 0.001,
                 targeted: bool = False, bounds=(0.0, 1.0), seed: int = 0, loss: str = "ce"):
        super().__init__(eps=eps, norm=norm, targeted=targeted, bounds=bounds, seed=seed, loss=loss)
        self.steps = _int_at_least_one("steps", steps)
        self.alpha_init = check_number("alpha_init", alpha_init, 0, strict=True)
        final = check_number("alpha_final", alpha_final, 0, strict=True, allow_none=True)
        self.alpha_final = self.alpha_init / 100 if final is None else final
        self.gamma_init = check_number("gamma_init", gamma_init, 0, strict=True)
        self.gamma_final = check_number("gamma_final", gamma_final, 0, strict=True)
        if not self.gamma_final <= self.gamma_init < 1:
            raise ConfigError("gamma_init", f"need 0 < gamma_final <= gamma_init < 1, got gamma_init={gamma_init!r}, "
                                                   f"gamma_final={gamma_final!r}")

    def _schedule(self, k: int) -> tuple[float, float]:
        """(α_k, γ_k): cosine annealing from the initial to the final values."""
        cosine = (1 + math.cos(math.pi * k / self.steps)) / 2
        return (self.alpha_final + (self.alpha_init - self.alpha_final) * cosine,
                self.gamma_final + (self.gamma_init - self.gamma_final) * cosine)

    def _project(self, x: torch.Tensor, delta: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """δ onto the ε-ball (per-sample ε), then ``x + δ`` into the bounds."""
        view = (-1,) + (1,) * (x.dim() - 1)
        if self.norm == "l1":  # exact projection onto the ball ∩ the box
            return delta + l1_box_correction(x, delta, eps, self.bounds).to(delta.dtype)
        if self.norm == "linf":
            delta = torch.maximum(torch.minimum(delta, eps.view(view)), -eps.view(view))
        else:
            size = lp_norm(delta, "l2")
            delta = delta * torch.where(size > eps, eps / size.clamp_min(1e-30), torch.ones_like(size)).view(view)
        if self.bounds is not None:
            delta = (x + delta).clamp_(*self.bounds) - x
        return delta

    def _closest(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        n, view = x.shape[0], (-1,) + (1,) * (x.dim() - 1)
        if self.bounds is None:
            largest = torch.full((n,), math.inf, device=x.device, dtype=x.dtype)
        else:  # the farthest point of the box: every coordinate at the far edge
            lo, hi = self.bounds
            largest = lp_norm(torch.maximum(x - lo, hi - x), self.norm)
        eps = torch.full_like(largest, math.inf)
        delta = torch.zeros_like(x)
        best_norm, best = torch.full_like(largest, math.inf), x.clone()
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        for k in range(self.steps + 1):
            delta.requires_grad_(True)
            logits, yy = as_logits(model(x + delta), y)
            own = logits.gather(1, yy[:, None]).squeeze(1)
            other = logits.scatter(1, yy[:, None], float("-inf")).amax(dim=1)
            loss = own - other if self.targeted else other - own
            (g,) = torch.autograd.grad(loss.sum(), delta) if k < self.steps else (None,)
            delta = delta.detach()
            size = lp_norm(delta, self.norm)
            hit = self._goal(logits.detach(), yy)
            closer = hit & (size < best_norm)
            best_norm = torch.where(closer, size, best_norm)
            best[closer] = (x + delta)[closer]
            found |= hit
            if k == self.steps:  # the last pass only scores the final iterate
                break
            alpha, gamma = self._schedule(k)
            to_boundary = loss.detach().abs() / lp_norm(g, _DUAL[self.norm]).clamp_min(1e-12)
            eps = torch.where(hit, torch.minimum(eps * (1 - gamma), best_norm),
                              torch.where(found, eps * (1 + gamma), (size + to_boundary) * (1 + gamma)))
            eps = torch.minimum(eps, largest)
            step = g / lp_norm(g, "l2").clamp_min(1e-12).view(view)
            delta = self._project(x, delta + alpha * step, eps)
        return best
