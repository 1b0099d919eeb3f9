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
from advlab.runtime.task_wrapper import ERROR_FILE


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


def _expected_overrides(multirun: dict, path: Path | str = "multirun.yaml") -> list[list[str]]:
    """Each job's overrides, in job-number order, as Hydra's basic sweeper builds them: the config's
    sweeper params, then the command line's (a key given twice keeps its first place, the last value),
    expanded as a cartesian product. An override Hydra cannot parse is a ConfigError naming it."""
    import itertools

    from hydra.core.override_parser.overrides_parser import OverridesParser

    hydra_node = multirun.get("hydra") or {}
    params = (hydra_node.get("sweeper") or {}).get("params") or {}
    overrides = (hydra_node.get("overrides") or {}).get("task") or []
    if not isinstance(params, dict) or not isinstance(overrides, list):
        raise ConfigError(str(path), "hydra.sweeper.params must be a mapping and hydra.overrides.task a list of overrides")
    arguments = [f"{k}={v}" for k, v in params.items()] + [str(o) for o in overrides]
    parser = OverridesParser.create()
    parsed = []
    for text in arguments:
        try:
            parsed += parser.parse_overrides([text])
        except Exception as err:  # hydra.errors.OverrideParseException
            message = " ".join(str(err).splitlines()[0].split())
            raise ConfigError(str(path), f"unparsable override {text!r} in the sweep's overrides ({message})") from None
    choices: dict[str, list[str]] = {}
    for o in parsed:
        key = o.get_key_element()
        choices[key] = ([f"{key}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override()
                        else [f"{key}={o.get_value_element_as_str()}"])
    return [list(job) for job in itertools.product(*choices.values())]


def _read_metrics(job_dir: Path) -> tuple[dict | None, str | None]:
    """(metrics, None) from a job's metrics.json, or (None, what is wrong with it, naming the file)."""
    path = job_dir / "metrics.json"
    try:
        metrics = json.loads(path.read_text(errors="replace"))
    except (OSError, ValueError) as err:
        return None, f"{path}: unreadable metrics.json ({' '.join(str(err).split())})"
    if not isinstance(metrics, dict):
        return None, f"{path}: not a mapping of metric names to numbers (a JSON {type(metrics).__name__})"
    return metrics, None


def _first_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError as err:
        return f"{path}: unreadable ({err.strerror or err})"
    return lines[0] if lines else f"failed ({path.name} is empty)"


def _read_job(num: int, overrides: list[str], job_dir: Path) -> Job:
    if not job_dir.is_dir():
        return Job(num, overrides, None, "missing", error="never ran (no job directory)")
    metrics_file, error_file = job_dir / "metrics.json", job_dir / ERROR_FILE
    if metrics_file.is_file():
        metrics, problem = _read_metrics(job_dir)
        if problem is None:
            return Job(num, overrides, job_dir, "ok", metrics)
        return Job(num, overrides, job_dir, "failed", error=problem)
    if error_file.is_file():
        return Job(num, overrides, job_dir, "failed", error=_first_line(error_file))
    return Job(num, overrides, job_dir, "failed", error="no metrics.json (killed, or still running)")


def _load_multirun(path: Path) -> dict:
    """multirun.yaml as a plain mapping; invalid YAML is one ConfigError naming the file and the line."""
    import yaml

    try:
        multirun = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or " ".join(str(err).split())
        raise ConfigError(str(path), f"invalid YAML{where}: {problem}; expected the multirun.yaml that Hydra writes") from None
    except (OSError, ValueError) as err:  # unreadable, or YAML that OmegaConf cannot take
        raise ConfigError(str(path), f"cannot be read: {' '.join(str(err).split())}") from None
    if not isinstance(multirun, dict):
        raise ConfigError(str(path), f"not a Hydra multirun config: a YAML {type(multirun).__name__}, expected a mapping")
    return multirun


def load_sweep(sweep_dir: str | Path) -> Sweep:
    sweep_dir = Path(sweep_dir)
    multirun_file = sweep_dir / "multirun.yaml"
    if not multirun_file.is_file():
        raise ConfigError("sweep_dir", f"{sweep_dir} is not a Hydra multirun directory (no multirun.yaml); "
                          "allowed: a directory like outputs/<task>/multiruns/<date>/<time>")
    multirun = _load_multirun(multirun_file)
    expected = _expected_overrides(multirun, multirun_file)
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


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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
            if job.status == "ok" and is_number(job.metrics.get(metric)):
                cell.values.append(float(job.metrics[metric]))
    return list(out.values())


def _value_label(job: Job, keys: list[str]) -> str:
    params = job.params
    return "/".join(params[k] for k in keys if k in params) or "—"
