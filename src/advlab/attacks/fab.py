"""FAB-T (Croce & Hein, ICML 2020, "Minimally distorted adversarial examples with a fast adaptive
boundary attack"): minimal-norm adversarial points, targeted at the top-k other classes, L∞ and L2.

One iteration, towards target ``t`` from the current point ``x_k`` (origin ``x₀``): linearise the
boundary ``h = z_t − z_y`` at ``x_k``, project both ``x_k`` and ``x₀`` onto that hyperplane within
the pixel box (minimal norm, ``d_k`` and ``d₀``), and move to
``(1 − α)(x_k + η·d_k) + α(x₀ + η·d₀)`` with ``α = min(‖d_k‖ / (‖d_k‖ + ‖d₀‖), α_max)`` (a bias
towards the origin keeps the point close). When the new point is adversarial it is recorded if it is
the closest so far, and pulled back towards the origin: ``x₀ + β(x − x₀)``.

As an attack with budget ε (``attack(model, x, y)``, ``y`` true labels): per sample the closest
adversarial point found if its norm is ≤ ε, else ``x``. ``minimal(model, x, y)`` returns the closest
points and their distances without the budget (``inf`` where none was found).
"""
from __future__ import annotations

import torch
from torch import nn

from advlab.attacks.apgd import top_other_classes
from advlab.attacks.base import Attack, as_logits, autograd_enabled, eval_mode
from advlab.attacks.pgd import _int_at_least_one, _positive_or_none
from advlab.errors import ConfigError

def _box_room(p, direction, bounds):
    """How far each coordinate of ``p`` may move along ``sign(direction)`` inside ``bounds``."""
    if bounds is None:
        return torch.full_like(p, float("inf"))
    return torch.where(direction > 0, bounds[1] - p, p - bounds[0]).clamp_(min=0)


def project_hyperplane(p: torch.Tensor, w: torch.Tensor, c: torch.Tensor, norm: str, bounds=None) -> torch.Tensor:
    """Minimal-norm ``d`` (rows of (M, D)) with ``w·d = c`` and ``p + d`` inside ``bounds``.

    L∞: ``d_i = sign(c·w_i)·min(τ, room_i)``; L2: ``d_i = sign(c·w_i)·min(λ·|w_i|, room_i)``. The
    reached ``|w·d|`` is piecewise linear and non-decreasing in the scalar τ / λ, with breakpoints
    where coordinates hit the box; sorting them gives the exact root. Where the box cannot reach the
    hyperplane, ``d`` goes as far as the box allows."""
    s = torch.sign(c).unsqueeze(1)
    ws = w * s  # moving along sign(ws) raises s·(w·d)
    need, absw = c.abs(), ws.abs()
    slope = absw if norm == "linf" else absw * absw  # d(gain)/dt of a coordinate not yet at the box

    def step(t):
        t = t.unsqueeze(1)
        return torch.sign(ws) * (torch.minimum(t, room) if norm == "linf" else torch.minimum(t * absw, room))
    if bounds is None:
        room = torch.full_like(p, float("inf"))
        return step(need / slope.sum(dim=1).clamp_min(1e-30))
    room = _box_room(p, ws, bounds)
    moving = absw > 0
    brk = torch.where(moving, room if norm == "linf" else room / absw.clamp_min(1e-30), torch.zeros_like(room))
    brk, order = brk.sort(dim=1)
    sat = (absw * room).masked_fill(~moving, 0).gather(1, order)  # gain of a coordinate at the box
    sl = slope.gather(1, order)
    zero = torch.zeros_like(need).unsqueeze(1)
    before = torch.cat((zero, sat.cumsum(dim=1)), dim=1)  # Σ_{i<k} sat_i
    tail = torch.cat((sl.flip(1).cumsum(dim=1).flip(1), zero), dim=1)  # Σ_{i≥k} slope_i
    gain_at = before[:, 1:] + brk * tail[:, 1:]  # gain at t = brk_k, non-decreasing in k
    k = torch.searchsorted(gain_at, need.unsqueeze(1)).clamp_(max=brk.shape[1] - 1)
    t = (need.unsqueeze(1) - before.gather(1, k)) / tail.gather(1, k).clamp_min(1e-30)
    t = torch.minimum(t, brk.gather(1, k)).squeeze(1)  # unreachable: the last breakpoint (whole box)
    return step(t)


def _norm(d: torch.Tensor, norm: str) -> torch.Tensor:
    flat = d.reshape(d.shape[0], -1)
    return flat.abs().amax(dim=1) if norm == "linf" else torch.linalg.vector_norm(flat, dim=1)


