"""The value a run returns to a hyperparameter search (`optimized_metric`, set by the presets in
conf/hparams_search/; Hydra's Optuna sweeper takes it as the trial's value).

`optimized_metric` names a key of the run's metrics (`val/acc`), or `<metric>_per_s`: that metric per
second of the run's own work, its wall time (`time/total_s`) less the time it spent obtaining the
source model (`time/source_s`). The source model is the same for every trial of a search that
does not change it: the first trial trains it, the others take it from the cache, and counting
it would make the first trial look slow.
"""
from __future__ import annotations

from advlab.errors import ConfigError

PER_SECOND = "_per_s"


def work_seconds(metrics: dict) -> float:
    """The run's wall time less the source model's (both in the run's metrics)."""
    return float(metrics["time/total_s"]) - float(metrics.get("time/source_s", 0.0))


def objective(metrics: dict, name: str | None) -> float | None:
    """The value of `name` for a run with these metrics; None when no metric is named."""
    if not name:
        return None
    if name in metrics:
        return float(metrics[name])
    base = name.removesuffix(PER_SECOND)
    if name.endswith(PER_SECOND) and base in metrics and "time/total_s" in metrics:
        # a run takes at least a hundredth of a second: no division by a zero read off a coarse clock
        return float(metrics[base]) / max(work_seconds(metrics), 0.01)
    allowed = ", ".join(sorted(k for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)))
    raise ConfigError("optimized_metric", f"{name!r} is not a metric of this run; allowed: {allowed}, or any of them followed by {PER_SECOND}")
