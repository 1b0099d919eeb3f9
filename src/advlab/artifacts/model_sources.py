"""The models advlab-eval compares: named model specs (trained once through `Artifacts.model`, then
taken from the cache) and checkpoints of advlab-train runs.

An entry of the `models` config node is either

* a model spec (conf/spec/, composed by Hydra: `+spec@models.<name>=sparsity`), trained once per
  seed of `seeds`, with the `arch` group's architecture unless it names its own; or
* ``{checkpoint: <run dir or .ckpt> | [several]}``: trained runs; the run's `config_resolved.yaml`
  gives its architecture and dataset, `checkpoints/last.ckpt` its weights. Several runs of one entry
  (e.g. seeds) are summarised as mean ± SEM like the seeds of a spec.

Every model must be tested on the same test set: a run whose dataset settings give another test split
than this evaluation's `dataset` is refused with the settings that differ. An evaluation-only
`dataset` (a corruption set) is another set of images by design: there a run must have been trained on
the same classes (names, order) and input shape.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from advlab.errors import ConfigError

log = logging.getLogger(__name__)

@dataclass
class Entry:
    """One compared model: a spec trained per seed, or a list of run checkpoints."""

    name: str
    key: str  # the config key that names it, for error messages
    specs: list[DictConfig] = field(default_factory=list)
    members: list[str] = field(default_factory=list)  # "seed=0", … or the run directories
    checkpoints: list[Path] = field(default_factory=list)
    run_configs: list[Path] = field(default_factory=list)


@dataclass
class EvalModel:
    name: str
    member: str
    model: Any
    info: dict


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple)) or OmegaConf.is_list(value):
        return list(value)
    return [value]


def checkpoint_files(path, key: str) -> tuple[Path, Path]:
    """(checkpoint file, the run's config_resolved.yaml) of a run directory or a .ckpt inside one."""
    p = Path(str(path)).expanduser()
    if not p.exists():
        raise ConfigError(key, f"{p} does not exist; give an advlab-train run directory or a .ckpt file inside one")
    if p.is_dir():
        ckpt, config = p / "checkpoints" / "last.ckpt", p / "config_resolved.yaml"
    else:
        ckpt, config = p, p.parent.parent / "config_resolved.yaml"
    if not ckpt.is_file():
        raise ConfigError(key, f"no checkpoint at {ckpt}; give an advlab-train run directory (with checkpoints/last.ckpt, "
                               "so train with callbacks=default) or a .ckpt file inside one")
    if not config.is_file():
        raise ConfigError(key, f"{config} not found: the checkpoint must sit in an advlab-train run directory (checkpoints/<file>.ckpt)")
    return ckpt.resolve(), config.resolve()


def with_arch(spec, arch) -> DictConfig:
    """The spec with the app's `arch` when it names none (conf/spec/: `arch: null`)."""
    if spec.get("arch") is not None:
        return spec
    return OmegaConf.merge(spec, {"arch": OmegaConf.to_container(arch, resolve=True) if OmegaConf.is_config(arch) else arch})


def resolve_entries(cfg: DictConfig) -> list[Entry]:
    """Turn `models`, `seeds` and `checkpoints` into entries (no training, no loading)."""
    seeds = [int(s) for s in _as_list(cfg.get("seeds"))] or [int(cfg.seed)]
    entries = []
    models = OmegaConf.to_container(cfg.models, resolve=True) if cfg.get("models") else {}
    for name, node in models.items():
        key = f"models.{name}"
        node = node or {}
        if "checkpoint" in node:
            entry = Entry(str(name), f"{key}.checkpoint")
            for path in _as_list(node["checkpoint"]):
                ckpt, config = checkpoint_files(path, f"{key}.checkpoint")
                entry.checkpoints.append(ckpt)
                entry.run_configs.append(config)
                entry.members.append(str(config.parent))
            if not entry.checkpoints:
                raise ConfigError(f"{key}.checkpoint", "is empty; give a run directory or a list of them")
            entries.append(entry)
            continue
        entry = Entry(str(name), key)
        for seed in seeds[:1] if node.get("method") == "external" else seeds:  # a file: the same model for every seed
            entry.specs.append(with_arch(OmegaConf.create({**node, "seed": seed}), cfg.get("arch")))
            entry.members.append(f"seed={seed}")
        entries.append(entry)
    for i, path in enumerate(_as_list(cfg.get("checkpoints"))):
        ckpt, config = checkpoint_files(path, f"checkpoints[{i}]")
        run_name = OmegaConf.load(config).get("run_name") or config.parent.name
        name = str(run_name)
        taken = {e.name for e in entries}
        suffix = 2
        while name in taken:
            name, suffix = f"{run_name}-{suffix}", suffix + 1
        entries.append(Entry(name, f"checkpoints[{i}]", members=[str(config.parent)], checkpoints=[ckpt], run_configs=[config]))
    if not entries:
        raise ConfigError("models", "nothing to evaluate: give model specs in `models` or run directories in `checkpoints`")
    return entries


def _test_set_of(run_cfg: DictConfig, datamodule, cache: dict):
    """The run's datamodule (built once per dataset config), checked to share the evaluation's test set."""
    from hydra.utils import instantiate

    key = repr(OmegaConf.to_container(run_cfg.dataset, resolve=True))
    if key not in cache:
        dm = instantiate(run_cfg.dataset)
        dm.check()
        dm.setup()
        cache[key] = dm
    return cache[key]


def _cli_value(value) -> str:
    """A value as it is written on a Hydra command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_cli_value(v) for v in value) + "]"
    return str(value)


def _differences(theirs: dict, ours: dict) -> str:
    """What to add to this evaluation's command line to use the run's dataset settings."""
    keys = sorted(k for k in set(theirs) | set(ours)
                  if k not in ("batch_size", "eval_batch_size", "num_workers", "data_dir", "download") and theirs.get(k) != ours.get(k))
    if not keys:
        return "the data files differ"
    fix = " ".join(f"dataset.{k}={_cli_value(theirs.get(k))}" for k in keys)
    return f"the run used {fix} (this evaluation: {', '.join(f'{k}={ours.get(k)!r}' for k in keys)}); add {fix}"


def check_checkpoints(entries: list[Entry], eval_cfg: DictConfig, datamodule) -> dict:
    """Before any work: every run must test on this evaluation's test set (on an evaluation-only set: have
    its classes and inputs). Returns the runs' datamodules."""
    import torch

    built: dict = {}
    for entry in entries:
        for i, config in enumerate(entry.run_configs):
            run_cfg = OmegaConf.load(config)
            for node in ("dataset", "arch"):
                if run_cfg.get(node) is None:
                    raise ConfigError(entry.key, f"{config} has no `{node}` node: not an advlab-train run")
            dm = _test_set_of(run_cfg, datamodule, built)
            if getattr(datamodule, "evaluation_only", False):  # a corruption set: the run's classes and inputs, not its test set
                _check_same_classes(entry.key, config, dm, datamodule)
                continue
            same = (dm.x_test.shape == datamodule.x_test.shape and torch.equal(dm.x_test, datamodule.x_test)
                    and torch.equal(dm.y_test, datamodule.y_test))
            if not same:
                theirs = OmegaConf.to_container(run_cfg.dataset, resolve=True)
                ours = OmegaConf.to_container(eval_cfg.dataset, resolve=True)
                raise ConfigError(entry.key, f"{config.parent} was tested on another test set, every model must see the same one: "
                                             f"{_differences(theirs, ours)}")
    return built


