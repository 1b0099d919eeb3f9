"""advlab-train: one training run (standard, adversarial or perturbation learning) from its config.

    advlab-train                                   # perturbation learning on digits, D_det rule
    advlab-train method=adversarial attack=pgd_linf eps=digits_linf attack@eval_attack=pgd_linf
    advlab-train -m arch=wide_mlp,cnn derived.target_rule=det,rand
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from advlab.runtime.hydra_app import run_hydra_app
from advlab.preflight.app_keys import validate
from advlab.runtime.resolvers import CONF_DIR
from advlab.runtime.lifecycle import (data_and_cache, finish_run, finished_run, global_rank, log_source_history,
                             prefix_logs_with_rank, start_loggers)
from advlab.runtime.task_wrapper import task_wrapper

# torch, Lightning and friends are imported inside the task, so that bad input is reported at once.

log = logging.getLogger("advlab.apps.train")


def _eval_attack_grid(method, datamodule, out_dir: Path, device) -> dict[str, Path]:
    """plots/eval_attack.png: clean and adversarial test images of the evaluation attack, with predictions."""
    import torch

    from advlab.report import plots

    if method.eval_attack is None:
        return {}
    names = datamodule.class_names
    x, y = datamodule.x_test[:8].to(device), datamodule.y_test[:8].to(device)
    model = method.model.to(device)
    adv = method.eval_attack(model, x, y)
    with torch.no_grad():
        p_clean, p_adv = model(x).argmax(1), model(adv).argmax(1)
    top = [f"y={names[int(a)]} g:{names[int(b)]}" for a, b in zip(y, p_clean)]
    bottom = [f"g:{names[int(b)]}" for b in p_adv]
    path = plots.adversarial_grid(x.cpu(), adv.cpu(), top, bottom, out_dir / "plots" / "eval_attack.png",
                                  title=f"Evaluation attack {type(method.eval_attack).__name__} ε={method.eval_attack.eps:g}")
    return {"eval_attack": path}


def _build_method(cfg: DictConfig, datamodule, bounds):
    """(the LightningModule, the derived-dataset builder or None, the crafting attack)."""
    from advlab.derived import split_method
    from advlab.methods.fit import build_classifier

    eval_attack = instantiate(cfg.eval_attack, bounds=bounds) if cfg.get("eval_attack") else None
    training, derived, deprecated = split_method(cfg.method, cfg.get("derived"))
    for line in deprecated:
        log.warning(line)
    builder = instantiate(derived) if derived is not None else None
    source = cfg.get("source")
    if source is not None and source.get("arch") is None:
        # default: the source has the trained model's architecture (its overrides too); recorded as used (config_resolved, W&B)
        cfg.source.arch = cfg.arch
    # the run's attack: the training attack of adversarial methods, the crafting attack of derived datasets
    attack = instantiate(cfg.attack, bounds=bounds) if cfg.get("attack") else None
    method = build_classifier(training, cfg.arch, datamodule, optimizer=cfg.optimizer, scheduler=cfg.get("scheduler"),
                              attack=attack, eval_attack=eval_attack)
    method.record_configs(arch=cfg.arch, datamodule=datamodule, attack=cfg.get("attack"), eval_attack=cfg.get("eval_attack"))
    return method, builder, attack


def _derived_data(cfg: DictConfig, builder, method, attack, datamodule, artifacts):
    """What the run trains on: the datamodule itself, or the dataset `builder` derives from the source model."""
    from advlab.derived import DerivedData, SourceModel

    if builder is None:
        return DerivedData(datamodule, {})
    started = time.time()
    source = SourceModel(*artifacts.model(cfg.source, datamodule, name=builder.source_name))
    source_s = round(time.time() - started, 2)  # a search's objective leaves it out (advlab.runtime.objective)
    derived = builder.build(source, datamodule, artifacts, attack=attack, eval_attack=method.eval_attack, arch=cfg.arch, source_spec=cfg.source)
    derived.metrics["time/source_s"] = source_s
    return derived


EPOCH_METRICS = ("val/acc", "train/acc")


def _logged_rows(csv_file: Path) -> list[dict]:
    """The rows of the run's CSV history (every epoch, a resumed run's included); none without one."""
    import csv

    if not csv_file.is_file():
        return []
    with open(csv_file, newline="") as f:
        return list(csv.DictReader(f))


def _last_logged(csv_file: Path) -> dict[str, float]:
    rows = _logged_rows(csv_file)
    return {k: float(r[k]) for k in EPOCH_METRICS for r in rows if r.get(k)}  # the last value of each


def _fit_and_test(cfg: DictConfig, method, fit_datamodule, loggers, resume_from, callbacks=()) -> tuple[dict, object]:
    import pytorch_lightning as pl

    from advlab.callbacks.checkpoint import LAST, completed_epochs
    from advlab.methods.fit import fit_classifier
    from advlab.utils.io import atomic_path
    from advlab.runtime.lifecycle import make_callbacks

    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)  # same stream whether artifacts were cached or built
    if resume_from:
        log.info("Resuming from %s (%d epochs done)", resume_from, completed_epochs(resume_from))
    metrics, test_metrics, trainer = fit_classifier(method, fit_datamodule, cfg.trainer, ckpt_path=resume_from,
                                                    logger=loggers or False, callbacks=[*make_callbacks(cfg), *callbacks])
    last = Path(cfg.paths.output_dir) / "checkpoints" / LAST
    if resume_from and trainer.is_global_zero and resume_from.name != LAST and not last.exists():  # best.ckpt was the final epoch: nothing trained
        with atomic_path(last) as tmp:
            shutil.copyfile(resume_from, tmp)
    if len(metrics) < len(EPOCH_METRICS):  # resumed at the final epoch: nothing trained, the history has them
        metrics = {**_last_logged(Path(cfg.paths.output_dir) / "csv" / "metrics.csv"), **metrics}
    best = _best_logged(Path(cfg.paths.output_dir) / "csv" / "metrics.csv", "val/acc")
    if best is not None:  # where the validation split is the test split (Kumano et al.'s), the maximum test
        metrics["val/acc_best"] = best  # accuracy over epochs they report
    return {**metrics, **test_metrics}, trainer


def _best_logged(csv_file: Path, key: str) -> float | None:
    """The largest `key` of the run's CSV history, or None."""
    values = [float(r[key]) for r in _logged_rows(csv_file) if r.get(key)]
    return max(values) if values else None


