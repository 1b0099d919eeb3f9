"""The pre-flight's object checks: what a composed config describes is built (or its keys matched to
the constructor it will be given to) before Hydra starts any work, so that each option's rule is the
constructor's own and a key no constructor takes is an error naming the allowed keys.

Built here (cheap, no data, no real model): attacks (`attack`, `eval_attack`, a spec's `attack`,
`robustness.attacks.*`), the datamodule (`dataset`, without reading data), the derived-dataset
builders (`derived`), the methods (around a stand-in model) and advlab-eval's analyses.
Only matched to their constructors' signatures: architectures, optimizers, schedulers, the trainer
(pytorch_lightning.Trainer) and a spec's `trainer` node.
"""
from __future__ import annotations


from omegaconf import DictConfig, OmegaConf

from advlab.errors import ConfigError

# A model spec's keys (conf/spec/standard.yaml, plus an adversarial spec's `attack` and
# advlab-transfer's per-model `dataset`); `spec@<node>=external|robustbench` is checked by models.external.
SPEC_KEYS = ("method", "optimizer", "scheduler", "attack", "arch", "max_epochs", "seed", "trainer", "dataset", "weights")
# What the code passes itself to each kind of constructor (so not a config key).
METHOD_OBJECTS = ("model", "optimizer", "scheduler", "eval_attack", "attack", "source")
# what the code passes to architectures and optimizers itself
PASSED_BY_CODE = ("input_shape", "num_classes", "params", "bounds")
# What advlab places models on (artifacts.pick_device); Lightning knows more names (tpu, hpu, ...)
# that advlab cannot run on.
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
TRAINER = "pytorch_lightning.Trainer"


def check_keys(node, where: str, exclude=()) -> None:
    """A `_target_` node's keys must be arguments of its class (of the classes its `**kwargs` reach):
    a typo is an error naming the key and the allowed ones, not a silently ignored argument."""
    import inspect

    from hydra.utils import get_object

    try:
        target = get_object(str(node._target_))
    except Exception:  # not importable: instantiate reports it
        return
    # a class: the arguments of each __init__ its **kwargs reach; a function (a `_partial_` scheduler): its own
    signatures = ([vars(k)["__init__"] for k in target.__mro__ if "__init__" in vars(k)] if inspect.isclass(target)
                  else [target] if callable(target) else [])
    allowed, open_kwargs = [], True
    for function in signatures:
        if not open_kwargs:
            break
        params = inspect.signature(function).parameters.values()
        allowed += [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"]
        open_kwargs = any(p.kind is p.VAR_KEYWORD for p in params)
    allowed = [name for name in dict.fromkeys(allowed) if name not in exclude]
    unknown = sorted(k for k in node if not str(k).startswith("_") and k not in allowed)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}", f"unknown key(s) {', '.join(unknown)} for {node._target_}; allowed: {', '.join(allowed) or 'none'}")


def _stand_in_model():
    """What a method is built around in the pre-flight: its checks need only the number of classes."""
    import torch

    model = torch.nn.Linear(1, 2)
    model.num_classes, model.input_shape = 2, (1,)
    return model


def build_attack(node, where: str) -> None:
    if not OmegaConf.is_dict(node) or "_target_" not in node:
        return
    check_keys(node, where, exclude=("bounds",))
    try:
        _instantiate(node, where, bounds=(0.0, 1.0))
    except ConfigError as err:
        raise at_origin(err.under(where, "attack"), node, where) from None


def at_origin(err: ConfigError, node, where: str) -> ConfigError:
    """An error of a key whose value the YAML takes from another key (`attack.eps: ${eps.value}`) names
    that key: the one the user sets (`eps.value=-1` → `eps.value: must be ...`)."""
    import re

    param = err.key[len(where) + 1:] if err.key.startswith(where + ".") else None
    raw = OmegaConf.to_container(node, resolve=False).get(param) if param and "." not in param else None
    source = re.fullmatch(r"\$\{([A-Za-z_][\w.]*)\}", raw) if isinstance(raw, str) else None
    return ConfigError(source[1], err.message) if source else err