def _check_same_classes(key: str, config: Path, run_dm, datamodule) -> None:
    """An evaluation-only set (the corruption sets: other images of a clean set's classes) takes a run
    trained on data of the same input shape and the same classes, in the same label order."""
    if tuple(run_dm.input_shape) == tuple(datamodule.input_shape) and run_dm.class_names == datamodule.class_names:
        return

    def what(dm) -> str:
        names = dm.class_names
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        return f"{dm.name} ({len(names)} classes: {shown}; inputs {tuple(dm.input_shape)})"

    raise ConfigError(key, f"{config.parent} was trained on {what(run_dm)}, this evaluation's dataset is {what(datamodule)}; "
                           f"allowed: a model trained on the same classes and inputs (for {datamodule.name}: dataset={datamodule.clean})")


def checkpoint_state_dict(ckpt: Path) -> dict:
    """The `state_dict` of a Lightning checkpoint, read with weights_only=True: a checkpoint may come
    from a shared or copied run directory, and a full unpickle would run whatever it names."""
    from advlab.utils.safe_io import UnsafeFileError, load_torch

    data = load_torch(ckpt)
    if not isinstance(data, dict) or not isinstance(data.get("state_dict"), dict):
        raise UnsafeFileError(ckpt, "not a Lightning checkpoint (no state_dict)")
    return data["state_dict"]


def model_state(checkpoint: Path) -> dict:
    """The classifier's weights in an advlab-train checkpoint (every consumer loads them through this)."""
    state = checkpoint_state_dict(checkpoint)
    return {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}


