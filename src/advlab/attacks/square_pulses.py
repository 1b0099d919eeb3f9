"""Square attack, L2 and L1 threat models: perturbations built from "pulses" on square windows.

A pulse is a peaked profile (rings of Chebyshev radius k around the centre weigh Σ_{j ≥ k} 1/(j+1)²
for L2, 1/(j+1)⁴ for L1), positive on the top half of the window and negative on the bottom half,
of unit L2 (resp. L1) norm, transposed with probability 1/2. The search starts from a 5 × 5 grid of
pulses with a random sign per sample, block and channel; a proposal moves the perturbation mass of
a second window into a first one, adds a new pulse there and rescales it so that the image keeps
the whole ε budget. L2 ends with a rescaling to ‖δ‖₂ = ε and the box, L1 with the projection onto
the L1 ball ∩ box (radius ε(1 − 10⁻⁶)).

Matched to pyautoattack ``square.py`` (``SquareAttack``): ``eta_rectangles`` / ``eta`` (``pulse`` /
``profile``), the L2 and L1 branches of ``attack_single_run`` (``init_pulses``, ``propose_pulses``),
``normalize`` / ``lp_norm``, and ``autopgd_base.L1_projection`` (``advlab.attacks.l1_ball``), in the
reference's order of operations and float32 pulses. The random draws are arguments, so the moves
can be replayed from the reference's draws.
"""
from __future__ import annotations

import functools

import torch

from advlab.attacks.l1_ball import l1_box_correction
from advlab.attacks.square_windows import crop, paste, window_mask

_POWER = {"l2": 2, "l1": 4}
L1_SHRINK = 1.0 - 1e-6  # the reference projects onto the L1 ball of radius ε(1 − 10⁻⁶)


def _unit(t: torch.Tensor, norm: str) -> torch.Tensor:
    if norm == "l2":
        return t / (t ** 2).sum(dim=(0, 1), keepdim=True).sqrt()
    return t / t.abs().sum()


