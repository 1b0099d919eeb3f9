"""Entry-point plumbing shared by advlab's Hydra apps: a pre-flight check that composes every job of a
run or sweep and validates it before Hydra starts any work. The command line is Hydra's own: what
the user types is what Hydra receives (and records in .hydra/overrides.yaml)."""
from __future__ import annotations

import argparse
import functools
import os
import sys

from pathlib import Path

from advlab.config import CONF_DIR, GROUPS, MOVED_OUT_OF_METHOD, group_options, moved_key, validate
from advlab.errors import ConfigError
from advlab.preflight import check_objects
from advlab.utils.io import check_writable
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


def _values(o) -> list:
    try:
        raw = list(o.sweep_iterator()) if o.is_sweep_override() else [o.value()]
    except Exception:
        return []
    return [getattr(v, "text", v) for v in raw]  # QuotedString -> its text


def _group_nodes(choices: dict) -> dict[str, tuple[str, str]]:
    """Config node -> (its group, how an option is chosen there): `source.arch` -> (arch, arch@source.arch)."""
    nodes = {}
    for choice in choices:
        group, _, package = str(choice).partition("@")
        if group.startswith(("hydra", "/")) or "/" in group:
            continue
        nodes[package or group] = (group, f"{group}@{package}" if package else group)
    return nodes


def _group_hint(parsed, choices: dict, base, config_dir=None) -> None:
    """`source.arch=cnn` sets a node to a string: the option of a group composed at a node is chosen with
    Hydra's package syntax; a key below a node no option is chosen for yet (`source.dataset.data_dir`)
    needs one chosen first. Said before anything runs, naming the allowed options (a --config-dir's too)."""
    from omegaconf import OmegaConf

    nodes = _group_nodes(choices)
    options = functools.partial(group_options, extra_dir=config_dir)
    for o in parsed:
        if o.package or o.key_or_group in GROUPS or o.is_delete():
            continue
        key = target = o.key_or_group
        values = _values(o)
        spec = key.removesuffix(".method")  # `source.method=adversarial`: the spec of that name brings its attack
        if spec in nodes and nodes[spec][0] == "spec" and values and all(v in options("spec") for v in values):
            target = spec
        if target in nodes and nodes[target][1] != key and values and all(isinstance(v, str) for v in values):
            group, syntax = nodes[target]
            allowed = options(group)
            bad = [v for v in values if v not in allowed]
            shown = f"{syntax}={','.join(map(str, values))}" if not bad else f"{syntax}=<option>; unknown option {bad[0]!r}, allowed: {', '.join(allowed)}"
            what = f"its {group} option" if target == key else f"the {group} of {target}"
            raise ConfigError(key, f"is a config node: choose {what} with Hydra's package syntax, {shown}")
        parts = key.split(".")
        for i in range(1, len(parts)):
            node = ".".join(parts[:i])
            if node in nodes and OmegaConf.select(base, node, default=None, throw_on_missing=False) is None:
                group, syntax = nodes[node]
                raise ConfigError(key, f"{node} is null (no {group} chosen): choose one first with {syntax}=<option> "
                                       f"(allowed: {', '.join(options(group))}), then set {key}")


def _has_key(cfg, key: str) -> bool:
    """Whether the config has `key` (also one whose value is missing, `???`: it is set, not added)."""
    from omegaconf import OmegaConf

    parent, _, last = key.rpartition(".")
    node = OmegaConf.select(cfg, parent, default=None, throw_on_missing=False) if parent else cfg
    return OmegaConf.is_dict(node) and last in node.keys()


def _missing_key_hint(parsed, base, config_dir=None) -> None:
    """An override of a key the config does not have: an old form names its new form (`method.scheduler`
    → `scheduler`); otherwise the keys that node has (Hydra's own hint, `+key`, adds a key)."""
    from omegaconf import OmegaConf

    added = {o.key_or_group for o in parsed if o.type.name in ("ADD", "FORCE_ADD")}
    for o in parsed:
        key = o.key_or_group
        if o.package or key in GROUPS or "/" in key or key.startswith("hydra."):
            continue
        prefix = _PREFIX.get(o.type.name, "")
        value = None if o.is_delete() else o.input_line.partition("=")[2]
        new = moved_key(key, value, "~" if o.is_delete() else "", config_dir)
        if new is not None and not _has_key(base, key):
            group = next(g for g in MOVED_OUT_OF_METHOD if f"method.{g}" in key)
            raise ConfigError(key, f"old form: the {group} is a config group of its own now (conf/{group}/), not part of the method; use {new}")
        if prefix or key in added or _has_key(base, key):
            continue
        parent = key.rpartition(".")[0]
        node = OmegaConf.select(base, parent, default=None, throw_on_missing=False) if parent else None
        if not parent:  # Hydra's hint, +key, would add a top-level key no app reads
            allowed = ", ".join(sorted(str(k) for k in base if k != "hydra"))
            raise ConfigError(key, f"unknown top-level key {key!r}; allowed: {allowed}")
        if OmegaConf.is_dict(node):
            keys = ", ".join(sorted(str(k) for k in node))
            raise ConfigError(key, f"no such key in {parent} (its keys: {keys}); a key its YAML does not set is added with +{o.input_line}")


