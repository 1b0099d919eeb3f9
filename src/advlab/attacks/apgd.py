"""Auto-PGD (Croce & Hein, ICML 2020): APGD with the CE, margin or DLR loss, and APGD-T (targeted
DLR loss towards each of the top-k other classes). Pixel space, L∞ and L2.

The algorithm (paper §3, RECIPES.md §7):

* start ``x₀`` (a random point on the ε-sphere of the norm, clipped to ``bounds``; or ``x``), step
  ``η = 2ε`` per sample;
* ``z = P(x_k + η·s(g))`` with ``s`` the sign (L∞) or the L2-normalised gradient, then momentum
  ``x_{k+1} = P(x_k + 0.75·(z − x_k) + 0.25·(x_k − x_{k−1}))`` (no momentum on the first step);
* checkpoints after 22 % of the budget, then after intervals shrinking by 3 % of the budget to at
  least 6 % (p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)). At a checkpoint a sample halves η
  and restarts from its best point when fewer than 75 % of the steps since the last checkpoint
  raised its loss, or when η was not halved at the previous checkpoint and the best loss has not
  improved since.

Every sample is independent of the others (own η, own checkpoint decisions); a sample that reached
the goal leaves the batch, so its result is the first goal-reaching iterate. The others return their
highest-loss iterate. Restarts run only on the samples not broken yet.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from advlab.attacks.base import Attack, as_logits, dlr_targeted_loss, per_sample_loss
from advlab.attacks.pgd import _int_at_least_one
from advlab.errors import ConfigError

MOMENTUM = 0.75
RHO = 0.75  # fraction of loss-raising steps below which η is halved


def checkpoints(steps: int) -> list[int]:
    """Iteration counts after which APGD checks its step size (the paper's ⌈p_j·N⌉, in the integer
    form of the authors' code: 22 % of the budget, then intervals shrinking by 3 % to at least 6 %)."""
    k, dec, least = max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    marks, at = [], 0
    while at + k <= steps:
        at += k
        marks.append(at)
        k = max(k - dec, least)
    return marks


def _bool(key: str, value) -> bool:
    if not isinstance(value, (bool, int)) or value not in (0, 1):
        raise ConfigError(key, f"must be a boolean, got {value!r}; allowed: true, false")
    return bool(value)


class APGD(Attack):
    """Auto-PGD. Untargeted (``y`` true labels): maximise ``loss`` (``ce`` = APGD-CE, ``dlr`` =
    APGD-DLR, ``margin``) until the model misclassifies. Targeted (``y`` the targets): minimise the
    loss towards ``y``. ``eot_iter`` > 1 averages gradients and losses over that many forward passes
    (expectation over transformation, for randomised models: AutoAttack's ``rand`` version)."""

    name = "apgd"

    def __init__(self, eps: float, norm: str = "linf", steps: int = 100, loss: str = "ce", restarts: int = 1,
                 random_start: bool = True, eot_iter: int = 1, targeted: bool = False, bounds=(0.0, 1.0),
                 seed: int = 0):
        super().__init__(eps=eps, norm=norm, targeted=targeted, bounds=bounds, seed=seed, loss=loss)
        self.steps = _int_at_least_one("attack.steps", steps)
        self.restarts = _int_at_least_one("attack.restarts", restarts)
        self.eot_iter = _int_at_least_one("attack.eot_iter", eot_iter)
        self.random_start = _bool("attack.random_start", random_start)

    def _perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._restarts(model, x, _Goal(partial(_loss_goal, self.loss, self.targeted), y))

    def _restarts(self, model, x, goal: "_Goal"):
        """Run ``restarts`` times, each on the samples not broken yet; per sample the first
        goal-reaching point, else the highest-loss point over the restarts."""
        out = x.clone()
        todo = torch.arange(x.shape[0], device=x.device)
        best_loss = torch.full((x.shape[0],), float("-inf"), dtype=x.dtype, device=x.device)
        for _ in range(self.restarts):
            if todo.numel() == 0:
                break
            adv, hit, loss = self._run(model, x.index_select(0, todo), goal.subset(todo))
            better = hit | (loss > best_loss[todo])
            out[todo[better]] = adv[better]
            best_loss[todo[better]] = loss[better]
            todo = todo[~hit]
        return out

    # ---- one run ------------------------------------------------------------------------------
    def _start(self, x: torch.Tensor, view) -> torch.Tensor:
        if not self.random_start:
            return x.clone()
        gen, n = self.generator(x.device), x.shape[0]
        if self.norm == "linf":
            t = torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype).mul_(2).sub_(1)
            scale = t.reshape(n, -1).abs().amax(dim=1)
        else:
            t = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
            scale = torch.linalg.vector_norm(t.reshape(n, -1), dim=1)
        scale = torch.where(scale > 0, self.eps / scale, torch.zeros_like(scale))
        xa = torch.addcmul(x, t, scale.view(view))
        return xa if self.bounds is None else xa.clamp_(*self.bounds)

    def _project(self, x, z, view, box):
        """Onto the ε-ball around ``x``, then into ``bounds`` (stays in the ball: ``x`` is inside)."""
        if self.norm == "linf":
            return torch.maximum(torch.minimum(z, box[1]), box[0])
        delta = z - x
        dn = torch.linalg.vector_norm(delta.reshape(z.shape[0], -1), dim=1)
        factor = torch.where(dn > self.eps, self.eps / dn, torch.ones_like(dn))
        z = torch.addcmul(x, delta, factor.view(view))
        return z if self.bounds is None else z.clamp_(*self.bounds)

    def _step(self, s: dict, a: float, view) -> torch.Tensor:
        g, xa = s["g"], s["xa"]
        if self.norm == "linf":
            d = g.sign()
        else:
            gn = torch.linalg.vector_norm(g.reshape(g.shape[0], -1), dim=1)
            d = g * torch.where(gn > 0, 1.0 / gn, torch.zeros_like(gn)).view(view)
        box = (s["lo"], s["hi"])
        z = self._project(s["x"], torch.addcmul(xa, d, s["eta"].view(view)), view, box)
        if a != 1.0:
            z = xa + a * (z - xa) + (1.0 - a) * (xa - s["prev"])
            z = self._project(s["x"], z, view, box)
        return z

    def _loss_grad(self, model, xa, goal, need_grad: bool = True, idx=None):
        """Per-sample (loss, goal reached, input gradient) at ``xa``, averaged over ``eot_iter``
        passes; the goal is read from the last pass."""
        if not need_grad:
            with torch.no_grad():
                loss, hit = goal(model(xa), idx)
            return loss, hit, None
        loss_sum, grad_sum = 0.0, None
        for _ in range(self.eot_iter):
            xr = xa.detach().requires_grad_(True)
            loss, hit = goal(model(xr), idx)
            (g,) = torch.autograd.grad(loss.sum(), xr)
            loss_sum = loss_sum + loss.detach()
            grad_sum = g if grad_sum is None else grad_sum.add_(g)
        if self.eot_iter > 1:
            return loss_sum / self.eot_iter, hit, grad_sum.div_(self.eot_iter)
        return loss_sum, hit, grad_sum

    def _init_state(self, model, x, goal, view) -> dict:
        if self.norm == "linf":
            lo, hi = x - self.eps, x + self.eps
            if self.bounds is not None:
                lo, hi = lo.clamp_(min=self.bounds[0]), hi.clamp_(max=self.bounds[1])
        else:
            lo = hi = x  # unused
        xa = self._start(x, view)
        loss, hit, g = self._loss_grad(model, xa, goal)
        n = x.shape[0]
        return {"idx": torch.arange(n, device=x.device), "x": x, "lo": lo, "hi": hi, "xa": xa, "prev": xa,
                "g": g, "loss": loss, "best_x": xa.clone(), "best_g": g.clone(), "best_loss": loss.clone(),
                "eta": torch.full((n,), 2.0 * self.eps, dtype=x.dtype, device=x.device),
                "ups": torch.zeros(n, dtype=torch.long, device=x.device),
                "reduced": torch.ones(n, dtype=torch.bool, device=x.device), "loss_at_check": loss.clone()}, hit

    def _run(self, model: nn.Module, x: torch.Tensor, goal):
        """One run on ``x``; returns (points, goal reached, loss) per sample."""
        n, view = x.shape[0], (x.shape[0],) + (1,) * (x.dim() - 1)
        s, hit = self._init_state(model, x, goal, view)
        out = (x.clone(), torch.zeros(n, dtype=torch.bool, device=x.device), s["loss"].clone())
        marks, since = set(checkpoints(self.steps)), 0
        for i in range(1, self.steps + 1):
            s = self._retire(s, hit, out)
            if s is None:
                return out
            sub_view = (s["x"].shape[0],) + view[1:]
            xa = self._step(s, 1.0 if i == 1 else MOMENTUM, sub_view)
            s["prev"], s["xa"] = s["xa"], xa
            loss, hit, g = self._loss_grad(model, xa, goal, need_grad=i < self.steps, idx=s["idx"])
            s["ups"] += loss > s["loss"]
            s["loss"] = loss
            up = loss > s["best_loss"]
            s["best_x"] = torch.where(up.view(sub_view), xa, s["best_x"])
            s["best_loss"] = torch.where(up, loss, s["best_loss"])
            if g is not None:
                s["g"] = g
                s["best_g"] = torch.where(up.view(sub_view), g, s["best_g"])
            since += 1
            if i in marks and i < self.steps:
                self._checkpoint(s, since, sub_view)
                since = 0
        self._retire(s, hit, out, final=True)
        return out

    @staticmethod
    def _checkpoint(s: dict, since: int, view) -> None:
        halve = (s["ups"] <= RHO * since) | (~s["reduced"] & (s["loss_at_check"] >= s["best_loss"]))
        s["reduced"], s["loss_at_check"] = halve, s["best_loss"].clone()
        s["eta"] = torch.where(halve, s["eta"] / 2, s["eta"])
        s["xa"] = torch.where(halve.view(view), s["best_x"], s["xa"])
        s["g"] = torch.where(halve.view(view), s["best_g"], s["g"])
        s["ups"].zero_()

    @staticmethod
    def _retire(s: dict, hit, out, final: bool = False):
        """Write the samples that reached the goal (their current iterate) into ``out`` and, when
        ``final``, the others (their best point). Returns the state of the samples still running,
        or None when none is left."""
        out_x, out_hit, out_loss = out
        idx = s["idx"]
        if bool(hit.any()):
            done = idx[hit]
            out_x[done], out_hit[done], out_loss[done] = s["xa"][hit], True, s["loss"][hit]
        keep = ~hit
        if final:
            out_x[idx[keep]] = s["best_x"][keep]
            out_loss[idx[keep]] = s["best_loss"][keep]
        if bool(keep.all()):
            return s
        if not bool(keep.any()):
            return None
        return {k: v[keep] for k, v in s.items()}


