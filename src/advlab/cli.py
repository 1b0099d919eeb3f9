"""Entry-point plumbing shared by advlab's Hydra apps: a pre-flight check that composes every job of a
run or sweep and validates it before Hydra starts any work. The command line is Hydra's own: what
the user types is what Hydra receives (and records in .hydra/overrides.yaml)."""
from __future__ import annotations

import argparse
import os
import sys

from pathlib import Path

from advlab.config import CONF_DIR, GROUPS, group_options, validate
from advlab.errors import ConfigError
from advlab.preflight import check_objects
from advlab.utils.wrapper import fail_with

_PREFIX = {"ADD": "+", "FORCE_ADD": "++", "DEL": "~", "CHANGE": ""}


def _one_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip() and "HYDRA_FULL_ERROR" not in ln]
    return " ".join(lines)


def _compose_error(err: Exception) -> ConfigError:
    """A composition error as one line; malformed YAML is named by its file and line."""
    import re

    text = _one_line(err)
    where = re.search(r'in "([^"]+\.yaml)", line (\d+)', text)
    return ConfigError(f"{where[1]}:{where[2]}" if where else "overrides", text)


def _variants(parsed) -> list[list[str]]:
    """Each sweep value once (with the first value of the other sweeps): enough to check every
    option without composing the whole cartesian product."""
    fixed, sweeps = [], []
    for o in parsed:
        name = o.key_or_group + (f"@{o.package}" if o.package else "")
        prefix = _PREFIX.get(o.type.name, "")
        if o.is_sweep_override():
            try:
                values = list(o.sweep_string_iterator())
            except Exception:  # glob() and friends: Hydra expands them later
                continue
            sweeps.append([f"{prefix}{name}={v}" for v in values])
        else:
            fixed.append(o.input_line)
    if not sweeps:
        return [fixed]
    firsts = [s[0] for s in sweeps]
    out = []
    for i, s in enumerate(sweeps):
        for value in s:
            out.append(fixed + firsts[:i] + [value] + firsts[i + 1 :])
    return out


def _several(devices) -> bool:
    if isinstance(devices, (list, tuple)) or (hasattr(devices, "__len__") and not isinstance(devices, str)):
        return len(devices) > 1
    try:
        return int(devices) > 1
    except (TypeError, ValueError):  # "auto": one device unless there are several; not refused
        return False


def check_ddp_in_multirun(cfg, launcher) -> None:
    """Lightning starts DDP ranks > 0 by re-running the command line: in a multirun (`-m`) that is the
    whole sweep again, in every rank. Allowed only when the launcher starts the ranks itself (SLURM
    with tasks_per_node = devices)."""
    trainer = cfg.get("trainer") or {}
    strategy = trainer.get("strategy", "auto")
    if not isinstance(strategy, str) or not _several(trainer.get("devices", 1)):
        return
    launched_here = strategy == "auto" or (strategy.startswith("ddp") and "spawn" not in strategy and "fork" not in strategy)
    external = int((launcher or {}).get("tasks_per_node", 1) or 1) > 1
    if launched_here and not external:
        raise ConfigError("trainer.strategy", f"{strategy} on {trainer.get('devices')} devices cannot run inside a multirun (-m): "
                          "Lightning would re-run the whole sweep in every rank; run each DDP job on its own (no -m), or on SLURM "
                          "with hydra/launcher=slurm hydra.launcher.tasks_per_node=<devices>")


def _hydra_flags(args: list[str]) -> argparse.Namespace:
    """Hydra's own command-line flags (those of `hydra.main`) and the overrides."""
    parser = argparse.ArgumentParser(add_help=False)
    for flags in (("--help", "-h"), ("--hydra-help",), ("--version",), ("--resolve",), ("--run", "-r"), ("--multirun", "-m"),
                  ("--shell-completion", "-sc"), ("--experimental-rerun",)):
        parser.add_argument(*flags, action="store_true")
    for flags in (("--cfg", "-c"), ("--package", "-p"), ("--config-path", "-cp"), ("--config-name", "-cn"), ("--config-dir", "-cd")):
        parser.add_argument(*flags)
    parser.add_argument("--info", "-i", nargs="?", const="all")
    parser.add_argument("overrides", nargs="*")
    return parser.parse_known_args(args)[0]


def _group_hint(parsed, choices: dict) -> None:
    """`source.arch=cnn` sets a node to a string; the option of a group composed at that node is chosen
    with Hydra's package syntax: say so before anything runs."""
    for o in parsed:
        if o.package or o.key_or_group in GROUPS or o.is_delete():
            continue
        try:
            values = [getattr(v, "text", v) for v in (list(o.sweep_iterator()) if o.is_sweep_override() else [o.value()])]
        except Exception:
            continue
        key = o.key_or_group
        for choice in choices:
            group, _, package = str(choice).partition("@")
            if package == key and values and all(isinstance(v, str) and v in group_options(group) for v in values):
                raise ConfigError(key, f"is a config node: choose its {group} option with Hydra's package syntax, "
                                       f"{group}@{key}={','.join(map(str, values))}")


