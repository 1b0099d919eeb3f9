"""Square attack: where a proposal may change pixels (the window schedule and the window geometry).

Matched to the AutoAttack authors' Square (pyautoattack ``square.py``, ``SquareAttack``): the
schedule of ``p`` is ``p_selection`` and the window side is computed from ``p`` as in
``attack_single_run``. Windows are drawn per sample here (the reference draws one window per batch;
each sample's sequence of proposals has the same law either way).
"""
from __future__ import annotations

import math

import torch

# (last query of the stage, divisor of p_init): the reference's p_selection for a 10,000-query schedule
_SCHEDULE = ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128), (8000, 256))


def window_fraction(p_init: float, it: int, n_queries: int, rescale: bool = False) -> float:
    """The fraction ``p`` of the image a window covers at iteration ``it`` (0-based): the reference's
    ``p_selection``. ``rescale`` (the reference's ``resc_schedule``) maps ``it`` onto the
    10,000-query schedule first; AutoAttack runs Square without it."""
    if rescale:
        it = int(it / n_queries * 10000)
    for last, div in _SCHEDULE:
        if it <= last:
            return p_init / div
    return p_init / 512


def window_side(p: float, c: int, h: int, w: int, odd: bool) -> tuple[int, int]:
    """(rows, columns) of the window covering the fraction ``p`` of an image (c, h, w).

    As the reference: ``s = round(sqrt(p · n_features / c))``, at least 1 (L∞) or, for the L2 / L1
    pulses (``odd``), at least 3 and odd; then at most ``min(h, w)``. Images of one row (advlab's
    view of (N, D) inputs, which the reference does not take) get segments of ``p · w`` features."""
    if h == 1:
        return 1, max(1, min(w, int(round(p * w))))
    s = max(int(round(math.sqrt(p * (c * h * w) / c))), 3 if odd else 1)
    if odd and s % 2 == 0:
        s += 1
    s = min(s, min(h, w))
    return s, s


def draw_corners(n: int, h: int, w: int, size: tuple[int, int], gen: torch.Generator, device):
    """Per sample, the top-left corner of a window of ``size``. The reference's ``random_int(0, h - s)``
    is ``floor(U · (h − s))``: rows 0 … h − s − 1 (the last row is never the window's first; 0 when
    s = h). Same range here."""
    sh, sw = size
    vh = torch.randint(0, max(h - sh, 1), (n,), generator=gen, device=device)
    vw = torch.randint(0, max(w - sw, 1), (n,), generator=gen, device=device)
    return vh, vw


def window_mask(vh: torch.Tensor, vw: torch.Tensor, size: tuple[int, int], h: int, w: int) -> torch.Tensor:
    """(n, 1, h, w) bool: the window of ``size`` at each sample's corner."""
    sh, sw = size
    rows = torch.arange(h, device=vh.device).view(1, -1) - vh.view(-1, 1)
    cols = torch.arange(w, device=vh.device).view(1, -1) - vw.view(-1, 1)
    mr, mc = (rows >= 0) & (rows < sh), (cols >= 0) & (cols < sw)
    return (mr.unsqueeze(2) & mc.unsqueeze(1)).unsqueeze(1)


def crop(t: torch.Tensor, vh: torch.Tensor, vw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The (n, C, sh, sw) windows of ``t`` (n, C, H, W) at per-sample corners, as a view with the
    strides of a slice ``t[:, :, vh:vh + sh, vw:vw + sw]`` (of a copy of ``t`` shifted per sample):
    reductions over the window then add in the reference's order, bit for bit."""
    n, _, h, w = t.shape
    rows = (vh.view(-1, 1) + torch.arange(h, device=t.device)).remainder(h)
    cols = (vw.view(-1, 1) + torch.arange(w, device=t.device)).remainder(w)
    shifted = t[torch.arange(n, device=t.device).view(-1, 1, 1), :, rows.unsqueeze(2), cols.unsqueeze(1)]
    return shifted.permute(0, 3, 1, 2).contiguous()[..., :size[0], :size[1]]


def paste(patch: torch.Tensor, vh: torch.Tensor, vw: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``patch`` (n, C, sh, sw) placed at per-sample corners of a zero (n, C, h, w) image."""
    n, _, sh, sw = patch.shape
    rows = torch.arange(h, device=patch.device).view(1, -1) - vh.view(-1, 1)
    cols = torch.arange(w, device=patch.device).view(1, -1) - vw.view(-1, 1)
    inside = ((rows >= 0) & (rows < sh)).unsqueeze(2) & ((cols >= 0) & (cols < sw)).unsqueeze(1)
    full = patch[torch.arange(n, device=patch.device).view(-1, 1, 1), :, rows.clamp(0, sh - 1).unsqueeze(2),
                 cols.clamp(0, sw - 1).unsqueeze(1)].permute(0, 3, 1, 2)
    return full * inside.unsqueeze(1).to(patch.dtype)
