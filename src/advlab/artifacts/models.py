"""Source models and crafted datasets: built once, then taken from the artifact cache.

A model spec (the `source` / `target` config nodes, an entry of advlab-eval's and advlab-probe's
`models`; conf/spec/) is composed by Hydra like a run: {method: a method node (`_target_` and its
keys), arch, optimizer (`_partial_`), scheduler, attack (adversarial methods), max_epochs, seed,
trainer (its own trainer settings over the run's)}. It is trained through the run's own path
(advlab.methods.fit). Together with the data description, the batch size and the trainer settings that change
weights, it is exactly what determines the trained weights, so it is the cache key.
"""
from __future__ import annotations

import contextlib
import logging
import os
import random

import numpy as np
import torch
from omegaconf import OmegaConf

from advlab.artifacts.cache import ArtifactCache, partial_dir, spec_key
from advlab.artifacts.keys import constructed_key, model_key, spec_trainer, spec_weights
from advlab.callbacks.progress import progress_bar
from advlab.errors import ConfigError
from advlab.methods.base import is_adversarial
from advlab.methods.fit import FIT_METRICS, build_classifier, fit_classifier
from advlab.models import build_model
from advlab.utils import signals
from advlab.utils.hardware import at_precision, trains_in_bf16

log = logging.getLogger(__name__)

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


def pick_device(accelerator: str | None) -> torch.device:
    if accelerator in (None, "auto", "gpu", "cuda") and torch.cuda.is_available():
        # a DDP rank builds and uses artifacts on its own GPU (Lightning's launcher sets LOCAL_RANK)
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    return torch.device("cpu")


