"""The best of a grid, per metric: for the swept keys a sweep names in `report_best_of` (a top-level list of
its config), each metric's best grid point is chosen on its own, as Kumano et al. (NeurIPS'24) plot the best
of their four learning-rate pairs separately for accuracy and for agreement (s-kumano/perturbation-learning,
utils/interfaces.py `_ResultsAlongLrs`: `acc = max(accs)`, `agreement = max(agreements)`). Seeds are
averaged first; every metric shown is one where larger is better."""
from __future__ import annotations

import math

from advlab.errors import ConfigError
from advlab.report.sweep import Sweep, axis_of, display_key, is_number, mean_std

KEY = "report_best_of"


def best_of_keys(sweep: Sweep) -> list[str]:
    """The swept keys of `report_best_of` (as the overrides name them), in its order; [] when unset."""
    wanted = sweep.config.get(KEY)
    if wanted is None:
        return []
    if not isinstance(wanted, (list, tuple)) or not all(isinstance(k, str) for k in wanted):
        raise ConfigError(KEY, f"must be a list of swept keys, e.g. [optimizer.lr], got {wanted!r}")
    swept = {display_key(k): k for k in sweep.varying}
    return [swept[display_key(k)] for k in wanted if display_key(k) in swept]


def best_of_table(sweep: Sweep, metrics: list[str]) -> tuple[list[str], list[list], list[str]]:
    """(CSV header, rows, Markdown lines) of each metric's best grid point, per configuration of the other
    swept keys (seeds averaged). Empty when the sweep names no `report_best_of` key it swept."""
    over = best_of_keys(sweep)
    if not over:
        return [], [], []
    rest = [k for k in sweep.varying if k not in over and axis_of(k) != "seed"]
    groups: dict[str, dict[str, list]] = {}
    for job in sweep.jobs:
        groups.setdefault(job.label(rest) or "all jobs", {}).setdefault(job.label(over), []).append(job)
    header = ["configuration", "metric", "best", "at", "seeds", "grid points"]
    rows = []
    for label, grid in groups.items():
        for metric in metrics:
            best, at, n = _best(grid, metric)
            rows.append([label, metric, best, at, n, len(grid)])
    shown = ", ".join(f"`{display_key(k)}`" for k in over)
    md = [f"## Best of the grid over {shown} (each metric's own best point; mean over seeds)", "",
          "| configuration | metric | best | at |", "|---|---|---|---|"]
    md += [f"| {r[0]} | {r[1]} | {'—' if math.isnan(r[2]) else f'{r[2]:.3f}'} | {r[3] or '—'} |" for r in rows]
    return header, rows, md + [""]


def _best(grid: dict[str, list], metric: str) -> tuple[float, str, int]:
    """(the largest mean over seeds, the grid point it is at, its number of seeds); ties keep the first point."""
    best, at, n = float("nan"), "", 0
    for point, jobs in grid.items():
        values = [float(j.metrics[metric]) for j in jobs if j.status == "ok" and is_number(j.metrics.get(metric))]
        mean = mean_std(values)[0]
        if not math.isnan(mean) and (math.isnan(best) or mean > best):
            best, at, n = mean, point, len(values)
    return best, at, n
