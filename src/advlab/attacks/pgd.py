"""Gradient attacks: PGD (L∞ / L2, restarts, best-iterate tracking) and its one-step and momentum
special cases FGSM, OneStepL2 and MIFGSM."""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from advlab.attacks.base import Attack, _is_int, _is_real, as_logits, parse_number, per_sample_loss
from advlab.errors import ConfigError, check_number


def _positive_or_none(key: str, value):
    """A step size: null, or a finite number > 0 (also written "8/255")."""
    return check_number(key, parse_number(value), 0, strict=True, allow_none=True)


def _int_at_least_one(key: str, value) -> int:
    if not _is_int(value) or int(value) < 1:
        raise ConfigError(key, f"must be an integer >= 1, got {value!r}")
    return int(value)


def _boolean(key: str, value) -> bool:
    if not isinstance(value, (bool, int)) or value not in (0, 1):
        raise ConfigError(key, f"must be a boolean, got {value!r}; allowed: true, false")
    return bool(value)


class PGD(Attack):
    """Projected gradient descent (Madry et al. 2018) in pixel space.

    Step size: ``step_size`` if given, else ``rel_step_size * eps``, else ``2.5 * eps / steps``
    (Madry), evaluated at call time so relative step sizes follow later changes of ``eps``.

    * L∞: ``x <- Π(x + α·sign(g))``; random start uniform in the ε-box.
    * L2: ``x <- Π(x + α·g/‖g‖₂)`` per sample (a zero gradient gives a zero step); random start
      uniform in the ε-ball. Π projects onto the ε-ball, then clips to ``bounds``; with ``x`` in
      the bounds clipping only shortens the perturbation, so ‖x_adv − x‖ ≤ ε still holds.

    ``keep_best`` returns, per sample, the best iterate seen (the start, every step, the final
    point) by the lexicographic score (goal reached; then loss, highest untargeted / lowest
    targeted). The score of iterate t comes from the forward pass that already computes its
    gradient, so tracking costs one extra forward in total. With ``random_start=False`` and
    ``step_size=eps`` (L∞) the first step is FGSM, so the result is per sample at least as strong.

    ``restarts``: independent runs (each with its own random start drawn in sequence from the
    attack's generator), combined per sample by the same score. The draws of restart r equal those
    of the (r+1)-th call of a ``restarts=1`` attack with the same seed and batch shape.

    ``stop_on_success`` (off by default): a point leaves the batch once an iterate reaches the goal
    (untargeted: misclassified; targeted: predicted as the target), keeping that iterate; later steps
    and restarts run on the points still unbroken (as APGD's ``_retire``). The random draws are still
    taken for the whole batch, so the others follow the same trajectories. With ``keep_best`` the
    per-sample success is then the same as without stopping (the best iterate is a successful one
    whenever any iterate was), at fewer model evaluations: evaluations turn it on (``early_stopping``).
    Without ``keep_best`` the attack becomes at least as strong (a later step can no longer undo a
    success). Crafting keeps it off: the returned point of a broken sample is its first successful
    iterate, not the best (or last) one.
    """

    name = "pgd"

    def __init__(self, eps: float, norm: str = "linf", steps: int = 10, step_size: float | None = None,
                 rel_step_size: float | None = None, random_start: bool = True, restarts: int = 1,
                 keep_best: bool = True, targeted: bool = False, bounds=(0.0, 1.0), seed: int = 0,
                 loss: str = "ce", stop_on_success: bool = False):
        super().__init__(eps=eps, norm=norm, targeted=targeted, bounds=bounds, seed=seed, loss=loss)
        self.steps = _int_at_least_one("steps", steps)
        self.step_size = _positive_or_none("step_size", step_size)
        self.rel_step_size = _positive_or_none("rel_step_size", rel_step_size)
        if self.step_size is not None and self.rel_step_size is not None:
            raise ConfigError("step_size", "give at most one of step_size, rel_step_size (the other must be null)")
        self.restarts = _int_at_least_one("restarts", restarts)
        self.random_start = _boolean("random_start", random_start)
        self.keep_best = _boolean("keep_best", keep_best)
        self.stop_on_success = stop_on_success
        self._decay: float | None = None  # momentum (MIFGSM)

    @property
    def stop_on_success(self) -> bool:
        """Retire each point at its first successful iterate (see the class docstring)."""
        return self.__dict__.get("_stop_on_success", False)

    @stop_on_success.setter
    def stop_on_success(self, value) -> None:
        # stored only when on: the cache keys of crafted sets (artifacts.keys.describe_object: the attack's
        # attributes) stay those of attacks built before this option existed
        if _boolean("stop_on_success", value):
            self.__dict__["_stop_on_success"] = True
        else:
            self.__dict__.pop("_stop_on_success", None)

    @property
    def alpha(self) -> float:
        """The step size used at the current ``eps``."""
        if self.step_size is not None:
            return self.step_size
        if self.rel_step_size is not None:
            return self.rel_step_size * self.eps
        return 2.5 * self.eps / self.steps

    # ------------------------------------------------------------------------------------------
    def _score(self, out: torch.Tensor, y: torch.Tensor, loss: torch.Tensor | None = None):
        """(goal reached, oriented loss: larger = better for the attacker), both detached."""
        logits, yy = as_logits(out.detach(), y)
        if loss is None:
            loss = per_sample_loss(self.loss, logits, yy)
        loss = loss.detach()
        pred = logits.argmax(dim=1)
        if yy.dim() == 2:  # soft targets (loss "kl"): their most likely class
            yy = yy.argmax(dim=1)
        if self.targeted:
            return pred == yy, -loss
        return pred != yy, loss

    @staticmethod
    def _merge(best, cand, view):
        """Per-sample lexicographic max of (goal reached, score); ties keep ``best``.

        ``best`` and ``cand`` are ``(x, succeeded, score)``. The candidate's tensor is CONSUMED: the
        result is written into it (only the samples where ``best`` stays ahead are copied over,
        usually few, since PGD's loss mostly rises step after step). On accelerators a ``where``
        (no host sync) builds the result instead. Returns the merged triple and the mask."""
        bx, bs, bl = best
        cx, cs, cl = cand
        better = _better(bs, bl, cs, cl)
        if cx.device.type == "cpu":
            idx = (~better).nonzero().squeeze(1)
            if idx.numel():
                cx.index_copy_(0, idx, bx.index_select(0, idx))
        else:
            cx = torch.where(better.view(view), cx, bx)
        return (cx, bs | cs, torch.where(better, cl, bl)), better

    def _perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        view = (x.shape[0],) + (1,) * (x.dim() - 1)
        if self.stop_on_success:
            return self._perturb_stopping(model, x, y, view)
        need_score = self.keep_best or self.restarts > 1
        best = None
        for _ in range(self.restarts):
            cand = self._run(model, x, y, view, need_score)
            best = cand if best is None else self._merge(best, cand, view)[0]
        return best[0]

    def _feasible_box(self, x: torch.Tensor):
        """L∞: the (lower, upper) bounds of the feasible set, the ε-box ∩ ``bounds``; L2: (None, None)."""
        if self.norm != "linf":
            return None, None
        lower, upper = x - self.eps, x + self.eps
        if self.bounds is not None:
            lower.clamp_(min=self.bounds[0])
            upper.clamp_(max=self.bounds[1])
        return lower, upper

    def _start(self, x: torch.Tensor, view, lower, upper) -> torch.Tensor:
        """The first iterate: uniform in the ε-box (L∞) or ε-ball (L2), clipped; or x itself."""
        if not self.random_start:
            return x.clone()
        eps, n = self.eps, x.shape[0]
        gen = self.generator(x.device)
        if self.norm == "linf":
            noise = torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype)
            return noise.mul_(2.0 * eps).sub_(eps).add_(x).clamp_(min=lower, max=upper)
        d = x[0].numel()
        delta = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        u = torch.rand((n,), generator=gen, device=x.device, dtype=x.dtype)
        dn = torch.linalg.vector_norm(delta.reshape(n, -1), dim=1)
        radius = eps * u.pow(1.0 / d)  # uniform in the ball: P(r <= t) = (t/ε)^d
        scale = torch.where(dn > 0, radius / dn, torch.zeros_like(dn))
        xa = torch.addcmul(x, delta, scale.view(view), out=delta)
        if self.bounds is not None:
            xa.clamp_(self.bounds[0], self.bounds[1])
        return xa

    def _step(self, x: torch.Tensor, xa: torch.Tensor, g: torch.Tensor, dst: torch.Tensor, view, lower, upper) -> None:
        """One ascent step from ``xa`` along ``g`` (ours: may be overwritten), projected, into ``dst``."""
        n, eps = x.shape[0], self.eps
        if self.norm == "linf":
            torch.add(xa, g.sign_() if self._decay is None else g.sign(), alpha=self.alpha, out=dst)
            dst.clamp_(min=lower, max=upper)
            return
        gn = torch.linalg.vector_norm(g.reshape(n, -1), dim=1)
        step = torch.where(gn > 0, self.alpha / gn, torch.zeros_like(gn))
        delta = torch.addcmul(xa, g, step.view(view), out=dst).sub_(x)
        dn = torch.linalg.vector_norm(delta.reshape(n, -1), dim=1)
        factor = torch.where(dn > eps, eps / dn, torch.ones_like(dn))
        torch.addcmul(x, delta, factor.view(view), out=dst)
        if self.bounds is not None:
            dst.clamp_(self.bounds[0], self.bounds[1])

    def _gradient(self, model: nn.Module, xa: torch.Tensor, y: torch.Tensor, momentum, score: bool):
        """(∇ of the oriented loss at xa, xa detached, the iterate's (x, succeeded, score) when
        ``score`` else None); MI-FGSM's momentum accumulates the L1-normalised gradients."""
        xa.requires_grad_(True)
        out = model(xa)
        logits, yy = as_logits(out, y)
        loss = per_sample_loss(self.loss, logits, yy)
        total = loss.sum()
        (g,) = torch.autograd.grad(-total if self.targeted else total, xa)
        xa = xa.detach()  # no longer part of any graph: may be written in place
        # score this iterate from the forward pass that gave its gradient
        scored = (xa, *self._score(logits, yy, loss)) if score else None
        if momentum is not None:
            n = xa.shape[0]
            view = (n,) + (1,) * (xa.dim() - 1)
            l1 = torch.linalg.vector_norm(g.reshape(n, -1), ord=1, dim=1)
            g = momentum.mul_(self._decay).addcmul_(g, torch.where(l1 > 0, 1.0 / l1, torch.zeros_like(l1)).view(view))
        return g, xa, scored

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, view, need_score: bool):
        """One restart. Returns ``(x_adv, succeeded, score)`` (the last two None unless
        ``need_score``); ``x_adv`` is a fresh tensor owned by the caller."""
        keep_best = self.keep_best
        lower, upper = self._feasible_box(x)
        xa = self._start(x, view, lower, upper)
        momentum = torch.zeros_like(x) if self._decay is not None else None
        best = None  # (x, succeeded, score) of the best iterate so far
        spare = None  # a free buffer for the next iterate (keep_best double-buffering)
        for _ in range(self.steps):
            g, xa, cand = self._gradient(model, xa, y, momentum, keep_best)
            # Without keep_best the step is written over xa; with it, into a spare buffer, and
            # xa's storage then becomes the new best (see _merge): no full copy per step.
            dst = xa if not keep_best else (spare if spare is not None else torch.empty_like(xa))
            self._step(x, xa, g, dst, view, lower, upper)
            if keep_best:
                best, spare = self._keep(best, cand, view, spare, dst)
            xa = dst
        if keep_best or need_score:
            with torch.no_grad():
                cand = (xa, *self._score(model(xa), y))
            return cand if best is None else self._merge(best, cand, view)[0]
        return (xa, None, None)


    def _keep(self, best, cand, view, spare, dst):
        """keep_best after a step into ``dst``: (the best of ``best`` and ``cand``, a free buffer for the
        next step: the storage of the best that ``cand`` replaced, see ``_merge``)."""
        if best is None:
            best = cand
        else:
            old = best[0]
            best = self._merge(best, cand, view)[0]
            if best[0] is not old:
                spare = old
        return best, (None if spare is dst else spare)

    # ---- stop_on_success -----------------------------------------------------------------------
    def _perturb_stopping(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, view) -> torch.Tensor:
        """Restarts as in ``_perturb``, each on the points that no earlier iterate broke."""
        n = x.shape[0]
        out = [x.clone(), torch.zeros(n, dtype=torch.bool, device=x.device), None]  # x, succeeded, score
        for r in range(self.restarts):
            lower, upper = self._feasible_box(x)
            # drawn for the whole batch, as without stopping: the same starts, and the same stream after
            xa = self._start(x, view, lower, upper)
            s = {"idx": torch.arange(n, device=x.device), "x": x, "y": y, "xa": xa, "lower": lower, "upper": upper,
                 "momentum": torch.zeros_like(x) if self._decay is not None else None, "best": None}
            if r and bool(out[1].any()):
                if bool(out[1].all()):
                    continue
                s = _shrink(s, ~out[1])
            self._run_stopping(model, s, out, first=r == 0)
        return out[0]

    def _run_stopping(self, model: nn.Module, s: dict, out: list, first: bool) -> None:
        """One restart of the points of state ``s`` (``idx``: their rows in the batch; ``x``, ``y``,
        iterate ``xa``, box, momentum, best iterate); a point leaves at its first successful iterate.
        The steps and the best-iterate rule are ``_run``'s; results go to ``out`` (``_settle``)."""
        keep_best, tail = self.keep_best, (1,) * (s["x"].dim() - 1)
        spare = None
        for _ in range(self.steps):
            g, s["xa"], cand = self._gradient(model, s["xa"], s["y"], s["momentum"], True)
            hit = cand[1]
            if bool(hit.any()):
                _settle(out, s["idx"][hit], tuple(t[hit] for t in cand), first)
                if bool(hit.all()):
                    return
                keep = ~hit
                s, g, spare = _shrink(s, keep), g[keep], None
                cand = (s["xa"], cand[1][keep], cand[2][keep])
            view = (s["x"].shape[0],) + tail
            dst = s["xa"] if not keep_best else (spare if spare is not None else torch.empty_like(s["xa"]))
            self._step(s["x"], s["xa"], g, dst, view, s["lower"], s["upper"])
            if keep_best:
                s["best"], spare = self._keep(s["best"], cand, view, spare, dst)
            s["xa"] = dst
        if not (keep_best or self.restarts > 1):  # the last iterate, as without stopping
            out[0][s["idx"]] = s["xa"]
            return
        with torch.no_grad():
            cand = (s["xa"], *self._score(model(s["xa"]), s["y"]))
        view = (s["x"].shape[0],) + tail
        _settle(out, s["idx"], cand if s["best"] is None else self._merge(s["best"], cand, view)[0], first)