class _Goal:
    """``fn(model output, *labels) -> (loss to maximise, goal reached)`` over a batch, callable on
    any subset ``idx`` of its rows (the samples still running)."""

    def __init__(self, fn, *labels):
        self.fn, self.labels = fn, labels

    def __call__(self, out, idx=None):
        labels = self.labels if idx is None else tuple(t.index_select(0, idx) for t in self.labels)
        return self.fn(out, *labels)

    def subset(self, idx) -> "_Goal":
        return _Goal(self.fn, *(t.index_select(0, idx) for t in self.labels))


def _loss_goal(kind: str, targeted: bool, out, y):
    logits, yy = as_logits(out, y)
    loss = per_sample_loss(kind, logits, yy)
    pred = logits.argmax(dim=1)
    return (-loss, pred == yy) if targeted else (loss, pred != yy)


class APGDT(APGD):
    """APGD-T: for each of the ``n_target_classes`` classes with the highest clean logits (other than
    ``y``), APGD on the targeted DLR loss −(z_y − z_t)/(z_π1 − (z_π3 + z_π4)/2), run on the samples
    not broken yet. ``y`` are the TRUE labels and the goal is misclassification (AutoAttack's use),
    so ``targeted`` is False."""

    name = "apgd_t"
    fixed_losses = True  # `loss` has no effect: the losses are part of the method
    untargeted_only = True

    def __init__(self, eps: float, norm: str = "linf", steps: int = 100, n_target_classes: int = 9,
                 restarts: int = 1, random_start: bool = True, eot_iter: int = 1, bounds=(0.0, 1.0), seed: int = 0,
                 loss: str = "dlr", targeted: bool = False):
        if loss != "dlr":
            raise ConfigError("attack.loss", f"APGD-T uses the targeted DLR loss, got {loss!r}; allowed: dlr")
        super().__init__(eps=eps, norm=norm, steps=steps, loss="dlr", restarts=restarts, random_start=random_start,
                         eot_iter=eot_iter, targeted=targeted, bounds=bounds, seed=seed)
        self.n_target_classes = _int_at_least_one("attack.n_target_classes", n_target_classes)

    def _perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logits, yy = as_logits(model(x), y)
        targets = top_other_classes(logits, yy, self.n_target_classes)
        out, todo = x.clone(), torch.arange(x.shape[0], device=x.device)
        for t in targets.unbind(dim=1):
            if todo.numel() == 0:
                break
            goal = _Goal(_targeted_dlr_goal, y.index_select(0, todo), t.index_select(0, todo))
            adv = self._restarts(model, x.index_select(0, todo), goal)
            out[todo] = adv
            with torch.no_grad():
                broken = as_logits(model(adv), y.index_select(0, todo))[0].argmax(1) != yy.index_select(0, todo)
            todo = todo[~broken]
        return out


def _targeted_dlr_goal(out, y, t):
    logits, yy = as_logits(out, y)
    return dlr_targeted_loss(logits, yy, t), logits.argmax(dim=1) != yy


def top_other_classes(logits: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """(N, min(k, C−1)) indices of the classes with the highest logits other than ``y``, best first."""
    others = logits.scatter(1, y.unsqueeze(1), float("-inf"))
    k = min(k, logits.shape[1] - 1)
    return others.topk(k, dim=1).indices