class FABT(Attack):
    """FAB-T: minimal-norm targeted search over the ``n_target_classes`` classes with the highest
    clean logits, ``steps`` iterations and ``restarts`` runs per target (restarts after the first
    start at a random point at half the distance found so far, capped at ε). Defaults as in
    AutoAttack: α_max = 0.1, η = 1.05, β = 0.9. ``y`` are the true labels (``targeted`` False)."""

    name = "fab_t"
    fixed_losses = True  # `loss` has no effect: the losses are part of the method
    untargeted_only = True

    def __init__(self, eps: float, norm: str = "linf", steps: int = 100, n_target_classes: int = 9, restarts: int = 1,
                 alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9, bounds=(0.0, 1.0), seed: int = 0,
                 targeted: bool = False, loss: str = "ce"):
        super().__init__(eps=eps, norm=norm, targeted=targeted, bounds=bounds, seed=seed, loss=loss)
        self.steps = _int_at_least_one("attack.steps", steps)
        self.n_target_classes = _int_at_least_one("attack.n_target_classes", n_target_classes)
        self.restarts = _int_at_least_one("attack.restarts", restarts)
        self.alpha_max = _positive_or_none("attack.alpha_max", alpha_max)
        self.eta = _positive_or_none("attack.eta", eta)
        self.beta = _positive_or_none("attack.beta", beta)
        if None in (self.alpha_max, self.eta, self.beta) or self.alpha_max > 1 or self.beta >= 1:
            raise ConfigError("attack.alpha_max", "alpha_max in (0, 1], eta > 0 and beta in (0, 1) are required")

    def _perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        best, dist = self._search(model, x, y, enough=self.eps)
        ok = (dist <= self.eps).view((-1,) + (1,) * (x.dim() - 1))
        return torch.where(ok, best, x)

    def minimal(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(closest adversarial points, their ``norm`` distances) per sample, over all targets and
        restarts; ``x`` and distance 0 where ``x`` is misclassified, ``x`` and ``inf`` where none was found."""
        with eval_mode(model), autograd_enabled():
            xs, ys = x.detach().clone(), y.detach().to(x.device).clone()
            best, dist = self._search(model, xs, ys, enough=-1.0)
        return best.detach(), dist.detach()

    def _search(self, model, x, y, enough: float):
        """Closest points over targets and restarts; a sample stops once its distance is ≤ ``enough``."""
        with torch.no_grad():
            logits, yy = as_logits(model(x), y)
        dist = torch.where(logits.argmax(dim=1) != yy, 0.0, float("inf")).to(x.dtype)
        best = x.clone()
        for t in top_other_classes(logits, yy, self.n_target_classes).unbind(dim=1):
            for r in range(self.restarts):
                todo = ((dist > enough) & (dist != 0)).nonzero().squeeze(1)
                if todo.numel() == 0:
                    break
                radius = torch.clamp(dist[todo], max=self.eps) * 0.5 if r > 0 else None
                cand, d = self._run(model, x[todo], y[todo], t[todo], radius)
                better = d < dist[todo]
                best[todo[better]], dist[todo[better]] = cand[better], d[better]
        return best, dist

    def _start(self, x0, radius, view):
        if radius is None:
            return x0.clone()
        gen = self.generator(x0.device)
        if self.norm == "linf":
            t = torch.rand(x0.shape, generator=gen, device=x0.device, dtype=x0.dtype).mul_(2).sub_(1)
        else:
            t = torch.randn(x0.shape, generator=gen, device=x0.device, dtype=x0.dtype)
        scale = _norm(t, self.norm).clamp_min(1e-30)
        x1 = x0 + t * (radius.nan_to_num(posinf=self.eps) / scale).view(view)
        return x1 if self.bounds is None else x1.clamp_(*self.bounds)

    def _boundary(self, model, x1, y, t):
        """(z_t − z_y, its input gradient) at ``x1``."""
        xr = x1.detach().requires_grad_(True)
        logits, yy = as_logits(model(xr), y)
        h = logits.gather(1, t.unsqueeze(1)).squeeze(1) - logits.gather(1, yy.unsqueeze(1)).squeeze(1)
        (g,) = torch.autograd.grad(h.sum(), xr)
        return h.detach(), g

    def _run(self, model, x0, y, t, radius):
        n, view = x0.shape[0], (x0.shape[0],) + (1,) * (x0.dim() - 1)
        x1 = self._start(x0, radius, view)
        best, res = x0.clone(), torch.full((n,), float("inf"), dtype=x0.dtype, device=x0.device)
        flat0 = x0.reshape(n, -1)
        for _ in range(self.steps):
            h, g = self._boundary(model, x1, y, t)
            w, flat1 = g.reshape(n, -1), x1.reshape(n, -1)
            # linearised h at p: h + w·(p − x1); the step to its zero from x1 and from the origin
            c1, c0 = -h, -(h + (w * (flat0 - flat1)).sum(dim=1))
            d = project_hyperplane(torch.cat((flat1, flat0)), torch.cat((w, w)), torch.cat((c1, c0)), self.norm, self.bounds)
            d1, d0 = d[:n].view_as(x0), d[n:].view_as(x0)
            a1, a0 = _norm(d1, self.norm).clamp_min(1e-8), _norm(d0, self.norm).clamp_min(1e-8)
            alpha = (a1 / (a1 + a0)).clamp(0, self.alpha_max).view(view)
            x1 = (x1 + self.eta * d1) * (1 - alpha) + (x0 + self.eta * d0) * alpha
            if self.bounds is not None:
                x1 = x1.clamp_(*self.bounds)
            with torch.no_grad():
                logits, yy = as_logits(model(x1), y)
            adv = logits.argmax(dim=1) != yy
            if bool(adv.any()):
                dist = _norm(x1 - x0, self.norm)
                closer = adv & (dist < res)
                best = torch.where(closer.view(view), x1, best)
                res = torch.where(closer, dist, res)
                x1 = torch.where(adv.view(view), x0 + self.beta * (x1 - x0), x1)
        return best, res
