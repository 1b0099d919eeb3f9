"""Hydra callback: the sweep report at the end of every multirun (conf/hydra/default.yaml)."""
from __future__ import annotations

import logging
import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class SweepReport(Callback):
    """Writes <sweep dir>/report/ when all jobs have returned; if any job failed, names it and makes
    the sweep exit with status 1 (the other jobs ran to the end)."""

    def __init__(self, enabled: bool = True, wandb: str = "auto"):
        self.enabled = enabled
        self.wandb = wandb

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.enabled:
            return
        from advlab.report.sweep_report import write_report

        report = write_report(config.hydra.sweep.dir, wandb_mode=self.wandb)
        print(f"Sweep report: {report.out_dir / 'report.md'}", file=sys.stderr)
        if report.failed:
            print(f"advlab: {report.failures()}", file=sys.stderr)
            raise SystemExit(1)
