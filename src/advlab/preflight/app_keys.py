"""The app keys no constructor owns, checked on a composed config: numbers, lists and choices of
advlab-eval's and advlab-probe's top-level keys and a model spec's (before any work)."""
from __future__ import annotations

from typing import Iterable

from omegaconf import DictConfig, ListConfig, OmegaConf

from advlab.attack_losses import LOSSES as ATTACK_LOSSES
from advlab.errors import ConfigError, check_number
from advlab.runtime.objective import check_optimized_metric
from advlab.runtime.resolvers import CONF_DIR, group_options


def _get(cfg: DictConfig, key: str):
    return OmegaConf.select(cfg, key, default=None, throw_on_missing=False)


def _number(cfg, key, *, minimum=None, integer=False, required=False, strict_min=False):
    """The value at `key` through the one number checker (advlab.errors.check_number)."""
    value = _get(cfg, key)
    if value is None:
        if required:
            raise ConfigError(key, "is required")
        return
    check_number(key, value, minimum, integer=integer, strict=strict_min)


def _choice(cfg, key, allowed: Iterable[str]):
    value = _get(cfg, key)
    allowed = tuple(allowed)
    if value is not None and value not in allowed:
        raise ConfigError(key, f"unknown value {value!r}; allowed: {', '.join(allowed)}")


# advlab-eval's choices.
POINTS = ("all", "common_correct")


def _list(cfg, key: str, allowed=None, *, numbers=False, ascending=False, nonempty=True) -> list:
    value = _get(cfg, key)
    if value is None:
        return []
    if not OmegaConf.is_list(value) and not isinstance(value, (list, tuple)):
        raise ConfigError(key, f"expected a list, e.g. [a, b], got {value!r}")
    items = list(value)
    if nonempty and not items:
        raise ConfigError(key, "must not be empty" + (f"; allowed: {', '.join(allowed)}" if allowed else ""))
    for item in items:
        if allowed is not None and item not in allowed:
            raise ConfigError(key, f"unknown value {item!r}; allowed: {', '.join(allowed)}")
        if numbers and (isinstance(item, bool) or not isinstance(item, (int, float)) or item < 0):
            raise ConfigError(key, f"expected numbers >= 0, got {item!r}")
    if ascending and any(b < a for a, b in zip(items, items[1:])):
        raise ConfigError(key, f"must be in ascending order, got {items}")
    return items


def _model_spec(cfg, key: str) -> None:
    """A model spec's keys: advlab-train's `source`, advlab-transfer's `source` / `target`, the
    `models.<name>` of advlab-eval and advlab-probe."""
    method = _get(cfg, f"{key}.method")
    if method == "ensemble":  # several specs (conf/spec/ensemble.yaml), each checked as one
        from advlab.artifacts.model_sources import ensemble_members

        for member in ensemble_members(_get(cfg, key), key):
            _model_spec(cfg, f"{key}.members.{member}")
        return
    if method == "external":  # a weight file: checked here, imports torch
        from advlab.models.external import check_spec

        check_spec(_get(cfg, key), key)
        return
    if method is not None and not OmegaConf.is_dict(method):
        specs = "|".join(group_options("spec"))
        raise ConfigError(f"{key}.method", f"unknown value {method!r}; allowed: a method node, chosen with the spec: spec@{key}={specs}")
    _number(cfg, f"{key}.max_epochs", minimum=1, integer=True)
    _number(cfg, f"{key}.optimizer.lr", minimum=0, strict_min=True)


def _validate_robustness(cfg: DictConfig) -> None:
    """advlab-eval's `robustness` node and the ε of its standalone AutoAttack figure."""
    attacks = _get(cfg, "robustness.attacks") or {}
    _list(cfg, "robustness.run", tuple(attacks), nonempty=False)
    for norm in _get(cfg, "robustness.eps") or ("linf", "l2"):
        _list(cfg, f"robustness.eps.{norm}", numbers=True, ascending=True)
    _list(cfg, "robustness.losses", ATTACK_LOSSES)
    _number(cfg, "robustbench_eps", minimum=0)
    for name in _get(cfg, "robustness.run") or ():
        norm = attacks[name].get("norm", "linf")
        if _get(cfg, f"robustness.eps.{norm}") is None:
            raise ConfigError(f"robustness.eps.{norm}", f"attack {name} runs at norm {norm}, which has no ε grid; allowed: a list of ε")


