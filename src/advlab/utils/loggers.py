"""Loggers and callbacks from config nodes, and what the Hydra apps log to them at the end of a run."""
from __future__ import annotations

from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig


def instantiate_all(node) -> list:
    """Instantiate every `_target_` entry of a mapping config (loggers, callbacks)."""
    if not node:
        return []
    return [instantiate(v) for v in node.values() if isinstance(v, DictConfig) and "_target_" in v]


def wandb_logger(loggers):
    return next((lg for lg in loggers if type(lg).__name__ == "WandbLogger"), None)


def log_images(loggers, images: dict[str, Path]) -> None:
    logger = wandb_logger(loggers)
    if logger is not None and images:
        for key, path in images.items():
            logger.log_image(key=f"plots/{key}", images=[str(path)])


def start_loggers(cfg: DictConfig) -> list:
    """The run's loggers (`logger` node), with the resolved config as their hyperparameters."""
    from omegaconf import OmegaConf

    loggers = instantiate_all(cfg.get("logger"))
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return loggers


def finish_loggers(loggers, metrics: dict[str, float], images: dict[str, Path], prefix: str = "") -> None:
    """End of a run: plots as W&B images, final metrics in the W&B summary and every logger, loggers closed."""
    log_images(loggers, images)
    wb = wandb_logger(loggers)
    if wb is not None:
        wb.experiment.summary.update(metrics)
    for lg in loggers:
        lg.log_metrics({f"{prefix}{k}": v for k, v in metrics.items()})
        lg.finalize("success")
