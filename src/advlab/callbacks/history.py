"""Per-epoch metrics of a training that has no logger (a cached source model's curves)."""
from __future__ import annotations

from pytorch_lightning.callbacks import Callback

KEYS = ("train/loss_epoch", "train/acc", "val/loss", "val/acc")


class EpochHistory(Callback):
    """`rows`: one plain dict per epoch ({"epoch", "train/loss", "train/acc", "val/loss", "val/acc"})."""

    def __init__(self):
        self.rows: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        metrics = trainer.callback_metrics
        row = {"epoch": int(trainer.current_epoch)}
        row.update({k: float(metrics[k]) for k in KEYS if k in metrics})
        self.rows.append(row)
