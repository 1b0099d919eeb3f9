"""The one way advlab trains a classifier: advlab-train's model and every model the artifact cache
builds (source, target and advlab-eval's models) go through `build_classifier` and `fit_classifier`.

A run and a model spec name the same parts: a `method` node (a LightningModule's `_target_` and its
own keys), an `arch`, an `optimizer` (`_partial_`: called with the parameters), an optional
`scheduler` and `attack`, and a `trainer` config (`_target_: pytorch_lightning.Trainer`).
"""
from __future__ import annotations

import logging

from hydra.utils import instantiate
from omegaconf import DictConfig

from advlab.errors import ConfigError

log = logging.getLogger(__name__)

FIT_METRICS = ("val/acc", "train/acc")
# Trainer keys that say where and how visibly a model trains, not what its weights become: the
# artifact cache sets them itself, and they stay out of a model's cache key (the accelerator too: a
# cached model is shared by CPU and GPU runs; max_epochs: a spec's own, keyed on its own).
PLACEMENT_KEYS = ("_target_", "default_root_dir", "accelerator", "devices", "num_nodes", "strategy", "sync_batchnorm", "plugins",
                  "logger", "callbacks", "enable_checkpointing", "enable_progress_bar", "enable_model_summary", "log_every_n_steps",
                  "num_sanity_val_steps", "inference_mode", "max_epochs", "limit_val_batches", "limit_test_batches",
                  "check_val_every_n_epoch", "val_check_interval", "profiler", "barebones")
# conf/trainer/default.yaml's values of the other keys: the key of a spec trained with them has no
# `trainer` entry, so it does not change when the run's trainer config lists them. `precision: auto`
# never reaches a key: it is resolved first (advlab.utils.hardware), so a model trained at `auto` has
# the key of one trained at the value it resolved to.
DEFAULT_TRAINING = {"precision": "32-true", "deterministic": False}


def build_classifier(method: DictConfig, arch, datamodule, *, optimizer, scheduler=None, attack=None, **objects):
    """The LightningModule of a `method` node around a fresh `arch` model. `optimizer`: a `_partial_`
    config node (the module builds it when Lightning asks for it) or a callable; `attack`: a config node (instantiated with the data's bounds) or an
    Attack; `objects`: further constructor arguments (eval_attack, source, ...)."""
    from advlab.attacks.base import Attack
    from advlab.models import build_model

    if attack is not None and not isinstance(attack, Attack):
        attack = instantiate(attack, bounds=datamodule.bounds)
    if attack is not None:
        objects["attack"] = attack
    model = build_model(arch, datamodule)
    return instantiate(method, model=model, optimizer=optimizer, scheduler=scheduler, _recursive_=False, **objects)


def spec_trainer(run_trainer, spec) -> dict:
    """The training settings of a model spec: the run's trainer settings, then the spec's own
    `trainer` node, then its `max_epochs` (placement keys left out: the artifact cache sets them);
    `precision: auto` resolved for the run's accelerator."""
    from advlab.cache import plain

    merged = {"_target_": "pytorch_lightning.Trainer"}
    for node in (run_trainer, spec.get("trainer")):
        # only these keys are resolved: placement keys may point into the Hydra job (`${paths.output_dir}`)
        merged.update({str(k): plain(node[k]) for k in (node or {}) if k not in PLACEMENT_KEYS})
    merged["max_epochs"] = int(spec.max_epochs)
    if str(merged.get("precision")) == "auto":  # a run resolves it up front (utils.run.resolve_hardware); callers from Python here
        from advlab.utils.hardware import resolve_precision

        merged["precision"] = resolve_precision("auto", (run_trainer or {}).get("accelerator")).value
    return merged


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


def training_settings(trainer: dict) -> dict:
    """The trainer settings that can change a model's weights and differ from the defaults (cache key)."""
    return {k: v for k, v in sorted(trainer.items()) if k not in PLACEMENT_KEYS and v is not None and DEFAULT_TRAINING.get(k, None) != v}


def fit_classifier(module, datamodule, trainer_cfg, *, ckpt_path=None, **trainer_args) -> tuple[dict, dict, object]:
    """Fit `module` on `datamodule` with a Trainer from `trainer_cfg` (a `_target_` node; `trainer_args`
    added: logger, callbacks, ...), then test it. Returns (fit metrics, test metrics, trainer)."""
    if trainer_cfg.get("sync_batchnorm") and trainer_cfg.get("accelerator") == "cpu":  # torch's SyncBatchNorm needs GPUs
        log.info("trainer.sync_batchnorm: off on CPU processes (each rank keeps its own batch statistics)")
        trainer_args["sync_batchnorm"] = False
    from advlab.callbacks.checkpoint import StopOnSignal
    from advlab.utils import signals

    # SIGTERM / SIGINT: the fit and the test stop at the end of the current batch (the last epoch's
    # checkpoint is what a re-run resumes from), and the signal leaves as `signals.Interrupted`
    trainer_args["callbacks"] = [*(trainer_args.get("callbacks") or []), StopOnSignal()]
    trainer = instantiate(trainer_cfg, **trainer_args)
    with signals.deferred(signals.current() or "training"):
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt_path) if ckpt_path else None, weights_only=True)
    # read before testing: trainer.test resets the callback metrics
    fit_metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k in FIT_METRICS}
    with signals.deferred(signals.current() or "testing"):
        trainer.test(module, datamodule=datamodule, verbose=False)  # with the last epoch's weights
    test_metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    return fit_metrics, test_metrics, trainer
