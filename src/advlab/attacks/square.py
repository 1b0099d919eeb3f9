"""Square attack (Andriushchenko et al., ECCV 2020): score-based black-box random search, L∞, L2, L1.

No gradients: the model is only queried for its logits, so masked or vanishing gradients do not
hide adversarial points from it (AutoAttack's sanity check). Each query proposes a change inside a
random square window and keeps it when the margin z_y − max_{i≠y} z_i decreases; a sample stops
once its margin is ≤ 0. The window covers the fraction ``p`` of the image, ``p_init`` (0.8 in
AutoAttack) halved on a fixed schedule of the iteration (``square_windows``).

* L∞: start from vertical stripes ``x ± ε`` (per sample, channel and column); a proposal sets the
  window to ``x ± ε`` with one random sign per channel.
* L2 / L1: start from a grid of ±pulses; a proposal moves the mass of a second window into the
  first and adds a new pulse there (``square_pulses``).

Inputs of any shape are viewed as images ``(N, C, H, W)``: 2-D ``(N, D)`` as ``(N, 1, 1, D)`` (the
windows are then segments), 3-D ``(N, H, W)`` as one channel.
"""
from __future__ import annotations

import torch
from torch import nn

from advlab.attacks.base import Attack, as_logits
from advlab.attacks.pgd import _int_at_least_one, _positive_or_none
from advlab.attacks.square_pulses import grid, init_pulses, propose_pulses
from advlab.attacks.square_windows import draw_corners, window_fraction, window_mask, window_side
from advlab.errors import ConfigError