def _better(bs, bl, cs, cl) -> torch.Tensor:
    """Per sample: the candidate (goal reached ``cs``, score ``cl``) beats the best (``bs``, ``bl``)."""
    return (cs & ~bs) | ((cs == bs) & ((cl > bl) | (bl.isnan() & ~cl.isnan())))


def _shrink(s: dict, keep: torch.Tensor) -> dict:
    """The state ``s`` of the rows ``keep`` (bool) only."""
    sel = keep.nonzero().squeeze(1)

    def take(v):
        if isinstance(v, tuple):
            return tuple(t.index_select(0, sel) for t in v)
        return v.index_select(0, sel) if isinstance(v, torch.Tensor) else v

    return {k: take(v) for k, v in s.items()}


def _settle(out: list, idx: torch.Tensor, res, first: bool) -> None:
    """Write ``res`` = (x, succeeded, score) of the batch rows ``idx`` into ``out`` where it beats what
    earlier restarts left there (``_better``, ties keep the earlier one); the first restart writes all."""
    rx, rs, rl = res
    if out[2] is None:
        out[2] = torch.full(out[1].shape, float("nan"), dtype=rl.dtype, device=rl.device)
    if not first:
        better = _better(out[1][idx], out[2][idx], rs, rl)
        idx, rx, rs, rl = idx[better], rx[better], rs[better], rl[better]
    out[0][idx], out[1][idx], out[2][idx] = rx, rs, rl


