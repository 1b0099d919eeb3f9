"""The value a run returns to a hyperparameter search (`optimized_metric`, set by the presets in
conf/hparams_search/; Hydra's Optuna sweeper takes it as the trial's value).

`optimized_metric` names a key of the run's metrics (`val/acc`), or `<metric>_per_s`: that metric per
second of the run's own work, its wall time (`time/total_s`) less the time it spent obtaining the
source model (`time/source_s`). The source model is the same for every trial of a search that
does not change it: the first trial trains it, the others take it from the cache, and counting
it would make the first trial look slow.

`METRICS` is the one list of the metrics each app writes to metrics.json; the pre-flight refuses an
`optimized_metric` the run can never log (`check_optimized_metric`) before any trial runs.
"""
from __future__ import annotations

import fnmatch

from advlab.errors import ConfigError

PER_SECOND = "_per_s"

# The metrics each app writes to metrics.json, by what brings them: "" every run of the app, a config
# node (logged when it is set) or the `_target_` of the run's derived dataset (`derived`) or of one of its
# callbacks (`callbacks.*`). `*` stands for any text (the mutual-information callback's layer names).
METRICS = {
    "train": {
        "": ("train/acc", "val/acc", "val/acc_best", "test/acc", "time/total_s"),
        "eval_attack": ("test/adv_acc", "test/autoattack_acc"),  # the last with attack@eval_attack=autoattack
        # every derived dataset: its source model's metrics, and the time spent obtaining it
        "derived": ("time/source_s", "source/train/acc", "source/val/acc", "source/test/acc"),
        "advlab.derived.PerturbationDataset": (
            "test/agreement", "perturb/success_rate", "perturb/delta_l2_mean", "perturb/delta_linf_max", "perturb/delta_linf_mean",
            "perturb/weak_attack", "perturb/budget_bound",
            # derived.measure_transfer=true
            "source/clean_acc", "source/adv_acc", "source/fool_rate", "target/clean_acc", "transfer/target_acc", "transfer/fool_rate",
            "transfer/n", "transfer/same_model", "transfer/eps"),
        "advlab.derived.RobustDataset": ("dataset/distance_initial", "dataset/distance_final", "dataset/distance_reduction",
                                         "dataset/source_agreement", "source/test/adv_acc"),
        "advlab.callbacks.MutualInformation": ("mi/*/I_XT", "mi/*/I_TY", "mi/seconds_per_call"),
        "advlab.callbacks.OverfittingGuard": ("guard/collapsed", "guard/collapsed_epoch"),
    },
    "transfer": {
        "": ("source/clean_acc", "source/adv_acc", "source/fool_rate", "target/clean_acc", "transfer/target_acc",
             "transfer/fool_rate", "transfer/n", "transfer/same_model", "time/total_s"),
    },
}


def _targets(cfg) -> set[str]:
    """The config nodes and `_target_`s of a composed run config that bring metrics of their own."""
    from omegaconf import OmegaConf

    found = {""}
    for node in ("eval_attack", "derived"):
        if OmegaConf.select(cfg, node, default=None, throw_on_missing=False) is not None:
            found.add(node)
    old = OmegaConf.select(cfg, "method.derived", default=None, throw_on_missing=False)  # the deprecated form
    if isinstance(old, str) and old:
        found.add("derived")
        found.add(old)
    nodes = [OmegaConf.select(cfg, "derived", default=None, throw_on_missing=False)]
    callbacks = OmegaConf.select(cfg, "callbacks", default=None, throw_on_missing=False)
    nodes += list(callbacks.values()) if OmegaConf.is_dict(callbacks) else []
    found.update(str(n["_target_"]) for n in nodes if OmegaConf.is_dict(n) and "_target_" in n)
    return found


def loggable(cfg, app: str) -> list[str]:
    """The metrics a run of `app` with this composed config can write to metrics.json (patterns with `*`)."""
    table = METRICS.get(app, {})
    return [name for source in table if source in _targets(cfg) for name in table[source]]


def check_optimized_metric(cfg) -> None:
    """`optimized_metric` (when set) names a metric this run can log, or one of them followed by `_per_s`."""
    name = cfg.get("optimized_metric")
    app = cfg.get("task_name")
    if not name or app not in METRICS:
        return
    allowed = loggable(cfg, app)
    base = name.removesuffix(PER_SECOND) if name.endswith(PER_SECOND) else name
    if not any(fnmatch.fnmatchcase(n, pattern) for pattern in allowed for n in {name, base}):
        raise ConfigError("optimized_metric", f"unknown value {name!r}: advlab-{app} does not log it with this config; allowed: "
                                              f"{', '.join(allowed)}, or any of them followed by {PER_SECOND}")


def work_seconds(metrics: dict) -> float:
    """The run's wall time less the source model's (both in the run's metrics)."""
    return float(metrics["time/total_s"]) - float(metrics.get("time/source_s", 0.0))


def objective(metrics: dict, name: str | None) -> float | None:
    """The value of `name` for a run with these metrics; None when no metric is named. A metric the
    run could log but did not (the pre-flight checked it can: `check_optimized_metric`) is an error."""
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
