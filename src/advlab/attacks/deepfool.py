"""DeepFool (Moosavi-Dezfooli et al. 2016): the minimal perturbation that changes a decision, batched.

At each step the classifier is linearised around the current point: for every candidate class k,
``f'_k = f_k − f_y`` and ``w'_k = ∇f'_k``; the nearest linearised boundary is the k with the smallest
``|f'_k| / ‖w'_k‖_q`` (q the dual norm: 2 for L2, 1 for L∞), and the step goes exactly onto it:

* L2: ``r = (|f'| / ‖w'‖₂ + 1e-4) · w' / ‖w'‖₂``
* L∞: ``r = (|f'| / ‖w'‖₁ + 1e-4) · sign(w')``

The steps add up to ``r_tot`` and the iterate is ``x + (1 + overshoot)·r_tot`` (clipped to ``bounds``)
until the decision changes. For an affine classifier one step lands on the nearest boundary, so the
result is the exact distance ``min_k |f'_k| / ‖w'_k‖_q``: the class region of an affine model is an
intersection of half-spaces, whose distance to the outside is the distance to the nearest face.

Unlike the reference implementation (one image at a time), every sample of the batch moves at once;
samples leave the active set as soon as they are fooled. The overshoot only makes sure the boundary
is crossed; ``refine_steps`` of bisection then shrink each perturbation along its own direction to
the boundary, so the reported ``‖r‖`` is not inflated by it (the returned point stays adversarial).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from advlab.attacks.base import Attack, _is_int, _is_real, as_logits, optional_eps
from advlab.errors import ConfigError

_SLACK = 1e-4  # the reference's absolute slack per step: lands just past the linearised boundary


@dataclass
class DeepFoolResult:
    """Per sample: the adversarial point, the perturbation's L2 and L∞ norms and whether the decision
    changed (a failed sample keeps its last iterate's norms; ``x_adv`` is then ``x``)."""

    x_adv: torch.Tensor
    l2: torch.Tensor
    linf: torch.Tensor
    success: torch.Tensor


class DeepFool(Attack):
    """Minimal-norm untargeted attack. ``y`` is the label to move away from: the true label, or the
    model's own prediction to measure the distance to its decision boundary (as Paknezhad et al.).
    A sample the model already misclassifies is returned unchanged (‖r‖ = 0).

    Args:
        norm: ``l2`` or ``linf``.
        steps: maximum DeepFool iterations.
        overshoot: the iterate is ``x + (1 + overshoot)·r_tot`` (the paper's 0.02).
        candidates: how many of the highest-scoring other classes (at ``x``) to linearise; None = all.
        refine_steps: bisection steps that shrink the final perturbation to the boundary (0 = off).
        eps: None (the default) for the minimal perturbation, whatever its size; a number makes it an
            ε-bounded attack: samples whose perturbation is larger than ε are returned unchanged.
        bounds: valid input box (clipping at every step), or None.
    """

    name = "deepfool"

    def __init__(self, norm: str = "l2", steps: int = 50, overshoot: float = 0.02, candidates: int | None = None,
                 refine_steps: int = 20, eps: float | None = None, bounds=(0.0, 1.0), seed: int = 0, targeted: bool = False):
        super().__init__(eps=eps, norm=norm, targeted=targeted, bounds=bounds, seed=seed, loss="ce")
        if not _is_int(steps) or int(steps) < 1:
            raise ConfigError("steps", f"must be an integer >= 1, got {steps!r}")
        if not _is_real(overshoot) or not 0 <= float(overshoot) < float("inf"):
            raise ConfigError("overshoot", f"must be a finite number >= 0, got {overshoot!r}")
        if candidates is not None and (not _is_int(candidates) or int(candidates) < 1):
            raise ConfigError("candidates", f"must be null or an integer >= 1, got {candidates!r}")
        if not _is_int(refine_steps) or int(refine_steps) < 0:
            raise ConfigError("refine_steps", f"must be an integer >= 0, got {refine_steps!r}")
        self.steps, self.overshoot = int(steps), float(overshoot)
        self.candidates = None if candidates is None else int(candidates)
        self.refine_steps = int(refine_steps)

    # ε is optional here: None means unbounded (the minimal perturbation)
    eps = optional_eps()

    @property
    def targeted(self) -> bool:
        return False

    @targeted.setter
    def targeted(self, value) -> None:
        if value:
            raise ConfigError("targeted", "DeepFool is untargeted; allowed: false")
        self._targeted = False

    def __repr__(self) -> str:
        return (f"DeepFool(norm={self.norm!r}, steps={self.steps}, overshoot={self.overshoot:g}, "
                f"candidates={self.candidates}, refine_steps={self.refine_steps}, eps={self.eps}, bounds={self.bounds})")

    # ------------------------------------------------------------------------------------------
    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> DeepFoolResult:
        """Attack and report per-sample norms and success (decision != y on ``x_adv``)."""
        x_adv = self(model, x, y)
        r = (x_adv - x.detach()).flatten(1)
        return DeepFoolResult(x_adv, torch.linalg.vector_norm(r, dim=1), r.abs().amax(dim=1), self.success(model, x_adv, y))

    def _project(self, x: torch.Tensor, r: torch.Tensor, scale) -> torch.Tensor:
        out = x + scale * r
        return out.clamp_(*self.bounds) if self.bounds is not None else out

    def _perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        view = (-1,) + (1,) * (x.dim() - 1)
        l2 = self.norm == "l2"
        with torch.no_grad():
            logits, yy = as_logits(model(x), y)
        num_classes = logits.shape[1]
        k = num_classes - 1 if self.candidates is None else min(self.candidates, num_classes - 1)
        # the k highest-scoring other classes at x, fixed for the whole run (as in the paper)
        others = logits.scatter(1, yy[:, None], float("-inf")).topk(k, dim=1).indices
        active = logits.argmax(1) == yy  # already misclassified: nothing to do
        fooled = ~active
        r_tot = torch.zeros_like(x)
        x_adv = x.clone()
        scale = 1.0 + self.overshoot
        for it in range(self.steps + 1):
            idx = active.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            xa = x_adv.index_select(0, idx).requires_grad_(True)
            out, ya = as_logits(model(xa), yy.index_select(0, idx))
            still = out.argmax(1) == ya
            fooled[idx[~still]] = True
            active[idx[~still]] = False
            if it == self.steps:  # the last pass only checks the final iterate
                break
            diffs = out.gather(1, others.index_select(0, idx)) - out.gather(1, ya[:, None])  # (m, k), <= 0 while correct
            grads = [torch.autograd.grad(diffs[:, j].sum(), xa, retain_graph=j < k - 1)[0].flatten(1) for j in range(k)]
            w = torch.stack(grads, dim=1)  # (m, k, d): samples are independent in eval mode, so the sum's gradient is per sample
            w_norm = torch.linalg.vector_norm(w, ord=2 if l2 else 1, dim=2)
            dist = torch.where(w_norm > 0, diffs.detach().abs() / w_norm.clamp_min(1e-30), torch.full_like(w_norm, float("inf")))
            dist, best = dist.min(dim=1)
            rows = torch.arange(len(idx), device=x.device)
            w_best, w_best_norm = w[rows, best], w_norm[rows, best]
            movable = still & torch.isfinite(dist)
            stuck = still & ~movable  # a flat model: no direction changes the decision
            active[idx[stuck]] = False
            if l2:
                step = (dist + _SLACK).div(w_best_norm.clamp_min(1e-30))[:, None] * w_best
            else:
                step = (dist + _SLACK)[:, None] * w_best.sign()
            sel = idx[movable]
            r_tot[sel] += step[movable].view((-1,) + x.shape[1:])
            x_adv[sel] = self._project(x[sel], r_tot[sel], scale)
        result = torch.where(fooled.view(view), x_adv, x)
        if self.refine_steps and bool(fooled.any()):
            result = self._refine(model, x, yy, r_tot, fooled, result)
        if self.eps is not None:  # an ε-bounded attack: larger perturbations do not count
            r = (result - x).flatten(1)
            size = torch.linalg.vector_norm(r, dim=1) if l2 else r.abs().amax(dim=1)
            result = torch.where((size <= self.eps + 1e-12).view(view), result, x)
        return result

    @torch.no_grad()
    def _refine(self, model, x, yy, r_tot, fooled, result):
        """Bisection on t in (0, 1 + overshoot]: the smallest t at which x + t·r_tot is still misclassified."""
        idx = (fooled & (r_tot.flatten(1).abs().amax(dim=1) > 0)).nonzero().squeeze(1)
        if idx.numel() == 0:
            return result
        xs, rs, ys = x.index_select(0, idx), r_tot.index_select(0, idx), yy.index_select(0, idx)
        view = (-1,) + (1,) * (x.dim() - 1)
        lo = torch.zeros(len(idx), device=x.device, dtype=x.dtype)
        hi = torch.full_like(lo, 1.0 + self.overshoot)
        for _ in range(self.refine_steps):
            mid = (lo + hi) / 2
            logits, _ = as_logits(model(self._project(xs, rs, mid.view(view))), ys)
            adv = logits.argmax(1) != ys
            hi = torch.where(adv, mid, hi)
            lo = torch.where(adv, lo, mid)
        result[idx] = self._project(xs, rs, hi.view(view))
        return result
