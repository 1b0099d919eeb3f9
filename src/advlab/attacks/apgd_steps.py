"""APGD's step rules, one per threat model family, each with its own step-size schedule.

``MomentumSteps`` (L∞, L2) and ``SparseL1Steps`` (L1) follow pyautoattack 0.2.0
(``autopgd_base.APGDAttack.attack_single_run``) in their arithmetic as well as their logic, so that
APGD runs from the same start give the reference's points to the last bits that matter (a sign or a
top-k support decided by one ulp would otherwise part the trajectories).

A step rule keeps its per-sample state in the run's state dict ``s`` (so samples that leave the batch
take theirs with them): ``init(s, given_start)``, ``step(s, i, view) -> next iterate``,
``record(s, loss)`` after each evaluation, ``after(s, i, view)`` at the end of iteration ``i``.
"""
from __future__ import annotations

import torch

from advlab.attacks.base import lp_norm
from advlab.attacks.l1_ball import l0, l1, l1_box_correction

MOMENTUM = 0.75
RHO = 0.75  # fraction of loss-raising steps below which η is halved


def checkpoints(steps: int) -> list[int]:
    """Iteration counts after which APGD (L∞, L2) checks its step size (the paper's ⌈p_j·N⌉, in the
    integer form of the authors' code: 22 % of the budget, then intervals shrinking by 3 % to at least 6 %)."""
    k, dec, least = max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    marks, at = [], 0
    while at + k <= steps:
        at += k
        marks.append(at)
        k = max(k - dec, least)
    return marks


def normalized(t: torch.Tensor, norm: str) -> torch.Tensor:
    """``t / (‖t‖ + 1e-12)`` per sample."""
    return t / (lp_norm(t, norm).view(-1, *[1] * (t.dim() - 1)) + 1e-12)


class MomentumSteps:
    """L∞ / L2: step η·sign(g) or η·g/‖g‖₂, momentum 0.75, η = 2ε halved at the checkpoints."""

    def __init__(self, attack, eps: float, steps: int):
        self.norm, self.eps, self.bounds, self.steps = attack.norm, eps, attack.bounds, steps
        self.marks = checkpoints(steps)

    def init(self, s: dict, given_start: bool) -> None:
        n, ref = s["x"].shape[0], s["loss"]
        s["eta"] = torch.full((n,), 2.0 * self.eps, dtype=s["x"].dtype, device=s["x"].device)
        s["ups"] = torch.zeros(n, dtype=torch.long, device=ref.device)
        s["last_loss"] = torch.zeros_like(ref)  # the reference's empty loss history reads as 0 in the first window
        s["reduced"] = torch.ones(n, dtype=torch.bool, device=ref.device)
        s["loss_at_check"] = ref.clone()

    def _project(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if self.norm == "linf":
            z = torch.min(torch.max(z, x - self.eps), x + self.eps)
        else:
            v = z - x
            z = x + normalized(v, "l2") * torch.min(self.eps * torch.ones_like(x), lp_norm(v, "l2").view(-1, *[1] * (x.dim() - 1)))
        return z if self.bounds is None else torch.clamp(z, *self.bounds)

    def step(self, s: dict, i: int, view) -> torch.Tensor:
        x, xa, g = s["x"], s["xa"], s["g"]
        d = torch.sign(g) if self.norm == "linf" else normalized(g, "l2")
        z = self._project(x, xa + s["eta"].view(view) * d)
        a = 1.0 if i == 1 else MOMENTUM
        return self._project(x, xa + (z - xa) * a + (xa - s["prev"]) * (1 - a))

    @staticmethod
    def record(s: dict, loss: torch.Tensor) -> None:
        s["ups"] += loss > s["last_loss"]
        s["last_loss"] = loss

    def after(self, s: dict, i: int, view) -> None:
        if i not in self.marks:
            return
        at = self.marks.index(i)
        since = i - (self.marks[at - 1] if at else 0)
        halve = (s["ups"] <= RHO * since) | (~s["reduced"] & (s["loss_at_check"] >= s["best_loss"]))
        s["reduced"], s["loss_at_check"] = halve, s["best_loss"].clone()
        s["eta"] = torch.where(halve, s["eta"] / 2, s["eta"])
        s["xa"] = torch.where(halve.view(view), s["best_x"], s["xa"])
        s["g"] = torch.where(halve.view(view), s["best_g"], s["g"])
        s["ups"].zero_()


class SparseL1Steps:
    """L1 (l1-APGD): a step of size η spread evenly over the signs of the top-k gradient coordinates
    (k starts at 20 % of them, or at the start's sparsity / 1.5), projected onto the L1 ball ∩ box;
    every 4 % of the budget k follows the best point's sparsity / 1.5, and η resets to ε when that
    sparsity fell by over 5 % (restarting from the best point), else shrinks by 1.5 (to at least ε/10)."""

    def __init__(self, attack, eps: float, steps: int):
        self.eps, self.bounds, self.steps = eps, attack.bounds, steps
        self.every, self.count = max(int(0.04 * steps), 1), 0

    def init(self, s: dict, given_start: bool) -> None:
        x = s["x"]
        n, self.n_fts = x.shape[0], x[0].numel()
        s["eta"] = torch.full((n,), self.eps, dtype=x.dtype, device=x.device)
        if given_start:
            s["sp_old"] = l0(s["xa"] - x)
            s["topk"] = s["sp_old"] / self.n_fts / 1.5
        else:
            s["topk"] = 0.2 * torch.ones(n, device=x.device)
            s["sp_old"] = self.n_fts * torch.ones_like(s["topk"])

    def step(self, s: dict, i: int, view) -> torch.Tensor:
        x, xa, g = s["x"], s["xa"], s["g"]
        ranked = g.abs().reshape(g.shape[0], -1).sort(dim=-1)[0]
        kth = torch.clamp((1.0 - s["topk"]) * self.n_fts, min=0, max=self.n_fts - 1).long()
        thr = ranked[torch.arange(g.shape[0], device=g.device), kth].view(view)
        sparse = (g * (g.abs() >= thr).float()).sign()
        moved = xa + s["eta"].view(view) * sparse / (l1(sparse, keepdim=True) + 1e-10)
        delta = moved - x
        return x + delta + l1_box_correction(x, delta, self.eps, self.bounds)

    @staticmethod
    def record(s: dict, loss: torch.Tensor) -> None:
        return None

    def after(self, s: dict, i: int, view) -> None:
        self.count += 1
        if self.count < self.every:
            return
        self.count = 0
        sp = l0(s["best_x"] - s["x"])
        sparser = (sp / s["sp_old"]) < 0.95
        s["topk"] = sp / self.n_fts / 1.5
        s["eta"] = torch.where(sparser, torch.full_like(s["eta"], self.eps), s["eta"] / 1.5).clamp(self.eps / 10.0, self.eps)
        s["sp_old"] = sp
        s["xa"] = torch.where(sparser.view(view), s["best_x"], s["xa"])
        s["g"] = torch.where(sparser.view(view), s["best_g"], s["g"])
