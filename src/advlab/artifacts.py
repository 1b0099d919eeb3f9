"""Source models and crafted datasets: built once, then taken from the artifact cache.

A model spec (the `source` config node, or an entry of advlab-eval's `models`) is {arch, method:
standard|adversarial|sparsity, optimizer, scheduler, max_epochs, seed, attack, params}; `params` are
the method's own keyword arguments (e.g. `adv_ratio`, or sparsity's `sigma_u`, `lam`, ...). Together
with the data description and batch size it is exactly what determines the trained weights, so it is
the cache key.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import os
import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from advlab.cache import ArtifactCache, plain, spec_key
from advlab.callbacks.history import EpochHistory
from advlab.callbacks.progress import progress_bar
from advlab.config import MODEL_METHODS
from advlab.errors import ConfigError
from advlab.models import build_model

log = logging.getLogger(__name__)

SOURCE_METHODS = MODEL_METHODS
# keyword arguments every method takes from the pipeline, not from a spec's `params`
_PIPELINE_ARGS = {"self", "model", "optimizer", "scheduler", "eval_attack", "attack", "source"}


def method_class(method: str):
    from advlab.methods import AdversarialTraining, SparsityTraining, StandardTraining

    return {"standard": StandardTraining, "adversarial": AdversarialTraining, "sparsity": SparsityTraining}[method]


def method_params(method: str) -> tuple[str, ...]:
    """The keyword arguments a spec's `params` may set for `method`."""
    from advlab.methods import ClassifierModule

    names = {}  # the method's own, then the base class's (label_smoothing, channels_last)
    for fn in (method_class(method).__init__, ClassifierModule.__init__):
        for name, p in inspect.signature(fn).parameters.items():
            if name not in _PIPELINE_ARGS and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                names.setdefault(name, None)
    return tuple(names)