def check_method(node, where: str, attack=None, derived=None) -> None:
    """A method node (one object: the training) built around a stand-in model, and the run's derived
    dataset (`derived`, with the method's deprecated keys of it moved there) built on its own.
    `attack`: the attack node the method will be given, if any; `where`: e.g. `source.method`."""
    from advlab.derived import split_method

    if not OmegaConf.is_dict(node) or "_target_" not in node:
        return
    training, derived, _ = split_method(node, derived, where) if where == "method" else (node, None, [])
    if derived is not None:
        build_derived(derived)
    try:
        check_keys(training, where, exclude=METHOD_OBJECTS)
    except ConfigError as err:
        if derived is None:
            raise
        options = ", ".join(str(k) for k in derived if not str(k).startswith("_"))
        raise ConfigError(err.key, f"{err.message}; the derived dataset's options are at derived.*: {options}") from None
    stand_in = object() if attack is not None else None  # the attack itself is built and checked on its own
    try:
        _instantiate(training, where, model=_stand_in_model(), optimizer={}, attack=stand_in, _recursive_=False)
    except ConfigError as err:
        spec = where.rpartition(".")[0] if where.endswith(".method") else ""  # a model spec's node: its attack is a sibling
        raise (err.under(f"{spec}.attack", "attack") if spec and err.key == "attack" else err.under(where, "method")) from None


def build_derived(node, where: str = "derived") -> None:
    """A derived-dataset builder (conf/derived/): its keys, then its constructor (a dataclass checking its values)."""
    check_keys(node, where)
    try:
        _instantiate(node, where)
    except ConfigError as err:
        raise err.under(where, "derived") from None


def check_trainer(node, where: str) -> None:
    """Trainer keys against pytorch_lightning.Trainer's signature; the accelerator and devices that
    Lightning would refuse only once a model is built."""
    if node is None:
        return
    from advlab.utils.hardware import check_precision

    target = node.get("_target_", TRAINER)
    check_keys(OmegaConf.merge({"_target_": target}, node), where)
    check_precision(node.get("precision"), f"{where}.precision")  # the values Lightning takes, and `auto`
    accelerator = node.get("accelerator")
    if accelerator is not None and accelerator not in ACCELERATORS:
        raise ConfigError(f"{where}.accelerator", f"unknown value {accelerator!r}; allowed: {', '.join(ACCELERATORS)}")
    devices = node.get("devices")
    if devices is not None and not _valid_devices(devices):
        raise ConfigError(f"{where}.devices", f"expected a number of devices >= 1, -1 (all), auto or a list of device ids, got {devices!r}")


def _valid_devices(devices) -> bool:
    if isinstance(devices, bool):
        return False
    if isinstance(devices, int):
        return devices >= 1 or devices == -1
    if isinstance(devices, str):
        text = devices.strip()
        if text == "auto":
            return True
        if "," in text:  # device ids
            ids = [p.strip() for p in text.split(",") if p.strip()]
            return bool(ids) and all(p.isdigit() for p in ids)
        try:
            return _valid_devices(int(text))
        except ValueError:
            return False
    if OmegaConf.is_list(devices) or isinstance(devices, (list, tuple)):
        return len(devices) > 0 and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in devices)
    return False