def _eps_hint(parsed) -> None:
    for o in parsed:
        if o.key_or_group == "eps" and not o.package and not o.is_delete():
            try:
                values = [getattr(v, "text", v) for v in (list(o.sweep_iterator()) if o.is_sweep_override() else [o.value()])]
            except Exception:
                continue
            bad = [str(v) for v in values if str(v) not in group_options("eps")]
            if bad:
                raise ConfigError("eps", f"unknown option {bad[0]!r}; allowed: {', '.join(group_options('eps'))}; any other ε: eps.value={bad[0]}")


def _check_options(parsed) -> None:
    """Every group option named on the command line exists (one line naming the allowed ones)."""
    _eps_hint(parsed)
    for o in parsed:
        group = o.key_or_group
        if group not in GROUPS or o.is_delete():
            continue
        try:
            raw = list(o.sweep_iterator()) if o.is_sweep_override() else [o.value()]
        except Exception:
            continue
        values = [getattr(v, "text", v) for v in raw]  # QuotedString -> its text
        allowed = group_options(group)
        for value in values:
            if value is not None and str(value) not in allowed:
                shown = group + (f"@{o.package}" if o.package else "")
                raise ConfigError(shown, f"unknown option {value!r}; allowed: {', '.join(allowed)}")


def _check_preset_app(parsed, config_name: str) -> None:
    """advlab-eval's presets (they name `models`) cannot compose in advlab-train: say which app they are for."""
    from omegaconf import OmegaConf

    for o in parsed:
        if o.key_or_group == "experiment" and not o.is_sweep_override() and config_name == "train":
            path = CONF_DIR / "experiment" / f"{o.value()}.yaml"
            if path.is_file() and "models" in (OmegaConf.load(path) or {}):
                raise ConfigError("experiment", "this preset compares several models: it is an advlab-eval preset (advlab-eval experiment=...)")


def _check_new_keys(parsed, base) -> None:
    """`+foo=1` adds a key: at the top level only one the app knows (`+method.x=1` is checked by the
    method's constructor signature, advlab.preflight)."""
    allowed = sorted(str(k) for k in base if k != "hydra")
    for o in parsed:
        top = o.key_or_group.split(".")[0]
        if o.type.name in ("ADD", "FORCE_ADD") and not o.package and o.key_or_group not in GROUPS and top not in base:
            raise ConfigError(o.key_or_group, f"unknown top-level key {top!r}; allowed: {', '.join(allowed)}")


def precheck(args: list[str], config_name: str = "train") -> None:
    """Compose and validate every job of the command line (one per sweep value) without running any;
    raises ConfigError. Nothing is rewritten: Hydra gets `args` as they are."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    ns = _hydra_flags(args)
    if ns.help or ns.hydra_help or ns.info or ns.shell_completion or ns.cfg or ns.config_path:
        return  # Hydra's own introspection flags: nothing runs
    config_name = ns.config_name or config_name
    try:
        parsed = OverridesParser.create().parse_overrides(ns.overrides)
    except Exception as err:
        raise ConfigError("overrides", _one_line(err)) from None
    if not ns.config_dir:  # a --config-dir may add options and presets
        _check_options(parsed)
        _check_preset_app(parsed, config_name)
    searchpath = [f"hydra.searchpath=[file://{Path(ns.config_dir).resolve()}]"] if ns.config_dir else []
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="advlab_check"):
        groups_only = [o.input_line for o in parsed if (o.package or o.key_or_group in GROUPS) and not o.is_sweep_override()]
        try:
            base = compose(config_name=config_name, overrides=searchpath + groups_only, return_hydra_config=True)
        except Exception as err:
            raise _compose_error(err) from None
        _group_hint(parsed, dict(base.hydra.runtime.choices))
        _check_new_keys(parsed, base)
        try:
            first = compose(config_name=config_name, overrides=searchpath + [o.input_line for o in parsed if not o.is_sweep_override()],
                            return_hydra_config=True)
        except Exception as err:
            raise _compose_error(err) from None
        # sweeps defined in configs (`sweep=...` presets set hydra.sweeper.params) are checked too
        params = OmegaConf.select(first, "hydra.sweeper.params") or {}
        if params:
            swept = {o.key_or_group + (f"@{o.package}" if o.package else "") for o in parsed if o.is_sweep_override()}
            extra = [f"{k}={v}" for k, v in params.items() if k.lstrip("+") not in swept]
            parsed = OverridesParser.create().parse_overrides(extra) + list(parsed)
        for variant in _variants(parsed):
            try:
                cfg = compose(config_name=config_name, overrides=searchpath + variant)
            except ConfigError:
                raise
            except Exception as err:
                raise _compose_error(err) from None
            validate(cfg)
            check_objects(cfg)
            if ns.multirun:
                check_ddp_in_multirun(cfg, OmegaConf.select(first, "hydra.launcher"))
    GlobalHydra.instance().clear()


def run_hydra_app(hydra_entry, prog: str, config_name: str) -> None:
    """Check the command line as Hydra will read it (sys.argv, untouched), then hand over to Hydra."""
    # A W&B service inherited from the parent process (its address in WANDB_SERVICE) outlives a killed
    # run and keeps that run's ID "in use", so the resume could never reopen it: each advlab process
    # starts its own service, which ends with the process.
    os.environ.pop("WANDB_SERVICE", None)
    try:
        precheck(sys.argv[1:], config_name)
    except ConfigError as err:
        fail_with(prog, err)
    hydra_entry()
