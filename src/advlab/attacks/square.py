"""Square attack (Andriushchenko et al., ECCV 2020): score-based black-box random search, L∞ and L2.

No gradients: the model is only queried for its logits, so masked or vanishing gradients do not
hide adversarial points from it (AutoAttack's sanity check). Each query proposes a change inside a
random square window (per sample) and keeps it when the margin z_y − max_{i≠y} z_i decreases; a
sample stops once misclassified. The window's area is the fraction ``p`` of the image, halved on a
fixed schedule of the query budget (``p_init`` = 0.8, AutoAttack's setting).

* L∞: start from vertical stripes ``x ± ε`` (per sample, channel and column); a proposal sets the
  window to ``x ± ε`` with one random sign per channel.
* L2: start from a grid of ±"pulses" (a peaked profile, positive on one half and negative on the
  other), scaled to ``‖δ‖₂ = ε``; a proposal moves the perturbation mass of a second window into the
  first, adds a new ±pulse there and rescales to ``‖δ‖₂ = ε``.

L∞ proposals known to be rejected (no pixel changes, or the sample already rejected the same window
and signs at its current point) are not sent to the model: same points, fewer model evaluations
(on robust points late in the schedule most single-pixel proposals are such repeats).

Inputs of any shape are viewed as images ``(N, C, H, W)``: 2-D ``(N, D)`` as ``(N, 1, 1, D)`` (the
windows are then segments), 3-D ``(N, H, W)`` as one channel.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from advlab.attacks.base import Attack, as_logits
from advlab.attacks.pgd import _int_at_least_one, _positive_or_none
from advlab.errors import ConfigError

_SCHEDULE = ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128), (8000, 256))


def window_fraction(p_init: float, it: int, n_queries: int) -> float:
    """The fraction of the image a window covers at query ``it`` (schedule for 10,000 queries,
    rescaled to the budget)."""
    it = int(it / n_queries * 10000)
    for last, div in _SCHEDULE:
        if it <= last:
            return p_init / div
    return p_init / 512


def pulse(h: int, w: int) -> torch.Tensor:
    """Peaked (h, w) profile of unit L2 norm: the sum over concentric rectangles around the centre
    of 1/(k+1)² for ring k, so values fall off from the centre."""
    ring = torch.maximum((torch.arange(h) - h // 2).abs().view(-1, 1), (torch.arange(w) - w // 2).abs().view(1, -1))
    k_max = max(h // 2 + 1, w // 2 + 1)
    weights = 1.0 / torch.arange(1, k_max + 1, dtype=torch.float64) ** 2
    tail = weights.flip(0).cumsum(0).flip(0)  # tail[r] = Σ_{k ≥ r} 1/(k+1)²
    out = tail[ring]
    return out / out.norm()


def two_sided_pulse(h: int, w: int, transpose: bool) -> torch.Tensor:
    """A pulse on the top half minus one on the bottom half (unit norm); transposed on request."""
    out = torch.cat((pulse(h // 2, w), -pulse(h - h // 2, w))) if h > 1 else pulse(h, w)
    out = out / out.norm()
    return out.t() if transpose and h == w else out


_MEMO_LIMIT = 1 << 24  # entries (bools) of the rejected-proposal table; larger inputs keep only the no-op check


class RejectedProposals:
    """Per sample, the L∞ proposals (window corner and sign pattern, at the current window size)
    already rejected at the sample's current point. The model is deterministic and the acceptance
    rule strict, so such a proposal, or one that changes no pixel, would be rejected again: it
    needs no model query, and skipping it leaves the search unchanged (late in the schedule most
    proposals on a robust point are repeats). A sample forgets its rejections when it moves; all
    are forgotten when the window size changes."""

    def __init__(self, n, c, h, w, device):
        self.size, self.c = None, c
        self.enabled = c <= 4 and n * h * w * 2 ** c <= _MEMO_LIMIT
        self.table = torch.zeros((n, h, w, 2 ** c), dtype=torch.bool, device=device) if self.enabled else None
        self.weights = 2 ** torch.arange(c, device=device)

    def _where(self, key):
        _, vh, vw, low = key
        code = (low.long() * self.weights).sum(1)
        return torch.arange(vh.numel(), device=vh.device), vh, vw, code

    def unknown(self, key, cand, cur):
        """Per sample: the proposal's outcome is not known yet (the model must be asked)."""
        ask = (cand != cur).flatten(1).any(1)
        if not self.enabled:
            return ask
        if key[0] != self.size:
            self.table.zero_()
            self.size = key[0]
        return ask & ~self.table[self._where(key)]

    def record(self, key, accepted):
        if self.enabled:
            self.table[self._where(key)] |= ~accepted
            self.table.masked_fill_(accepted.view(-1, 1, 1, 1), False)

    def keep(self, keep):
        if self.enabled:
            self.table = self.table[keep]