@contextlib.contextmanager
def early_stopping(attack):
    """For evaluations: within the block a PGD-family ``attack`` that keeps its best iterate stops
    attacking each point once broken (``PGD.stop_on_success``): the same per-sample success, fewer
    model evaluations. Other attacks (APGD retires broken points itself) and last-iterate PGD
    (``keep_best=False``: stopping would make it stronger, not the same) are left as they are."""
    if not isinstance(attack, PGD) or not attack.keep_best or attack.stop_on_success:
        yield attack
        return
    attack.stop_on_success = True
    try:
        yield attack
    finally:
        attack.stop_on_success = False

class FGSM(PGD):
    """Fast gradient sign method (Goodfellow et al. 2015): one step of size ``eps`` from ``x``.
    With ``norm="l2"`` it is the fast gradient method ``x + ε·g/‖g‖₂``. ``keep_best=True`` would
    return ``x`` itself where the step lowers the loss; off by default (the textbook attack)."""

    name = "fgsm"

    def __init__(self, eps: float, norm: str = "linf", targeted: bool = False, bounds=(0.0, 1.0),
                 seed: int = 0, loss: str = "ce", keep_best: bool = False, stop_on_success: bool = False):
        super().__init__(eps=eps, norm=norm, steps=1, rel_step_size=1.0, random_start=False, restarts=1, keep_best=keep_best,
                         targeted=targeted, bounds=bounds, seed=seed, loss=loss, stop_on_success=stop_on_success)


