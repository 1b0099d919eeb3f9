"""advlab-eval's `robustness` analysis (conf/analysis/robustness.yaml): robust accuracy against ε for
each attack of `run` (advlab.analysis.robustness computes the curves), mean ± SEM over members, and a
RobustBench-style line per model when an AutoAttack is among them (`robustbench` in metrics.json)."""
from __future__ import annotations

import logging
from pathlib import Path

from hydra.utils import instantiate

from advlab.analysis import robustness as curves_of
from advlab.analysis.protocol import Analysis, Points, curve_stat, label, stat, write_csv
from advlab.errors import ConfigError

log = logging.getLogger("advlab.evaluate")

HEADER = ["model", "member", "attack", "norm", "eps", "robust_acc", "attack_alone_acc", "ce_acc", "margin_acc"]


class RobustAccuracy(Analysis):
    key = "robustness"

    def __init__(self, run, eps, losses, cumulative: bool, attacks, diagnostics: bool = False, robustbench_eps=None,
                 bounds=None):
        if diagnostics not in (True, False):
            raise ConfigError("robustness.diagnostics", f"must be a boolean, got {diagnostics!r}; allowed: true, false")
        self.diagnostics = bool(diagnostics)
        self.attacks = {name: instantiate(attacks[name], bounds=bounds) for name in run}
        self.eps_grids = {norm: [float(e) for e in eps[norm]] for norm in ("linf", "l2")}
        self.losses, self.cumulative = list(losses), bool(cumulative)
        self.robustbench_eps = None if robustbench_eps is None else float(robustbench_eps)

    def run(self, member, points: Points) -> dict:
        curves = curves_of.robustness_curves(
            member.model, self.attacks, self.eps_grids, points.x, points.y, losses=self.losses, cumulative=self.cumulative,
            diagnostics=self.diagnostics, batch_size=points.batch_size, device=points.device, desc=label(member))
        acc = curves_of.accuracy
        return {name: {"norm": c["norm"], "eps": c["eps"], "acc": acc(c["robust"]),
                       "alone": None if c["alone"] is None else acc(c["alone"]),  # None: not exact without diagnostics
                       "by_loss": {loss: acc(mask) for loss, mask in c["by_loss"].items()},
                       "attacked": c["attacked"], "attacked_all": c["attacked_all"]}
                for name, c in curves.items()}

    def summarise(self, results: list[dict], points: Points) -> dict:
        out = {}
        for attack, first in results[0]["robustness"].items():
            curves = [r["robustness"][attack] for r in results]
            entry = curve_stat([c["acc"] for c in curves], first["eps"])
            entry["norm"] = first["norm"]
            alone = [c["alone"] for c in curves]
            entry["alone_mean"] = None if None in alone else curve_stat(alone, first["eps"])["mean"]
            entry["by_loss_mean"] = {loss: curve_stat([c["by_loss"][loss] for c in curves], first["eps"])["mean"]
                                     for loss in first["by_loss"]}
            # attack calls per point (over ε and losses): robust-only vs attacking every point
            entry["attacked"] = stat([c["attacked"] for c in curves])
            entry["attacked_all"] = stat([c["attacked_all"] for c in curves])
            out[attack] = entry
        line = self._robustbench(out, results, points.n)
        return {"robustness": out, **({"robustbench": line} if line else {})}

    def _robustbench(self, curves: dict, results: list[dict], n: int) -> dict | None:
        """Clean and AutoAttack robust accuracy at `robustbench_eps` on the evaluated points, logged."""
        from advlab.attacks import AutoAttack

        name = next((a for a, attack in self.attacks.items() if isinstance(attack, AutoAttack)), None)
        if name is None or self.robustbench_eps is None:
            return None
        curve = curves[name]
        i = curve["eps"].index(self.robustbench_eps)  # on the grid: checked in the pre-flight
        clean = sum(r["points_acc"] for r in results) / len(results)
        entry = {"clean": clean, "autoattack": curve["mean"][i], "eps": curve["eps"][i], "norm": curve["norm"], "n": n, "attack": name}
        log.info("model %s: clean %.3f, AutoAttack robust %.3f (%s eps=%g, n=%d)", results[0]["name"], clean, entry["autoattack"],
                 "Linf" if entry["norm"] == "linf" else "L2", entry["eps"], n)
        return entry

    def write(self, out_dir: Path, per_member: dict, summary: dict, points: Points, loggers) -> dict[str, Path]:
        """robustness.csv (per member), robustness_summary.csv, the plot, and the W&B table and charts."""
        from advlab.report import analysis_plots
        from advlab.report.wandb_charts import robustness_charts
        from advlab.utils.run import wandb_logger

        member_rows = _rows(per_member)
        write_csv(out_dir / "robustness.csv", HEADER, member_rows)
        rows = [[name, attack, c["norm"], e, m, se, len(s["members"])]
                for name, s in summary.items() for attack, c in s["robustness"].items()
                for e, m, se in zip(c["eps"], c["mean"], c["sem"])]
        write_csv(out_dir / "robustness_summary.csv", ["model", "attack", "norm", "eps", "mean", "sem", "n_members"], rows)
        wb = wandb_logger(loggers)
        if wb is not None and member_rows:
            wb.log_table(key="robustness", columns=HEADER, data=member_rows)
            wb.experiment.log(robustness_charts(HEADER, member_rows))
        curves = {name: {a: {**c, "n": len(s["members"])} for a, c in s["robustness"].items()} for name, s in summary.items()}
        path = out_dir / "plots" / "robustness.png"
        return {"robustness": analysis_plots.robustness_curves(curves, path, title=points.title, points=points.where)}

    def headline(self, summary: dict) -> list[str]:
        """Each attack's robust accuracy at the middle ε."""
        parts = []
        for attack, c in summary["robustness"].items():
            i = len(c["eps"]) // 2
            parts.append(f"{attack}@{c['eps'][i]:g} {c['mean'][i]:.3f}±{c['sem'][i]:.3f}")
        return parts


def _rows(per_member: dict) -> list[list]:
    rows = []
    for name, results in per_member.items():
        for r in results:
            for attack, c in r["robustness"].items():
                none = [None] * len(c["eps"])
                for i, eps in enumerate(c["eps"]):
                    rows.append([name, r["member"], attack, c["norm"], eps, c["acc"][i], (c["alone"] or none)[i],
                                 c["by_loss"].get("ce", none)[i], c["by_loss"].get("margin", none)[i]])
    return rows
