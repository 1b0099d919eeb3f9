"""The LightningModule every training method builds on: a classifier, cross-entropy, accuracy
metrics, optional evaluation under an attack at test time, optimiser/scheduler from the config."""
from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.nn import functional as F
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from advlab.errors import ConfigError, check_number

# the training losses a method takes (`method.loss`): cross-entropy, or Kumano et al.'s identity loss of binary tasks
TRAINING_LOSSES = ("ce", "identity")


def identity_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Kumano et al.'s (NeurIPS'24) identity loss −y·f per sample, y = ±1 (class index 1 → +1, 0 → −1), of a binary
    model's score f = z₁ − z₀ (a Kumano WideMLP's logits are (−f/2, f/2): its scalar readout). Unbounded below;
    its gradient in f is −y whatever f (s-kumano/perturbation-learning, train.py: `identity`)."""
    if logits.dim() != 2 or logits.shape[1] != 2:
        raise ValueError(f"the identity loss needs the logits of 2 classes, got shape {tuple(logits.shape)}")
    sign = 2.0 * y.to(logits.dtype) - 1.0
    return -sign * (logits[:, 1] - logits[:, 0])


def optimizer_config(optimizer):
    """A plain `_partial_` config of an optimizer (what rebuilds it from a checkpoint's hyperparameters):
    of a config node, a functools.partial of a class, or a class; None for other callables."""
    import functools

    if not callable(optimizer):
        return OmegaConf.to_container(optimizer, resolve=True) if OmegaConf.is_config(optimizer) else optimizer
    func, keywords = (optimizer.func, optimizer.keywords) if isinstance(optimizer, functools.partial) else (optimizer, {})
    if not isinstance(func, type):
        return None
    return {"_target_": f"{func.__module__}.{func.__qualname__}", "_partial_": True, **keywords}


class ClassifierModule(pl.LightningModule):
    """Standard (clean) training. Subclasses change what a training batch is.

    `optimizer`: a callable taking the parameters (a `_partial_` optimizer node, instantiated), or such a
    node itself; `scheduler`: a config node instantiated in `configure_optimizers` (its `interval` and
    `total_steps: null` are known only there); `eval_attack` (an Attack or None) adds `test/adv_acc`;
    `attack`: the run's attack, unused by clean training (advlab-train and model specs hand it to every method).
    `loss`: the training loss, "ce" (cross-entropy, with `label_smoothing`) or "identity" (`identity_loss`, −y·f,
    binary tasks only: Kumano et al.'s main panels).
    """

    # Whether this method trains on attacked inputs (it needs an `attack`): what advlab asks of a
    # method's kind, never its class name.
    adversarial: bool = False

    def __init__(self, model: torch.nn.Module, optimizer: Any, scheduler: Any = None, eval_attack=None,
                 label_smoothing: float = 0.0, channels_last: bool = False, attack=None, compile: bool = False,
                 loss: str = "ce"):
        super().__init__()
        # Every init argument but the objects, as plain values (checkpoints load with weights_only=True);
        # `record_configs` adds how to rebuild the objects, so `load_from_checkpoint(path)` needs nothing else.
        self.save_hyperparameters(ignore=["model", "attack", "eval_attack", "optimizer"], logger=False)
        for key, value in list(self.hparams.items()):
            if OmegaConf.is_config(value):
                self.hparams[key] = OmegaConf.to_container(value, resolve=True)
        self.optimizer_spec = optimizer  # a callable or a `_partial_` node: built when Lightning asks for it
        self.hparams["optimizer"] = optimizer_config(optimizer)  # what rebuilds it on loading
        self.label_smoothing = check_number("label_smoothing", label_smoothing, 0.0)
        if self.label_smoothing >= 1.0:
            raise ConfigError("label_smoothing", f"must be in [0, 1), got {label_smoothing!r}")
        if channels_last not in (True, False):
            raise ConfigError("channels_last", f"must be a boolean, got {channels_last!r}; allowed: true, false")
        self.channels_last = bool(channels_last)
        self.loss_kind = _check_loss(loss, model, self.label_smoothing)
        if compile not in (True, False):
            raise ConfigError("compile", f"must be a boolean, got {compile!r}; allowed: true, false")
        # a list, not an attribute: a compiled module would register as a submodule (its weights twice
        # in the state dict, under `_orig_mod.`); built at the first training step
        self._compiled = [] if compile else None
        if self.channels_last and len(getattr(model, "input_shape", ())) == 3:
            model.to(memory_format=torch.channels_last)  # NHWC weights: convolutions then run NHWC
        self.model = model
        self.scheduler_cfg = scheduler
        self.eval_attack = eval_attack
        classes = model.num_classes
        self.train_acc = MulticlassAccuracy(classes, average="micro")
        self.val_acc = MulticlassAccuracy(classes, average="micro")
        self.test_acc = MulticlassAccuracy(classes, average="micro")
        self.test_adv_acc = MeanMetric()

    def forward(self, x):
        return self.model(x)

    # -- checkpoints: what rebuilds the module, and the attacks' random streams ------------------------
    def record_configs(self, arch, datamodule, attack=None, eval_attack=None) -> None:
        """Store how to rebuild the model and the attacks (plain configs) in the hyperparameters."""
        plain = lambda node: OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node  # noqa: E731
        bounds = list(datamodule.bounds) if datamodule.bounds is not None else None
        self.hparams["model_build"] = {
            "arch": plain(arch), "input_shape": list(datamodule.input_shape), "num_classes": int(datamodule.num_classes),
            "mean": datamodule.mean.flatten().tolist(), "std": datamodule.std.flatten().tolist(), "bounds": bounds}
        self.hparams["attack_config"] = plain(attack)
        self.hparams["eval_attack_config"] = plain(eval_attack)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, **kwargs):
        """Lightning's loader (`weights_only=True`), with the model and attacks rebuilt from the
        checkpoint's own record of them (see `record_configs`)."""
        from advlab.models import build_from_record

        hparams = torch.load(checkpoint_path, map_location="cpu", weights_only=True).get("hyper_parameters", {})
        build = hparams.get("model_build")
        if build is None:
            raise ValueError(f"{checkpoint_path}: no `model_build` hyperparameters; pass model=... (not an advlab-train checkpoint)")
        objects = {"model": build_from_record(build)}
        for name in ("attack", "eval_attack"):
            node = hparams.get(f"{name}_config")
            objects[name] = instantiate(node, bounds=build["bounds"]) if node else None
        kwargs = {**objects, **kwargs}
        return super().load_from_checkpoint(checkpoint_path, map_location=map_location, weights_only=True, **kwargs)

    def _attacks(self) -> dict:
        from advlab.attacks.base import Attack

        return {name: value for name, value in vars(self).items() if isinstance(value, Attack)}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["attack_rng"] = {name: {f"{t}:{i}": state for (t, i), state in attack.__getstate__()["_pending_states"].items()}
                                    for name, attack in self._attacks().items()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # a resumed run's attacks continue their random streams (PGD-AT's random starts)
        for name, attack in self._attacks().items():
            states = checkpoint.get("attack_rng", {}).get(name, {})
            attack.reset_rng()
            attack._pending_states = {(key.split(":")[0], None if key.split(":")[1] == "None" else int(key.split(":")[1])): state
                                      for key, state in states.items()}

    # -- what a training batch is: methods override this ------------------------------------------
    def training_inputs(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x

    def training_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The model on a training batch: `torch.compile`d (inductor) where `method.compile` is on; the
        same weights either way. Attacks and evaluation use the eager model (their input-gradient graphs
        differ from the training one, and each would compile anew)."""
        if self._compiled is None:
            return self.model(x)
        if not self._compiled:
            self._compiled.append(torch.compile(self.model))
        return self._compiled[0](x)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training loss of every method: cross-entropy, with `label_smoothing`; or the identity loss (`loss`)."""
        if self.loss_kind == "identity":
            return identity_loss(logits, y).mean()
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)

    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the batch's training loss, the logits train/acc counts): methods with their own objective override it."""
        logits = self.training_forward(self.training_inputs(x, y))
        return self.loss(logits, y), logits

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        loss, logits = self.training_loss(x, y)
        self.train_acc(logits, y)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=len(y))
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.model(x)
        self.val_acc(logits, y)
        self.log("val/loss", F.cross_entropy(logits, y), on_epoch=True, sync_dist=True, batch_size=len(y))
        self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True, batch_size=len(y))

    def test_step(self, batch, batch_idx):
        from advlab.attacks.pgd import early_stopping

        x, y = batch
        logits = self.model(x)
        self.test_acc(logits, y)
        self.log("test/acc", self.test_acc, on_epoch=True, batch_size=len(y))
        if self.eval_attack is not None:
            # robust = correct on x_adv AND on x: a sample misclassified when clean is never robust, so
            # only the clean-correct ones are attacked (the same numbers, fewer attacked points); PGD
            # stops attacking a point once it is misclassified (early_stopping: the same numbers again)
            robust = logits.argmax(1) == y
            idx = robust.nonzero().squeeze(1)
            if idx.numel():
                # Lightning evaluates under no_grad; the attack needs input gradients
                with torch.enable_grad(), early_stopping(self.eval_attack):
                    x_adv = self.eval_attack(self.model, x[idx], y[idx])
                robust[idx] = self.model(x_adv).argmax(1) == y[idx]
            self.test_adv_acc.update(robust.float())
            self.log("test/adv_acc", self.test_adv_acc, on_epoch=True, batch_size=len(y))
        return logits

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        factory = self.optimizer_spec if callable(self.optimizer_spec) else instantiate(self.optimizer_spec, _partial_=True)
        optimizer = factory(params)
        if not self.scheduler_cfg:
            return optimizer
        cfg = dict(self.scheduler_cfg)
        # `interval: step` steps the scheduler every batch; `total_steps: null` = the run's optimiser steps
        interval = cfg.pop("interval", "epoch")
        if interval not in ("epoch", "step"):
            raise ConfigError("method.scheduler.interval", f"unknown value {interval!r}; allowed: epoch, step")
        if "total_steps" in cfg and cfg["total_steps"] is None:
            cfg["total_steps"] = int(self.trainer.estimated_stepping_batches)
        # `monitor`: the logged metric a ReduceLROnPlateau steps on (conf/scheduler/plateau.yaml: the epoch's training loss)
        monitor = cfg.pop("monitor", None)
        scheduler = instantiate(cfg, optimizer=optimizer)
        lr_scheduler = {"scheduler": scheduler, "interval": interval, **({"monitor": monitor} if monitor else {})}
        return {"optimizer": optimizer, "lr_scheduler": lr_scheduler}


def _check_loss(loss, model, label_smoothing: float) -> str:
    """`method.loss`, checked against the model's classes and the label smoothing."""
    if loss not in TRAINING_LOSSES:
        raise ConfigError("loss", f"unknown loss {loss!r}; allowed: {', '.join(TRAINING_LOSSES)}")
    if loss == "identity" and getattr(model, "num_classes", 2) != 2:
        raise ConfigError("loss", f"identity (−y·f) needs a binary task, the model has {model.num_classes} classes; allowed: ce")
    if loss == "identity" and label_smoothing:
        raise ConfigError("label_smoothing", "smooths cross-entropy only; with method.loss=identity it must be 0")
    return loss


class StandardTraining(ClassifierModule):
    """Empirical risk minimisation on clean data."""


def is_adversarial(method) -> bool:
    """The kind of a method node (its `_target_` class's `adversarial`) or of a method class."""
    from hydra.utils import get_object

    if isinstance(method, type):
        return bool(getattr(method, "adversarial", False))
    target = method.get("_target_") if hasattr(method, "get") else None
    try:
        return bool(getattr(get_object(str(target)), "adversarial", False)) if target else False
    except Exception:  # not importable: the pre-flight reports it
        return False