def _test_size(datamodule) -> int:
    try:
        return len(datamodule.test_dataloader().dataset)
    except (AttributeError, TypeError, RuntimeError):
        return 0


@task_wrapper
def train(cfg: DictConfig) -> float | None:
    started = time.time()
    validate(cfg)
    from advlab.artifacts.models import Artifacts
    from advlab.callbacks.checkpoint import resume_checkpoint, torch_load_plain
    from advlab.report import plots
    from advlab.runtime.objective import objective
    from advlab.runtime.wandb_artifacts import log_run_artifacts

    out_dir = Path(cfg.paths.output_dir)
    # DDP: Lightning re-runs this script for ranks > 0 in the same run directory (hydra.run.dir); they
    # find rank 0's cached artifacts, train their share of each batch and leave the files to rank 0
    rank = global_rank()
    prefix_logs_with_rank(rank)
    finished = finished_run(cfg, out_dir)
    if finished is not None:
        return None if finished is True else finished
    # Everything that can be checked is checked before any work: data, cache dir, attacks, model.
    datamodule, cache, bounds = data_and_cache(cfg)
    method, builder, attack = _build_method(cfg, datamodule, bounds)
    resume_from = resume_checkpoint(out_dir / "checkpoints", set_aside_bad=rank == 0) if cfg.get("resume") else None
    loggers = start_loggers(cfg, out_dir, resume_step=int(torch_load_plain(resume_from)["global_step"]) if resume_from else None)
    artifacts = Artifacts(cache, trainer=cfg.trainer)
    derived = _derived_data(cfg, builder, method, attack, datamodule, artifacts)
    source_metrics, images = log_source_history(loggers, artifacts, out_dir, fresh=resume_from is None)
    metrics, trainer = _fit_and_test(cfg, method, derived.datamodule, loggers, resume_from, callbacks=derived.callbacks)
    callback_metrics = {k: v for cb in trainer.callbacks for k, v in getattr(cb, "final_metrics", {}).items()}
    metrics.update({**source_metrics, **derived.metrics, **callback_metrics, "time/total_s": round(time.time() - started, 2)})
    optimized = cfg.get("optimized_metric")
    if optimized:  # the value a search optimises (conf/hparams_search/), in metrics.json too
        metrics[optimized] = objective(metrics, optimized)
    if trainer.is_global_zero:
        from advlab.analysis.robustbench_entry import dataset_name, write_test_entry

        write_test_entry(out_dir, metrics, method.eval_attack, _test_size(derived.datamodule), cfg.run_name, dataset_name(datamodule))
        images.update(derived.figures(out_dir))
        images.update(_eval_attack_grid(method, derived.datamodule, out_dir, method.device))
        csv_file = out_dir / "csv" / "metrics.csv"
        if csv_file.exists():
            curve = plots.training_curves(csv_file, out_dir / "plots" / "training_curves.png", title=cfg.run_name)
            if curve:
                images["training_curves"] = curve
        finish_run(loggers, metrics, out_dir, images)
        log_run_artifacts(loggers, cache, out_dir, metrics, cfg.run_name)  # logger.wandb.log_artifacts
    return metrics.get(optimized) if optimized else None


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _hydra_main(cfg: DictConfig):
    return train(cfg)


def main() -> None:
    run_hydra_app(_hydra_main, "advlab-train", "train")


if __name__ == "__main__":
    main()
