"""Minimal adversarial perturbations with DeepFool, and the robustness summary of Paknezhad et al.:
ρ = mean over samples of ‖r‖ / ‖x‖ (the fraction of the input's size the attack needs), with the
fraction of samples whose decision DeepFool managed to change."""
from __future__ import annotations

import math

import torch
from torch import nn
from advlab.utils.progress import progress_bar

from advlab.attacks import DeepFool


def deepfool_summary(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: DeepFool, *, batch_size: int = 256,
                     device=None, progress: bool = True, desc: str = "") -> dict:
    """Run ``attack`` on (x, y) and summarise in its norm.

    ``y``: the label to move away from (the model's predictions measure the distance to its own
    decision boundary). Returns per-sample tensors ``r`` (‖r‖ in the attack's norm), ``x_norm``
    (‖x‖ in the same norm) and ``success``, and the scalars ``rho`` (mean ‖r‖/‖x‖ over the successful
    samples), ``success_rate``, ``r_mean`` and ``r_median`` (over the successful samples).
    """
    if device is None:
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    rs, succ = [], []
    for i in progress_bar(range(0, len(x), batch_size), desc=f"DeepFool {attack.norm} {desc}".strip(), disable=not progress, leave=False):
        res = attack.run(model, x[i:i + batch_size].to(device), y[i:i + batch_size].to(device))
        rs.append((res.l2 if attack.norm == "l2" else res.linf).cpu())
        succ.append(res.success.cpu())
    r, success = torch.cat(rs), torch.cat(succ)
    flat = x.flatten(1)
    x_norm = torch.linalg.vector_norm(flat, dim=1) if attack.norm == "l2" else flat.abs().amax(dim=1)
    ok = success & (x_norm > 0)
    ratio = r[ok] / x_norm[ok]
    good = r[success]
    return {
        "norm": attack.norm, "r": r, "x_norm": x_norm, "success": success,
        "rho": float(ratio.mean()) if ratio.numel() else math.nan,
        "success_rate": float(success.float().mean()) if len(success) else math.nan,
        "r_mean": float(good.mean()) if good.numel() else math.nan,
        "r_median": float(good.median()) if good.numel() else math.nan,
    }