def _validate_eval(cfg: DictConfig) -> None:
    """advlab-eval's own keys: models, seeds, analyses and their settings."""
    from advlab.analysis.protocol import analysis_names  # no torch: cheap
    from advlab.artifacts.model_sources import checkpoint_files

    seeds = _list(cfg, "seeds", nonempty=True)
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in seeds):
        raise ConfigError("seeds", f"expected a list of integers >= 0, got {list(seeds)}")
    models = _get(cfg, "models")
    if models is not None and not OmegaConf.is_dict(models):
        raise ConfigError("models", f"expected a mapping name -> model spec or {{checkpoint: <run dir>}}, got {models!r}")
    for name in models or {}:
        entry = models[name]
        key = f"models.{name}"
        if entry is not None and not OmegaConf.is_dict(entry):
            raise ConfigError(key, f"expected a model spec (spec@{key}=standard, ...) or {{checkpoint: <run dir>}}, got {entry!r}")
        if entry is not None and "checkpoint" in entry:
            extra = sorted(set(entry) - {"checkpoint"})
            if extra:
                raise ConfigError(key, f"a checkpoint entry takes no spec keys ({', '.join(extra)}): the run's config gives them")
            paths = entry.checkpoint if OmegaConf.is_list(entry.checkpoint) else [entry.checkpoint]
            for path in paths:
                checkpoint_files(path, f"{key}.checkpoint")
            continue
        _model_spec(cfg, key)
    _number(cfg, "model_defaults.max_epochs", minimum=1, integer=True)
    checkpoints = _list(cfg, "checkpoints", nonempty=False)
    for i, path in enumerate(checkpoints):
        checkpoint_files(path, f"checkpoints[{i}]")
    if not models and not checkpoints:
        raise ConfigError("models", "nothing to evaluate: give model specs in `models` or run directories in `checkpoints`")
    _list(cfg, "analyses", analysis_names(cfg, CONF_DIR), nonempty=False)
    _choice(cfg, "points", POINTS)
    _number(cfg, "max_points", minimum=1, integer=True)
    _validate_robustness(cfg)



def validate(cfg: DictConfig) -> None:
    """Type and range checks of the keys users set most; raises ConfigError."""
    _number(cfg, "seed", minimum=0, integer=True)
    _number(cfg, "trainer.max_epochs", minimum=1, integer=True)
    # advlab-eval's and advlab-transfer's own batch; the top-level `batch_size` is its old form (one release)
    for key in ("eval.batch_size", "transfer.batch_size", "batch_size"):
        _number(cfg, key, minimum=1, integer=True)
    for spec in ("source", "target"):
        _model_spec(cfg, spec)
    if _get(cfg, "derived.measure_transfer") and _get(cfg, "source.method") == "external":  # its target is trained from the source's spec
        raise ConfigError("derived.measure_transfer", "needs a trained source spec, not spec@source=external; allowed: false")
    _number(cfg, "optimizer.lr", minimum=0, strict_min=True)
    offline = _get(cfg, "logger.offline")
    if offline is not None and not isinstance(offline, bool):
        raise ConfigError("logger.offline", f"expected true or false, got {offline!r}")
    if _get(cfg, "task_name") == "eval":
        _validate_eval(cfg)
    if _get(cfg, "probe") is not None:
        _validate_probe(cfg)
    check_optimized_metric(cfg)  # a search's objective: a metric the run logs (advlab.runtime.objective.METRICS)


def _validate_probe(cfg: DictConfig) -> None:
    """advlab-probe's keys (whether the patch grids divide the image size is checked once the data is loaded)."""
    for key in ("saturation", "patch_shuffle"):
        levels = _get(cfg, f"probe.{key}")
        if not isinstance(levels, ListConfig) or not len(levels):
            raise ConfigError(f"probe.{key}", f"must be a non-empty list of levels, got {levels!r}")
    for p in cfg.probe.saturation:
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not p > 0:
            raise ConfigError("probe.saturation", f"levels must be numbers > 0, got {p!r}")
    for k in cfg.probe.patch_shuffle:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError("probe.patch_shuffle", f"levels must be integers >= 1, got {k!r}")
    n = _get(cfg, "probe.n_points")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ConfigError("probe.n_points", f"must be null (the whole test set) or an integer >= 1, got {n!r}")
    _number(cfg, "probe.batch_size", minimum=1, integer=True)
    models = _get(cfg, "models")
    if not models:
        raise ConfigError("models", "name at least one model spec, e.g. +spec@models.NT=standard")
    for name in models:
        _model_spec(cfg, f"models.{name}")  # an adversarial one without an attack: its method's constructor (pre-flight)

