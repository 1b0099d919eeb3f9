"""Reading a Hydra multirun back: every expected job, its overrides, metrics or failure.

The expected jobs are recomputed from the sweep's `multirun.yaml` exactly as Hydra's basic sweeper
enumerated them (job number i ↔ i-th combination), so a job that failed (an `error.txt`, or a
directory without `metrics.json`) or never ran (no directory) is named, never silently dropped.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from advlab.errors import ConfigError
from advlab.utils.wrapper import ERROR_FILE


@dataclass
class Job:
    num: int
    overrides: list[str]
    dir: Path | None
    status: str                      # ok | failed | missing
    metrics: dict = field(default_factory=dict)
    error: str | None = None

    @property
    def params(self) -> dict[str, str]:
        return dict(split_override(o) for o in self.overrides)

    def label(self, keys) -> str:
        params = self.params
        return ", ".join(f"{display_key(k)}={params[k]}" for k in keys if k in params)


@dataclass
class Sweep:
    dir: Path
    task_name: str
    jobs: list[Job]
    varying: dict[str, list[str]]   # swept key -> its values, in sweep order
    config: dict                    # the sweep's config (multirun.yaml, hydra node removed)

    @property
    def failed(self) -> list[Job]:
        return [j for j in self.jobs if j.status != "ok"]


def split_override(text: str) -> tuple[str, str]:
    key, _, value = text.partition("=")
    return key.lstrip("+~"), value


def display_key(key: str) -> str:
    """`arch@source.arch` → `source.arch`: the node a group option is composed at."""
    return key.split("@", 1)[1] if "@" in key else key


def _expected_overrides(multirun: dict) -> list[list[str]]:
    """Each job's overrides, in job-number order, as Hydra's basic sweeper builds them: the config's
    sweeper params, then the command line's (a key given twice keeps its first place, the last value),
    expanded as a cartesian product."""
    import itertools

    from hydra.core.override_parser.overrides_parser import OverridesParser

    hydra_node = multirun.get("hydra", {})
    params = (hydra_node.get("sweeper") or {}).get("params") or {}
    arguments = [f"{k}={v}" for k, v in params.items()] + list((hydra_node.get("overrides") or {}).get("task") or [])
    choices: dict[str, list[str]] = {}
    for o in OverridesParser.create().parse_overrides(arguments):
        key = o.get_key_element()
        choices[key] = ([f"{key}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override()
                        else [f"{key}={o.get_value_element_as_str()}"])
    return [list(job) for job in itertools.product(*choices.values())]


def _read_job(num: int, overrides: list[str], job_dir: Path) -> Job:
    if not job_dir.is_dir():
        return Job(num, overrides, None, "missing", error="never ran (no job directory)")
    metrics_file, error_file = job_dir / "metrics.json", job_dir / ERROR_FILE
    if metrics_file.is_file():
        try:
            return Job(num, overrides, job_dir, "ok", json.loads(metrics_file.read_text()))
        except ValueError as err:
            return Job(num, overrides, job_dir, "failed", error=f"unreadable metrics.json ({err})")
    if error_file.is_file():
        return Job(num, overrides, job_dir, "failed", error=error_file.read_text().splitlines()[0])
    return Job(num, overrides, job_dir, "failed", error="no metrics.json (killed, or still running)")


def load_sweep(sweep_dir: str | Path) -> Sweep:
    sweep_dir = Path(sweep_dir)
    multirun_file = sweep_dir / "multirun.yaml"
    if not multirun_file.is_file():
        raise ConfigError("sweep_dir", f"{sweep_dir} is not a Hydra multirun directory (no multirun.yaml); "
                          "allowed: a directory like outputs/<task>/multiruns/<date>/<time>")
    multirun = OmegaConf.to_container(OmegaConf.load(multirun_file), resolve=False)
    expected = _expected_overrides(multirun)
    jobs = [_read_job(i, overrides, sweep_dir / str(i)) for i, overrides in enumerate(expected)]
    varying: dict[str, list[str]] = {}
    for job in jobs:
        for key, value in job.params.items():
            values = varying.setdefault(key, [])
            if value not in values:
                values.append(value)
    varying = {k: v for k, v in varying.items() if len(v) > 1}
    config = {k: v for k, v in multirun.items() if k != "hydra"}
    return Sweep(sweep_dir, str(config.get("task_name", "train")), jobs, varying, config)


# -- grouping the jobs: rows (source), columns (target), seeds, panels (everything else) ------------

def axis_of(key: str) -> str:
    """`row` for the source model's keys, `col` for the target / trained model's, `seed`, or `panel`."""
    shown = display_key(key)
    if shown == "seed":
        return "seed"
    if shown == "source" or shown.startswith("source."):
        return "row"
    if shown == "target" or shown.startswith("target.") or shown == "arch":
        return "col"
    return "panel"


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN for fewer than 2 values); NaNs are skipped."""
    values = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not values:
        return float("nan"), float("nan")
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, float("nan")
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


@dataclass
class Cell:
    panel: str
    row: str
    col: str
    metric: str
    values: list[float]
    expected: int

    @property
    def mean(self) -> float:
        return mean_std(self.values)[0]

    @property
    def std(self) -> float:
        return mean_std(self.values)[1]


def cells(sweep: Sweep, metrics: list[str]) -> list[Cell]:
    """One cell per (panel, row, column, metric): the metric's values over the seeds (ok jobs only)."""
    keys = {axis: [k for k in sweep.varying if axis_of(k) == axis] for axis in ("row", "col", "seed", "panel")}
    out: dict[tuple, Cell] = {}
    for job in sweep.jobs:
        where = (job.label(keys["panel"]), _value_label(job, keys["row"]), _value_label(job, keys["col"]))
        for metric in metrics:
            cell = out.setdefault(where + (metric,), Cell(*where, metric, [], 0))
            cell.expected += 1
            if job.status == "ok" and metric in job.metrics:
                cell.values.append(float(job.metrics[metric]))
    return list(out.values())


def _value_label(job: Job, keys: list[str]) -> str:
    params = job.params
    return "/".join(params[k] for k in keys if k in params) or "—"
