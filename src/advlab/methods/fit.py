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


log = logging.getLogger(__name__)

FIT_METRICS = ("val/acc", "train/acc")

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
