"""FAB (Croce & Hein, ICML 2020, "Minimally distorted adversarial examples with a fast adaptive
boundary attack"): minimal-norm adversarial points for L∞, L2 and L1, untargeted (``FAB``) or
targeted at the top-k other classes (``FABT``), as in AutoAttack (fra31/auto-attack, ``fab_base.py``,
``fab_pt.py``, ``fab_projections.py``), whose iterates it reproduces.

One iteration from the current point ``x_k`` (origin ``x₀``): linearise the boundary ``h = z_t − z_y``
at ``x_k`` (untargeted: ``t`` the class whose linearised boundary is closest, ``|h_t| / ‖∇h_t‖_dual``;
FAB-T: the target), project both ``x_k`` and ``x₀`` onto that hyperplane within the pixel box
(``d_k``, ``d₀``; see ``fab_projections``), and move to ``(x_k + η·d_k)(1 − α) + (x₀ + η·d₀)·α`` with
``α = min(‖d_k‖ / (‖d_k‖ + ‖d₀‖), α_max)``. An adversarial point is recorded if it is the closest so
far, then pulled back towards the origin: ``x₀ + β(x − x₀)``.

As an attack with budget ε (``attack(model, x, y)``, ``y`` true labels), as the reference's
``perturb``: each run (a restart; FAB-T: a target, then its restarts) attacks the points not yet
broken; a point is broken by a run whose closest point is misclassified with norm ≤ ε, and that
point is returned; the rest are ``x``. ``minimal(model, x, y)`` returns the closest points over all
runs and their distances, without a budget.
"""
from __future__ import annotations

import torch
from torch import nn

from advlab.attacks.base import Attack, as_logits, autograd_enabled, eval_mode
from advlab.attacks.base import lp_norm as row_norm
from advlab.attacks.fab_projections import project_box_hyperplane, project_hyperplane
from advlab.attacks.pgd import _int_at_least_one, _positive_or_none
from advlab.errors import ConfigError

__all__ = ["FAB", "FABT", "project_hyperplane", "row_norm"]

_NOT_FOUND = 1e10  # the reference's "no adversarial point yet" distance (res2)


def _dual_norm(dg: torch.Tensor, norm: str) -> torch.Tensor:
    """‖·‖_dual of each (sample, class) gradient row of ``dg`` (N, K, ...) (reference ``attack_single_run``)."""
    if norm == "linf":
        return dg.abs().reshape(dg.shape[0], dg.shape[1], -1).sum(dim=-1)
    if norm == "l2":
        return (dg ** 2).reshape(dg.shape[0], dg.shape[1], -1).sum(dim=-1).sqrt()
    return dg.abs().reshape(dg.shape[0], dg.shape[1], -1).max(dim=2)[0]