class Artifacts:
    """Models and datasets of a run, taken from the cache or built. `trainer`: the run's trainer config,
    whose settings every trained model follows unless its spec's own `trainer` node overrides them."""

    def __init__(self, cache: ArtifactCache, trainer=None, accelerator: str | None = None, progress: bool = True):
        self.cache = cache
        trainer = trainer if trainer is not None else {}
        self.accelerator = accelerator if accelerator is not None else trainer.get("accelerator", "auto")
        self.trainer = at_precision(trainer, self.accelerator)  # `auto` (a run's is resolved already: runtime.lifecycle)
        self.device = pick_device(self.accelerator)
        self.progress = progress
        # {spec node: {"metrics", "history", "trainer"}} of every model this run took from the cache or trained
        self.trained: dict[str, dict] = {}

    @property
    def bf16(self) -> bool:
        """Whether the run trains in bf16 (advlab.utils.hardware.trains_in_bf16): constructions then run under bf16 autocast."""
        return trains_in_bf16(self.trainer, self.device.type)

    def constructed(self, kind: str, spec: dict, construct, what: str):
        """A derived dataset / adversarial set (`construct()`), taken from the cache or built with the run's
        precision: under bf16 autocast where the run trains in bf16, and then cached under its own key."""
        key = constructed_key(spec, self.bf16)

        def built():
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                return construct()

        return self.cache.get_or_create(kind, key, built, what=what)

    # -- models --------------------------------------------------------------------------------------
    def model_spec(self, spec, datamodule, where: str = "source") -> dict:
        """The cache key of a model spec; `where` names the spec's config node in error messages."""
        if spec.get("method") == "external":  # not trained: the key names the file's content
            from advlab.models.external import external_key

            return external_key(spec, datamodule, where)
        method = spec.get("method")
        if not OmegaConf.is_dict(method) or "_target_" not in method:
            raise ConfigError(f"{where}.method", f"expected a method node with a `_target_`, got {method!r}; choose the spec: "
                                                 f"spec@{where}=standard|adversarial|sparsity|external (conf/spec/)")
        from advlab.preflight.objects import METHOD_OBJECTS, check_keys  # specs built from Python skip the pre-flight

        check_keys(method, f"{where}.method", exclude=METHOD_OBJECTS)
        if is_adversarial(method) and not spec.get("attack"):
            raise ConfigError(f"{where}.attack", f"an adversarial spec needs an attack: add attack@{where}.attack=pgd_linf (or another attack option)")
        return model_key(self._at_precision(spec), datamodule, self.trainer)

    def _at_precision(self, spec):
        """`spec` with its own trainer node's `precision: auto` resolved (a run's is resolved up front)."""
        own = spec.get("trainer")
        resolved = at_precision(own, self.accelerator)
        return spec if resolved is own else OmegaConf.merge(spec, {"trainer": resolved})

    def model(self, spec, datamodule, name: str = "source model", where: str = "source"):
        """Return (eval-mode model on self.device, its metrics dict, its cache key spec)."""
        key = self.model_spec(spec, datamodule, where)
        if key["method"] == "external":
            return self._external(spec, datamodule, name, where, key)
        payload, _ = self.cache.get_or_create("models", key, lambda: self._train(spec, datamodule, name, key), what=name)
        model = build_model(spec.arch, datamodule)
        model.load_state_dict(payload["state_dict"])
        self.trained.setdefault(where, {"metrics": dict(payload["metrics"]), "history": list(payload.get("history", [])),
                                        "trainer": dict(payload.get("trainer", {}))})
        if spec.method.get("channels_last") and len(getattr(model, "input_shape", ())) == 3:
            model.to(memory_format=torch.channels_last)  # as it trained: NHWC convolutions (crafting, attacks)
        return model.to(self.device).eval(), dict(payload["metrics"]), key

    def _external(self, spec, datamodule, name: str, where: str, key: dict):
        """An external model, loaded from its file; its metrics: accuracy on the datamodule's test split."""
        from advlab.models.base import predict
        from advlab.models.external import load_external, weights_source

        model = load_external(spec, datamodule, where).to(self.device)
        datamodule.setup()
        acc = float((predict(model, datamodule.x_test, 1024, self.device) == datamodule.y_test).float().mean())
        log.info("Loaded %s from %s: test/acc = %.4f", name, weights_source(spec, where), acc)
        metrics = {"test/acc": acc}
        self.trained.setdefault(where, {"metrics": dict(metrics), "history": []})
        return model, metrics, key

    def trainer_config(self, spec) -> dict:
        """The Trainer config a spec's model is fitted with: its training settings, on this run's device,
        without logs or checkpoints (the cache keeps the weights; `_fit` adds the resumable ones)."""
        cuda = self.device.type == "cuda"
        return {**spec_trainer(self.trainer, self._at_precision(spec)), "accelerator": "gpu" if cuda else "cpu", "devices": [self.device.index] if cuda else 1,
                "logger": False, "enable_checkpointing": False, "enable_model_summary": False, "enable_progress_bar": self.progress,
                "inference_mode": False, "num_sanity_val_steps": 0}

    def _fit(self, spec, module, datamodule, name: str, history):
        """Fit a model for the cache. Its last completed epoch is kept in the build's partial directory
        (`cache.partial_dir`, under the artifact's lock) and a re-run resumes from it: a build stopped
        by a signal or a kill -9 loses at most the epoch under way (and ends with the same weights)."""
        from advlab.callbacks.checkpoint import AtomicCheckpointIO, BestWeights, completed_epochs, epoch_checkpoints, resume_checkpoint

        partial, config, extra = partial_dir(), self.trainer_config(spec), {}
        callbacks = [history, progress_bar()] if self.progress else [history]
        best_val = spec_weights(spec) == "best_val"
        if best_val:
            callbacks.append(BestWeights("val/acc"))
        resume = resume_checkpoint(partial) if partial is not None and partial.is_dir() else None
        if partial is not None:
            callbacks += epoch_checkpoints(partial)
            config["enable_checkpointing"] = True
            extra["plugins"] = [AtomicCheckpointIO()]
        what = f"{spec.method._target_}, {OmegaConf.select(spec, 'arch._target_')}, {spec.max_epochs} epochs" + (
            ", the best validation epoch's weights kept" if best_val else "")
        if resume is not None:
            log.info("Resuming %s from %s (%d of %d epochs done): %s", name, resume, completed_epochs(resume), spec.max_epochs, what)
        else:
            log.info("Training %s: %s", name, what)
        return fit_classifier(module, datamodule, OmegaConf.create(config), ckpt_path=resume, callbacks=callbacks, **extra)

    def _train(self, spec, datamodule, name: str, key: dict) -> dict:
        import pytorch_lightning as pl

        from advlab.callbacks.checkpoint import ResumableHistory

        with preserved_rng():
            # Seeded from the whole spec, not from `seed` alone: a source model and the model trained
            # later in the same run (seeded with `seed`) must not share their initial weights.
            pl.seed_everything(int(spec_key(key), 16) % 2**31, verbose=False)
            module = build_classifier(spec.method, spec.arch, datamodule, optimizer=spec.optimizer, scheduler=spec.get("scheduler"),
                                      attack=spec.get("attack"))
            # a fresh copy: the data order must not depend on what this datamodule trained before
            datamodule = datamodule.fresh()
            history = ResumableHistory()
            with signals.doing(f"training the {name}"):
                fit_metrics, test_metrics, trainer = self._fit(spec, module, datamodule, name, history)
            last = history.rows[-1] if history.rows else {}  # resumed after its last epoch: nothing trained, the history has them
            metrics = {**{k: last[k] for k in FIT_METRICS if k in last}, **fit_metrics, "test/acc": test_metrics["test/acc"]}
        log.info("Trained %s: test/acc = %.4f", name, metrics["test/acc"])
        used = {"precision": str(trainer.precision), "accelerator": self.device.type}
        return {"state_dict": {k: v.detach().cpu() for k, v in module.model.state_dict().items()}, "metrics": metrics,
                "history": history.rows, "trainer": used}


def source_model(spec, datamodule, artifacts: Artifacts, name: str = "source model", where: str = "source"):
    """The model of a spec (trained once, then cached) for dataset builders: (model, metrics, cache key)."""
    return artifacts.model(spec, datamodule, name=name, where=where)