__all__ = ["RejectedProposals", "Square", "window_fraction", "window_side"]

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
    """Square attack, untargeted (``y`` true labels): the AutoAttack authors' ``SquareAttack``
    (pyautoattack ``square.py``) with the margin loss, as AutoAttack runs it.

    Equal to the reference (bit for bit when given the reference's random draws:
    tests/test_square_reference.py replays them): the schedule of ``p`` (``p_selection``; ``rescale_schedule`` is its
    ``resc_schedule``, off as in AutoAttack) and the window side per iteration; the initial points
    (stripes for L∞, the pulse grid for L2 / L1); the proposals (L∞ windows set to ``x ± ε`` with one
    sign per channel, corners in 0 … h − s − 1 as the reference's ``random_int``; the L2 / L1 moves
    and L1 projection); acceptance when the margin strictly decreases; a sample stops at margin ≤ 0;
    only the clean-correct points are attacked, and a point counts as broken (and is returned) when
    the model misclassifies it at the end of a restart, the others are returned unchanged. Queries:
    the initial point plus up to ``n_queries`` proposals per sample and restart (iterations
    0 … n_queries − 1 of the schedule), as the reference.

    Chosen differently on purpose:

    * Random draws per sample: the reference draws one window (and, for L∞, one sign pattern; for
      L2 / L1, one pulse orientation) per iteration for the whole batch. Each sample's sequence of
      proposals has the same law either way; per-sample draws make samples independent (a sample's
      result does not depend on the rest of its batch, robust accuracy has a lower variance) and use
      the attack's own generator (``reset_rng`` / ``seed``), never the global RNG.
    * L∞ proposals known to be rejected (no pixel changes, or the sample already rejected the same
      window and signs at its current point) are not sent to the model (``RejectedProposals``): the
      draws, the accepted points and the stops are those of asking the model every time.
    * Signs are ±1 (the reference's ``sign(2U − 1)`` is 0 with probability 2⁻²⁴).
    * L1 points are clipped to the box when returned (the reference's ``x + δ + r`` may exceed it by
      a rounding error); the search itself is the reference's.
    * Shapes the reference does not take: (N, D) and (N, H, W) inputs, images of fewer than 5 rows
      (see ``square_pulses.grid``), non-image bounds (``bounds=None``: no box).
    """

    name = "square"
    norms = ("linf", "l2", "l1")
    fixed_losses = True  # `loss` has no effect: the margin loss is part of the method
    untargeted_only = True

    def __init__(self, eps: float, norm: str = "linf", n_queries: int = 5000, p_init: float = 0.8,
                 restarts: int = 1, targeted: bool = False, bounds=(0.0, 1.0), seed: int = 0, loss: str = "margin",
                 rescale_schedule: bool = False):
        super().__init__(eps=eps, norm=norm, targeted=targeted, bounds=bounds, seed=seed, loss=loss)
        self.n_queries = _int_at_least_one("n_queries", n_queries)
        self.restarts = _int_at_least_one("restarts", restarts)
        p = _positive_or_none("p_init", p_init)
        if p is None or p > 1:
            raise ConfigError("p_init", f"must be in (0, 1], got {p_init!r}")
        self.p_init = p
        if not isinstance(rescale_schedule, bool):
            raise ConfigError("rescale_schedule", f"must be a boolean, got {rescale_schedule!r}; "
                                                         "allowed: true, false")
        self.rescale_schedule = rescale_schedule

    # ---- the draws of the search (one method per kind: tests replay the reference's draws) --------
    @staticmethod
    def _signs(shape, gen, device, dtype):
        return torch.randint(0, 2, shape, generator=gen, device=device).to(dtype).mul_(2).sub_(1)

    def _draw_stripes(self, shape, gen, x):
        """L∞ start: a sign per sample, channel and column, shape (n, c, 1, w)."""
        return self._signs(shape, gen, x.device, x.dtype)

    def _draw_grid(self, n_blocks, n, c, gen, x):
        """L2 / L1 start: per block, a transpose flag (B, n) and signs (B, n, c)."""
        flips = torch.rand((n_blocks, n), generator=gen, device=x.device) < 0.5
        return flips, self._signs((n_blocks, n, c), gen, x.device, x.dtype)

    def _draw_linf(self, n, c, h, w, size, gen, x):
        """L∞ proposal: corner (vh, vw) and the channels set to x − ε (``low``, (n, c)), one draw."""
        u = torch.rand((n, 2 + c), generator=gen, device=x.device)
        rows, cols = max(h - size[0], 1), max(w - size[1], 1)  # corners 0 … h − s − 1, as the reference
        vh = (u[:, 0] * rows).long().clamp_(max=rows - 1)
        vw = (u[:, 1] * cols).long().clamp_(max=cols - 1)
        return vh, vw, u[:, 2:] < 0.5

    def _draw_pulse_move(self, n, c, h, w, size, gen, x):
        """L2 / L1 proposal: the two windows' corners, a transpose flag (n,) and signs (n, c)."""
        first = draw_corners(n, h, w, size, gen, x.device)
        second = draw_corners(n, h, w, size, gen, x.device)
        flips = torch.rand((n,), generator=gen, device=x.device) < 0.5
        return first, second, flips, self._signs((n, c), gen, x.device, x.dtype)

    # ---- the search ---------------------------------------------------------------------------
    @staticmethod
    def _margin(model, x, y):
        """z_y − max_{i≠y} z_i per sample (the reference's margin loss)."""
        with torch.no_grad():
            logits, yy = as_logits(model(x), y)
        own = logits.gather(1, yy.unsqueeze(1)).squeeze(1)
        return own - logits.scatter(1, yy.unsqueeze(1), float("-inf")).amax(dim=1)

    @staticmethod
    def _correct(model, x, y):
        with torch.no_grad():
            logits, yy = as_logits(model(x), y)
        return logits.argmax(dim=1) == yy

    def _clip(self, z):
        return z if self.bounds is None else z.clamp_(*self.bounds)

    def _perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x4 = x.reshape(shape[0], 1, 1, -1) if x.dim() == 2 else x.unsqueeze(1) if x.dim() == 3 else x
        if x4.dim() != 4:
            raise ValueError(f"Square expects inputs (N, D), (N, H, W) or (N, C, H, W); got {tuple(shape)}")
        fwd = (lambda z: model(z.reshape((z.shape[0],) + shape[1:]))) if x4.shape != shape else model
        out = x4.clone()
        todo = self._correct(fwd, x4, y).nonzero().squeeze(1)  # the reference attacks clean-correct points only
        for _ in range(self.restarts):
            if todo.numel() == 0:
                break
            adv = self._search(fwd, x4.index_select(0, todo), y.index_select(0, todo))
            hit = ~self._correct(fwd, adv, y.index_select(0, todo))
            out[todo[hit]] = adv[hit]
            todo = todo[~hit]
        return out.reshape(shape)

    def _start(self, x, gen):
        n, c, h, w = x.shape
        if self.norm == "linf":
            return self._clip(x + self.eps * self._draw_stripes((n, c, 1, w), gen, x))
        flips, signs = self._draw_grid(len(grid(h, w)[1]), n, c, gen, x)
        return init_pulses(x, self.eps, self.norm, self.bounds, flips, signs)

    def _search(self, fwd, x, y):
        """Random search from the initial point; the samples still running (margin > 0) are kept as
        a compact working set, rebuilt only when some of them stop."""
        gen = self.generator(x.device)
        n, c, h, w = x.shape
        best = self._start(x, gen)
        margin = self._margin(fwd, best, y)
        act = (margin > 0).nonzero().squeeze(1)
        xa, cur, ya, ma = x[act], best[act], y[act], margin[act]
        linf = self.norm == "linf"
        # L∞ proposals move window pixels to the faces x ± ε of the ε-box: computed once
        vert = (xa - self.eps, xa + self.eps) if linf else None
        memo = RejectedProposals(*cur.shape, cur.device) if linf else None
        for it in range(self.n_queries):
            if act.numel() == 0:
                break
            p = window_fraction(self.p_init, it, self.n_queries, self.rescale_schedule)
            size = window_side(p, c, h, w, odd=not linf)
            if linf:
                key = (size,) + self._draw_linf(act.numel(), c, h, w, size, gen, xa)
                cand = self._propose_linf(vert, cur, key, self.eps, self._clip)
                ask = memo.unknown(key, cand, cur)
            else:
                draws = self._draw_pulse_move(act.numel(), c, h, w, size, gen, xa)
                cand, ask = propose_pulses(xa, cur, self.eps, self.norm, self.bounds, size, *draws), None
            judged = self._judge(fwd, cand, ya, ma, ask)
            if judged is None:  # every proposal is known to be rejected: no query needed
                continue
            better, m_new = judged
            if memo is not None:
                memo.record(key, better)
            cur = torch.where(better.view(-1, 1, 1, 1), cand, cur)
            ma = torch.where(better, m_new, ma)
            done = better & (m_new <= 0)
            if bool(done.any()):
                best[act] = cur
                keep = ~done
                act, xa, cur, ya, ma = act[keep], xa[keep], cur[keep], ya[keep], ma[keep]
                if linf:
                    vert = (vert[0][keep], vert[1][keep])
                    memo.keep(keep)
        best[act] = cur
        # L1: x + δ + r can leave the box by a rounding error (the reference returns it as it is)
        return self._clip(best) if self.norm == "l1" else best

    def _judge(self, fwd, cand, y, margin, ask):
        """(accepted, new margin) per sample: accepted when the margin strictly decreases (the
        reference's ``loss < loss_min``; its ``margin ≤ 0`` clause is implied for running samples).
        The model sees only the candidates in ``ask`` (all when None); the others keep their margin
        and are rejected. None: nothing to ask."""
        if ask is None:
            m_new = self._margin(fwd, cand, y)
            return m_new < margin, m_new
        idx = ask.nonzero().squeeze(1)
        if idx.numel() == 0:
            return None
        if idx.numel() == ask.numel():
            return self._judge(fwd, cand, y, margin, None)
        m_new = margin.index_copy(0, idx, self._margin(fwd, cand.index_select(0, idx), y.index_select(0, idx)))
        return m_new < margin, m_new

    @staticmethod
    def _propose_linf(vert, cur, key, eps, clip):
        """The window of ``key`` (size, vh, vw, low) moved by −2ε on the ``low`` channels, +2ε on the
        others, projected onto [x − ε, x + ε] (``vert``) and the box: x ± ε, computed in the
        reference's order (``x_best + 2ε·sign``, ``max``, ``min``, ``clamp``) so that the points are
        the reference's bit for bit. The rest of ``cur`` is unchanged (the projection keeps it)."""
        (sh, sw), vh, vw, low = key
        n, c, h, w = cur.shape
        step = torch.where(low.view(n, c, 1, 1), -1.0, 1.0).to(cur.dtype) * (2.0 * eps)
        moved = clip(torch.minimum(torch.maximum(cur + step, vert[0]), vert[1]))
        return torch.where(window_mask(vh, vw, (sh, sw), h, w), moved, cur)
