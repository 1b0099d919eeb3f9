"""What a cache key holds: the one place of the rules that say which config values determine an artifact.

A trained model's key is its spec (data description, batch size, arch, method, optimizer, scheduler,
attack, max_epochs, seed) plus the trainer settings that change weights and differ from
conf/trainer/default.yaml's (read from that file, not restated here). A crafted dataset's key names
its source model's key and its attack (`describe_object`). A construction run under bf16 autocast is
keyed apart from one in float32.
"""
from __future__ import annotations

import functools
from typing import Any

from omegaconf import OmegaConf

from advlab.artifacts.cache import plain
from advlab.errors import ConfigError

# Trainer keys that say where and how visibly a model trains, not what its weights become: the
# artifact cache sets them itself, and they stay out of a model's cache key (the accelerator too: a
# cached model is shared by CPU and GPU runs; max_epochs: a spec's own, keyed on its own).
PLACEMENT_KEYS = ("_target_", "default_root_dir", "accelerator", "devices", "num_nodes", "strategy", "sync_batchnorm", "plugins",
                  "logger", "callbacks", "enable_checkpointing", "enable_progress_bar", "enable_model_summary", "log_every_n_steps",
                  "num_sanity_val_steps", "inference_mode", "max_epochs", "limit_val_batches", "limit_test_batches",
                  "check_val_every_n_epoch", "val_check_interval", "profiler", "barebones")

# Options added after models had been cached, at the value that builds exactly what ran before they
# existed: a key leaves them out at that value, so earlier cache entries (and the seeds derived from
# keys) stay valid. A new option of this kind is one line here.
KEY_NEUTRAL = {"arch": {"stem_stride": 1},
               "method": {"compile": False, "eps_warmup_epochs": 0, "clean_weight": None, "adv_weight": None, "loss": "ce",
                          "penalty_weighting": "batch_mean", "units": "pixel", "norm_std": 0.3081}}


@functools.cache
def default_training() -> dict:
    """conf/trainer/default.yaml's values of the keys that change weights (precision, deterministic):
    the key of a spec trained with them has no `trainer` entry, so it does not change when the run's
    trainer config lists them. `precision: auto` never reaches a key: it is resolved first
    (advlab.utils.hardware), so a model trained at `auto` has the key of one trained at its value."""
    from advlab.runtime.resolvers import CONF_DIR

    node = OmegaConf.load(CONF_DIR / "trainer" / "default.yaml")
    return {str(k): v for k, v in OmegaConf.to_container(node, resolve=False).items() if k not in PLACEMENT_KEYS}


def spec_trainer(run_trainer, spec) -> dict:
    """The training settings of a model spec: the run's trainer settings, then the spec's own
    `trainer` node, then its `max_epochs` (placement keys left out: the artifact cache sets them);
    `precision: auto` is resolved before (advlab.utils.hardware: a run's up front, Artifacts' for Python callers)."""
    merged = {"_target_": "pytorch_lightning.Trainer"}
    for node in (run_trainer, spec.get("trainer")):
        # only these keys are resolved: placement keys may point into the Hydra job (`${paths.output_dir}`)
        merged.update({str(k): plain(node[k]) for k in (node or {}) if k not in PLACEMENT_KEYS})
    merged["max_epochs"] = int(spec.max_epochs)
    return merged


def training_settings(trainer: dict) -> dict:
    """The trainer settings that can change a model's weights and differ from the defaults (cache key)."""
    defaults = default_training()
    return {k: v for k, v in sorted(trainer.items()) if k not in PLACEMENT_KEYS and v is not None and defaults.get(k, None) != v}


def key_node(node, where: str) -> dict:
    """A spec's `arch` / `method` node as it enters the cache key: without its key-neutral options."""
    neutral = KEY_NEUTRAL.get(where, {})
    return {k: v for k, v in plain(node).items() if not (k in neutral and type(v) is type(neutral[k]) and v == neutral[k])}


WEIGHTS = ("last", "best_val")


def spec_weights(spec) -> str:
    """Which weights a trained spec keeps: `last` (the last epoch's) or `best_val` (the epoch of the best
    `val/acc`); a spec node's `weights` key, `last` where it has none."""
    value = spec.get("weights") or "last"
    if value not in WEIGHTS:
        raise ConfigError("weights", f"{value!r}; allowed: {', '.join(WEIGHTS)}")
    return value


def model_key(spec, datamodule, run_trainer) -> dict:
    """The cache key of a trained model spec (its `method` a `_target_` node)."""
    key = {
        "data": datamodule.describe(),
        "batch_size": datamodule.batch_size,
        "arch": key_node(spec.arch, "arch"),
        "method": key_node(spec.method, "method"),
        "optimizer": plain(spec.optimizer),
        "scheduler": plain(spec.get("scheduler")),
        "max_epochs": int(spec.max_epochs),
        "seed": int(spec.seed),
    }
    if spec.get("attack") is not None:
        key["attack"] = plain(spec.attack)
    if spec_weights(spec) != "last":  # only where it differs: specs from before the option keep their keys
        key["weights"] = spec_weights(spec)
    settings = training_settings(spec_trainer(run_trainer, spec))
    if settings:  # only what differs from the default training: default specs keep their keys
        key["trainer"] = settings
    return key


def describe_object(obj: Any) -> dict:
    """The plain-valued attributes of an object (e.g. an attack's eps, norm, steps) for cache keys."""
    simple = (int, float, str, bool, type(None))
    desc = {"class": f"{type(obj).__module__}.{type(obj).__qualname__}"}
    for name, value in sorted(vars(obj).items()):
        name = name.lstrip("_")  # properties backed by private attributes (eps, norm, targeted) count too
        if isinstance(value, simple) or (isinstance(value, (tuple, list)) and all(isinstance(v, simple) for v in value)):
            desc[name] = list(value) if isinstance(value, tuple) else value
    return desc


def constructed_key(spec: dict, bf16: bool) -> dict:
    """The key of a construction (a derived dataset, an adversarial test set): bf16 ones apart."""
    return {**spec, "precision": "bf16"} if bf16 else spec
