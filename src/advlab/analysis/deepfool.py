"""Minimal adversarial perturbations with DeepFool, and the robustness summary of Paknezhad et al.:
ρ = mean over samples of ‖r‖ / ‖x‖ (the fraction of the input's size the attack needs), with the
fraction of samples whose decision DeepFool managed to change. `attack: cw|fmn` measures the same with
Carlini–Wagner L2 or FMN (advlab.analysis.minimal_attacks)."""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from advlab.analysis.protocol import Analysis, Points, label, stat, write_csv
from advlab.analysis.minimal_attacks import minimal_attack
from advlab.attacks import DeepFool
from advlab.attacks.base import lp_norm
from advlab.errors import ConfigError
from advlab.utils.progress import progress_bar


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
    for i in progress_bar(range(0, len(x), batch_size), desc=f"{type(attack).__name__} {attack.norm} {desc}".strip(), disable=not progress, leave=False):
        xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
        x_adv = attack(model, xb, yb)  # DeepFool, CW or FMN: the closest adversarial point found (x where none)
        rs.append(lp_norm(x_adv - xb, attack.norm).cpu())
        succ.append(attack.success(model, x_adv, yb).cpu())
    r, success = torch.cat(rs), torch.cat(succ)
    flat = x.flatten(1)
    x_norm = lp_norm(flat, attack.norm)
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


SCALARS = ("rho", "success_rate", "r_mean", "r_median")


class DeepFoolAnalysis(Analysis):
    """advlab-eval's `deepfool` analysis (conf/analysis/deepfool.yaml): ρ and ‖r‖ per norm, measured from
    each model's own predictions (the distance to its own decision boundary)."""

    key = "deepfool"

    def __init__(self, norms, steps: int, overshoot: float, candidates=None, refine_steps: int = 20, bounds=None,
                 attack: str = "deepfool", cw=None, fmn=None):
        if attack != "deepfool":  # another minimal-norm attack, with its own settings (deepfool.cw / deepfool.fmn)
            self.attacks = {norm: minimal_attack(attack, norm, {"cw": cw, "fmn": fmn}.get(attack), bounds) for norm in norms}
            self.samples: list[list] = []
            return
        bad = [norm for norm in norms if norm not in ("l2", "linf")]
        if bad:
            raise ConfigError("norms", f"unknown value {bad[0]!r}; allowed: l2, linf")
        self.attacks = {norm: DeepFool(norm=norm, steps=steps, overshoot=overshoot, candidates=candidates,
                                       refine_steps=refine_steps, bounds=bounds) for norm in norms}
        self.samples: list[list] = []  # deepfool_samples.csv, filled by `run`

    def run(self, member, points: Points) -> dict:
        pred = points.predictions[id(member)][points.index]
        out = {}
        for norm, attack in self.attacks.items():
            d = deepfool_summary(member.model, points.x, pred, attack, batch_size=points.batch_size, device=points.device,
                                 desc=label(member))
            out[norm] = {k: d[k] for k in SCALARS}
            out[norm]["r"] = d["r"][d["success"]].tolist()
            self.samples += [[member.name, member.member, norm, int(i), float(r), float(xn), bool(s)]
                             for i, r, xn, s in zip(points.index.tolist(), d["r"], d["x_norm"], d["success"])]
        return out

    def summarise(self, results: list[dict], points: Points) -> dict:
        return {"deepfool": {norm: {k: stat([r["deepfool"][norm][k] for r in results]) for k in SCALARS}
                             for norm in results[0]["deepfool"]}}

    def write(self, out_dir: Path, per_member: dict, summary: dict, points: Points, loggers) -> dict[str, Path]:
        from advlab.report import analysis_plots

        write_csv(out_dir / "deepfool_samples.csv", ["model", "member", "norm", "test_index", "r", "x_norm", "success"], self.samples)
        rows = [[name, r["member"], norm, d["rho"], d["success_rate"], d["r_mean"], d["r_median"]]
                for name, results in per_member.items() for r in results for norm, d in r["deepfool"].items()]
        write_csv(out_dir / "deepfool.csv", ["model", "member", "norm", *SCALARS], rows)
        norms: dict = {}
        for name, results in per_member.items():
            for norm in results[0]["deepfool"]:
                pooled = [v for r in results for v in r["deepfool"][norm]["r"]]
                rho = summary[name]["deepfool"][norm]["rho"]
                norms.setdefault(norm, {})[name] = (pooled, rho["mean"], rho["sem"])
        path = out_dir / "plots" / "deepfool.png"
        method = type(next(iter(self.attacks.values()))).__name__  # DeepFool, CarliniWagnerL2 or FMN
        return {"deepfool": analysis_plots.deepfool_norms(norms, path, title=f"{points.title}: {method} on {points.where}")}

    def headline(self, summary: dict) -> list[str]:
        return [f"ρ_{norm} {d['rho']['mean']:.3f}±{d['rho']['sem']:.3f} (success {d['success_rate']['mean']:.3f})"
                for norm, d in summary["deepfool"].items()]