class OneStepL2(PGD):
    """One L2-normalised input-gradient step of size ε (Kumano et al., NeurIPS 2024):
    ``δ = ε·∇x L/‖∇x L‖₂`` untargeted, ``δ = −ε·∇x L/‖∇x L‖₂`` towards targets ``y``
    (``targeted=True``, as when crafting perturbation-learning datasets), then clipped to
    ``bounds`` (use ``bounds=None`` for mean-subtracted inputs as in the paper).

    For a binary score model, ce (logistic) and margin (``−y·f(x)``) give the same δ: their
    input gradients differ by a positive per-sample factor, which the normalisation removes."""

    name = "one_step_l2"

    def __init__(self, eps: float, targeted: bool = False, bounds=(0.0, 1.0), seed: int = 0, loss: str = "ce"):
        super().__init__(eps=eps, norm="l2", steps=1, rel_step_size=1.0, random_start=False, restarts=1,
                         keep_best=False, targeted=targeted, bounds=bounds, seed=seed, loss=loss)


class MIFGSM(PGD):
    """Momentum iterative FGSM (Dong et al. 2018): ``m <- μ·m + g/‖g‖₁``, step ``α·sign(m)``
    (L∞) or ``α·m/‖m‖₂`` (L2), projected like PGD. Defaults follow the paper: ``α = ε/steps``,
    no random start, last iterate (``keep_best=False``)."""

    name = "mifgsm"

    def __init__(self, eps: float, norm: str = "linf", steps: int = 10, decay: float = 1.0,
                 step_size: float | None = None, rel_step_size: float | None = None, random_start: bool = False,
                 restarts: int = 1, keep_best: bool = False, targeted: bool = False, bounds=(0.0, 1.0),
                 seed: int = 0, loss: str = "ce", stop_on_success: bool = False):
        if step_size is None and rel_step_size is None:
            rel_step_size = 1.0 / _int_at_least_one("steps", steps)
        super().__init__(eps=eps, norm=norm, steps=steps, step_size=step_size, rel_step_size=rel_step_size,
                         random_start=random_start, restarts=restarts, keep_best=keep_best, targeted=targeted,
                         bounds=bounds, seed=seed, loss=loss, stop_on_success=stop_on_success)
        if not _is_real(decay) or not float(decay) >= 0 or decay == float("inf"):
            raise ConfigError("decay", f"must be a finite number >= 0, got {decay!r}")
        self._decay = float(decay)

    @property
    def decay(self) -> float:
        return self._decay
