"""Config location, resolvers, CLI shorthands and validation of user input before any work starts.

Bad input gets one line naming the key and the allowed values (exit code 2), never a traceback.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable

from omegaconf import DictConfig, ListConfig, OmegaConf

from advlab.errors import ConfigError


def conf_dir() -> Path:
    """`conf/` shipped inside the wheel, or the repository's top-level `conf/` (editable install)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parents[1] / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"advlab's conf/ directory not found next to {here}")


CONF_DIR = conf_dir()

if not OmegaConf.has_resolver("advlab.wandb_offline"):
    # W&B is offline unless the user opts in (logger.offline=false, or WANDB_MODE=online).
    OmegaConf.register_new_resolver("advlab.wandb_offline", lambda: os.environ.get("WANDB_MODE", "offline").lower() not in ("online", "run"))


def group_options(group: str) -> list[str]:
    folder = CONF_DIR / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


GROUPS = ("dataset", "arch", "method", "attack", "eps", "trainer", "callbacks", "logger", "paths", "experiment")
# CLI shorthands for groups composed at another package: `source.arch=cnn`, `eval_attack=pgd_linf`.
ALIASES = {"source.arch": "+arch@source.arch", "eval_attack": "attack@eval_attack", "source.attack": "+attack@source.attack"}
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def rewrite_overrides(args: list[str]) -> list[str]:
    """Apply the CLI shorthands.

    `eps=0.37` (or `-m eps=0.1,0.37`): a number names the ε directly. Hydra group options must be
    strings, so numbers become `eps='0.3'` where an option file exists, else `eps.value=0.37`.
    """
    out = []
    for arg in args:
        prefix = ""
        body = arg
        for p in ("++", "+", "~"):
            if body.startswith(p):
                prefix, body = p, body[len(p):]
                break
        key, sep, value = body.partition("=")
        if sep and key in ALIASES and not prefix:
            alias = ALIASES[key]
            prefix, body = ("+", f"{alias[1:]}={value}") if alias.startswith("+") else ("", f"{alias}={value}")
        elif sep and key == "eps" and not prefix:
            values = value.split(",")
            if values and all(_NUMBER.match(v.strip()) for v in values):
                options = set(group_options("eps"))
                if all(v.strip() in options for v in values):
                    body = "eps=" + ",".join(f"'{v.strip()}'" for v in values)
                else:
                    body = "eps.value=" + ",".join(v.strip() for v in values)
        out.append(prefix + body)
    return out


# -- validation of a composed config ----------------------------------------------------------------

def _get(cfg: DictConfig, key: str):
    return OmegaConf.select(cfg, key, default=None, throw_on_missing=False)


def _number(cfg, key, *, minimum=None, integer=False, required=False, strict_min=False):
    value = _get(cfg, key)
    if value is None:
        if required:
            raise ConfigError(key, "is required")
        return
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, int) and not isinstance(value, bool) if integer else isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok_type:
        bound = f" >= {minimum}" if minimum is not None else ""
        raise ConfigError(key, f"expected {kind}{bound}, got {value!r}")
    if minimum is not None and (value < minimum or (strict_min and value == minimum)):
        raise ConfigError(key, f"expected {kind} {'>' if strict_min else '>='} {minimum}, got {value!r}")


def _choice(cfg, key, allowed: Iterable[str]):
    value = _get(cfg, key)
    allowed = tuple(allowed)
    if value is not None and value not in allowed:
        raise ConfigError(key, f"unknown value {value!r}; allowed: {', '.join(allowed)}")


# Choices of the perturbation-learning method (kept here so validation needs no torch import).
TARGET_RULES = ("det", "rand", "uniform")
BASES = ("natural", "uniform")
TRAIN_ON = ("adv", "delta")
# Mutual-information estimators (advlab.analysis.information) and the MI callback's key.
MI_ESTIMATORS = ("kde_upper", "kde_lower", "binning", "renyi")
MI_CALLBACK = "callbacks.mutual_information"


