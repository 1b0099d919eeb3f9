"""The pre-flight: every job of a run or sweep composed with Hydra's compose API and validated before
Hydra starts any work. The command line is Hydra's own: what the user types is what Hydra receives
(and records in .hydra/overrides.yaml)."""
from __future__ import annotations

import argparse
from pathlib import Path

from advlab.errors import ConfigError
from advlab.preflight.app_keys import validate
from advlab.preflight.objects import check_objects
from advlab.preflight.overrides import _PREFIX, check_new_keys, check_options, check_preset_app, group_hint, missing_key_hint
from advlab.runtime.resolvers import CONF_DIR, GROUPS
from advlab.utils.io import check_writable


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


def hydra_flags(args: list[str]) -> argparse.Namespace:
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


def _check_config_dir(config_dir: str | None) -> None:
    """A --config-dir that is not there: Hydra warns (a raw UserWarning) and then fails to find what it would add."""
    if config_dir is None:
        return
    path = Path(config_dir).expanduser()
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        raise ConfigError("--config-dir", f"{path.resolve()} {what}; allowed: a directory of config groups (e.g. attack/, arch/, experiment/)")


def _check_run_dir(first, multirun: bool) -> None:
    """The run (or sweep) directory Hydra will make can be made and takes real bytes: a read-only or
    full file system is one line before Hydra writes anything (Hydra's own error is a traceback, and on
    a full disk it leaves an empty .hydra/config.yaml behind). Nothing is created."""
    from omegaconf import OmegaConf

    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    try:
        path = OmegaConf.select(first, key)
    except Exception:  # an interpolation only Hydra's job can resolve: Hydra reports it
        return
    if path:
        check_writable(str(path), key, advice=f"point {key} at a writable directory")


def precheck(args: list[str], config_name: str = "train") -> None:
    """Compose and validate every job of the command line (one per sweep value) without running any;
    raises ConfigError. Nothing is rewritten: Hydra gets `args` as they are."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    ns = hydra_flags(args)
    if ns.help or ns.hydra_help or ns.info or ns.shell_completion or ns.cfg or ns.config_path:
        return  # Hydra's own introspection flags: nothing runs
    config_name = ns.config_name or config_name
    try:
        parsed = OverridesParser.create().parse_overrides(ns.overrides)
    except Exception as err:
        raise ConfigError("overrides", _one_line(err)) from None
    _check_config_dir(ns.config_dir)
    if not ns.config_dir:  # a --config-dir may add options and presets
        check_options(parsed)
        check_preset_app(parsed, config_name)
    searchpath = [f"hydra.searchpath=[file://{Path(ns.config_dir).resolve()}]"] if ns.config_dir else []
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="advlab_check"):
        groups_only = [o.input_line for o in parsed if (o.package or o.key_or_group in GROUPS) and not o.is_sweep_override()]
        try:
            base = compose(config_name=config_name, overrides=searchpath + groups_only, return_hydra_config=True)
        except Exception as err:
            raise _compose_error(err) from None
        group_hint(parsed, dict(base.hydra.runtime.choices), base, ns.config_dir)
        missing_key_hint(parsed, base, ns.config_dir)
        check_new_keys(parsed, base)
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
        _check_run_dir(first, ns.multirun)
    GlobalHydra.instance().clear()


