"""The LightningModule every training method builds on: a classifier, cross-entropy, accuracy
metrics, optional evaluation under an attack at test time, optimiser/scheduler from the config."""
from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from torch.nn import functional as F
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from advlab.errors import ConfigError


def check_number(key: str, value, minimum: float, *, integer: bool = False, strict: bool = False):
    """A method's numeric argument (also when the method is built in Python, not from a config):
    ConfigError naming `key` unless it is a number (an integer) >= `minimum` (> with `strict`)."""
    from advlab.attacks.base import _is_int, _is_real

    ok = _is_int(value) if integer else _is_real(value)
    if not ok or value != value or (value <= minimum if strict else value < minimum):
        kind = "an integer" if integer else "a number"
        raise ConfigError(key, f"must be {kind} {'>' if strict else '>='} {minimum}, got {value!r}")
    return int(value) if integer else float(value)


class ClassifierModule(pl.LightningModule):
    """Standard (clean) training. Subclasses change what a training batch is.

    `optimizer` / `scheduler` are config nodes (`_target_` + kwargs) instantiated in
    `configure_optimizers`; `eval_attack` (an `advlab.attacks.Attack` or None) adds `test/adv_acc`.
    """

    def __init__(self, model: torch.nn.Module, optimizer: Any, scheduler: Any = None, eval_attack=None,
                 label_smoothing: float = 0.0, channels_last: bool = False, **_ignored):
        super().__init__()
        self.label_smoothing = check_number("method.label_smoothing", label_smoothing, 0.0)
        if self.label_smoothing >= 1.0:
            raise ConfigError("method.label_smoothing", f"must be in [0, 1), got {label_smoothing!r}")
        if channels_last not in (True, False):
            raise ConfigError("method.channels_last", f"must be a boolean, got {channels_last!r}; allowed: true, false")
        self.channels_last = bool(channels_last)
        if self.channels_last and len(getattr(model, "input_shape", ())) == 3:
            model.to(memory_format=torch.channels_last)  # NHWC weights: convolutions then run NHWC
        self.model = model
        self.optimizer_cfg = optimizer
        self.scheduler_cfg = scheduler
        self.eval_attack = eval_attack
        classes = model.num_classes
        self.train_acc = MulticlassAccuracy(classes, average="micro")
        self.val_acc = MulticlassAccuracy(classes, average="micro")
        self.test_acc = MulticlassAccuracy(classes, average="micro")
        self.test_adv_acc = MeanMetric()
        # Metrics computed outside the Lightning loop (e.g. of a source model), merged into metrics.json.
        self.extra_metrics: dict[str, float] = {}

    def forward(self, x):
        return self.model(x)

    # -- what a training batch is: methods override this ------------------------------------------
    def training_inputs(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training loss of every method: cross-entropy, with `label_smoothing`."""
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = self.model(self.training_inputs(x, y))
        loss = self.loss(logits, y)
        self.train_acc(logits, y)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(y))
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.model(x)
        self.val_acc(logits, y)
        self.log("val/loss", F.cross_entropy(logits, y), on_epoch=True, sync_dist=True, batch_size=len(y))
        self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True, batch_size=len(y))

    def test_step(self, batch, batch_idx):
        x, y = batch
        logits = self.model(x)
        self.test_acc(logits, y)
        self.log("test/acc", self.test_acc, on_epoch=True, batch_size=len(y))
        if self.eval_attack is not None:
            with torch.enable_grad():  # Lightning evaluates under no_grad; the attack needs input gradients
                x_adv = self.eval_attack(self.model, x, y)
            # robust = correct on x_adv AND on x: a sample misclassified when clean is never robust
            robust = (self.model(x_adv).argmax(1) == y) & (logits.argmax(1) == y)
            self.test_adv_acc.update(robust.float())
            self.log("test/adv_acc", self.test_adv_acc, on_epoch=True, batch_size=len(y))
        return logits

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = instantiate(self.optimizer_cfg, params=params)
        if not self.scheduler_cfg:
            return optimizer
        cfg = dict(self.scheduler_cfg)
        # `interval: step` steps the scheduler every batch; `total_steps: null` = the run's optimiser steps
        interval = cfg.pop("interval", "epoch")
        if interval not in ("epoch", "step"):
            raise ConfigError("method.scheduler.interval", f"unknown value {interval!r}; allowed: epoch, step")
        if "total_steps" in cfg and cfg["total_steps"] is None:
            cfg["total_steps"] = int(self.trainer.estimated_stepping_batches)
        scheduler = instantiate(cfg, optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}

    # -- hook for methods that need extra data work before fitting (see PerturbationLearning) --------
    def prepare(self, datamodule, artifacts):
        """Return the datamodule to fit on. Default: the given one."""
        return datamodule

    # -- hook for methods with figures of their own (see RobustDataset) ------------------------------
    def plots(self, out_dir, datamodule) -> dict:
        """Draw the method's own figures under `out_dir`; return {name: png path} (logged to W&B)."""
        return {}


class StandardTraining(ClassifierModule):
    """Empirical risk minimisation on clean data."""
