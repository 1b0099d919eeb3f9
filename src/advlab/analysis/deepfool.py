"""Minimal adversarial perturbations with DeepFool, and the robustness summary of Paknezhad et al.:
ρ = mean over samples of ‖r‖ / ‖x‖ (the fraction of the input's size the attack needs), with the
fraction of samples whose decision DeepFool managed to change. `attack: cw|fmn` measures the same with
Carlini–Wagner L2 or FMN (advlab.analysis.minimal_attacks).

advlab's default measures in pixel units, over the successful samples, with the perturbation bisected
back to the boundary. The authors' protocol (MahsaPaknezhad/AdversariallyRobustTraining, getRho.py and
DeepFool.py) is selected with ``units: normalized`` (mean/std of their Normalize, e.g. MNIST's 0.1307 /
0.3081), ``over: all``, ``refine_steps: 0``, ``clip: false`` and ``steps`` = their ``max_iter`` (23 MNIST,
9 CIFAR-10, 4 Imagenette): DeepFool then runs on z = (x − mean)/std against the model
z ↦ f(mean + std·z) (its 1e-4 slack and overshoot in z units, as theirs), without clipping (theirs
does not clip), and ρ = mean over every sample of ‖r_z‖₂ / ‖z‖₂, with r_z including the (1 + overshoot)
factor. One difference remains: a sample DeepFool fails to fool counts ‖r‖ = 0 here, its last iterate
there (rare at their iteration counts; ``success_rate`` reports how many)."""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from advlab.analysis.protocol import Analysis, Points, label, stat, write_csv
from advlab.analysis.minimal_attacks import minimal_attack
from advlab.attacks import DeepFool
from advlab.attacks.base import lp_norm
from advlab.errors import ConfigError, check_number
from advlab.utils.progress import progress_bar


class Denormalized(nn.Module):
    """``model`` seen from normalised units: z ↦ model(mean + std·z)."""

    def __init__(self, model: nn.Module, mean: float, std: float):
        super().__init__()
        self.model, self.mean, self.std = model, float(mean), float(std)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model(z * self.std + self.mean)


def deepfool_summary(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: DeepFool, *, batch_size: int = 256,
                     device=None, progress: bool = True, desc: str = "", normalize: tuple[float, float] | None = None,
                     over: str = "successful") -> dict:
    """Run ``attack`` on (x, y) and summarise in its norm.

    ``y``: the label to move away from (the model's predictions measure the distance to its own
    decision boundary). ``normalize=(mean, std)``: attack and measure in the units z = (x − mean)/std
    (the attack's bounds must then be in those units too). Returns per-sample tensors ``r`` (‖r‖ in the
    attack's norm), ``x_norm`` (‖x‖ in the same norm and units) and ``success``, and the scalars ``rho``
    (mean ‖r‖/‖x‖ over the successful samples, or over all of them with ``over="all"``),
    ``success_rate``, ``r_mean`` and ``r_median`` (over the successful samples).
    """
    if device is None:
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    if normalize is not None:
        model, x = Denormalized(model, *normalize), (x - normalize[0]) / normalize[1]
    rs, succ = [], []
    for i in progress_bar(range(0, len(x), batch_size), desc=f"{type(attack).__name__} {attack.norm} {desc}".strip(), disable=not progress, leave=False):
        xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
        x_adv = attack(model, xb, yb)  # DeepFool, CW or FMN: the closest adversarial point found (x where none)
        rs.append(lp_norm(x_adv - xb, attack.norm).cpu())
        succ.append(attack.success(model, x_adv, yb).cpu())
    r, success = torch.cat(rs), torch.cat(succ)
    flat = x.flatten(1)
    x_norm = lp_norm(flat, attack.norm)
    ok = (success if over == "successful" else torch.ones_like(success)) & (x_norm > 0)
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


def _units(units: str, mean, std) -> tuple[float, float] | None:
    """``units: pixel`` → None; ``normalized`` → (mean, std) of the dataset's Normalize, checked."""
    if units == "pixel":
        return None
    if units != "normalized":
        raise ConfigError("units", f"unknown value {units!r}; allowed: pixel, normalized")
    if mean is None or std is None:
        raise ConfigError("units", "normalized needs mean and std (the dataset's Normalize)")
    return check_number("mean", mean), check_number("std", std, 0, strict=True)


class DeepFoolAnalysis(Analysis):
    """advlab-eval's `deepfool` analysis (conf/analysis/deepfool.yaml): ρ and ‖r‖ per norm, measured from
    each model's own predictions (the distance to its own decision boundary)."""

    key = "deepfool"

    def __init__(self, norms, steps: int, overshoot: float, candidates=None, refine_steps: int = 20, bounds=None,
                 attack: str = "deepfool", cw=None, fmn=None, units: str = "pixel", mean: float | None = None,
                 std: float | None = None, over: str = "successful", clip: bool = True):
        self.normalize = _units(units, mean, std)
        if over not in ("successful", "all"):
            raise ConfigError("over", f"unknown value {over!r}; allowed: successful, all")
        self.over = over
        if not clip:
            bounds = None
        elif bounds is not None and self.normalize is not None:  # the box in the attack's (normalised) units
            bounds = tuple((b - self.normalize[0]) / self.normalize[1] for b in bounds)
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
                                 desc=label(member), normalize=self.normalize, over=self.over)
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
