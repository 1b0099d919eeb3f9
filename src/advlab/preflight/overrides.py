"""What the command line says, checked before composing: every group option exists, a node is chosen with
Hydra's package syntax, an old key names its new form, an unknown key names the keys its node has."""
from __future__ import annotations

import functools

from advlab.errors import ConfigError
from advlab.runtime.resolvers import CONF_DIR, GROUPS, group_options

_PREFIX = {"ADD": "+", "FORCE_ADD": "++", "DEL": "~", "CHANGE": ""}

# Nodes that moved out of the method node into config groups of their own (a run's `optimizer` and
# `scheduler`; a model spec's `source.optimizer`, ...): their old keys are refused naming the new form.
MOVED_OUT_OF_METHOD = ("optimizer", "scheduler")


def moved_key(key: str, value: str | None, prefix: str = "", extra_dir=None) -> str | None:
    """The new form of an override of an old key, or None: `method.optimizer.lr=-1` → `optimizer.lr=-1`,
    `method.scheduler=one_cycle` → `scheduler=one_cycle`, `source.method.scheduler=step` →
    `scheduler@source.scheduler=step`. `value`: the override's value text (None for `~key`); `prefix`:
    the override's `~` (a deletion keeps it); `extra_dir`: a --config-dir (its options too)."""
    parts = key.split(".")
    for i in range(len(parts) - 1):
        if parts[i] != "method" or parts[i + 1] not in MOVED_OUT_OF_METHOD:
            continue
        group, node = parts[i + 1], ".".join(parts[:i] + parts[i + 1 :])
        chooses = i + 2 == len(parts)  # the node itself: an option of its group
        if chooses and node != group and prefix != "~":
            node = f"{group}@{node}"
        options = group_options(group, extra_dir)
        if chooses and value is not None and any(v not in (*options, "null") for v in value.split(",")):
            return f"{prefix}{node}=<option> (allowed: {', '.join(options)}, null)"
        return f"{prefix}{node}" + ("" if value is None else f"={value}")
    return None



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


def group_hint(parsed, choices: dict, base, config_dir=None) -> None:
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


def missing_key_hint(parsed, base, config_dir=None) -> None:
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


def check_options(parsed) -> None:
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


# presets of the apps that compare models, told apart by their top-level key (the first that matches):
# (key, config name, what the preset does, the app)
PRESET_APPS = (("probe", "probe", "probes texture and shape", "advlab-probe"),
               ("models", "eval", "compares several models", "advlab-eval"))


def check_preset_app(parsed, config_name: str) -> None:
    """advlab-eval's presets (they name `models`) and advlab-probe's (`probe`) compose only in their own
    app; one of them given to another app is refused with the app it is for."""
    from omegaconf import OmegaConf

    for o in parsed:
        if o.key_or_group != "experiment" or o.is_sweep_override():
            continue
        path = CONF_DIR / "experiment" / f"{o.value()}.yaml"
        preset = (OmegaConf.load(path) or {}) if path.is_file() else {}
        app = next((entry for entry in PRESET_APPS if entry[0] in preset), None)
        if app is not None and app[1] != config_name:
            raise ConfigError("experiment", f"this preset {app[2]}: it is an {app[3]} preset ({app[3]} experiment=...)")


def check_new_keys(parsed, base) -> None:
    """`+foo=1` adds a key: at the top level only one the app knows (`+method.x=1` is checked by the
    method's constructor signature, advlab.preflight.objects)."""
    allowed = sorted(str(k) for k in base if k != "hydra")
    for o in parsed:
        top = o.key_or_group.split(".")[0]
        if o.type.name in ("ADD", "FORCE_ADD") and not o.package and o.key_or_group not in GROUPS and top not in base:
            raise ConfigError(o.key_or_group, f"unknown top-level key {top!r}; allowed: {', '.join(allowed)}")


