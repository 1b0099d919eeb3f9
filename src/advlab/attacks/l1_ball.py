"""The L1 threat model's geometry: the Euclidean projection onto the L1 ball intersected with the pixel
box, and the L0 count, as AutoAttack's L1 attacks use them (Croce & Hein, "Mind the box: l1-APGD for
sparse adversarial attacks on image classifiers", ICML 2021; pyautoattack ``autopgd_base.L1_projection``).

The projection of ``x + δ`` onto ``{‖δ'‖₁ ≤ ε, lo ≤ x + δ' ≤ hi}`` shrinks every |δ_i| by a common
threshold τ ≥ 0, but at least by what brings ``x_i + δ_i`` back into the box and at most to 0 (the
sign never flips). The total shrinkage is piecewise linear in τ with breakpoints at the box cuts and at
the magnitudes; sorting them gives τ exactly. The arithmetic follows the reference step for step, so
L1 attacks stay point-by-point equal to it (a float difference in τ can move a sparse step's support).
"""
from __future__ import annotations

import torch


def l0(delta: torch.Tensor) -> torch.Tensor:
    """Number of non-zero coordinates per sample."""
    return (delta != 0).reshape(delta.shape[0], -1).sum(dim=-1)


def l1(delta: torch.Tensor, keepdim: bool = False) -> torch.Tensor:
    """‖δ‖₁ per sample (optionally shaped to broadcast against ``delta``)."""
    out = delta.abs().reshape(delta.shape[0], -1).sum(dim=-1)
    return out.view(-1, *[1] * (delta.dim() - 1)) if keepdim else out


def l1_box_correction(x: torch.Tensor, delta: torch.Tensor, eps: float, bounds=(0.0, 1.0)) -> torch.Tensor:
    """The change ``c`` such that ``x + delta + c`` is the projection of ``x + delta`` onto the L1
    ball of radius ``eps`` around ``x`` intersected with ``bounds`` (float32, the shape of ``x``)."""
    lo, hi = (float("-inf"), float("inf")) if bounds is None else bounds
    n = x.shape[0]
    xf, d = x.detach().float().reshape(n, -1), delta.detach().float().reshape(n, -1)
    dim = d.shape[1]
    box = torch.minimum(torch.minimum(hi - xf - d, xf + d - lo), torch.zeros_like(d))  # ≤ 0: the cut the box needs
    mag = -d.abs()  # the most a coordinate can be cut: to zero
    cut = box.clone()  # the answer where the box alone brings ‖δ‖₁ within ε
    keys, order = torch.sort(-torch.cat((box, mag), dim=1), dim=1)  # breakpoints of the threshold τ
    nxt = torch.cat((keys[:, 1:], torch.zeros(n, 1, device=d.device)), dim=1)
    active = (2 * (order < dim).float() - 1).cumsum(dim=1)  # coordinates shrinking between breakpoints
    box_total = -box.sum(dim=1)
    slack = eps - d.abs().sum(dim=1)
    rows = (box_total + slack < 0).nonzero().squeeze(1)  # still outside the ball after the box cut
    shrunk = box_total.unsqueeze(-1) + torch.cumsum((nxt - keys) * active, dim=1)  # total cut at each breakpoint
    if rows.numel():
        # the last breakpoint whose total cut is still short of the ball (non-decreasing: a count finds it,
        # equal to the reference's bisection, which never reaches the last index)
        short = (shrunk[rows] + slack[rows].unsqueeze(1) < 0).sum(dim=1) - 1
        j = short.clamp(0, 2 * dim - 2)
        tau = (-shrunk[rows, j] - slack[rows]) / active[rows, j + 1] + nxt[rows, j]
        cut[rows] = -torch.min(torch.max(-box[rows], tau.unsqueeze(-1)), -mag[rows])
    return (d.sign() * cut).view(x.shape)
