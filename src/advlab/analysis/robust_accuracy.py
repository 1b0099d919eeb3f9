"""advlab-eval's `robustness` analysis (conf/analysis/robustness.yaml): robust accuracy against ε for
each attack of `run` (advlab.analysis.robustness computes the curves), mean ± SEM over members, and,
when an AutoAttack is among them, its standalone figure at `robustbench_eps` per model (`robustbench`
in metrics.json, `robustbench.json` beside it; advlab.analysis.robustbench_entry)."""
from __future__ import annotations

import logging
from pathlib import Path

from hydra.utils import instantiate

from advlab.analysis import robustness as curves_of
from advlab.analysis import robustbench_entry, robustness_table
from advlab.analysis.protocol import Analysis, Points, curve_stat, label, stat, write_csv
from advlab.errors import ConfigError

log = logging.getLogger("advlab.apps.evaluate")

HEADER = ["model", "member", "attack", "norm", "eps", "robust_acc", "attack_alone_acc", "ce_acc", "margin_acc"]


class RobustAccuracy(Analysis):
    key = "robustness"

    def __init__(self, run, eps, losses, cumulative: bool, attacks, diagnostics: bool = False, robustbench_eps=None,
                 bounds=None):
        if diagnostics not in (True, False):
            raise ConfigError("diagnostics", f"must be a boolean, got {diagnostics!r}; allowed: true, false")
        self.diagnostics = bool(diagnostics)
        self.attacks = {name: instantiate(attacks[name], bounds=bounds) for name in run}
        self.eps_grids = {norm: [float(e) for e in grid] for norm, grid in eps.items()}
        self.losses, self.cumulative = list(losses), bool(cumulative)
        self.robustbench_eps = None if robustbench_eps is None else float(robustbench_eps)
        self._standalone: dict[tuple, dict] = {}  # (model, member) -> its standalone AutoAttack result

    def _autoattack(self):
        from advlab.attacks import AutoAttack

        return next(((n, a) for n, a in self.attacks.items() if isinstance(a, AutoAttack)), (None, None))

    def run(self, member, points: Points) -> dict:
        curves = curves_of.robustness_curves(
            member.model, self.attacks, self.eps_grids, points.x, points.y, losses=self.losses, cumulative=self.cumulative,
            diagnostics=self.diagnostics, batch_size=points.batch_size, device=points.device, desc=label(member))
        name, aa = self._autoattack()
        if aa is not None and self.robustbench_eps is not None:
            self._standalone[(member.name, member.member)] = robustbench_entry.standalone_autoattack(
                member.model, aa, points.x, points.y, self.robustbench_eps, device=points.device, batch_size=points.batch_size)
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
        """The standalone AutoAttack figure at `robustbench_eps`, mean over the members, logged."""
        name, _ = self._autoattack()
        runs = [self._standalone.get((r["name"], r["member"])) for r in results]
        if name is None or None in runs:
            return None
        first = runs[0]
        entry = {"clean": sum(r["clean_acc"] for r in runs) / len(runs), "autoattack": sum(r["autoattack_acc"] for r in runs) / len(runs),
                 "eps": first["eps"], "norm": first["norm"], "n": n, "attack": name, "version": first["version"],
                 "members": first["members"], "standalone": True}
        log.info("model %s: clean %.3f, AutoAttack robust %.3f (%s eps=%g, n=%d; standalone %s AutoAttack)", results[0]["name"],
                 entry["clean"], entry["autoattack"], robustbench_entry.THREAT_MODELS[entry["norm"]], entry["eps"], n, entry["version"])
        return entry

    def write(self, out_dir: Path, per_member: dict, summary: dict, points: Points, loggers) -> dict[str, Path]:
        """robustness.csv (per member), robustness_summary.csv, the plot, and the W&B table and charts."""
        from advlab.report import analysis_plots
        from advlab.report.wandb_charts import robustness_charts
        from advlab.runtime.lifecycle import wandb_logger

        member_rows = _rows(per_member)
        write_csv(out_dir / "robustness.csv", HEADER, member_rows)
        rows = [[name, attack, c["norm"], e, m, se, len(s["members"])]
                for name, s in summary.items() for attack, c in s["robustness"].items()
                for e, m, se in zip(c["eps"], c["mean"], c["sem"])]
        write_csv(out_dir / "robustness_summary.csv", ["model", "attack", "norm", "eps", "mean", "sem", "n_members"], rows)
        table_header, table_rows = robustness_table.table(summary)
        write_csv(out_dir / "robustness_table.csv", table_header, table_rows)
        wb = wandb_logger(loggers)
        if wb is not None and member_rows:
            wb.log_table(key="robustness", columns=HEADER, data=member_rows)
            wb.log_table(key="robustness_table", columns=table_header, data=table_rows)
            wb.experiment.log(robustness_charts(HEADER, member_rows))
        lines = {name: s["robustbench"] for name, s in summary.items() if s.get("robustbench")}
        if lines:
            dataset = robustbench_entry.dataset_name(points.datamodule)
            robustbench_entry.write_entries(out_dir, {name: robustbench_entry.leaderboard_entry(
                {**line, "clean_acc": line["clean"], "autoattack_acc": line["autoattack"]}, name, dataset) for name, line in lines.items()})
        curves = {name: {a: {**c, "n": len(s["members"])} for a, c in s["robustness"].items()} for name, s in summary.items()}
        plots = out_dir / "plots"
        images = {"robustness": analysis_plots.robustness_curves(curves, plots / "robustness.png", title=points.title, points=points.where)}
        if table_rows:
            images["robustness_table"] = analysis_plots.robustness_bars(table_header, table_rows, plots / "robustness_table.png",
                                                                        title=points.title)
        return images

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