def check_spec(spec, where: str, datamodule=None) -> None:
    """A model spec (advlab-train's and -transfer's `source` / `target`, `models.<name>`) and its inner
    nodes; its architecture is built for its own dataset, else for the run's `datamodule`."""
    if OmegaConf.is_dict(spec) and spec.get("method") == "ensemble":  # several specs (conf/spec/ensemble.yaml), each checked as one
        from advlab.artifacts.model_sources import ensemble_members

        for name, member in ensemble_members(spec, where).items():
            check_spec(member, f"{where}.members.{name}", datamodule)
        return
    if OmegaConf.is_dict(spec) and spec.get("method") == "external":  # built and its file loaded (models.external)
        from advlab.models.external import preflight_load

        preflight_load(spec, where, datamodule)
        return
    if not OmegaConf.is_dict(spec) or "checkpoint" in spec:
        return
    unknown = sorted(str(k) for k in spec if k not in SPEC_KEYS)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}", f"unknown key(s) {', '.join(unknown)} of a model spec; allowed: {', '.join(SPEC_KEYS)}")
    check_method(spec.get("method"), f"{where}.method", spec.get("attack"))
    from advlab.artifacts.keys import spec_weights

    try:
        spec_weights(spec)
    except ConfigError as err:
        raise err.under(where) from None
    for part in ("optimizer", "scheduler"):
        _target_keys(spec, part, f"{where}.{part}")
    build_attack(spec.get("attack"), f"{where}.attack")
    if spec.get("dataset") is not None:
        datamodule = build_dataset(spec.dataset, f"{where}.dataset")
    check_trainable(datamodule, where, "this model spec")
    build_arch(spec.get("arch"), f"{where}.arch", datamodule)
    check_trainer(spec.get("trainer") or None, f"{where}.trainer")


def _target_keys(cfg, key: str, where: str, exclude=PASSED_BY_CODE) -> None:
    node = cfg.get(key) if OmegaConf.is_dict(cfg) else None
    if OmegaConf.is_dict(node) and "_target_" in node:
        # a scheduler's `interval` and `monitor` are Lightning's (ClassifierModule.configure_optimizers), not the scheduler's
        node = OmegaConf.masked_copy(node, [k for k in node if k not in ("interval", "monitor")]) if key == "scheduler" else node
        check_keys(node, where, exclude=exclude)


def build_dataset(node, where: str = "dataset"):
    """The datamodule's constructor (no data is read). Its `check` (are the files there?) is the app's,
    run before any data loads: the pre-flight may run where the data is not (a SLURM login node)."""
    if not OmegaConf.is_dict(node) or "_target_" not in node:
        return None
    check_keys(node, where)
    try:
        return _instantiate(node, where)
    except ConfigError as err:  # the constructor names its parameter: here, the node the user set it at
        raise err.under(where, "dataset") from None


def check_trainable(datamodule, where: str, what: str) -> None:
    """An evaluation-only datamodule (`evaluation_only`, the corruption sets) trains nothing: its own
    `refuse_training` names `where` and what to do instead."""
    if getattr(datamodule, "evaluation_only", False):
        datamodule.refuse_training(where, what)


def build_arch(node, where: str, datamodule) -> None:
    """An architecture (`arch`, a model spec's `<spec>.arch`: the one check of an arch node): a node, built
    for the data's shape and classes (its constructor checks its knobs) where the datamodule knows them
    before loading; otherwise only its keys are matched."""
    if node is not None and not OmegaConf.is_dict(node):
        from advlab.runtime.resolvers import group_options

        raise ConfigError(where, f"expected an architecture node, got {node!r}; choose one with arch@{where}=<option>, "
                                 f"allowed: {', '.join(group_options('arch'))}")
    if not OmegaConf.is_dict(node) or "_target_" not in node:
        return
    check_keys(node, where, exclude=PASSED_BY_CODE)
    planned = datamodule.planned_shape() if hasattr(datamodule, "planned_shape") else None
    if planned is None:
        return
    factory = _instantiate(node, where)
    try:
        factory(input_shape=planned[0], num_classes=planned[1])
    except ConfigError as err:
        raise err.under(where, "arch") from None
    except Exception as err:  # a constructor's own TypeError / ValueError (a torch layer's)
        raise ConfigError(where, " ".join(str(err).split())) from None


