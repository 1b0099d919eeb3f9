"""Goodfellow et al. (2015)'s headline numbers: the error rate on FGSM examples x + ε·sign(∇x CE(x, y))
and the confidence the model puts in its (wrong) answers there, beside the clean error. Every evaluated
point is attacked, whether the model gets it right clean or not (as the paper's test-set error rates)."""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from advlab.analysis.protocol import Analysis, Points, stat, write_csv
from advlab.attacks import FGSM
from advlab.attacks.base import eval_mode

SCALARS = ("clean_error", "clean_confidence", "adv_error", "adv_confidence", "adv_wrong_confidence")


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted class, its softmax probability) per input, in eval mode."""
    with eval_mode(model):
        conf, pred = torch.softmax(model(x).float(), dim=1).max(dim=1)
    return pred, conf


def fgsm_error(model: nn.Module, attack: FGSM, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 256, device=None) -> dict:
    """Clean and FGSM scalars of `model` on (x, y): error rates, and the mean softmax probability of the
    predicted class over all points (`*_confidence`) and over the misclassified FGSM points
    (`adv_wrong_confidence`: NaN when FGSM fools none)."""
    if device is None:
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    clean_wrong, clean_conf, adv_wrong, adv_conf = [], [], [], []
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
        pred, conf = _predict(model, xb)
        clean_wrong.append((pred != yb).cpu())
        clean_conf.append(conf.cpu())
        pred, conf = _predict(model, attack(model, xb, yb))
        adv_wrong.append((pred != yb).cpu())
        adv_conf.append(conf.cpu())
    wrong, conf = torch.cat(adv_wrong), torch.cat(adv_conf)
    return {"clean_error": float(torch.cat(clean_wrong).float().mean()), "clean_confidence": float(torch.cat(clean_conf).mean()),
            "adv_error": float(wrong.float().mean()), "adv_confidence": float(conf.mean()),
            "adv_wrong_confidence": float(conf[wrong].mean()) if wrong.any() else math.nan}


class AdversarialError(Analysis):
    """advlab-eval's `adversarial_error` analysis (conf/analysis/adversarial_error.yaml): `fgsm_error` at
    `eps` (L∞, clipped to the data's bounds) on every evaluated point."""

    key = "adversarial_error"

    def __init__(self, eps: float, loss: str = "ce", bounds=None):
        from advlab.attack_losses import LOSSES
        from advlab.errors import ConfigError, check_number

        if loss not in LOSSES:
            raise ConfigError("adversarial_error.loss", f"unknown value {loss!r}; allowed: {', '.join(LOSSES)}")
        self.eps = check_number("adversarial_error.eps", eps, 0)
        self.attack = FGSM(eps=self.eps, bounds=bounds, loss=str(loss))

    def run(self, member, points: Points) -> dict:
        return fgsm_error(member.model, self.attack, points.x, points.y, batch_size=points.batch_size, device=points.device)

    def summarise(self, results: list[dict], points: Points) -> dict:
        out = {k: stat([r[self.key][k] for r in results]) for k in SCALARS}
        return {self.key: {"eps": self.eps, "n": points.n, **out}}

    def write(self, out_dir: Path, per_member: dict, summary: dict, points: Points, loggers) -> dict[str, Path]:
        rows = [[name, r["member"], self.eps, *[r[self.key][k] for k in SCALARS]] for name, results in per_member.items() for r in results]
        write_csv(out_dir / "adversarial_error.csv", ["model", "member", "eps", *SCALARS], rows)
        return {}

    def headline(self, summary: dict) -> list[str]:
        s = summary[self.key]
        return [f"FGSM@{s['eps']:g} error {s['adv_error']['mean']:.3f} (clean {s['clean_error']['mean']:.3f}), "
                f"confidence {s['adv_confidence']['mean']:.3f}"]
