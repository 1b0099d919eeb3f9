"""What every advlab task does around its work: loggers from the config, the resolved config and
`metrics.json` in the run directory, plots and final metrics to every logger."""
from __future__ import annotations

import logging
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from advlab.utils.io import write_json, write_text

log = logging.getLogger(__name__)


def instantiate_all(node) -> list:
    """Instantiate every `_target_` entry of a mapping config (loggers, callbacks)."""
    if not node:
        return []
    return [instantiate(v) for v in node.values() if isinstance(v, DictConfig) and "_target_" in v]


def wandb_logger(loggers):
    return next((lg for lg in loggers if type(lg).__name__ == "WandbLogger"), None)


def start_loggers(cfg: DictConfig, out_dir: Path) -> list:
    """Write the resolved config, then create the config's loggers and log it as hyperparameters."""
    write_text(out_dir / "config_resolved.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    loggers = instantiate_all(cfg.get("logger"))
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return loggers


def finish_run(loggers, metrics: dict, out_dir: Path, images: dict[str, Path] | None = None) -> None:
    """`metrics.json` (atomically), plots as W&B images, the metrics as W&B summary and `final/*` rows."""
    write_json(out_dir / "metrics.json", metrics)
    wb = wandb_logger(loggers)
    if wb is not None:
        for key, path in (images or {}).items():
            wb.log_image(key=f"plots/{key}", images=[str(path)])
        wb.experiment.summary.update(metrics)
    for lg in loggers:
        lg.log_metrics({f"final/{k}": v for k, v in metrics.items()})
        lg.finalize("success")
    log.info("Final metrics: %s", ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())))
    log.info("Run directory: %s", out_dir)
