"""Representation inversion: the construction of Ilyas et al.'s robust / non-robust datasets.

For each target image x, start from another random training image x0 and minimise the normalised
distance ‖g(x_r) − g(x)‖₂ / ‖g(x)‖₂ between penultimate-layer representations g of a given model,
with normalised-gradient steps and no ε bound (only the pixel box). With an adversarially trained
model the result keeps only the features that model uses, the robust ones (D_R); with a standard
model, the non-robust ones too (D_NR). RECIPES.md §4.
"""
from __future__ import annotations

import torch
from advlab.utils.progress import progress_bar

from advlab.attacks.base import eval_mode


def other_indices(n: int, generator: torch.Generator) -> torch.Tensor:
    """A random index j(i) != i for every i (a random permutation with its fixed points moved on):
    each image starts from another image."""
    if n < 2:
        raise ValueError("need at least two images to start each inversion from another one")
    perm = torch.randperm(n, generator=generator)
    for i in (perm == torch.arange(n)).nonzero().squeeze(1).tolist():
        if perm[i] == i:  # (an earlier swap may have moved it already) swap with the next position:
            j = (i + 1) % n  # position i gets perm[j] != i, position j gets i != j: no new fixed point
            perm[i], perm[j] = perm[j].clone(), perm[i].clone()
    return perm


def representation_distance(model, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per sample ‖g(x) − target‖₂ / ‖target‖₂ with g = model.representation."""
    rep = model.representation(x).flatten(1)
    target = target.flatten(1)
    return (rep - target).norm(dim=1) / target.norm(dim=1).clamp_min(1e-12)


def invert_batch(model, x_target: torch.Tensor, x_start: torch.Tensor, steps: int, step_size: float,
                 bounds=(0.0, 1.0), progress=None, keep: str = "best") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Minimise the representation distance to g(x_target) from x_start with `steps` normalised
    gradient steps of L2 size `step_size`, clipped to `bounds`. Returns (the iterate kept per sample,
    initial distance, its distance); `keep`: "best" (the lowest distance met) or "last" (the final
    iterate, as the robustness library's `use_best=False` that Ilyas et al.'s D_R code passes)."""
    view = (-1,) + (1,) * (x_start.dim() - 1)
    with eval_mode(model), torch.enable_grad():
        with torch.no_grad():
            target = model.representation(x_target).detach()
        x = x_start.detach().clone()
        best_x, best = x.clone(), None
        initial = None
        for step in range(steps + 1):  # the last pass only scores the final iterate
            x.requires_grad_(True)
            dist = representation_distance(model, x, target)
            if initial is None:
                initial, best = dist.detach().clone(), dist.detach().clone()
            improved = (dist.detach() < best) if keep == "best" else torch.full_like(best, step == steps, dtype=torch.bool)
            best = torch.where(improved, dist.detach(), best)
            best_x[improved] = x.detach()[improved]
            if step == steps:
                break
            (g,) = torch.autograd.grad(dist.sum(), x)
            norm = g.flatten(1).norm(dim=1).clamp_min(1e-12).view(view)
            x = x.detach() - step_size * g / norm
            if bounds is not None:
                x.clamp_(bounds[0], bounds[1])
            if progress is not None:
                progress.update(1)
    return best_x.detach(), initial, best


def invert_representations(model, x_target: torch.Tensor, x_start: torch.Tensor, *, steps: int = 1000, step_size: float = 0.1,
                           bounds=(0.0, 1.0), batch_size: int = 512, device="cpu", progress: bool = True) -> dict:
    """Batched `invert_batch` over a dataset (tensors on the CPU; work on `device`).

    Returns {"x": constructed images, "distance_initial": per-sample distance at the start,
    "distance_final": per-sample distance reached}.
    """
    model = model.to(device)
    out = torch.empty_like(x_start)
    initial = torch.empty(len(x_start))
    final = torch.empty(len(x_start))
    n_batches = (len(x_start) + batch_size - 1) // batch_size
    with progress_bar(total=steps * n_batches, desc="Inverting representations", disable=not progress) as bar:
        for i in range(0, len(x_start), batch_size):
            xb, d0, d1 = invert_batch(model, x_target[i : i + batch_size].to(device), x_start[i : i + batch_size].to(device),
                                      steps, step_size, bounds, progress=bar)
            out[i : i + batch_size] = xb.cpu()
            initial[i : i + batch_size] = d0.cpu()
            final[i : i + batch_size] = d1.cpu()
    return {"x": out, "distance_initial": initial, "distance_final": final}
