"""Lightning's progress display: tqdm bars on a terminal, one line per epoch in a file or pipe."""
from __future__ import annotations

import logging
import time

from pytorch_lightning.callbacks import ProgressBar, TQDMProgressBar

from advlab.utils.progress import interactive

log = logging.getLogger("advlab.progress")


class EpochLines(ProgressBar):
    """A log line per epoch (at most about `max_lines` per fit, the first and last epochs always)
    with its main metrics: readable in CI logs and W&B's output.log, where tqdm's refreshes would
    pile up as hundreds of kilobytes."""

    SHOWN = (("train/loss_epoch", "loss"), ("train/acc", "train/acc"), ("val/acc", "val/acc"))

    def __init__(self, max_lines: int = 10):
        super().__init__()
        self.max_lines = max(1, int(max_lines))
        self._enabled = True
        self._epoch_started = time.time()

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_started = time.time()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        epoch, total = trainer.current_epoch + 1, trainer.max_epochs
        every = max(1, total // self.max_lines) if total and total > 0 else 1
        if not self._enabled or not trainer.is_global_zero or (epoch % every and epoch not in (1, total)):
            return
        metrics = self.get_metrics(trainer, pl_module)
        shown = " ".join(f"{short}={metrics[key]:.4g}" for key, short in self.SHOWN if isinstance(metrics.get(key), float))
        log.info("epoch %d/%d (%.1f s) %s", epoch, total, time.time() - self._epoch_started, shown)


def progress_bar(refresh_rate: int = 10) -> ProgressBar:
    """The progress display for where the output goes (see the module docstring)."""
    return TQDMProgressBar(refresh_rate=refresh_rate) if interactive() else EpochLines()
