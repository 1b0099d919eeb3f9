"""What every advlab task does around its work: data and cache first (checked before any work),
loggers from the config, the resolved config and `metrics.json` in the run directory, plots and
final metrics to every logger."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from advlab.utils.hardware import machine, resolve_precisions
from advlab.utils.io import write_json, write_text

log = logging.getLogger(__name__)


def global_rank() -> int:
    """This process's rank in a multi-process (DDP) job, 0 when alone. Known before Lightning sets
    up: its launcher re-runs the script with LOCAL_RANK set, SLURM sets SLURM_PROCID."""
    from lightning_fabric.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


_RANK_PREFIXED = False


def prefix_logs_with_rank(rank: int) -> None:
    """Every rank writes to the same console and `<task>.log`: a record of rank > 0 says whose it is."""
    global _RANK_PREFIXED
    if rank == 0 or _RANK_PREFIXED:
        return
    make = logging.getLogRecordFactory()

    def factory(*args, **kwargs):
        record = make(*args, **kwargs)
        record.msg = f"[rank {rank}] {record.msg}"
        return record

    logging.setLogRecordFactory(factory)
    _RANK_PREFIXED = True


def data_and_cache(cfg: DictConfig):
    """(datamodule set up, artifact cache, input bounds as a list or None). The datamodule is checked
    first, so missing data is a one-line error before any work; the seed is set before the setup."""
    import pytorch_lightning as pl

    from advlab.artifacts.cache import ArtifactCache

    resolve_hardware(cfg)
    datamodule = instantiate(cfg.dataset)
    datamodule.check()
    cache = ArtifactCache(cfg.paths.cache_dir)
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    datamodule.setup()
    bounds = list(datamodule.bounds) if datamodule.bounds is not None else None
    return datamodule, cache, bounds


def app_batch_size(cfg: DictConfig) -> int:
    """advlab-eval's and advlab-transfer's own batch, at their node (`eval.batch_size`,
    `transfer.batch_size`). The top-level `batch_size` it was before still works for one release, with
    one line naming the new form (advlab.errors.moved_keys)."""
    from advlab.errors import moved_keys

    node = str(cfg.task_name)
    moved, notes = moved_keys({"batch_size": cfg.get("batch_size")}, {"batch_size": "batch_size"}, "", node)
    for line in notes:
        log.warning(line)
    return int(moved.get("batch_size", OmegaConf.select(cfg, f"{node}.batch_size")))


def resolve_hardware(cfg: DictConfig) -> None:
    """Once per run, before anything reads them (Trainers, cache keys, config_resolved.yaml, W&B):
    `precision: auto` resolved for this machine, and torch's threads fitted to the cores this
    process may use (advlab.utils.hardware says how each is found)."""
    resolve_precisions(cfg)
    fit_threads(cfg)


def _multirun_launcher():
    """The Hydra launcher's config when this process is a job of a multirun, else None."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
        return hydra_cfg.launcher if hydra_cfg.mode == RunMode.MULTIRUN else None
    except Exception:  # not inside a Hydra job
        return None


def _cpu_ranks(cfg: DictConfig) -> int:
    """The DDP processes this run starts on this machine's CPUs (trainer.devices > 1 on CPU), else 1."""
    from advlab.utils.hardware import device_type

    trainer = cfg.get("trainer")
    if not OmegaConf.is_dict(trainer) or device_type(trainer.get("accelerator")) != "cpu":
        return 1
    devices = trainer.get("devices")
    devices = int(devices) if isinstance(devices, str) and devices.isdigit() else devices
    return devices if isinstance(devices, int) and not isinstance(devices, bool) and devices > 1 else 1


def _sharing(cfg: DictConfig, usable: int) -> tuple[int, int | None, list[str]]:
    """(processes sharing these cores, a per-job CPU cap or None, notes for the log line): the joblib
    launcher's workers (each job its share), a submitit launcher's cpus_per_task, CPU DDP ranks."""
    processes, cap, notes = 1, None, []
    launcher = _multirun_launcher()
    if launcher is not None and "joblib" in str(launcher.get("_target_", "")).lower():
        n_jobs = int(launcher.get("n_jobs") or 1)
        processes = n_jobs if n_jobs > 0 else max(1, usable + 1 + n_jobs)  # joblib's -1: all cores, -2: all but one
        notes.append(f"{processes} joblib workers")
        if processes > usable:
            notes.append(f"more workers than cores: set hydra.launcher.n_jobs<={usable}")
    elif launcher is not None and launcher.get("cpus_per_task"):
        cap = int(launcher.cpus_per_task)
        notes.append(f"launcher cpus_per_task {cap}")
    ranks = _cpu_ranks(cfg)
    if ranks > 1:
        processes *= ranks
        notes.append(f"{ranks} DDP ranks")
    return processes, cap, notes


def fit_threads(cfg: DictConfig) -> int:
    """torch's threads: at most this process's share of its usable cores (affinity, cgroup quota), no
    more than torch / OMP_NUM_THREADS chose; one line says the choice. Returns the thread count."""
    import torch

    from advlab.utils.hardware import thread_budget, usable_cores

    usable, found = usable_cores()
    processes, cap, notes = _sharing(cfg, usable)
    current = torch.get_num_threads()
    threads = thread_budget(usable, processes, current, cap)
    if threads == current < thread_budget(usable, processes, None, cap):
        notes.append(f"torch had {current} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})")
    if threads != current:
        torch.set_num_threads(threads)
    # processes started later (CPU DDP ranks) inherit it, and Lightning then keeps their count
    os.environ["OMP_NUM_THREADS"] = str(threads)
    share = " per job" if processes > 1 else ""
    log.info("threads: %d torch thread%s%s (%d usable cores: %s)", threads, "" if threads == 1 else "s", share, usable,
             "; ".join([found, *notes]))
    return threads


