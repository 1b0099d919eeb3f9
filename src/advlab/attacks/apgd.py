"""Auto-PGD (Croce & Hein, ICML 2020): APGD with the CE, margin or DLR loss; L∞, L2 and L1.

Equal to the authors' code (pyautoattack 0.2.0, ``autopgd_base.APGDAttack``), step for step:

* start ``x₀``: a random point on the ε-sphere (L∞: uniform [−1, 1] rescaled to ‖·‖∞ = ε; L2: Gaussian
  rescaled to ‖·‖₂ = ε; L1: Gaussian projected onto the L1 ball ∩ box), clipped to ``bounds``; or ``x``;
* L∞ / L2 (``attacks.apgd_steps.MomentumSteps``): step ``η = 2ε``, ``z = P(x_k + η·s(g))``, momentum
  ``x_{k+1} = P(x_k + 0.75·(z − x_k) + 0.25·(x_k − x_{k−1}))`` (weight 1 on the first step);
  checkpoints after 22 % of the budget, then intervals shrinking by 3 % to at least 6 %; at a
  checkpoint η halves and the sample restarts from its best point when at most 75 % of the steps
  since the last checkpoint raised its loss (the first window compares its first loss with 0, as the
  reference's loss history does), or when η was not halved at the previous checkpoint and the best
  loss has not improved since;
* L1 (``attacks.apgd_steps.SparseL1Steps``): the sparse step of l1-APGD and its sparsity-adaptive step
  size; ``large_eps`` runs 30 / 30 / 40 % of the steps at 3ε, 2ε, ε (the reference's ``use_largereps``,
  which AutoAttack's L1 ``standard`` uses).

Every sample is independent of the others. A sample that reaches the goal leaves the batch at once
with the iterate that reached it (the reference keeps iterating it and returns its last such iterate:
the same broken set, a different but equally adversarial point). The others return their
highest-loss iterate. Restarts run only on the samples not broken yet. On purpose, randomness comes
from the attack's own generator (the reference reseeds the global RNG).
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from advlab.attacks.apgd_steps import MomentumSteps, SparseL1Steps, checkpoints, normalized
from advlab.attacks.base import Attack, as_logits, dlr_targeted_loss, per_sample_loss
from advlab.attacks.l1_ball import l1_box_correction
from advlab.attacks.pgd import _int_at_least_one
from advlab.errors import ConfigError

__all__ = ["APGD", "APGDT", "checkpoints", "top_other_classes"]


def _bool(key: str, value) -> bool:
    if not isinstance(value, (bool, int)) or value not in (0, 1):
        raise ConfigError(key, f"must be a boolean, got {value!r}; allowed: true, false")
    return bool(value)


class APGD(Attack):
    """Auto-PGD. Untargeted (``y`` true labels): maximise ``loss`` (``ce`` = APGD-CE, ``dlr`` =
    APGD-DLR, ``margin``) until the model misclassifies. Targeted (``y`` the targets): minimise the
    loss towards ``y``. ``eot_iter`` > 1 averages gradients and losses over that many forward passes
    (expectation over transformation, for randomised models: AutoAttack's ``rand`` version).
    ``large_eps`` (L1 only): 30 / 30 / 40 % of the steps at 3ε, 2ε and ε."""

    name = "apgd"
    norms = ("linf", "l2", "l1")

    def __init__(self, eps: float, norm: str = "linf", steps: int = 100, loss: str = "ce", restarts: int = 1,
                 random_start: bool = True, eot_iter: int = 1, targeted: bool = False, bounds=(0.0, 1.0),
                 seed: int = 0, large_eps: bool = False):
        super().__init__(eps=eps, norm=norm, targeted=targeted, bounds=bounds, seed=seed, loss=loss)
        self.steps = _int_at_least_one("steps", steps)
        self.restarts = _int_at_least_one("restarts", restarts)
        self.eot_iter = _int_at_least_one("eot_iter", eot_iter)
        self.random_start = _bool("random_start", random_start)
        self.large_eps = _bool("large_eps", large_eps)
        if self.large_eps and self.norm != "l1":
            raise ConfigError("large_eps", f"the 3ε/2ε/ε schedule is for norm l1, got norm {self.norm!r}; allowed: false")

    def _perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._restarts(model, x, _Goal(partial(_loss_goal, self.loss, self.targeted), y))

    def _restarts(self, model, x, goal: "_Goal"):
        """Run ``restarts`` times, each on the samples not broken yet; per sample the first
        goal-reaching point, else the highest-loss point over the restarts."""
        out = x.clone()
        with torch.no_grad():  # as the reference: points already at the goal are returned as they are
            todo = (~goal(model(x))[1]).nonzero().squeeze(1)
        best_loss = torch.full((x.shape[0],), float("-inf"), dtype=x.dtype, device=x.device)
        for _ in range(self.restarts):
            if todo.numel() == 0:
                break
            adv, hit, loss = self.run_once(model, x.index_select(0, todo), goal.subset(todo))
            better = hit | (loss > best_loss[todo])
            out[todo[better]] = adv[better]
            best_loss[todo[better]] = loss[better]
            todo = todo[~hit]
        return out

    def run_once(self, model, x, goal, start: torch.Tensor | None = None):
        """One run (one restart) on ``x``: (points, goal reached, loss) per sample. ``start``: the
        starting point (L1 ``large_eps``: the Gaussian noise it projects); None: drawn as configured."""
        if not self.large_eps:
            steps = (SparseL1Steps if self.norm == "l1" else MomentumSteps)(self, self.eps, self.steps)
            x0 = self._start(x) if start is None else start
            return self._run(model, x, goal, steps, x0, given_start=start is not None or not self.random_start)
        # the reference's decr_eps_pgd: the budget split over 3ε, 2ε, ε, each stage from the previous best point
        epss = [3.0 * self.eps, 2.0 * self.eps, self.eps]
        iters = [-(-3 * self.steps // 10), -(-3 * self.steps // 10)]
        iters.append(self.steps - sum(iters))
        noise = torch.randn(x.shape, generator=self.generator(x.device), device=x.device, dtype=x.dtype) if start is None else start
        x0 = x + noise
        x0 = x0 + l1_box_correction(x, x0 - x, epss[0], self.bounds)
        for i, (eps, n) in enumerate(zip(epss, iters)):
            x0 = x0 + l1_box_correction(x, x0 - x, eps, self.bounds)
            out = self._run(model, x, goal, SparseL1Steps(self, eps, n), x0, given_start=True, final=i == 2)
            x0 = out[0]
        return out

    def _start(self, x: torch.Tensor) -> torch.Tensor:
        if not self.random_start:
            return x.clone()
        gen = self.generator(x.device)
        if self.norm == "linf":
            t = torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype).mul_(2).sub_(1)
        else:
            t = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        if self.norm == "l1":
            xa = x + t + l1_box_correction(x, t, self.eps, self.bounds)
        else:
            xa = x + self.eps * normalized(t, self.norm)
        return xa if self.bounds is None else xa.clamp(*self.bounds)

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

    def _run(self, model: nn.Module, x: torch.Tensor, goal, steps, x0, given_start: bool, final: bool = True):
        """Iterate ``steps`` from ``x0``; returns (points, goal reached, loss) per sample. ``final``
        False (a large-ε stage): nobody leaves on reaching the goal; every sample returns its best point."""
        n, view = x.shape[0], (x.shape[0],) + (1,) * (x.dim() - 1)
        if self.bounds is not None:
            x0 = x0.clamp(*self.bounds)
        loss, hit, g = self._loss_grad(model, x0, goal)
        s = {"idx": torch.arange(n, device=x.device), "x": x, "xa": x0, "prev": x0, "g": g, "loss": loss,
             "best_x": x0.clone(), "best_g": g.clone(), "best_loss": loss.clone()}
        steps.init(s, given_start)
        out = (x.clone(), torch.zeros(n, dtype=torch.bool, device=x.device), loss.clone())
        s = self._retire(s, hit if final else _none(s), out)
        for i in range(1, steps.steps + 1):
            if s is None:
                return out
            sub_view = (s["x"].shape[0],) + view[1:]
            xa = steps.step(s, i, sub_view)
            s["prev"], s["xa"] = s["xa"], xa
            loss, hit, g = self._loss_grad(model, xa, goal, need_grad=i < steps.steps, idx=s["idx"])
            steps.record(s, loss)
            up = loss > s["best_loss"]
            s["best_x"] = torch.where(up.view(sub_view), xa, s["best_x"])
            s["best_loss"] = torch.where(up, loss, s["best_loss"])
            if g is not None:
                s["g"] = g
                s["best_g"] = torch.where(up.view(sub_view), g, s["best_g"])
            s = self._retire(s, hit if final else _none(s), out)  # before a checkpoint can move the iterate
            if s is not None and i < steps.steps:
                steps.after(s, i, (s["x"].shape[0],) + view[1:])
        if s is not None:
            self._retire(s, _none(s), out, final=True)
        return out

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
        return {k: (v[keep] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == keep.shape[0] else v)
                for k, v in s.items()}


def _none(s: dict) -> torch.Tensor:
    return torch.zeros_like(s["idx"], dtype=torch.bool)


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
    ``y``; at most C − 1), APGD on the targeted DLR loss −(z_y − z_t)/(z_π1 − (z_π3 + z_π4)/2), run on
    the samples not broken yet, ``restarts`` runs per target. ``y`` are the TRUE labels and the goal is
    misclassification (AutoAttack's use), so ``targeted`` is False. Fewer than 4 classes (no z_π4) the
    loss is the targeted margin z_t − z_y (``base.dlr_targeted_loss``; the reference fails there with an
    IndexError); AutoAttack skips APGD-T on 2 classes (see ``attacks.autoattack``)."""

    name = "apgd_t"
    fixed_losses = True  # `loss` has no effect: the losses are part of the method
    untargeted_only = True

    def __init__(self, eps: float, norm: str = "linf", steps: int = 100, n_target_classes: int = 9,
                 restarts: int = 1, random_start: bool = True, eot_iter: int = 1, bounds=(0.0, 1.0), seed: int = 0,
                 loss: str = "dlr", targeted: bool = False, large_eps: bool = False):
        if loss != "dlr":
            raise ConfigError("loss", f"APGD-T uses the targeted DLR loss, got {loss!r}; allowed: dlr")
        super().__init__(eps=eps, norm=norm, steps=steps, loss="dlr", restarts=restarts, random_start=random_start,
                         eot_iter=eot_iter, targeted=targeted, bounds=bounds, seed=seed, large_eps=large_eps)
        self.n_target_classes = _int_at_least_one("n_target_classes", n_target_classes)

    def _perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logits, yy = as_logits(model(x), y)
        targets = top_other_classes(logits, yy, self.n_target_classes)
        out, todo = x.clone(), (logits.argmax(dim=1) == yy).nonzero().squeeze(1)
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
