"""RobustBench's model zoo by name: the optional extra ``pip install 'advlab[robustbench]'``.

A spec ``spec@<node>=robustbench`` (conf/spec/robustbench.yaml) is an external model whose node
``robustbench: {name, dataset, threat_model, model_dir}`` names a zoo entry. Its architecture is the
entry's own (``robustbench.model_zoo.models.model_dicts[dataset][threat_model][name]["model"]()``);
its weights lie where robustbench's ``load_model`` keeps them, ``<model_dir>/<dataset>/<threat_model>/
<name>.pt``. advlab reads that file itself with ``weights_only=True`` (robustbench's own loader calls
``torch.load`` without it, robustbench/utils.py) and never downloads: a missing file is one line
naming where to put it. What robustbench's loader tolerates is tolerated here too: a
``{state_dict | last: ...}`` wrapper, ``module.`` / ``model.`` key prefixes, and normalisation buffers
(mu, sigma, mean, std) that the file lacks and the constructor sets. Entries made of several files
(ensembles) are refused.
"""
from __future__ import annotations

import difflib
from pathlib import Path

from torch import nn

from advlab.errors import ConfigError
from advlab.models.loading import ModuleClassifier, fit_state_dict, read_state_dict

NODE = "robustbench"
KEYS = ("name", "dataset", "threat_model", "model_dir")
WRAPPERS = ("state_dict", "model_state_dict", "last")
NORMALISATION = ("mu", "sigma", "mean", "std")
SHOWN = 15  # zoo names listed in an error line (with close matches first)


def is_zoo(spec) -> bool:
    return hasattr(spec, "get") and spec.get(NODE) is not None


def _keys(spec, where: str) -> dict:
    """The spec's {name, dataset, threat_model, model_dir}, each set."""
    node = spec.get(NODE)
    if not hasattr(node, "get"):
        raise ConfigError(f"{where}.{NODE}", f"expected {{{', '.join(KEYS)}}}, got {node!r}")
    unknown = sorted(str(k) for k in node if k not in KEYS)
    if unknown:
        raise ConfigError(f"{where}.{NODE}.{unknown[0]}", f"unknown key; allowed: {', '.join(KEYS)}")
    if spec.get("weights") is not None:
        raise ConfigError(f"{where}.weights", f"a {NODE} spec reads <model_dir>/<dataset>/<threat_model>/<name>.pt; allowed: null")
    values = {k: node.get(k) for k in KEYS}
    for k, v in values.items():
        if v is None or str(v).strip() in ("", "???"):
            raise ConfigError(f"{where}.{NODE}.{k}", "is required (conf/spec/robustbench.yaml)")
    return {k: str(v) for k, v in values.items()}


def zoo_models(dataset: str, threat_model: str, where: str) -> dict:
    """{name: entry} of the zoo for a dataset and threat model."""
    try:
        from robustbench.model_zoo import model_dicts
    except Exception as err:  # not installed, or one of its dependencies (timm, ...) missing
        raise ConfigError(f"{where}.{NODE}", f"needs the robustbench package, which cannot be imported here "
                                             f"({' '.join(str(err).split())[:160]}); pip install 'advlab[robustbench]'") from None
    value = lambda member: getattr(member, "value", member)  # noqa: E731 - robustbench's keys are enums
    zoo = {value(d): {value(t): models for t, models in threats.items()} for d, threats in model_dicts.items()}
    if dataset not in zoo:
        raise ConfigError(f"{where}.{NODE}.dataset", f"unknown value {dataset!r}; allowed: {', '.join(zoo)}")
    if threat_model not in zoo[dataset]:
        raise ConfigError(f"{where}.{NODE}.threat_model", f"RobustBench has no {dataset} models for {threat_model!r}; "
                                                          f"allowed: {', '.join(zoo[dataset])}")
    return zoo[dataset][threat_model]


def _allowed(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=3)
    rest = [n for n in names if n not in close]
    shown = close + rest[: max(0, SHOWN - len(close))]
    more = f", ... ({len(names)} in all)" if len(names) > len(shown) else ""
    return f"allowed: {', '.join(shown)}{more}"


def zoo_entry(spec, where: str) -> tuple[dict, dict, Path]:
    """(the spec's zoo keys, the zoo's entry, the weight file, which must exist)."""
    keys = _keys(spec, where)
    name, dataset, threat = keys["name"], keys["dataset"], keys["threat_model"]
    models = zoo_models(dataset, threat, where)
    if name not in models:
        raise ConfigError(f"{where}.{NODE}.name", f"unknown model {name!r} for {dataset} {threat}; {_allowed(name, list(models))}")
    entry = models[name]
    files = entry.get("gdrive_id")
    if isinstance(files, (list, tuple)):
        raise ConfigError(f"{where}.{NODE}.name", f"{name} is an ensemble of {len(files)} weight files, which advlab does not "
                                                  "load; allowed: a single-file entry of the zoo")
    model_dir = Path(keys["model_dir"]).expanduser().absolute()
    path = model_dir / dataset / threat / f"{name}.pt"
    if not path.is_file():
        call = f"robustbench.utils.load_model({name!r}, model_dir='{model_dir}', dataset={dataset!r}, threat_model={threat!r})"
        # entries without a file of their own (timm's hub, torchvision's ImageNet Standard_*): save what load_model returns
        own_file = isinstance(files, str) and not (dataset == "imagenet" and "Standard" in name)
        fetch = f"{call} downloads it to that path" if own_file else f"save {call}.state_dict() to that path"
        raise ConfigError(f"{where}.{NODE}.model_dir", f"no weights for {name} at {path}: put its file there (on a machine with "
                                                       f"internet, {fetch})")
    return keys, entry, path.resolve()


def zoo_identity(spec, where: str) -> dict:
    """The architecture of a zoo spec in its cache key: the entry (the file enters by its sha256)."""
    keys = _keys(spec, where)
    return {NODE: {k: keys[k] for k in ("name", "dataset", "threat_model")}}


def _fitting(state: dict, net: nn.Module) -> dict:
    """The state dict with the `model.` prefixes robustbench's loader strips (and, for ImageNet entries
    wrapped in a normalisation module, adds back) as the architecture's keys need them."""
    own = set(net.state_dict())
    stripped = {k[len("model."):] if k.startswith("model.") else k: v for k, v in state.items()}
    candidates = [state, stripped, {f"model.{k}": v for k, v in stripped.items()}]
    return max(candidates, key=lambda s: len(own & set(s)))  # the first of the best: as the file is, if it fits


def load_zoo(spec, data, where: str, mean=None, std=None) -> ModuleClassifier:
    """The zoo entry's architecture with the file's weights, behind the optional normalisation."""
    keys, entry, path = zoo_entry(spec, where)
    try:
        net = entry["model"]()
    except Exception as err:  # an architecture needing a package robustbench did not import, ...
        raise ConfigError(f"{where}.{NODE}.name", f"building {keys['name']} failed: {' '.join(str(err).split())[:200]}") from None
    if not isinstance(net, nn.Module):
        raise ConfigError(f"{where}.{NODE}.name", f"the zoo's {keys['name']} built a {type(net).__name__}, not a torch.nn.Module")
    state = _fitting(read_state_dict(path, f"{where}.{NODE}.model_dir", WRAPPERS), net)
    optional = {k for k, _ in net.named_buffers() if k.rsplit(".", 1)[-1] in NORMALISATION}
    fit_state_dict(net, state, path, f"{where}.{NODE}.model_dir", optional)
    return ModuleClassifier(net, data.input_shape, data.num_classes, mean, std).eval()
