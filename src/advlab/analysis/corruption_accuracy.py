"""advlab-eval's corruption accuracy (Hendrycks & Dietterich 2019; RobustBench's corruptions track).

On a corruption set (``dataset=cifar10_c | cifar100_c``, advlab.data.corruptions) each model's clean
accuracy per corruption × severity, per corruption (mean over its severities), per severity (mean over
the corruptions) and the mean corruption accuracy: the mean over every selected corruption × severity,
as RobustBench reports it (15 corruptions × 5 severities). It runs by itself whenever the dataset is a
corruption set (it is not one of `analyses`), on every selected image, not only on the evaluated
`points` (those are the attacks'), from the predictions advlab-eval has already made.

metrics.json: ``models.<name>.corruption_accuracy`` ({"mean", "per_corruption", "per_severity",
"per_set": {corruption: {severity: ...}}}, each a mean ± SEM over the members). Files:
``corruption_accuracy.csv`` (one row per member and set), ``corruption_accuracy.md`` (per model, the
corruption × severity table with the means), ``plots/corruption_accuracy.png`` (heatmaps); to W&B the
table, a heatmap chart per model and the scalars.
"""
from __future__ import annotations

from pathlib import Path

import torch

from advlab.analysis.protocol import Analysis, Points, stat, write_csv
from advlab.utils.io import write_text

HEADER = ["model", "member", "corruption", "severity", "accuracy", "n"]


def corruption_analyses(datamodule) -> list:
    """[CorruptionAccuracy] for a corruption set (a datamodule with `test_groups`), else []."""
    return [CorruptionAccuracy(datamodule)] if getattr(datamodule, "test_groups", None) else []


def set_accuracies(correct: torch.Tensor, group: torch.Tensor, n_groups: int) -> tuple[list[float], list[int]]:
    """(accuracy, images) of each set: `correct` per test row, `group` its set's index."""
    counts = torch.bincount(group, minlength=n_groups)
    hits = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, group, correct.to(torch.float64))
    return (hits / counts.clamp_min(1)).tolist(), counts.tolist()


class CorruptionAccuracy(Analysis):
    """See the module. Built by advlab-eval for a corruption datamodule (its `test_groups`, `test_group`)."""

    key = "corruption_accuracy"

    def __init__(self, datamodule):
        datamodule.setup()
        self.groups = [(str(c), int(s)) for c, s in datamodule.test_groups]
        self.group = datamodule.test_group
        self.corruptions = list(dict.fromkeys(c for c, _ in self.groups))
        self.severities = sorted({s for _, s in self.groups})

    def run(self, member, points: Points) -> dict:
        correct = points.predictions[id(member)] == points.datamodule.y_test
        acc, counts = set_accuracies(correct, self.group, len(self.groups))
        return {"sets": acc, "n": counts}

    def _means(self, sets: list[float]) -> tuple[float, dict[str, float], dict[str, float]]:
        """(mean over every set, per corruption, per severity) of one member's set accuracies."""
        at = dict(zip(self.groups, sets))
        per_corruption = {c: sum(at[c, s] for s in self.severities) / len(self.severities) for c in self.corruptions}
        per_severity = {str(s): sum(at[c, s] for c in self.corruptions) / len(self.corruptions) for s in self.severities}
        return sum(sets) / len(sets), per_corruption, per_severity

    def summarise(self, results: list[dict], points: Points) -> dict:
        members = [r[self.key]["sets"] for r in results]
        means = [self._means(sets) for sets in members]
        index = {g: i for i, g in enumerate(self.groups)}
        return {self.key: {
            "mean": stat([m[0] for m in means]),
            "per_corruption": {c: stat([m[1][c] for m in means]) for c in self.corruptions},
            "per_severity": {str(s): stat([m[2][str(s)] for m in means]) for s in self.severities},
            "per_set": {c: {str(s): stat([sets[index[c, s]] for sets in members]) for s in self.severities} for c in self.corruptions},
            "n_per_set": results[0][self.key]["n"][0], "corruptions": list(self.corruptions), "severities": list(self.severities)}}

    def write(self, out_dir: Path, per_member: dict, summary: dict, points: Points, loggers) -> dict[str, Path]:
        """corruption_accuracy.csv and .md, the heatmaps, and the W&B table and charts."""
        from advlab.report.corruption_heatmap import corruption_heatmaps
        from advlab.report.wandb_charts import corruption_charts
        from advlab.runtime.lifecycle import wandb_logger

        rows = [[name, r["member"], c, s, acc, n] for name, results in per_member.items() for r in results
                for (c, s), acc, n in zip(self.groups, r[self.key]["sets"], r[self.key]["n"])]
        write_csv(out_dir / "corruption_accuracy.csv", HEADER, rows)
        write_text(out_dir / "corruption_accuracy.md", self.markdown(summary, points.title))
        wb = wandb_logger(loggers)
        if wb is not None and rows:
            wb.log_table(key="corruption_accuracy", columns=HEADER, data=rows)
            wb.experiment.log(corruption_charts(HEADER, rows))
        tables = {name: [[s[self.key]["per_set"][c][str(v)]["mean"] for v in self.severities] for c in self.corruptions]
                  for name, s in summary.items()}
        path = out_dir / "plots" / "corruption_accuracy.png"
        return {"corruption_accuracy": corruption_heatmaps(tables, self.corruptions, self.severities, path,
                                                           title=f"{points.title}: accuracy per corruption × severity")}

    def markdown(self, summary: dict, title: str) -> str:
        """Per model: corruptions as rows, severities and their mean as columns, the means as the last row."""
        lines = [f"# Corruption accuracy: {title}", ""]
        for name, s in summary.items():
            c_acc = s[self.key]
            lines += [f"## {name} (mean {_cell(c_acc['mean'])}, {len(s['members'])} member(s), {c_acc['n_per_set']} images per set)", "",
                      "| corruption | " + " | ".join(f"severity {v}" for v in self.severities) + " | mean |",
                      "|---|" + "---:|" * (len(self.severities) + 1)]
            for c in self.corruptions:
                cells = [_cell(c_acc["per_set"][c][str(v)]) for v in self.severities] + [_cell(c_acc["per_corruption"][c])]
                lines.append(f"| {c} | " + " | ".join(cells) + " |")
            cells = [_cell(c_acc["per_severity"][str(v)]) for v in self.severities] + [_cell(c_acc["mean"])]
            lines += ["| **mean** | " + " | ".join(cells) + " |", ""]
        return "\n".join(lines)

    def headline(self, summary: dict) -> list[str]:
        c_acc = summary[self.key]
        worst = min(c_acc["per_corruption"], key=lambda c: c_acc["per_corruption"][c]["mean"])
        return [f"corruption acc {c_acc['mean']['mean']:.3f}±{c_acc['mean']['sem']:.3f} "
                f"({len(self.corruptions)}×{len(self.severities)} sets; worst {worst} {c_acc['per_corruption'][worst]['mean']:.3f})"]


def _cell(entry: dict) -> str:
    """A mean (± SEM when there are several members) for the markdown table."""
    return f"{entry['mean']:.3f}" + (f" ± {entry['sem']:.3f}" if len(entry["values"]) > 1 else "")
