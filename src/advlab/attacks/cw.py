"""Carlini–Wagner L2 (Carlini & Wagner, IEEE S&P 2017, "Towards Evaluating the Robustness of Neural
Networks"), the authors' formulation (carlini/nn_robust_attacks, ``l2_attack.py``), batched in PyTorch."""
from __future__ import annotations

import math

import torch
from torch import nn

from advlab.attacks.base import as_logits
from advlab.attacks.minimal import MinimalNormAttack
from advlab.attacks.pgd import _boolean, _int_at_least_one
from advlab.errors import check_number

_TANH_SHRINK = 0.999999  # the authors' factor: keeps arctanh finite at the box's edges
_NO_UPPER = 1e10  # the binary search's "no successful constant yet"


class CarliniWagnerL2(MinimalNormAttack):
    r"""CW-L2 in the paper 'Towards Evaluating the Robustness of Neural Networks'
    [https://arxiv.org/abs/1608.04644]

    Distance Measure : L2

    The box constraint becomes a change of variables, ``x' = mid + half·tanh(w)`` for ``bounds = [lo, hi]``
    (``mid``, ``half`` its centre and half-width; ``bounds=None``: ``x' = w``), and Adam minimises, from
    ``w₀ = arctanh((x − mid)/half · 0.999999)`` with a zero perturbation of ``w``,

        ``‖x' − x₀‖₂² + c · max(Z(x')_y − max_{i≠y} Z(x')_i, −κ)``  (targeted: ``max(max_{i≠t} Z_i − Z_t, −κ)``)

    with ``Z`` the logits and ``x₀`` the start's image. ``c`` is found per sample by binary search from
    ``initial_const``: a constant under which an iterate reached the goal with margin κ becomes the upper
    bound, otherwise the lower bound (×10 while no upper bound is known); each search step restarts Adam
    from ``w₀``. Over all steps the closest iterate that reached the goal is kept (x where none did).
    ``abort_early``: a search step stops when the batch's loss has not fallen by 0.01 % over a tenth of
    ``steps``. As the authors, every iterate is scored from the forward pass that gives its gradient.

    Arguments:
        eps (float or None): None (the default): the closest point found, whatever its size; a number:
            points farther than ε are returned as x (an ε-bounded attack).
        confidence (float): κ ≥ 0. (Default: 0)
        initial_const (float): the first c. (Default: 1e-3)
        binary_search_steps (int): search steps over c. (Default: 9)
        steps (int): Adam steps per search step. (Default: 10000, the authors'; conf/attack/cw.yaml: 200 at lr 0.05)
        lr (float): Adam's learning rate. (Default: 0.01)
        abort_early (bool): stop a search step once the loss stalls. (Default: True)
        targeted, bounds, seed: as every attack's (no randomness is drawn).

    Shape:
        - x: :math:`(N, ...)` in ``bounds``; y: :math:`(N)` (targets when targeted); output: the shape of x.

    Examples::
        >>> attack = CarliniWagnerL2(confidence=0, binary_search_steps=9, steps=1000)
        >>> x_adv = attack(model, x, y)
        >>> r = attack.run(model, x, y)   # r.distance: ‖x_adv − x‖₂ per sample, r.success
    """

    name = "cw"
    norms = ("l2",)

    def __init__(self, eps: float | None = None, norm: str = "l2", confidence: float = 0.0, initial_const: float = 1e-3,
                 binary_search_steps: int = 9, steps: int = 10000, lr: float = 1e-2, abort_early: bool = True,
                 targeted: bool = False, bounds=(0.0, 1.0), seed: int = 0, loss: str = "ce"):
        super().__init__(eps=eps, norm=norm, targeted=targeted, bounds=bounds, seed=seed, loss=loss)
        self.confidence = check_number("confidence", confidence, 0)
        self.initial_const = check_number("initial_const", initial_const, 0, strict=True)
        self.binary_search_steps = _int_at_least_one("binary_search_steps", binary_search_steps)
        self.steps = _int_at_least_one("steps", steps)
        self.lr = check_number("lr", lr, 0, strict=True)
        self.abort_early = _boolean("abort_early", abort_early)

    def _to_image(self, w: torch.Tensor) -> torch.Tensor:
        if self.bounds is None:
            return w
        lo, hi = self.bounds
        return torch.tanh(w) * ((hi - lo) / 2) + (hi + lo) / 2

    def _to_w(self, x: torch.Tensor) -> torch.Tensor:
        if self.bounds is None:
            return x.clone()
        lo, hi = self.bounds
        return torch.atanh((x - (hi + lo) / 2) / ((hi - lo) / 2) * _TANH_SHRINK)

    def _closest(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        w0 = self._to_w(x)
        x0 = self._to_image(w0)
        lower = torch.zeros(n, device=x.device, dtype=torch.float64)
        upper = torch.full_like(lower, _NO_UPPER)
        const = torch.full_like(lower, self.initial_const)
        best = [torch.full((n,), math.inf, device=x.device, dtype=x.dtype), x.clone()]  # ‖x' − x₀‖₂², x'
        for search in range(self.binary_search_steps):
            if self.binary_search_steps >= 10 and search == self.binary_search_steps - 1:
                const = torch.where(upper < _NO_UPPER, upper, const)  # the authors' "repeat": end on the upper bound
            found = self._minimise(model, w0, x0, y, const.to(x.dtype), best)
            upper = torch.where(found, torch.minimum(upper, const), upper)
            lower = torch.where(found, lower, torch.maximum(lower, const))
            const = torch.where(upper < _NO_UPPER / 10, (lower + upper) / 2, const * 10)
        return best[1]

    def _minimise(self, model: nn.Module, w0, x0, y, const: torch.Tensor, best: list) -> torch.Tensor:
        """One search step: Adam on the perturbation of w under ``const``; updates ``best`` in place and
        returns, per sample, whether some iterate reached the goal."""
        modifier = torch.zeros_like(w0, requires_grad=True)
        optimiser = torch.optim.Adam([modifier], lr=self.lr)
        found = torch.zeros(w0.shape[0], dtype=torch.bool, device=w0.device)
        check_every, previous = max(1, self.steps // 10), math.inf
        for step in range(self.steps):
            x_new = self._to_image(w0 + modifier)
            logits, yy = as_logits(model(x_new), y)
            dist = (x_new - x0).flatten(1).pow(2).sum(dim=1)
            own = logits.gather(1, yy[:, None]).squeeze(1)
            other = logits.scatter(1, yy[:, None], float("-inf")).amax(dim=1)
            gap = other - own if self.targeted else own - other
            total = dist.sum() + (const * gap.clamp(min=-self.confidence)).sum()
            # the input-side gradient only: parameter .grad stays untouched (attacks.base)
            (modifier.grad,) = torch.autograd.grad(total, modifier)
            with torch.no_grad():  # the iterate whose gradient this is (before the step), as the authors
                hit = self._goal(logits.detach(), yy, self.confidence)
                found |= hit
                closer = hit & (dist.detach() < best[0])
                best[0] = torch.where(closer, dist.detach(), best[0])
                best[1][closer] = x_new.detach()[closer]
            optimiser.step()
            if self.abort_early and step % check_every == 0:
                value = float(total.detach())
                if value > previous * 0.9999:
                    break
                previous = value
        return found
