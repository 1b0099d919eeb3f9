"""Native W&B charts (not only PNGs), so a sweep's or an evaluation's dashboard needs no manual
panel set-up: robustness curves as line series, source × target matrices and corruption × severity
accuracies as heatmaps."""
from __future__ import annotations

import math
from collections import defaultdict


def robustness_charts(header: list[str], rows: list[list]) -> dict:
    """{"charts/robustness_<attack>": line series of robust accuracy against ε, one line per model
    (mean over its members)} from advlab-eval's robustness table."""
    import wandb

    col = {name: i for i, name in enumerate(header)}
    curves: dict[str, dict[str, dict[float, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for row in rows:
        curves[row[col["attack"]]][row[col["model"]]][float(row[col["eps"]])].append(float(row[col["robust_acc"]]))
    charts = {}
    for attack, models in curves.items():
        eps = sorted({e for points in models.values() for e in points})
        ys = [[sum(points[e]) / len(points[e]) if points.get(e) else math.nan for e in eps] for points in models.values()]
        charts[f"charts/robustness_{attack}"] = wandb.plot.line_series(
            xs=eps, ys=ys, keys=list(models), title=f"Robust accuracy vs ε ({attack})", xname="eps")
    return charts


def matrix_charts(header: list[str], rows: list[list]) -> dict:
    """{"charts/<panel>_<metric>": heatmap of the mean over seeds, source × target} from a sweep
    report's matrix table (W&B's confusion-matrix panel draws any such matrix as a heatmap)."""
    import wandb

    col = {name: i for i, name in enumerate(header)}
    groups: dict[tuple, list[list]] = defaultdict(list)
    for row in rows:
        value = row[col["mean"]]
        if isinstance(value, (int, float)) and not math.isnan(value):
            groups[row[col["panel"]], row[col["metric"]]].append([str(row[col["source"]]), str(row[col["target"]]), float(value)])
    charts = {}
    for (panel, metric), data in groups.items():
        table = wandb.Table(columns=["source", "target", "value"], data=data)
        name = "_".join(part.replace("/", "_") for part in (panel, metric) if part)
        charts[f"charts/{name}"] = wandb.plot_table(
            "wandb/confusion_matrix/v1", table, {"Actual": "source", "Predicted": "target", "nPredictions": "value"},
            {"title": f"{metric} ({panel}): rows source, columns target"})
    return charts


def corruption_charts(header: list[str], rows: list[list]) -> dict:
    """{"charts/corruption_accuracy_<model>": heatmap corruption × severity of the accuracy (mean over
    the model's members)} from advlab-eval's corruption-accuracy table."""
    import wandb

    col = {name: i for i, name in enumerate(header)}
    cells: dict[str, dict[tuple[str, str], list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        cells[row[col["model"]]][str(row[col["corruption"]]), f"severity {row[col['severity']]}"].append(float(row[col["accuracy"]]))
    charts = {}
    for model, per_set in cells.items():
        data = [[corruption, severity, sum(v) / len(v)] for (corruption, severity), v in per_set.items()]
        table = wandb.Table(columns=["corruption", "severity", "accuracy"], data=data)
        charts[f"charts/corruption_accuracy_{model}"] = wandb.plot_table(
            "wandb/confusion_matrix/v1", table, {"Actual": "corruption", "Predicted": "severity", "nPredictions": "accuracy"},
            {"title": f"{model}: accuracy per corruption (rows) × severity (columns)"})
    return charts
