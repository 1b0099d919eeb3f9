"""Goodfellow et al. (2015): networks are nearly linear along the adversarial direction. The logits
of x + ε·sign(∇x L(x, y)) are traced for ε from −ε_max to ε_max (unclipped: the function along a
straight line) and fitted with straight lines; R² (pooled over the classes of a sample) says how
straight they are: 1 for an affine model, and close to 1 for ReLU networks in the paper's plots."""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from advlab.analysis.protocol import Analysis, Points, safe_name, stat, write_csv
from advlab.attacks import FGSM


def fgsm_direction(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "ce") -> torch.Tensor:
    """sign(∇x L(x, y)): one unclipped FGSM step of size 1 from x."""
    return FGSM(eps=1.0, bounds=None, loss=loss)(model, x, y) - x


@torch.no_grad()
def logits_along(model: nn.Module, x: torch.Tensor, direction: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Logits of x + ε·direction for every ε: shape (N, len(eps), C)."""
    was_training = model.training
    model.eval()
    try:
        n, p = len(x), len(eps)
        view = (1, p) + (1,) * (x.dim() - 1)
        points = x.unsqueeze(1) + eps.to(x).view(view) * direction.unsqueeze(1)
        out = model(points.reshape((n * p,) + tuple(x.shape[1:])))
    finally:
        model.train(was_training)
    return out.reshape(n, p, -1)


def linearity_r2(eps: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Per-sample R² of straight-line fits of every class's logit against ε, pooled over classes:
    1 − Σ residual² / Σ (logit − its mean)². NaN where the logits do not vary at all."""
    e = (eps - eps.mean()).to(logits).view(1, -1, 1)
    z = logits - logits.mean(dim=1, keepdim=True)
    slope = (e * z).sum(dim=1, keepdim=True) / (e * e).sum()
    ss_res = (z - slope * e).pow(2).sum(dim=(1, 2))
    ss_tot = z.pow(2).sum(dim=(1, 2))
    return torch.where(ss_tot > 0, 1 - ss_res / ss_tot.clamp_min(1e-30), torch.full_like(ss_tot, float("nan")))


def linearity(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps_max: float, points: int = 41, loss: str = "ce",
              batch_size: int = 128, device=None) -> dict:
    """Logits along each sample's FGSM direction and their straightness.

    Returns ``eps`` (points,), ``logits`` (N, points, C), per-sample ``r2`` and ``zero_direction``
    (samples whose loss gradient vanished, e.g. a saturated softmax: no direction, R² NaN)."""
    if device is None:
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    eps = torch.linspace(-float(eps_max), float(eps_max), int(points))
    logits, zero = [], []
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
        d = fgsm_direction(model, xb, yb, loss)
        zero.append((d.flatten(1).abs().amax(dim=1) == 0).cpu())
        logits.append(logits_along(model, xb, d, eps).cpu())
    logits = torch.cat(logits)
    return {"eps": eps, "logits": logits, "r2": linearity_r2(eps, logits), "zero_direction": torch.cat(zero)}


SCALARS = ("r2_mean", "r2_median", "r2_min", "zero_direction")


class Linearity(Analysis):
    """advlab-eval's `linearity` analysis (conf/analysis/linearity.yaml): R² of the logits along the FGSM
    direction on the first `n` points; the plot shows the first `examples` of each model's first member."""

    key = "linearity"

    def __init__(self, eps_max: float, points: int, n: int, examples: int, loss: str = "ce", bounds=None):
        from advlab.attack_losses import LOSSES
        from advlab.errors import ConfigError
        from advlab.errors import check_number

        if loss not in LOSSES:
            raise ConfigError("loss", f"unknown value {loss!r}; allowed: {', '.join(LOSSES)}")
        self.eps_max = check_number("eps_max", eps_max, 0, strict=True)
        self.points = check_number("points", points, 3, integer=True)
        self.n = check_number("n", n, 1, integer=True)
        self.examples, self.loss = check_number("examples", examples, 0, integer=True), str(loss)
        self.traces: dict[str, tuple] = {}  # model name -> (eps, logits, labels, r2, member) of the plot

    def run(self, member, points: Points) -> dict:
        n = min(self.n, len(points.x))
        y = points.y
        lin = linearity(member.model, points.x[:n], y[:n], eps_max=self.eps_max, points=self.points, loss=self.loss,
                        device=points.device)
        r2 = lin["r2"][~lin["r2"].isnan()]
        if member.name not in self.traces:  # the plot shows the first member of each model
            k = self.examples
            self.traces[member.name] = (lin["eps"], lin["logits"][:k], y[:k], lin["r2"][:k], member.member)
        return {"r2_mean": float(r2.mean()) if len(r2) else math.nan,
                "r2_median": float(r2.median()) if len(r2) else math.nan,
                "r2_min": float(r2.min()) if len(r2) else math.nan,
                "zero_direction": float(lin["zero_direction"].float().mean())}

    def summarise(self, results: list[dict], points: Points) -> dict:
        return {"linearity": {k: stat([r["linearity"][k] for r in results]) for k in SCALARS}}

    def write(self, out_dir: Path, per_member: dict, summary: dict, points: Points, loggers) -> dict[str, Path]:
        from advlab.report import analysis_plots

        rows = [[name, r["member"], *[r["linearity"][k] for k in SCALARS]] for name, results in per_member.items() for r in results]
        write_csv(out_dir / "linearity.csv", ["model", "member", *SCALARS], rows)
        images = {}
        for name, (eps, logits, labels, r2, member) in self.traces.items():
            safe = safe_name(name)
            r2_mean = summary[name]["linearity"]["r2_mean"]["mean"]
            images[f"linearity_{safe}"] = analysis_plots.logit_lines(
                eps, logits, labels, r2, out_dir / "plots" / f"linearity_{safe}.png", class_names=points.datamodule.class_names,
                title=f"{name} ({member}): logits along the FGSM direction; mean R² = {r2_mean:.3f}")
        return images

    def headline(self, summary: dict) -> list[str]:
        return [f"linearity R² {summary['linearity']['r2_mean']['mean']:.3f}"]
