"""Figures across the jobs of a multirun, drawn by a Hydra callback when the sweep ends."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def _job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


class InformationPlaneComparison(Callback):
    """After a multirun whose jobs used the MutualInformation callback, draw their information planes
    side by side in `<sweep dir>/information_plane.png`, one model per job, labelled by its method
    choice through `labels` (e.g. {standard: NT, adversarial: AT}; unknown ones keep their name)."""

    def __init__(self, labels: dict | None = None, filename: str = "information_plane.png"):
        self.labels = dict(labels or {})
        self.filename = filename

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from advlab.report.information import information_plane

        sweep_dir = Path(str(config.hydra.sweep.dir))
        histories = {}
        for job in _job_dirs(sweep_dir) if sweep_dir.is_dir() else []:
            history = job / "mi_history.json"
            if not history.is_file():
                continue
            method = OmegaConf.load(job / ".hydra" / "hydra.yaml").hydra.runtime.choices.get("method", job.name)
            label = self.labels.get(method, method)
            if label in histories:  # the same method twice (another sweep key differs): name the job too
                label = f"{label} (job {job.name})"
            histories[label] = json.loads(history.read_text())
        if not histories:
            log.warning("No mi_history.json in the jobs of %s: nothing to compare (is callbacks=mi set?)", sweep_dir)
            return
        path = information_plane(histories, sweep_dir / self.filename, title=f"Information plane: {', '.join(histories)}")
        log.info("Information planes of %d runs side by side: %s", len(histories), path)
