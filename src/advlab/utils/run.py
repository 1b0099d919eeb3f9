"""What every advlab task does around its work: data and cache first (checked before any work),
loggers from the config, the resolved config and `metrics.json` in the run directory, plots and
final metrics to every logger."""
from __future__ import annotations

import logging
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from advlab.utils.io import write_json, write_text

log = logging.getLogger(__name__)


def data_and_cache(cfg: DictConfig):
    """(datamodule set up, artifact cache, input bounds as a list or None). The datamodule is checked
    first, so missing data is a one-line error before any work; the seed is set before the setup."""
    import pytorch_lightning as pl

    from advlab.cache import ArtifactCache

    datamodule = instantiate(cfg.dataset)
    datamodule.check()
    cache = ArtifactCache(cfg.paths.cache_dir)
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    datamodule.setup()
    bounds = list(datamodule.bounds) if datamodule.bounds is not None else None
    return datamodule, cache, bounds


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


def start_loggers(cfg: DictConfig, out_dir: Path | None = None) -> list:
    """The run's loggers (`logger` node), with the resolved config as their hyperparameters; with
    `out_dir`, the resolved config is written there first."""
    if out_dir is not None:
        write_text(Path(out_dir) / "config_resolved.yaml", OmegaConf.to_yaml(cfg, resolve=True))
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


def finish_run(loggers, metrics: dict, out_dir: Path, images: dict[str, Path] | None = None) -> None:
    """`metrics.json` (atomically), then `finish_loggers` with the metrics as `final/*`."""
    write_json(Path(out_dir) / "metrics.json", metrics)
    finish_loggers(loggers, metrics, images or {}, prefix="final/")
    log.info("Final metrics: %s", ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())))
    log.info("Run directory: %s", out_dir)
