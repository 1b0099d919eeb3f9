"""FAB's projection of points onto a hyperplane inside the pixel box, for L∞, L2 and L1.

``project_box_hyperplane(t, w, b, norm, bounds)`` returns, per row, the minimal-norm step ``d`` with
``w·(t + d) = b`` and ``t + d`` inside ``bounds`` (as far as the box allows where it cannot reach the
hyperplane). With ``bounds = (0, 1)`` it is, float operation by float operation, the projection of
the AutoAttack reference (fra31/auto-attack, ``fab_projections.py``: ``projection_linf``,
``projection_l2``, ``projection_l1``): the same sort, cumulative sums, bisection and thresholds
(1e12, 1e-8), so FAB's iterates agree with the reference bit for bit. Differences, on purpose:

* any box ``(lo, hi)`` (the reference hard-codes ``[0, 1]``; the formulas are the same with 0 → lo
  and 1 → hi, and bit-identical for ``(0, 1)``), and ``bounds = None``: the closed forms
  ``|c| / ‖w‖_dual`` (L∞: all coordinates by ``λ``; L2: along ``w``; L1: the largest ``|w_i|``).

``project_hyperplane(p, w, c, norm, bounds)`` is the same projection for the hyperplane ``w·d = c``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_BIG = 1e12  # the reference's stand-in for "never reaches the box"
_TINY_W = 1e-8  # |w| below this: the coordinate does not move (reference, L2 and L1)


def _flip(t, w, b):
    """Orient the hyperplane so that ``c = w·t − b ≥ 0`` (``w·t`` has to decrease by ``c``)."""
    c = (w * t).sum(1) - b
    sign = (2 * (c >= 0) - 1).to(w.dtype)
    return w * sign.unsqueeze(1), c * sign, sign


def _bisect(lb, ub, rounds, goes_up):
    """The reference's bisection on float indices: ``lb`` moves up while ``goes_up(mid)``."""
    for _ in range(rounds):
        mid = torch.floor((lb + ub) / 2)
        up = goes_up(mid.long().unsqueeze(1))
        lb, ub = torch.where(up, mid, lb), torch.where(up, ub, mid)
    return lb.long()


def _linf(t, w, b, lo, hi):
    """L∞ (reference ``projection_linf``): ``d_i = −sign(w_i)·min(λ, room_i)``."""
    sign = (2 * ((w * t).sum(1) - b >= 0) - 1).to(w.dtype)
    w, b = w * sign.unsqueeze(1), b * sign
    neg = w < 0
    a = neg.to(w.dtype)
    moves = (w != 0).to(w.dtype)
    d = (torch.where(neg, hi, lo) - t) * moves  # the whole way to the box
    p = torch.where(neg, hi - t, t - lo)  # room towards the box
    indp = torch.argsort(p, dim=1)
    b = b - (w * t).sum(1)  # the (non-positive) change of w·t needed
    b0 = (w * d).sum(1)  # the change the whole box gives
    indp2 = indp.flip((1,))  # largest room first
    ws = w.gather(1, indp2)
    s = torch.cumsum(ws.abs(), dim=1)  # slope while the first k+1 coordinates still move
    sb = torch.cumsum(-ws * d.gather(1, indp2), dim=1) + b0.unsqueeze(1)  # the others at the box
    b2 = sb[:, -1] - s[:, -1] * p.gather(1, indp[:, 0:1]).squeeze(1)
    c_l = b - b2 > 0  # reached before any coordinate hits the box
    c2 = (b - b0 > 0) & ~c_l  # reached inside the box
    n = w.shape[1]

    def goes_up(k):
        cur = indp.gather(1, n - 1 - k)
        return b - (sb.gather(1, k) - s.gather(1, k) * p.gather(1, cur)).squeeze(1) > 0
    lb = _bisect(torch.zeros_like(b), torch.full_like(b, n - 1), math.ceil(math.log2(n)), goes_up)
    lam_l = torch.clamp_min((b - sb[:, -1]) / (-s[:, -1]), min=0).unsqueeze(-1)
    k = lb.unsqueeze(1)
    lam = torch.clamp_min((b - sb.gather(1, k).squeeze(1)) / (-s.gather(1, k).squeeze(1)), min=0).unsqueeze(-1)
    d_in = torch.min(lam, d) * a + torch.max(-lam, d) * (1 - a)
    d = torch.where(c_l.unsqueeze(1), (2 * a - 1) * lam_l, torch.where(c2.unsqueeze(1), d_in, d))
    return d * moves