def _eps_hint(parsed) -> None:
    for o in parsed:
        if o.key_or_group == "eps" and not o.package and not o.is_delete():
            bad = [str(v) for v in _values(o) if str(v) not in group_options("eps")]
            if bad:
                raise ConfigError("eps", f"unknown option {bad[0]!r}; allowed: {', '.join(group_options('eps'))}; any other ε: eps.value={bad[0]}")


def _check_options(parsed) -> None:
    """Every group option named on the command line exists (one line naming the allowed ones)."""
    _eps_hint(parsed)
    for o in parsed:
        group = o.key_or_group
        if group not in GROUPS or o.is_delete():
            continue
        allowed = group_options(group)
        for value in _values(o):
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

    ns = _hydra_flags(args)
    if ns.help or ns.hydra_help or ns.info or ns.shell_completion or ns.cfg or ns.config_path:
        return  # Hydra's own introspection flags: nothing runs
    config_name = ns.config_name or config_name
    try:
        parsed = OverridesParser.create().parse_overrides(ns.overrides)
    except Exception as err:
        raise ConfigError("overrides", _one_line(err)) from None
    _check_config_dir(ns.config_dir)
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
        _group_hint(parsed, dict(base.hydra.runtime.choices), base, ns.config_dir)
        _missing_key_hint(parsed, base, ns.config_dir)
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
        _check_run_dir(first, ns.multirun)
    GlobalHydra.instance().clear()


class _MadeDirs:
    """The directories this process makes while a single run starts (os.mkdir audit events; an audit
    hook cannot be removed, so it is installed once and armed per run). The first directory made is
    Hydra's run directory (Hydra makes it, with its parents, before anything else); for it and its
    parents: whether each existed when first tried."""

    installed = False
    armed = False
    first: str | None = None
    existed: dict[str, bool] = {}

    @classmethod
    def arm(cls) -> None:
        if not cls.installed:
            sys.addaudithook(cls._audit)
            cls.installed = True
        cls.first, cls.existed, cls.armed = None, {}, True

    @classmethod
    def _audit(cls, event: str, args) -> None:
        if event != "os.mkdir" or not cls.armed or args[2] not in (None, -1):  # (path, mode, dir_fd)
            return
        path = os.path.abspath(os.fsdecode(args[0]))
        if cls.first is None:
            cls.first = path
        if path == cls.first or cls.first.startswith(path.rstrip(os.sep) + os.sep):
            cls.existed.setdefault(path, os.path.isdir(path))

    @classmethod
    def remove_stub(cls) -> None:
        """A refused run's directory, when this process made it and it holds only what Hydra wrote
        (`.hydra/`, the log): removed, with the parents this process made that are left empty. A run
        that failed once its work began (config_resolved.yaml, checkpoints, ...) keeps its directory,
        and one that existed before (a resumed run's, `hydra.run.dir=.`) is never touched."""
        import shutil

        cls.armed = False
        if cls.first is None or cls.existed.get(cls.first, True):
            return
        run_dir = Path(cls.first)
        stub = run_dir.is_dir() and (run_dir / ".hydra").is_dir() and all(
            p.name == ".hydra" or (p.is_file() and p.suffix == ".log") for p in run_dir.iterdir())
        if not stub:
            return
        shutil.rmtree(run_dir, ignore_errors=True)
        for parent in run_dir.parents:
            if cls.existed.get(str(parent), True):
                break
            try:
                parent.rmdir()  # only when empty: a concurrent run may have made its own directory there
            except OSError:
                break


def run_hydra_app(hydra_entry, prog: str, config_name: str) -> None:
    """Check the command line as Hydra will read it (sys.argv, untouched), then hand over to Hydra. A
    single run refused once Hydra has made its directory (exit 2: data, cache, checkpoint, ...) leaves
    no directory behind (see _MadeDirs.remove_stub); a sweep's jobs keep theirs (error.txt)."""
    # A W&B service inherited from the parent process (its address in WANDB_SERVICE) outlives a killed
    # run and keeps that run's ID "in use", so the resume could never reopen it: each advlab process
    # starts its own service, which ends with the process.
    os.environ.pop("WANDB_SERVICE", None)
    try:
        precheck(sys.argv[1:], config_name)
    except ConfigError as err:
        fail_with(prog, err)
    single = not _hydra_flags(sys.argv[1:]).multirun
    if single:
        _MadeDirs.arm()
    try:
        hydra_entry()
    except SystemExit as exit_:
        if single and exit_.code == 2:
            _MadeDirs.remove_stub()
        raise
    finally:
        _MadeDirs.armed = False