def make_callbacks(cfg: DictConfig) -> list:
    """The `callbacks` node's callbacks, with advlab's progress display (see `callbacks.progress`)
    unless the trainer has it off."""
    from pytorch_lightning.callbacks import ProgressBar

    from advlab.callbacks.progress import progress_bar

    callbacks = instantiate_all(cfg.get("callbacks"))
    if not cfg.trainer.get("enable_progress_bar", True):
        return [c for c in callbacks if not isinstance(c, ProgressBar)]
    if not any(isinstance(c, ProgressBar) for c in callbacks):  # else Lightning adds tqdm bars, also off a terminal
        callbacks.append(progress_bar())
    return callbacks


def finished_run(cfg: DictConfig, out_dir: Path) -> float | None | bool:
    """When this run directory holds a finished run (metrics.json and a last.ckpt of every epoch) and
    `resume` is on: say so and return the run's result (the optimized metric, or True); else None."""
    import json

    from advlab.callbacks.checkpoint import LAST, completed_epochs, readable_checkpoint

    metrics_file, last = out_dir / "metrics.json", out_dir / "checkpoints" / LAST
    if not (cfg.get("resume") and metrics_file.is_file() and last.is_file()) or readable_checkpoint(last):
        return None
    done = completed_epochs(last)
    if done < int(cfg.trainer.max_epochs):
        return None
    metrics = json.loads(metrics_file.read_text())
    log.info("Run already finished (%d of %d epochs): nothing to train; metrics in %s: %s", done, int(cfg.trainer.max_epochs),
             metrics_file, ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()) if k.startswith("test/")))
    optimized = cfg.get("optimized_metric")
    return metrics.get(optimized) if optimized else True


def log_source_history(loggers, artifacts, out_dir: Path, fresh: bool) -> tuple[dict[str, float], dict[str, Path]]:
    """The source model's training (cached or just trained): its curves as `source/*` W&B rows (once,
    not again on resume) and `plots/source_training_curves.png`. Returns (its metrics as `source/*`,
    {figure name: png})."""
    from advlab.report import plots
    from advlab.utils.io import atomic_path

    entry = artifacts.trained.get("source")
    if entry is None:
        return {}, {}
    metrics = {f"source/{k}": float(v) for k, v in entry["metrics"].items()}
    if global_rank() != 0:  # rank 0 writes the files and logs the rows
        return metrics, {}
    history = entry["history"]
    wb = wandb_logger(loggers)
    if wb is not None and fresh:
        for row in history:
            wb.experiment.log({f"source/{k}": v for k, v in row.items()})
    images = {}
    if history:
        import csv

        keys = sorted({k for row in history for k in row})
        csv_file = out_dir / "source" / "metrics.csv"
        csv_file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(csv_file) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(history)
        curve = plots.training_curves(csv_file, out_dir / "plots" / "source_training_curves.png", title="source model")
        if curve:
            images["source_training_curves"] = curve
    return metrics, images


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


def start_loggers(cfg: DictConfig, out_dir: Path | None = None, resume_step: int | None = None) -> list:
    """The run's loggers (`logger` node), with the resolved config as their hyperparameters; with
    `out_dir`, the resolved config is written there first. `resume_step`: the global step of the
    checkpoint the run resumes from (the CSV history is kept up to it, the W&B run continues)."""
    from advlab.runtime.loggers import ResumableCSVLogger, dashboard_config, define_wandb_axes, open_wandb_run, wandb_run_id

    rank = global_rank()
    if out_dir is not None and rank == 0:  # other DDP ranks: rank 0 writes the run directory's files
        write_text(Path(out_dir) / "config_resolved.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        write_json(Path(out_dir) / "machine.json", machine())  # which CPU / GPU its times are from
    nodes = {k: v for k, v in (cfg.get("logger") or {}).items() if isinstance(v, DictConfig) and "_target_" in v}
    loggers = []
    for node in nodes.values():
        extra = {}
        if out_dir is not None and rank == 0 and node._target_.endswith("WandbLogger"):  # W&B runs on rank 0 only
            extra["id"] = wandb_run_id(Path(out_dir), resume=resume_step is not None)
        logger = instantiate(node, **extra)
        if isinstance(logger, ResumableCSVLogger):
            logger.keep_until_step = resume_step
        loggers.append(logger)
    wb = wandb_logger(loggers)
    if wb is not None:
        define_wandb_axes(open_wandb_run(wb))
        wb.log_hyperparams(dashboard_config(cfg))
    for lg in loggers:
        if lg is not wb:
            lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return loggers


def finish_loggers(loggers, metrics: dict[str, float], images: dict[str, Path]) -> None:
    """End of a run: plots as W&B images, final metrics in the W&B summary (not as another history
    row), loggers closed."""
    log_images(loggers, images)
    wb = wandb_logger(loggers)
    if wb is not None:
        wb.experiment.summary.update(metrics)
    for lg in loggers:
        lg.finalize("success")


def finish_run(loggers, metrics: dict, out_dir: Path, images: dict[str, Path] | None = None) -> None:
    """`metrics.json` (atomically), then `finish_loggers`."""
    write_json(Path(out_dir) / "metrics.json", metrics)
    finish_loggers(loggers, metrics, images or {})
    log.info("Final metrics: %s", ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())))
    log.info("Run directory: %s", out_dir)
