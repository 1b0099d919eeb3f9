"""Config location, resolvers, CLI shorthands and validation of user input before any work starts.

Bad input gets one line naming the key and the allowed values (exit code 2), never a traceback.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable

from omegaconf import DictConfig, OmegaConf

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


def run_group(name: str) -> str:
    """W&B group of a run: `name` alone, or `name-<date>_<time>` of its sweep in a Hydra multirun."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode == RunMode.MULTIRUN:
            sweep_dir = Path(hydra_cfg.sweep.dir)
            return f"{name}-{sweep_dir.parent.name}_{sweep_dir.name}"
    except Exception:  # not inside a Hydra job (compose API, tests)
        pass
    return name


def choice(group: str) -> str | None:
    """The option chosen for a defaults-list entry, also one at a package (`arch@source.arch`), which
    `${hydra:runtime.choices...}` cannot address (its key contains a dot)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().runtime.choices.get(group)
    except Exception:
        return None


def root_dir() -> str:
    return str(Path(os.environ.get("ADVLAB_ROOT") or os.getcwd()).resolve())


if not OmegaConf.has_resolver("advlab.run_group"):
    OmegaConf.register_new_resolver("advlab.root", root_dir)
    OmegaConf.register_new_resolver("advlab.run_group", run_group)
    OmegaConf.register_new_resolver("advlab.choice", choice)


def group_options(group: str) -> list[str]:
    folder = CONF_DIR / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


GROUPS = ("dataset", "arch", "method", "attack", "eps", "trainer", "callbacks", "logger", "paths", "experiment", "spec", "sweep")
# CLI shorthands for groups composed at another package: `source.arch=cnn` means `arch@source.arch=cnn`
# (with a `+` where the app's defaults list does not compose that package already).
ALIASES = {
    "source": "spec", "target": "spec",
    "source.arch": "arch", "target.arch": "arch",
    "source.attack": "attack", "target.attack": "attack",
    "source.dataset": "dataset", "target.dataset": "dataset",
    "eval_attack": "attack",
}


def composed_packages(config_name: str) -> set[str]:
    """`group@package` entries of an app's defaults list (conf/<config_name>.yaml)."""
    path = CONF_DIR / f"{config_name}.yaml"
    if not path.is_file():
        return set()
    entries = OmegaConf.load(path).get("defaults") or []
    return {str(k).lstrip("/") for e in entries if isinstance(e, (dict, DictConfig)) for k in e.keys()}


_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def rewrite_overrides(args: list[str], config_name: str = "train") -> list[str]:
    """Apply the CLI shorthands.

    `eps=0.37` (or `-m eps=0.1,0.37`): a number names the ε directly. Hydra group options must be
    strings, so numbers become `eps='0.3'` where an option file exists, else `eps.value=0.37`.
    `source.arch=cnn`, `target.dataset=mnist`, `eval_attack=fgsm`: a group option composed at
    that node (see ALIASES).
    """
    composed = composed_packages(config_name)
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
            name = f"{ALIASES[key]}@{key}"
            prefix, body = ("" if name in composed else "+"), f"{name}={value}"
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


def validate(cfg: DictConfig) -> None:
    """Type and range checks of the keys users set most; raises ConfigError."""
    _number(cfg, "eps.value", minimum=0, required=True)
    _number(cfg, "seed", minimum=0, integer=True)
    _number(cfg, "trainer.max_epochs", minimum=1, integer=True)
    _number(cfg, "source.max_epochs", minimum=1, integer=True)
    for node in ("attack", "eval_attack", "source.attack"):
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
    offline = _get(cfg, "logger.offline")
    if offline is not None and not isinstance(offline, bool):
        raise ConfigError("logger.offline", f"expected true or false, got {offline!r}")