def validate(cfg: DictConfig) -> None:
    """Type and range checks of the keys users set most; raises ConfigError."""
    _number(cfg, "eps.value", minimum=0, required=True)
    _number(cfg, "seed", minimum=0, integer=True)
    _number(cfg, "trainer.max_epochs", minimum=1, integer=True)
    _number(cfg, "source.max_epochs", minimum=1, integer=True)
    for node in ("attack", "eval_attack", "source.attack", f"{MI_CALLBACK}.attack"):
        if _get(cfg, node) is None:
            continue
        _number(cfg, f"{node}.eps", minimum=0)
        _choice(cfg, f"{node}.norm", ("linf", "l2"))
        _number(cfg, f"{node}.steps", minimum=1, integer=True)
        _number(cfg, f"{node}.restarts", minimum=1, integer=True)
        _number(cfg, f"{node}.step_size", minimum=0)
        _number(cfg, f"{node}.rel_step_size", minimum=0)
    for key in ("batch_size", "eval_batch_size"):
        _number(cfg, f"dataset.{key}", minimum=1, integer=True)
    _number(cfg, "dataset.val_fraction", minimum=0)
    _number(cfg, "dataset.test_fraction", minimum=0)
    _choice(cfg, "method.target_rule", TARGET_RULES)
    _choice(cfg, "method.base", BASES)
    _choice(cfg, "method.train_on", TRAIN_ON)
    _choice(cfg, "source.method", ("standard", "adversarial"))
    _number(cfg, "method.adv_ratio", minimum=0)
    for key in ("method.optimizer.lr", "source.optimizer.lr"):
        _number(cfg, key, minimum=0, strict_min=True)
    _number(cfg, "arch.width", minimum=1, integer=True)
    _number(cfg, "arch.depth", minimum=1, integer=True)
    _choice(cfg, "arch.normalize", ("standardize", "center", "none"))
    # method=robust_dataset (representation inversion)
    _number(cfg, "method.steps", minimum=1, integer=True)
    _number(cfg, "method.step_size", minimum=0, strict_min=True)
    # callbacks=mi (mutual information during training)
    _number(cfg, f"{MI_CALLBACK}.n_points", minimum=2, integer=True)
    _choice(cfg, f"{MI_CALLBACK}.split", ("test", "val", "train"))
    for key in ("noise_var", "bin_size", "renyi_alpha"):
        _number(cfg, f"{MI_CALLBACK}.{key}", minimum=0, strict_min=True)
    for estimator in _get(cfg, f"{MI_CALLBACK}.estimators") or ():
        if estimator not in MI_ESTIMATORS:
            raise ConfigError(f"{MI_CALLBACK}.estimators", f"unknown estimator {estimator!r}; allowed: {', '.join(MI_ESTIMATORS)}")
    offline = _get(cfg, "logger.offline")
    if offline is not None and not isinstance(offline, bool):
        raise ConfigError("logger.offline", f"expected true or false, got {offline!r}")
    if _get(cfg, "probe") is not None:
        _validate_probe(cfg)


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
        raise ConfigError("models", "name at least one model spec, e.g. models.NT.method=standard")
    for name in models:
        _choice(cfg, f"models.{name}.method", ("standard", "adversarial"))
        _number(cfg, f"models.{name}.max_epochs", minimum=1, integer=True)
        if _get(cfg, f"models.{name}.method") == "adversarial" and _get(cfg, f"models.{name}.attack") is None:
            raise ConfigError(f"models.{name}.attack", "an adversarial model needs an attack, e.g. models.AT.attack=${attack}")
    for estimator in _get(cfg, "probe.mi.estimators") or ():
        if estimator not in MI_ESTIMATORS:
            raise ConfigError("probe.mi.estimators", f"unknown estimator {estimator!r}; allowed: {', '.join(MI_ESTIMATORS)}")