@contextlib.contextmanager
def preserved_rng():
    """Building an artifact must not change the run's random stream: a cache hit and a miss then
    lead to identical runs."""
    state = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        torch.set_rng_state(state[0])
        np.random.set_state(state[1])
        random.setstate(state[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def describe_object(obj: Any) -> dict:
    """The plain-valued attributes of an object (e.g. an attack's eps, norm, steps) for cache keys."""
    simple = (int, float, str, bool, type(None))
    desc = {"class": f"{type(obj).__module__}.{type(obj).__qualname__}"}
    for name, value in sorted(vars(obj).items()):
        name = name.lstrip("_")  # properties backed by private attributes (eps, norm, targeted) count too
        if isinstance(value, simple) or (isinstance(value, (tuple, list)) and all(isinstance(v, simple) for v in value)):
            desc[name] = list(value) if isinstance(value, tuple) else value
    return desc


def pick_device(accelerator: str | None) -> torch.device:
    if accelerator in (None, "auto", "gpu", "cuda") and torch.cuda.is_available():
        # a DDP rank builds and uses artifacts on its own GPU (Lightning's launcher sets LOCAL_RANK)
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    return torch.device("cpu")


class Artifacts:
    def __init__(self, cache: ArtifactCache, accelerator: str | None = "auto", progress: bool = True):
        self.cache = cache
        self.accelerator = accelerator
        self.device = pick_device(accelerator)
        self.progress = progress
        # {spec node: {"metrics", "history"}} of every model this run took from the cache or trained
        self.trained: dict[str, dict] = {}

    # -- models --------------------------------------------------------------------------------------
    def model_spec(self, spec, datamodule, where: str = "source") -> dict:
        """The cache key of a model spec; `where` names the spec's config node in error messages."""
        method = spec.get("method", "standard")
        if method not in SOURCE_METHODS:
            raise ConfigError(f"{where}.method", f"unknown method {method!r}; allowed: {', '.join(SOURCE_METHODS)}")
        if method == "external":  # not trained: the key names the file's content
            from advlab.models.external import external_key

            return external_key(spec, datamodule, where)
        if method == "adversarial" and not spec.get("attack"):
            raise ConfigError(f"{where}.attack", f"{where}.method=adversarial needs an attack: add attack@{where}.attack=pgd_linf (or another attack option)")
        params = plain(spec.get("params")) or {}
        allowed = method_params(method)
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise ConfigError(f"{where}.params", f"unknown key(s) {', '.join(unknown)} for method {method}; allowed: {', '.join(allowed) or 'none'}")
        key = {
            "data": datamodule.describe(),
            "batch_size": datamodule.batch_size,
            "arch": plain(spec.arch),
            "method": method,
            "optimizer": plain(spec.optimizer),
            "scheduler": plain(spec.get("scheduler")),
            "max_epochs": int(spec.max_epochs),
            "seed": int(spec.seed),
        }
        if method == "adversarial":
            key["attack"] = plain(spec.attack)
        if params:  # only when given: the keys of specs without params stay what they were
            key["params"] = params
        return key

    def model(self, spec, datamodule, name: str = "source model", where: str = "source"):
        """Return (eval-mode model on self.device, its metrics dict, its cache key spec)."""
        key = self.model_spec(spec, datamodule, where)
        if key["method"] == "external":
            return self._external(spec, datamodule, name, where, key)
        payload, _ = self.cache.get_or_create("models", key, lambda: self._train(spec, datamodule, name, key), what=name)
        model = build_model(spec.arch, datamodule)
        model.load_state_dict(payload["state_dict"])
        self.trained.setdefault(where, {"metrics": dict(payload["metrics"]), "history": list(payload.get("history", []))})
        return model.to(self.device).eval(), dict(payload["metrics"]), key

    def _external(self, spec, datamodule, name: str, where: str, key: dict):
        """An external model, loaded from its file; its metrics: accuracy on the datamodule's test split."""
        from advlab.models.base import predict
        from advlab.models.external import load_external

        model = load_external(spec, datamodule, where).to(self.device)
        datamodule.setup()
        acc = float((predict(model, datamodule.x_test, 1024, self.device) == datamodule.y_test).float().mean())
        log.info("Loaded %s from %s: test/acc = %.4f", name, spec.weights, acc)
        metrics = {"test/acc": acc}
        self.trained.setdefault(where, {"metrics": dict(metrics), "history": []})
        return model, metrics, key

    def _train(self, spec, datamodule, name: str, key: dict) -> dict:
        with preserved_rng():
            # Seeded from the whole spec, not from `seed` alone: a source model and the model trained
            # later in the same run (seeded with `seed`) must not share their initial weights.
            pl.seed_everything(int(spec_key(key), 16) % 2**31, verbose=False)
            model = build_model(spec.arch, datamodule)
            method = spec.get("method", "standard")
            attack = instantiate(spec.attack, bounds=datamodule.bounds) if method == "adversarial" else None
            module = method_class(method)(model, spec.optimizer, spec.get("scheduler"), attack=attack, **key.get("params", {}))
            # a fresh copy: the data order must not depend on what this datamodule trained before
            datamodule = datamodule.fresh()
            log.info("Training %s: %s, %s, %s epochs", name, method, OmegaConf.select(spec, "arch._target_"), spec.max_epochs)
            history = EpochHistory()
            trainer = pl.Trainer(
                max_epochs=int(spec.max_epochs),
                accelerator="gpu" if self.device.type == "cuda" else "cpu",
                devices=[self.device.index] if self.device.type == "cuda" else 1,
                logger=False,
                enable_checkpointing=False,
                enable_model_summary=False,
                enable_progress_bar=self.progress,
                callbacks=[history, progress_bar()] if self.progress else [history],
                inference_mode=False,
                num_sanity_val_steps=0,
            )
            trainer.fit(module, datamodule=datamodule)
            # read before testing: trainer.test resets the callback metrics
            metrics = {k: float(trainer.callback_metrics[k]) for k in ("val/acc", "train/acc") if k in trainer.callback_metrics}
            metrics["test/acc"] = float(trainer.test(module, datamodule=datamodule, verbose=False)[0]["test/acc"])
        log.info("Trained %s: test/acc = %.4f", name, metrics["test/acc"])
        return {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "metrics": metrics,
                "history": history.rows}