@functools.lru_cache(maxsize=128)
def pulse(h: int, w: int, norm: str) -> torch.Tensor:
    """The reference's ``eta_rectangles(h, w)`` (float32, unit norm; never modify the result)."""
    out = torch.zeros(h, w)
    if h == 0 or w == 0:
        return out
    ring = torch.maximum((torch.arange(h) - h // 2).abs().view(-1, 1), (torch.arange(w) - w // 2).abs().view(1, -1))
    for k in range(max(h // 2, w // 2) + 1):
        # rectangle k gets 1/(k+1)^power, accumulated in increasing k as the reference does
        out += (ring <= k) * (1.0 / torch.tensor([k + 1.0]) ** _POWER[norm])
    return _unit(out, norm)


@functools.lru_cache(maxsize=128)
def profile(sh: int, sw: int, norm: str) -> torch.Tensor:
    """The reference's ``eta(s)`` before its random transpose: a pulse on the top half minus one on
    the bottom half, unit norm (float32; never modify the result). Segments (``sh != sw``, advlab's
    (N, D) inputs) get one pulse."""
    if sh != sw:
        return pulse(sh, sw, norm)
    s = sh
    return _unit(torch.cat((pulse(s // 2, s, norm), -1.0 * pulse(s - s // 2, s, norm))), norm)


def _oriented(size, norm, flips: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(n, 1, sh, sw): the profile per sample, transposed where ``flips`` (square windows only)."""
    p = profile(*size, norm).to(like)
    if size[0] != size[1]:
        return p.expand(flips.shape[0], 1, *size)
    return torch.where(flips.view(-1, 1, 1, 1), p.t(), p)


def grid(h: int, w: int):
    """The initial grid: block size and the corners of the reference's blocks, row by row.

    The reference: side ``s = h // 5``, first corner ``(h − 5s) // 2`` on both axes, ``h // s`` rows
    and ``w // s`` columns of blocks. Blocks that do not fit inside the image are listed (they take
    random draws in the reference too) and skipped by ``grid_perturbation``; images of fewer than 5
    rows use s = 1, one-row images segments of ``w // 25`` features."""
    if h == 1:
        bw = max(w // 25, 1)
        start = (w - bw * (w // bw)) // 2
        return (1, bw), [(0, start + k * bw) for k in range(w // bw)]
    s = max(h // 5, 1)
    start = max((h - 5 * s) // 2, 0)
    return (s, s), [(start + i * s, start + j * s) for i in range(h // s) for j in range(w // s)]


def grid_perturbation(x: torch.Tensor, norm: str, flips: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """The initial δ (before scaling): block b gets the (transposed where ``flips[b]``) profile times
    ``signs[b]`` (n, c) per sample and channel. ``flips`` (B, n) bool, ``signs`` (B, n, c)."""
    n, c, h, w = x.shape
    (bh, bw), corners = grid(h, w)
    delta = torch.zeros_like(x)
    for b, (r, col) in enumerate(corners):
        if r + bh <= h and col + bw <= w:
            block = _oriented((bh, bw), norm, flips[b], x) * signs[b].view(n, c, 1, 1).to(x)
            delta[:, :, r:r + bh, col:col + bw] += block
    return delta


def finish(x: torch.Tensor, delta: torch.Tensor, eps: float, norm: str, bounds) -> torch.Tensor:
    """The point a direction δ gives: L2 ``x + ε·δ/(‖δ‖₂ + 10⁻¹²)`` clipped to the box (the
    reference's ``normalize``); L1 ``x + δ`` projected onto the L1 ball ∩ box."""
    if norm == "l1":
        return x + delta + l1_box_correction(x, delta, eps * L1_SHRINK, bounds).to(x.dtype)
    size = (delta ** 2).reshape(delta.shape[0], -1).sum(-1).sqrt().view(-1, *[1] * (delta.dim() - 1))
    z = x + delta / (size + 1e-12) * eps
    return z if bounds is None else z.clamp(*bounds)


def init_pulses(x, eps, norm, bounds, flips, signs):
    """The starting point: the grid of pulses, scaled (L2) or projected (L1) onto the ε-ball."""
    return finish(x, grid_perturbation(x, norm, flips, signs), eps, norm, bounds)


def _budget(delta, union, eps_t, c: int, norm: str):
    """(norm of the image's δ, per (n, c) norm of δ on the union of both windows) in ``norm``."""
    n = delta.shape[0]
    if norm == "l2":
        image = (delta ** 2).reshape(n, -1).sum(-1).sqrt().view(n, 1, 1, 1)
        windows = ((delta * union) ** 2).sum(dim=(-2, -1), keepdim=True).sqrt()
        return (torch.clamp_min(eps_t ** 2 - image ** 2, 0) / c + windows ** 2).sqrt()
    image = delta.abs().reshape(n, -1).sum(-1).view(n, 1, 1, 1)
    windows = (delta * union).abs().sum(dim=(-2, -1), keepdim=True)
    return torch.clamp_min(eps_t - image, 0) / c + windows  # the reference then multiplies the window by c


def _window_norm(t: torch.Tensor, norm: str) -> torch.Tensor:
    if norm == "l2":
        return (t ** 2).sum(dim=(-2, -1), keepdim=True).sqrt()
    return t.abs().sum(dim=(-2, -1), keepdim=True)


def propose_pulses(x, cur, eps, norm, bounds, size, first, second, flips, signs):
    """One proposal per sample (the reference's L2 / L1 step). ``first`` / ``second``: (rows, cols)
    corners of the window that gets the pulse and of the window whose mass moves into it; ``flips``
    (n,) bool transposes the pulse; ``signs`` (n, c) its sign per channel."""
    n, c, h, w = x.shape
    delta = cur - x
    m1, m2 = window_mask(*first, size, h, w), window_mask(*second, size, h, w)
    union = (m1 | m2).to(x.dtype)
    old = crop(delta, *first, size)
    eps_t = torch.tensor(eps, dtype=x.dtype, device=x.device)  # the reference's ε·ones_like(·), in x's dtype
    target = _budget(delta, union, eps_t, c, norm)
    new = _oriented(size, norm, flips, x) * signs.view(n, c, 1, 1).to(x) + old / (1e-12 + _window_norm(old, norm))
    new = new.contiguous()  # the reference's layout: its sums over the window add in the same order
    new = new / (1e-12 + _window_norm(new, norm)) * target
    if norm == "l1":
        new = new * c  # (δ / ‖δ‖₁ · (slack / c + mass)) · c, in the reference's order
    delta = torch.where(m2, torch.zeros_like(delta), delta)
    delta = torch.where(m1, paste(new, *first, h, w), delta)
    return finish(x, delta, eps, norm, bounds)