def _instantiate(node, where: str, **kwargs):
    """`instantiate`, its errors as one ConfigError (a constructor's own, or one naming `where`)."""
    from hydra.utils import instantiate

    try:
        return instantiate(node, **kwargs)
    except ConfigError:
        raise
    except Exception as err:  # a TypeError of a wrong type, an InstantiationException wrapping a ConfigError
        cause = err.__cause__ or err.__context__
        if isinstance(cause, ConfigError):
            raise cause from None
        raise ConfigError(where, " ".join(str(err).split())) from None


def build_callback(node, where: str) -> None:
    """A callback that checks its settings in its constructor (mutual information, the overfitting guard), and
    its attacks (any child node that names an advlab attack)."""
    if not OmegaConf.is_dict(node) or "_target_" not in node:
        return
    check_keys(node, where)
    try:
        _instantiate(node, where)
    except ConfigError as err:
        raise err.under(where) from None
    for key, child in node.items():
        if OmegaConf.is_dict(child) and str(child.get("_target_", "")).startswith("advlab.attacks."):
            build_attack(child, f"{where}.{key}")


def build_callbacks(node, where: str = "callbacks") -> None:
    """advlab's own callbacks (Lightning's are checked when the trainer builds them)."""
    for name, child in (node.items() if OmegaConf.is_dict(node) else ()):
        if OmegaConf.is_dict(child) and str(child.get("_target_", "")).startswith("advlab.callbacks."):
            build_callback(child, f"{where}.{name}")


def build_analysis(node, where: str) -> None:
    """An advlab-eval analysis (conf/analysis/): its constructor checks its settings."""
    check_keys(node, where, exclude=("bounds",))
    try:
        _instantiate(node, where, _recursive_=False, bounds=(0.0, 1.0))  # as advlab.apps.evaluate builds it
    except ConfigError as err:
        raise err.under(where) from None


def check_objects(cfg: DictConfig) -> None:
    """Every `_target_` node of a composed run config (see the module docstring); raises ConfigError."""
    from advlab.analysis.protocol import analysis_names
    from advlab.runtime.resolvers import CONF_DIR

    check_method(cfg.get("method"), "method", cfg.get("attack"), cfg.get("derived"))
    datamodule = build_dataset(cfg.get("dataset")) if cfg.get("dataset") is not None else None
    if cfg.get("method") is not None:  # advlab-train trains on `dataset`
        check_trainable(datamodule, "dataset", "advlab-train")
    build_arch(cfg.get("arch"), "arch", datamodule)
    _target_keys(cfg, "optimizer", "optimizer")
    _target_keys(cfg, "scheduler", "scheduler")
    for node in ("attack", "eval_attack"):
        build_attack(cfg.get(node), node)
    check_trainer(cfg.get("trainer"), "trainer")
    for node in ("source", "target"):
        check_spec(cfg.get(node), node, datamodule)
    models = cfg.get("models")
    for name in (models or {}) if OmegaConf.is_dict(models) else ():
        check_spec(models[name], f"models.{name}", datamodule)
    build_callbacks(cfg.get("callbacks"))
    if OmegaConf.select(cfg, "probe.mi") is not None:
        from advlab.analysis.activations import check_hook_point
        from advlab.analysis.information import estimator_from

        estimator_from(cfg.probe.mi, "probe.mi")
        check_hook_point("probe.mi.hook_point", cfg.probe.mi.get("hook_point", "post_activation"), cfg.probe.mi.get("layers"))
    if cfg.get("task_name") == "eval":
        for name, node in (OmegaConf.select(cfg, "robustness.attacks") or {}).items():
            build_attack(node, f"robustness.attacks.{name}")
        for name in analysis_names(cfg, CONF_DIR):
            build_analysis(cfg[name], name)
        build_dataset(OmegaConf.select(cfg, "off_support.dataset"), "off_support.dataset")  # another dataset's images, resized