def _l2(t, w, b, lo, hi):
    """L2 (reference ``projection_l2``): ``d_i = clip(−α·w_i)`` to the box, ``α ≥ 0``."""
    w, c, _ = _flip(t, w, b)
    moves = (w.abs() > _TINY_W).to(w.dtype)
    r = torch.max((t - lo) / w, (t - hi) / w).clamp(min=-_BIG, max=_BIG)  # α where i hits the box
    r = r.masked_fill(w.abs() < _TINY_W, _BIG)
    r = torch.where(r == -_BIG, -r, r)
    rs, indr = torch.sort(r, dim=1)
    rs2 = F.pad(rs[:, 1:], (0, 1))
    rs, rs2 = rs.masked_fill(rs == _BIG, 0), rs2.masked_fill(rs2 == _BIG, 0)
    w3s = (w ** 2).gather(1, indr)
    w5 = w3s.sum(dim=1, keepdim=True)
    ws = w5 - torch.cumsum(w3s, dim=1)  # slope after each breakpoint
    d = -(r * w) * moves  # the whole way to the box
    s = torch.cat((-w5 * rs[:, 0:1], torch.cumsum((-rs2 + rs) * ws, dim=1) - w5 * rs[:, 0:1]), 1)
    c4 = s[:, 0] + c < 0  # reached before any coordinate hits the box
    c3 = (d * w).sum(dim=1) + c > 0  # not reachable: the whole box
    c2 = ~(c4 | c3)
    n = w.shape[1]
    lb = _bisect(torch.zeros_like(c), torch.full_like(c, n - 1), math.ceil(math.log2(n)),
                 lambda k: s.gather(1, k).squeeze(1) + c > 0).unsqueeze(1)
    d4 = -(c / w5.squeeze(-1)).unsqueeze(-1) * w
    ws_k = ws.gather(1, lb).squeeze(1)
    alpha = (s.gather(1, lb).squeeze(1) + c) / ws_k + rs.gather(1, lb).squeeze(1)
    alpha = alpha.masked_fill(ws_k == 0, 0).unsqueeze(-1)
    c5 = (alpha > r).to(w.dtype)
    d2 = d * c5 - alpha * w * (1 - c5)
    d = torch.where(c4.unsqueeze(1), d4, torch.where(c2.unsqueeze(1), d2, d))
    return d * moves


def _l1(t, w, b, lo, hi):
    """L1 (reference ``projection_l1``): coordinates by decreasing ``|w_i|`` go to the box, the last
    one only as far as needed."""
    w, c, _ = _flip(t, w, b)
    r = (1 / w).abs().clamp_max(_BIG)
    indr = torch.argsort(r, dim=1)
    indr_rev = torch.argsort(indr)
    d = (-t + torch.where(w < 0, hi, lo)) * (w != 0).to(w.dtype)  # the whole way to the box
    ds = torch.min(w * (lo - t), w * (hi - t)).gather(1, indr)  # each coordinate's gain
    s = torch.cumsum(torch.cat((c.unsqueeze(-1), ds), 1), dim=1)  # need left after k coordinates
    c2 = s[:, -1] < 0  # reachable
    n = w.shape[1]
    lb = _bisect(torch.zeros_like(c), torch.full_like(c, s.shape[1]), math.ceil(math.log2(n)),
                 lambda k: s.gather(1, k).squeeze(1) > 0)
    # the coordinate that moves part of the way (lb ≤ D − 1 where reachable; the clamp serves the other rows)
    last = indr.gather(1, lb.clamp(max=n - 1).unsqueeze(1))
    alpha = -s.gather(1, lb.unsqueeze(1)) / w.gather(1, last)
    before = torch.arange(n, device=w.device).unsqueeze(0) < lb.unsqueeze(-1)  # sorted position < lb
    d2 = (d * before.gather(1, indr_rev).to(w.dtype)).scatter(1, last, alpha)
    d = torch.where(c2.unsqueeze(1), d2, d)
    return d * (w.abs() > _TINY_W).to(w.dtype)


def _free(t, w, b, norm):
    """No box: the closed-form minimal step to the hyperplane."""
    w, c, _ = _flip(t, w, b)
    if norm == "linf":
        lam = c / w.abs().sum(1).clamp_min(1e-30)
        d = -torch.sign(w) * lam.unsqueeze(1)
    elif norm == "l2":
        d = -(c / (w ** 2).sum(1).clamp_min(1e-30)).unsqueeze(1) * w
    else:
        j = w.abs().argmax(dim=1, keepdim=True)
        d = torch.zeros_like(w).scatter(1, j, -c.unsqueeze(1) / w.gather(1, j))
    return d


_BOXED = {"linf": _linf, "l2": _l2, "l1": _l1}


def project_box_hyperplane(t: torch.Tensor, w: torch.Tensor, b: torch.Tensor, norm: str, bounds=None) -> torch.Tensor:
    """Minimal-``norm`` step ``d`` (rows of (M, D)) with ``w·(t + d) = b`` and ``t + d`` inside ``bounds``."""
    if bounds is None:
        return _free(t, w, b, norm)
    lo, hi = (t.new_tensor(float(v)) for v in bounds)
    return _BOXED[norm](t, w, b, lo, hi)


def project_hyperplane(p: torch.Tensor, w: torch.Tensor, c: torch.Tensor, norm: str, bounds=None) -> torch.Tensor:
    """Minimal-``norm`` ``d`` (rows of (M, D)) with ``w·d = c`` and ``p + d`` inside ``bounds``; where
    the box cannot reach the hyperplane, ``d`` goes as far as the box allows."""
    return project_box_hyperplane(p, w, (w * p).sum(1) + c, norm, bounds)