class Square(Attack):
    """Square attack, untargeted (``y`` true labels), ``n_queries`` model queries per sample at most."""

    name = "square"
    fixed_losses = True  # `loss` has no effect: the losses are part of the method
    untargeted_only = True

    def __init__(self, eps: float, norm: str = "linf", n_queries: int = 5000, p_init: float = 0.8,
                 restarts: int = 1, targeted: bool = False, bounds=(0.0, 1.0), seed: int = 0, loss: str = "margin"):
        super().__init__(eps=eps, norm=norm, targeted=targeted, bounds=bounds, seed=seed, loss=loss)
        self.n_queries = _int_at_least_one("attack.n_queries", n_queries)
        self.restarts = _int_at_least_one("attack.restarts", restarts)
        p = _positive_or_none("attack.p_init", p_init)
        if p is None or p > 1:
            raise ConfigError("attack.p_init", f"must be in (0, 1], got {p_init!r}")
        self.p_init = p

    # ---- helpers ------------------------------------------------------------------------------
    def _clip(self, z):
        return z if self.bounds is None else z.clamp_(*self.bounds)

    @staticmethod
    def _margin(model, x, y):
        """(z_y − max_{i≠y} z_i, misclassified) per sample."""
        with torch.no_grad():
            logits, yy = as_logits(model(x), y)
        top, idx = logits.topk(2, dim=1)
        own = logits.gather(1, yy.unsqueeze(1)).squeeze(1)
        first = idx[:, 0] == yy
        return own - torch.where(first, top[:, 1], top[:, 0]), ~first

    def _signs(self, shape, gen, x):
        return torch.randint(0, 2, shape, generator=gen, device=x.device).to(x.dtype).mul_(2).sub_(1)

    def _window_size(self, it: int, h: int, w: int, c: int, odd: bool) -> tuple[int, int]:
        p = window_fraction(self.p_init, it, self.n_queries)
        if h == 1:  # segments of the same fraction of the features
            return 1, max(1, min(w, int(round(p * w))))
        s = max(int(round(math.sqrt(p * h * w))), 3 if odd else 1)
        if odd and s % 2 == 0:
            s += 1
        return min(s, h), min(s, w)

    @staticmethod
    def _corner(n, h, w, sh, sw, gen, device):
        vh = torch.randint(0, h - sh + 1, (n,), generator=gen, device=device)
        vw = torch.randint(0, w - sw + 1, (n,), generator=gen, device=device)
        return vh, vw

    @staticmethod
    def _mask(vh, vw, sh, sw, h, w):
        rows = torch.arange(h, device=vh.device).view(1, -1) - vh.view(-1, 1)
        cols = torch.arange(w, device=vh.device).view(1, -1) - vw.view(-1, 1)
        mr, mc = (rows >= 0) & (rows < sh), (cols >= 0) & (cols < sw)
        return (mr.unsqueeze(2) & mc.unsqueeze(1)).unsqueeze(1)  # (n, 1, h, w)

    @staticmethod
    def _crop(t, vh, vw, sh, sw):
        """The (n, C, sh, sw) windows of ``t`` (n, C, H, W) at per-sample corners."""
        n = t.shape[0]
        rows = vh.view(-1, 1) + torch.arange(sh, device=t.device)
        cols = vw.view(-1, 1) + torch.arange(sw, device=t.device)
        return t[torch.arange(n, device=t.device).view(-1, 1, 1), :, rows.unsqueeze(2), cols.unsqueeze(1)].permute(0, 3, 1, 2)

    @staticmethod
    def _paste(patch, vh, vw, h, w):
        """``patch`` (n, C, sh, sw) placed at per-sample corners of a zero (n, C, H, W) image."""
        n, _, sh, sw = patch.shape
        rows = torch.arange(h, device=patch.device).view(1, -1) - vh.view(-1, 1)
        cols = torch.arange(w, device=patch.device).view(1, -1) - vw.view(-1, 1)
        inside = ((rows >= 0) & (rows < sh)).unsqueeze(2) & ((cols >= 0) & (cols < sw)).unsqueeze(1)
        full = patch[torch.arange(n, device=patch.device).view(-1, 1, 1), :, rows.clamp(0, sh - 1).unsqueeze(2),
                     cols.clamp(0, sw - 1).unsqueeze(1)].permute(0, 3, 1, 2)
        return full * inside.unsqueeze(1).to(patch.dtype)

    # ---- the search ---------------------------------------------------------------------------
    def _perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x4 = x.reshape(shape[0], 1, 1, -1) if x.dim() == 2 else x.unsqueeze(1) if x.dim() == 3 else x
        if x4.dim() != 4:
            raise ValueError(f"Square expects inputs (N, D), (N, H, W) or (N, C, H, W); got {tuple(shape)}")
        fwd = (lambda z: model(z.reshape((z.shape[0],) + shape[1:]))) if x4.shape != shape else model
        out = x4.clone()
        todo = torch.arange(shape[0], device=x.device)
        for _ in range(self.restarts):
            if todo.numel() == 0:
                break
            adv, hit = self._search(fwd, x4.index_select(0, todo), y.index_select(0, todo))
            out[todo[hit]] = adv[hit]
            todo = todo[~hit]
        return out.reshape(shape)

    def _search(self, fwd, x, y):
        """Random search; the samples still running are kept as a compact working set (rebuilt only
        when some of them break) so that a query costs at most one forward pass and few small ops."""
        gen = self.generator(x.device)
        best = self._init_linf(x, gen) if self.norm == "linf" else self._init_l2(x, gen)
        margin, hit = self._margin(fwd, best, y)
        act = (~hit).nonzero().squeeze(1)
        xa, cur, ya, ma = x[act], best[act], y[act], margin[act]
        # L∞ proposals set window pixels to one of the two vertices x ± ε (clipped): computed once
        vert = (self._clip(xa - self.eps), self._clip(xa + self.eps)) if self.norm == "linf" else (xa, xa)
        memo = RejectedProposals(*cur.shape, cur.device) if self.norm == "linf" else None
        for it in range(1, self.n_queries):
            if act.numel() == 0:
                break
            if memo is not None:
                cand, key = self._propose_linf(vert, cur, it, gen)
                ask = memo.unknown(key, cand, cur)
            else:
                cand, ask = self._propose_l2(xa, cur, it, gen), None
            judged = self._judge(fwd, cand, ya, ma, ask)
            if judged is None:  # every proposal is known to be rejected: no query needed
                continue
            better, m_new, hit_new = judged
            if memo is not None:
                memo.record(key, better)
            cur = torch.where(better.view(-1, 1, 1, 1), cand, cur)
            ma = torch.where(better, m_new, ma)
            done = better & hit_new
            if bool(done.any()):
                best[act], hit[act] = cur, done
                keep = ~done
                act, xa, cur, ya, ma = act[keep], xa[keep], cur[keep], ya[keep], ma[keep]
                vert = (vert[0][keep], vert[1][keep])
                if memo is not None:
                    memo.keep(keep)
        best[act] = cur
        return best, hit

    def _judge(self, fwd, cand, y, margin, ask):
        """(accepted, new margin, misclassified) per sample; the model sees only the candidates in
        ``ask`` (all when None), the others keep their margin and are rejected. None: nothing to ask."""
        if ask is None:
            m_new, hit_new = self._margin(fwd, cand, y)
            return m_new < margin, m_new, hit_new
        idx = ask.nonzero().squeeze(1)
        if idx.numel() == 0:
            return None
        if idx.numel() == ask.numel():
            return self._judge(fwd, cand, y, margin, None)
        m_sub, hit_sub = self._margin(fwd, cand.index_select(0, idx), y.index_select(0, idx))
        m_new = margin.index_copy(0, idx, m_sub)
        hit_new = torch.zeros_like(ask).index_copy_(0, idx, hit_sub)
        return m_new < margin, m_new, hit_new

    def _init_linf(self, x, gen):
        n, c, h, w = x.shape
        return self._clip(x + self.eps * self._signs((n, c, 1, w), gen, x))

    def _propose_linf(self, vert, cur, it, gen):
        n, c, h, w = cur.shape
        sh, sw = self._window_size(it, h, w, c, odd=False)
        u = torch.rand((n, 2 + c), generator=gen, device=cur.device)  # one draw: corner and signs
        vh = (u[:, 0] * (h - sh + 1)).long().clamp_(max=h - sh)
        vw = (u[:, 1] * (w - sw + 1)).long().clamp_(max=w - sw)
        low = u[:, 2:] < 0.5
        vertex = torch.where(low.view(n, c, 1, 1), vert[0], vert[1])
        return torch.where(self._mask(vh, vw, sh, sw, h, w), vertex, cur), ((sh, sw), vh, vw, low)

    def _to_eps(self, x, delta):
        """``x + δ·ε/‖δ‖₂`` per sample, clipped to the bounds."""
        dn = torch.linalg.vector_norm(delta.reshape(delta.shape[0], -1), dim=1).clamp_min(1e-12)
        return self._clip(x + delta * (self.eps / dn).view(-1, 1, 1, 1))

    def _init_l2(self, x, gen):
        n, c, h, w = x.shape
        s = max(h // 5, 1) if h > 1 else max(w // 25, 1)
        sh, sw = (s, s) if h > 1 else (1, s)
        delta = torch.zeros_like(x)
        p = two_sided_pulse(sh, sw, False).to(x)
        r0 = (h - sh * (h // sh)) // 2
        c0 = (w - sw * (w // sw)) // 2
        for r in range(r0, h - sh + 1, sh):
            for col in range(c0, w - sw + 1, sw):
                delta[:, :, r:r + sh, col:col + sw] += p * self._signs((n, c, 1, 1), gen, x)
        return self._to_eps(x, delta)

    def _propose_l2(self, x, cur, it, gen):
        n, c, h, w = x.shape
        sh, sw = self._window_size(it, h, w, c, odd=True)
        vh, vw = self._corner(n, h, w, sh, sw, gen, x.device)
        vh2, vw2 = self._corner(n, h, w, sh, sw, gen, x.device)
        delta = cur - x
        m1, m2 = self._mask(vh, vw, sh, sw, h, w), self._mask(vh2, vw2, sh, sw, h, w)
        norm_img = torch.linalg.vector_norm(delta.reshape(n, -1), dim=1).view(n, 1)
        norm_union = torch.linalg.vector_norm((delta * (m1 | m2)).reshape(n, c, -1), dim=2)  # (n, c)
        old = self._crop(delta, vh, vw, sh, sw)
        old = old / torch.linalg.vector_norm(old.reshape(n, c, -1), dim=2).clamp_min(1e-12).view(n, c, 1, 1)
        transpose = bool(torch.randint(0, 2, (1,), generator=gen, device=x.device))
        new = two_sided_pulse(sh, sw, transpose).to(x) * self._signs((n, c, 1, 1), gen, x) + old
        # the window takes the mass of both windows plus whatever is left of the ε budget
        target = ((self.eps ** 2 - norm_img ** 2).clamp_min(0) / c + norm_union ** 2).sqrt()
        new = new * (target / torch.linalg.vector_norm(new.reshape(n, c, -1), dim=2).clamp_min(1e-12)).view(n, c, 1, 1)
        delta = torch.where(m2, torch.zeros_like(delta), delta)
        delta = torch.where(m1, self._paste(new, vh, vw, h, w), delta)
        return self._to_eps(x, delta)