def load_checkpoint(ckpt: Path, config: Path, datamodules: dict, device):
    """The classifier of an advlab-train run's checkpoint, in eval mode on `device`."""
    from advlab.models import build_model

    run_cfg = OmegaConf.load(config)
    dm = _test_set_of(run_cfg, None, datamodules)
    model = build_model(run_cfg.arch, dm)
    model.load_state_dict(model_state(ckpt))
    metrics_file = config.parent / "metrics.json"
    source = {"checkpoint": str(ckpt)}
    if metrics_file.is_file():
        import json

        source["train_test_acc"] = json.loads(metrics_file.read_text()).get("test/acc")
    return model.to(device).eval(), {"source": source}


def load_models(entries: list[Entry], artifacts, datamodule, datamodules: dict) -> list[EvalModel]:
    """Train (or take from the cache) every spec, load every checkpoint."""
    out = []
    for entry in entries:
        for member, spec in zip(entry.members, entry.specs):
            model, metrics, key = artifacts.model(spec, datamodule, name=f"model '{entry.name}' ({member})", where=entry.key)
            if key["method"] == "external":  # loaded from its file, not trained
                from advlab.models.external import weights_source

                source = {"weights": weights_source(spec, entry.key), "sha256": key["weights_sha256"], "test_acc": metrics.get("test/acc")}
            else:
                source = {"cache_file": str(artifacts.cache.path("models", key)), "train_test_acc": metrics.get("test/acc")}
            out.append(EvalModel(entry.name, member, model, {"source": source, "spec": key}))
        for member, ckpt, config in zip(entry.members, entry.checkpoints, entry.run_configs):
            model, info = load_checkpoint(ckpt, config, datamodules, artifacts.device)
            out.append(EvalModel(entry.name, member, model, info))
    return out


def validate_specs(entries: list[Entry], artifacts, datamodule) -> None:
    """Before any training: every spec names a known method, its attack and its params (one-line errors)."""
    for entry in entries:
        for spec in entry.specs:
            artifacts.model_spec(spec, datamodule, where=entry.key)


# -- ensemble specs (conf/spec/ensemble.yaml) ------------------------------------------------------------
def ensemble_members(spec, where: str) -> dict:
    """The member specs of an ensemble spec, by name (a member without an `arch` gets the ensemble's);
    ConfigError unless `members` is a non-empty mapping of model specs. No torch: the pre-flight calls it."""
    members = spec.get("members")
    if not OmegaConf.is_dict(members) or len(members) == 0:
        raise ConfigError(f"{where}.members", f"expected a non-empty mapping name -> model spec, got {members!r}; "
                                              f"add one with +spec@{where}.members.<name>=standard (conf/spec/)")
    out = {}
    for name in members:
        node = members[name]
        if not OmegaConf.is_dict(node) or node.get("method") is None:
            raise ConfigError(f"{where}.members.{name}", f"expected a model spec, got {node!r}; allowed: a spec chosen with "
                                                         f"spec@{where}.members.{name}=standard|adversarial|... (conf/spec/)")
        out[str(name)] = with_arch(node, spec.get("arch")) if spec.get("arch") is not None else node
    return out


def spec_model(artifacts, spec, datamodule, name: str = "source model", where: str = "source"):
    """(eval-mode model on the artifacts' device, its metrics, its cache key) of a model spec, as
    `Artifacts.model`; an ensemble spec: every member through `Artifacts.model` (trained once, cached),
    averaged in logit space (models.ensemble.LogitEnsemble), its metrics the ensemble's test accuracy
    and each member's (`members/<name>/test/acc`)."""
    if spec.get("method") != "ensemble":
        return artifacts.model(spec, datamodule, name=name, where=where)
    from advlab.models.base import predict
    from advlab.models.ensemble import LogitEnsemble

    models, metrics, keys = [], {}, {}
    for member, node in ensemble_members(spec, where).items():
        model, member_metrics, keys[member] = spec_model(artifacts, node, datamodule, name=f"{name} member '{member}'",
                                                         where=f"{where}.members.{member}")
        models.append(model)
        metrics[f"members/{member}/test/acc"] = member_metrics.get("test/acc")
    ensemble = LogitEnsemble(models).to(artifacts.device).eval()
    datamodule.setup()
    metrics["test/acc"] = float((predict(ensemble, datamodule.x_test, 1024, artifacts.device) == datamodule.y_test).float().mean())
    log.info("Ensemble %s of %d members (%s): test/acc = %.4f", name, len(models), ", ".join(keys), metrics["test/acc"])
    return ensemble, metrics, {"method": "ensemble", "members": keys}
