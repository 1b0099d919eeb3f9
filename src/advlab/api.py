"""advlab from Python: load a finished advlab-train run and work with its model.

    import advlab
    run = advlab.load_run("outputs/train/runs/2026-12-01/12-00-00-000000")
    run.model            # the trained classifier, eval mode, pixel-space inputs
    run.datamodule       # its data, set up (run.datamodule.x_test, .y_test)
    run.config           # the run's resolved config (config_resolved.yaml)
    run.metrics          # its metrics.json
    from advlab.attacks import PGD
    x_adv = PGD(eps=0.1, norm="linf", steps=20)(run.model, x, y)
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from advlab.errors import ConfigError


@dataclass
class LoadedRun:
    run_dir: Path
    model: torch.nn.Module
    datamodule: Any
    config: DictConfig
    metrics: dict
    checkpoint: Path

    def test_accuracy(self, batch_size: int = 1024) -> float:
        """The model's accuracy on the run's clean test set (equals `metrics["test/acc"]`)."""
        from advlab.models import predict

        pred = predict(self.model, self.datamodule.x_test, batch_size=batch_size)
        return float((pred == self.datamodule.y_test).float().mean())


def load_run(run_dir, checkpoint: str = "last", device: str | torch.device = "cpu") -> LoadedRun:
    """The model of an advlab-train run directory with its data, config and metrics. `checkpoint`:
    "last" (the weights `test/acc` was computed with) or "best" (best val/acc)."""
    from hydra.utils import instantiate

    from advlab.artifacts.model_sources import model_state
    from advlab.models import build_model

    run_dir = Path(run_dir).expanduser().resolve()
    config_file, ckpt = run_dir / "config_resolved.yaml", run_dir / "checkpoints" / f"{checkpoint}.ckpt"
    for path in (config_file, ckpt):
        if not path.is_file():
            raise ConfigError("run_dir", f"{path} not found: give an advlab-train run directory (trained with callbacks=default)")
    config = OmegaConf.load(config_file)
    datamodule = instantiate(config.dataset)
    datamodule.check()
    datamodule.setup()
    model = build_model(config.arch, datamodule)
    model.load_state_dict(model_state(ckpt))
    metrics_file = run_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    return LoadedRun(run_dir, model.to(device).eval(), datamodule, config, metrics, ckpt)