class FAB(Attack):
    """Untargeted FAB: each iteration heads for the class with the closest linearised boundary;
    ``restarts`` runs, those after the first from a random start. Defaults as in AutoAttack:
    α_max = 0.1, η = 1.05, β = 0.9 (AutoAttack's ``plus`` runs it with 5 restarts, 100 steps).

    Equal to the reference (``FABAttack_PT``, ``targeted=False``) point by point: same gradients,
    hyperplane, projection, update, bookkeeping, random start (per norm a uniform / Gaussian
    direction scaled to ``min(res2, ε)/2`` with ``res2`` just reset to 1e10, i.e. ε/2) and final
    selection. Where it differs, on purpose:

    * randomness comes from the attack's own generator, not the global RNG that the reference
      reseeds on every call. On the CPU a generator seeded s draws the same stream as the reseeded
      global RNG, so a first call equals the reference's; later calls continue the stream (fresh
      starts for every batch, where the reference repeats the same ones).
    * any ``bounds`` box, or none (the reference clips to [0, 1]); the input dtype is kept (the
      reference casts to float32); binary single-score models are read as two logits.
    * ``minimal`` (closest points over all runs, no budget) is an addition."""

    name = "fab"
    norms = ("linf", "l2", "l1")
    fixed_losses = True  # `loss` has no effect: the losses are part of the method
    untargeted_only = True

    def __init__(self, eps: float, norm: str = "linf", steps: int = 100, restarts: int = 1, alpha_max: float = 0.1,
                 eta: float = 1.05, beta: float = 0.9, bounds=(0.0, 1.0), seed: int = 0, targeted: bool = False,
                 loss: str = "ce"):
        super().__init__(eps=eps, norm=norm, targeted=targeted, bounds=bounds, seed=seed, loss=loss)
        self.steps = _int_at_least_one("steps", steps)
        self.restarts = _int_at_least_one("restarts", restarts)
        self.alpha_max = _positive_or_none("alpha_max", alpha_max)
        self.eta = _positive_or_none("eta", eta)
        self.beta = _positive_or_none("beta", beta)
        if None in (self.alpha_max, self.eta, self.beta) or self.alpha_max > 1 or self.beta >= 1:
            raise ConfigError("alpha_max", "alpha_max in (0, 1], eta > 0 and beta in (0, 1) are required")

    def _runs(self, n_classes: int) -> list[tuple[int | None, int]]:
        """(target rank or None, restart index) of each run, in order."""
        return [(None, r) for r in range(self.restarts)]

    # ---- the two entry points -------------------------------------------------------------
    def _perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._search(model, x, y, budget=True)[0]

    def minimal(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(closest adversarial points, their ``norm`` distances) per sample, over every run on every
        correctly classified point; ``x`` and 0 where ``x`` is misclassified, ``x`` and ``inf`` where
        nothing was found."""
        with eval_mode(model), autograd_enabled():
            xs, ys = x.detach().clone(), y.detach().to(x.device).clone()
            best, dist = self._search(model, xs, ys, budget=False)
        return best.detach(), dist.detach()

    def _search(self, model, x, y, budget: bool):
        """Reference ``perturb``: runs on the points still robust (``budget``: broken = misclassified
        within ε; else every correctly classified point in every run, keeping the closest)."""
        with torch.no_grad():
            logits, yy = as_logits(model(x), y)
        robust = logits.max(dim=1)[1] == yy
        best = x.clone()
        dist = torch.where(robust, float("inf"), 0.0).to(x.dtype)
        for rank, restart in self._runs(logits.shape[1]):
            todo = robust.nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            cand, found = self._single_run(model, x[todo], yy[todo], rank, restart > 0)
            res = row_norm(x[todo] - cand, self.norm)
            if budget:
                with torch.no_grad():
                    still = as_logits(model(cand), yy[todo])[0].max(dim=1)[1] == yy[todo]
                hit = ~(still | (res > self.eps))
                robust[todo[hit]] = False
            else:
                hit = found & (res < dist[todo])
            best[todo[hit]], dist[todo[hit]] = cand[hit], res[hit]
        return best, dist

    # ---- one run (reference attack_single_run) --------------------------------------------
    def _random_start(self, x0: torch.Tensor) -> torch.Tensor:
        view = (x0.shape[0],) + (1,) * (x0.dim() - 1)
        gen = self.generator(x0.device)
        radius = min(_NOT_FOUND, self.eps)  # reference: min(res2, eps) with res2 just set to 1e10
        if self.norm == "linf":
            t = 2 * torch.rand(x0.shape, generator=gen, device=x0.device, dtype=x0.dtype) - 1
        else:
            t = torch.randn(x0.shape, generator=gen, device=x0.device, dtype=x0.dtype)
        x1 = x0 + radius * t / row_norm(t, self.norm).view(view) * 0.5
        return x1 if self.bounds is None else x1.clamp(*self.bounds)

    def _hyperplane(self, model, x1, y, target):
        """(w, b) of the linearised boundary ``w·p = b`` at ``x1`` (reference
        ``get_diff_logits_grads_batch[_targeted]`` and the choice of the closest class)."""
        n, u = x1.shape[0], torch.arange(x1.shape[0], device=x1.device)
        xr = x1.detach().clone().requires_grad_(True)
        logits, y = as_logits(model(xr), y)
        if target is None:
            grads = []
            for k in range(logits.shape[1]):  # one backward pass per class, like the reference
                onehot = torch.zeros_like(logits)
                onehot[:, k] = 1.0
                grads.append(torch.autograd.grad(logits, xr, grad_outputs=onehot, retain_graph=True)[0])
            g2 = torch.stack(grads).transpose(0, 1)
            z = logits.detach()
            df = z - z[u, y].unsqueeze(1)
            dg = g2 - g2[u, y].unsqueeze(1)
            df[u, y] = 1e10  # never the true class
        else:
            diff = -(logits[u, y] - logits[u, target])
            (g,) = torch.autograd.grad(diff.sum(), xr)
            df, dg = diff.detach().unsqueeze(1), g.unsqueeze(1)
        dist = df.abs() / (1e-12 + _dual_norm(dg, self.norm))
        ind = dist.min(dim=1)[1]
        dg2 = dg[u, ind]
        b = -df[u, ind] + (dg2 * x1).reshape(n, -1).sum(dim=-1)
        return dg2.reshape(n, -1), b

    def _single_run(self, model, x0, y, rank, random_start: bool):
        """(closest adversarial point or ``x0``, found) for each sample; ``rank``: target = the class
        with the ``rank``-th highest clean logit (FAB-T), None: untargeted."""
        n, view = x0.shape[0], (x0.shape[0],) + (1,) * (x0.dim() - 1)
        target = None
        with torch.no_grad():
            if rank is not None:  # reference: output.sort()[1][:, -target_class] on this batch
                target = as_logits(model(x0), y)[0].sort(dim=-1)[1][:, -rank]
        adv, flat0 = x0.clone(), x0.reshape(n, -1)
        res2 = torch.full((n,), _NOT_FOUND, dtype=x0.dtype, device=x0.device)
        x1 = self._random_start(x0) if random_start else x0.clone()
        for _ in range(self.steps):
            w, b = self._hyperplane(model, x1, y, target)
            with torch.no_grad():
                d3 = project_box_hyperplane(torch.cat((x1.reshape(n, -1), flat0), 0), torch.cat((w, w), 0),
                                            torch.cat((b, b), 0), self.norm, self.bounds)
                d1, d2 = d3[:n].reshape(x0.shape), d3[-n:].reshape(x0.shape)
                a0 = torch.clamp_min(row_norm(d3, self.norm), 1e-8).view((2 * n,) + view[1:])
                a1, a2 = a0[:n], a0[-n:]
                alpha = torch.clamp(a1 / (a1 + a2), 0, self.alpha_max)
                x1 = (x1 + self.eta * d1) * (1 - alpha) + (x0 + d2 * self.eta) * alpha
                if self.bounds is not None:
                    x1 = x1.clamp(*self.bounds)
                is_adv = as_logits(model(x1), y)[0].max(dim=1)[1] != y  # y: class indices (from _search)
                self._record(x0, x1, is_adv, adv, res2)
        return adv, res2 < _NOT_FOUND

    def _record(self, x0, x1, is_adv, adv, res2) -> None:
        """Keep the adversarial points closer than the best so far; pull them back towards ``x0``
        (in place on ``x1``, ``adv``, ``res2``; reference: the ``ind_adv`` block)."""
        idx = is_adv.nonzero().squeeze(1)
        if idx.numel() == 0:
            return
        view = (idx.numel(),) + (1,) * (x0.dim() - 1)
        t = row_norm(x1[idx] - x0[idx], self.norm)
        closer = t < res2[idx]
        adv[idx] = torch.where(closer.view(view), x1[idx], adv[idx])
        res2[idx] = torch.where(closer, t, res2[idx])
        x1[idx] = x0[idx] + (x1[idx] - x0[idx]) * self.beta


class FABT(FAB):
    """FAB-T: FAB towards each of the ``n_target_classes`` classes with the highest clean logits
    (clipped to C − 1), ``restarts`` runs per target, each on the points not broken yet (reference
    ``perturb`` with ``targeted=True``). AutoAttack's ``standard`` runs it with 9 targets, 1 restart,
    100 steps. Deliberate differences from the reference: those of ``FAB``, and the clip of
    ``n_target_classes`` (the reference indexes out of range with fewer than n + 1 classes)."""

    name = "fab_t"

    def __init__(self, eps: float, norm: str = "linf", steps: int = 100, n_target_classes: int = 9, restarts: int = 1,
                 alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9, bounds=(0.0, 1.0), seed: int = 0,
                 targeted: bool = False, loss: str = "ce"):
        super().__init__(eps=eps, norm=norm, steps=steps, restarts=restarts, alpha_max=alpha_max, eta=eta, beta=beta,
                         bounds=bounds, seed=seed, targeted=targeted, loss=loss)
        self.n_target_classes = _int_at_least_one("n_target_classes", n_target_classes)

    def _runs(self, n_classes: int) -> list[tuple[int | None, int]]:
        last = min(self.n_target_classes, n_classes - 1) + 1
        return [(rank, r) for rank in range(2, last + 1) for r in range(self.restarts)]
