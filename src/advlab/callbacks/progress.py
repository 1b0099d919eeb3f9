"""Lightning's progress display: tqdm bars on a terminal, one line per epoch in a file or pipe."""
from __future__ import annotations

import logging
import time

from pytorch_lightning.callbacks import ProgressBar, TQDMProgressBar

from advlab.utils.progress import interactive

log = logging.getLogger("advlab.progress")


class EpochLines(ProgressBar):
    """One log line per training epoch with its metrics: readable in CI logs and W&B's output.log,
    where tqdm's refreshes would pile up as hundreds of kilobytes."""

    def __init__(self):
        super().__init__()
        self._enabled = True
        self._epoch_started = time.time()

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_started = time.time()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self._enabled or not trainer.is_global_zero:
            return
        metrics = {k: v for k, v in self.get_metrics(trainer, pl_module).items() if k != "v_num"}
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(metrics.items()))
        log.info("epoch %d/%d (%.1f s): %s", trainer.current_epoch + 1, trainer.max_epochs,
                 time.time() - self._epoch_started, shown)


def progress_bar(refresh_rate: int = 10) -> ProgressBar:
    """The progress display for where the output goes (see the module docstring)."""
    return TQDMProgressBar(refresh_rate=refresh_rate) if interactive() else EpochLines()
