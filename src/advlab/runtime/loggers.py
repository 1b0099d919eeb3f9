"""Loggers that keep one history across a resume, and the W&B config a dashboard filters by.

* `ResumableCSVLogger`: Lightning's CSVLogger deletes `metrics.csv` when its directory is not empty;
  this one keeps the rows up to the step the run resumes from (rows of an epoch lost to a kill go).
* The W&B run id is stored in the run directory (`wandb_run_id`): a resumed run continues that run.
* `dashboard_config`: the experiment's choices at the top (dataset, arch, method, attack, ε,
  source), then the resolved config without `_target_`, paths and logger settings.
"""
from __future__ import annotations

import csv
import secrets
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers import WandbLogger as _LightningWandbLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment

from advlab.utils.io import atomic_path, write_text

WANDB_ID_FILE = "wandb_run_id"


class _ContinuingWriter(ExperimentWriter):
    def __init__(self, log_dir: str, keep_until_step: int | None):
        self._keep_until_step = keep_until_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        if self._keep_until_step is None:  # a fresh run in this directory: a fresh history
            path.unlink()
            return
        with open(path, newline="") as file:
            reader = csv.DictReader(file)
            fields = list(reader.fieldnames or [])
            rows = [r for r in reader if r.get("step") and int(float(r["step"])) <= self._keep_until_step]
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        self.metrics_keys = sorted(fields)


class ResumableCSVLogger(CSVLogger):
    """CSVLogger whose history continues when the run resumes (see the module docstring); set
    `keep_until_step` to the resumed checkpoint's global step before the first log."""

    keep_until_step: int | None = None

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(self.log_dir, self.keep_until_step)
        return self._experiment


class WandbLogger(_LightningWandbLogger):
    """Lightning's WandbLogger without the `anonymous` argument, which W&B deprecated (it warns on
    every run even when unset)."""

    def __init__(self, *args, log_artifacts: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.log_artifacts = log_artifacts  # the run's models, datasets and checkpoints as W&B artifacts (runtime.wandb_artifacts)
        self._wandb_init.pop("anonymous", None)
        import wandb

        # W&B writes an offline run's file every 15 s by default: a killed run would lose that much
        # history before its resumed part continues the run
        if "x_transaction_log_flush_interval" in getattr(wandb.Settings, "model_fields", {}):
            self._wandb_init.setdefault("settings", {"x_transaction_log_flush_interval": 1.0})


def wandb_run_id(out_dir: Path, resume: bool) -> str:
    """The W&B run id of this run directory: the stored one when resuming, else a new one (stored)."""
    path = Path(out_dir) / WANDB_ID_FILE
    if resume and path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    run_id = secrets.token_hex(4)  # W&B ids: lowercase letters and digits
    write_text(path, run_id + "\n")
    return run_id


_NOISE = ("paths", "logger", "hydra", "callbacks", "trainer")


def _strip_targets(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_targets(v) for k, v in node.items() if not str(k).startswith("_")}
    if isinstance(node, list):
        return [_strip_targets(v) for v in node]
    return node


def _choices() -> dict[str, Any]:
    try:
        from hydra.core.hydra_config import HydraConfig

        return dict(HydraConfig.get().runtime.choices)
    except Exception:  # not under a Hydra app (tests, Python API)
        return {}


def dashboard_config(cfg: DictConfig) -> dict[str, Any]:
    """What W&B records as the run's config: choices first, then the resolved settings."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    choices = {k: v for k, v in _choices().items() if not k.startswith("hydra") and v is not None}
    top = {key: choices[key] for key in ("dataset", "arch", "method", "optimizer", "scheduler", "attack", "eval_attack", "experiment",
                                         "sweep") if key in choices}
    eps = OmegaConf.select(cfg, "eps.value", default=None)
    if eps is not None:
        top["eps"] = eps
    source = resolved.get("source")
    if isinstance(source, dict):
        # the spec's method option (its node is in the settings below); an external spec names no option
        top["source"] = {"arch": choices.get("arch@source.arch") or choices.get("arch"),
                         "method": choices.get("method@source.method") or source.get("method")}
    settings = {k: _strip_targets(v) for k, v in resolved.items() if k not in _NOISE}
    settings["trainer"] = {k: v for k, v in (resolved.get("trainer") or {}).items()
                           if isinstance(v, (int, float, str, bool)) and not str(k).startswith("_") and k != "default_root_dir"}
    return {**top, **{k: v for k, v in settings.items() if k not in top}, "choices": choices}


def define_wandb_axes(experiment) -> None:
    """Epoch-based charts get `epoch` as their axis; the source model's curves `source/epoch`."""
    experiment.define_metric("epoch")
    for pattern in ("train/*", "val/*"):
        experiment.define_metric(pattern, step_metric="epoch")
    experiment.define_metric("source/epoch")
    experiment.define_metric("source/*", step_metric="source/epoch")


def open_wandb_run(logger, wait_s: float = 60.0, poll_s: float = 2.0):
    """`logger.experiment` (wandb.init), waiting while the run ID is still held. After a `kill -9`, the
    killed process's wandb-core can outlive it for a few seconds with the run open, and a resume that
    starts at once is refused ("run ID ... is in use"); the core lets go once it notices its parent is
    gone."""
    import logging
    import time

    deadline = time.monotonic() + wait_s
    while True:
        try:
            return logger.experiment
        except Exception as err:  # wandb's ServerResponseError; the message is the only stable part
            if "is in use" not in str(err) or time.monotonic() > deadline:
                raise
            logging.getLogger(__name__).info("W&B run %s is still held by an ended process's wandb-core; waiting", getattr(logger, "_id", "?"))
            time.sleep(poll_s)
