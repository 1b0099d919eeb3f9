"""advlab-train: one training run (standard, adversarial or perturbation learning) from its config.

    advlab-train                                   # perturbation learning on digits, D_det rule
    advlab-train method=adversarial attack=pgd_linf eps=0.1 eval_attack=pgd_linf
    advlab-train -m arch=wide_mlp,cnn method.target_rule=det,rand
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from advlab.cli import run_hydra_app
from advlab.config import CONF_DIR, validate
from advlab.utils.run import data_and_cache, finish_run, instantiate_all, start_loggers
from advlab.utils.wrapper import task_wrapper

# torch, Lightning and friends are imported inside the task, so that bad input is reported at once.

log = logging.getLogger("advlab.train")


def _plots(method, datamodule, out_dir: Path, device) -> dict[str, Path]:
    """Clean / perturbation / adversarial grids for perturbation learning and for the eval attack."""
    import torch

    from advlab.report import plots

    names = datamodule.class_names
    images = {}
    preview = getattr(method, "preview", None)
    source = getattr(method, "source", None)
    if preview is not None and source is not None:
        base, t = preview["preview_base"], preview["t"]
        adv = base + preview["x"] if method.train_on == "delta" else preview["x"]
        with torch.no_grad():
            p_clean = source(base.to(device)).argmax(1).cpu()
            p_adv = source(adv.to(device)).argmax(1).cpu()
        top = [f"y={names[int(y)]} f:{names[int(p)]}" for y, p in zip(preview["preview_y"], p_clean)]
        bottom = [f"t={names[int(a)]} f:{names[int(p)]}" for a, p in zip(t, p_adv)]
        images["perturbation_dataset"] = plots.adversarial_grid(
            base, adv, top, bottom, out_dir / "plots" / "perturbation_dataset.png",
            title=f"Perturbation dataset ({method.target_rule}, base={method.base}): source predictions")
    if method.eval_attack is not None:
        x, y = datamodule.x_test[:8].to(device), datamodule.y_test[:8].to(device)
        model = method.model.to(device)
        adv = method.eval_attack(model, x, y)
        with torch.no_grad():
            p_clean, p_adv = model(x).argmax(1), model(adv).argmax(1)
        top = [f"y={names[int(a)]} g:{names[int(b)]}" for a, b in zip(y, p_clean)]
        bottom = [f"g:{names[int(b)]}" for b in p_adv]
        images["eval_attack"] = plots.adversarial_grid(x.cpu(), adv.cpu(), top, bottom, out_dir / "plots" / "eval_attack.png",
                                                       title=f"Evaluation attack {type(method.eval_attack).__name__} ε={method.eval_attack.eps:g}")
    images.update(method.plots(out_dir, datamodule))
    return images


@task_wrapper
def train(cfg: DictConfig) -> float | None:
    started = time.time()
    validate(cfg)
    import pytorch_lightning as pl

    from advlab.artifacts import Artifacts
    from advlab.models import build_model
    from advlab.report import plots

    out_dir = Path(cfg.paths.output_dir)
    # Everything that can be checked is checked before any work: data, cache dir, attacks, model.
    datamodule, cache, bounds = data_and_cache(cfg)
    attack = instantiate(cfg.attack, bounds=bounds) if cfg.get("attack") else None
    eval_attack = instantiate(cfg.eval_attack, bounds=bounds) if cfg.get("eval_attack") else None
    model = build_model(cfg.arch, datamodule)
    source = cfg.get("source")
    if source is not None and source.get("arch") is None:  # default: the source has the trained model's architecture
        source = OmegaConf.merge(source, {"arch": cfg.arch})
    extra = {}
    if cfg.method.get("measure_transfer"):  # a standard model of the trained architecture, from the source's spec
        target = {k: v for k, v in OmegaConf.to_container(source, resolve=True).items() if k not in ("arch", "attack")}
        extra["transfer_target"] = OmegaConf.create({**target, "arch": OmegaConf.to_container(cfg.arch, resolve=True), "method": "standard"})
    method = instantiate(cfg.method, model=model, attack=attack, eval_attack=eval_attack, source=source, _recursive_=False, **extra)

    loggers = start_loggers(cfg, out_dir)
    callbacks = instantiate_all(cfg.get("callbacks"))

    artifacts = Artifacts(cache, accelerator=cfg.trainer.get("accelerator"))
    fit_datamodule = method.prepare(datamodule, artifacts)
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)  # same stream whether artifacts were cached or built

    trainer: pl.Trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)
    last = out_dir / "checkpoints" / "last.ckpt"
    ckpt_path = str(last) if cfg.get("resume") and last.exists() else None
    if ckpt_path:
        log.info("Resuming from %s", ckpt_path)
    trainer.fit(method, datamodule=fit_datamodule, ckpt_path=ckpt_path)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k in ("val/acc", "train/acc")}
    trainer.test(method, datamodule=fit_datamodule, verbose=False)
    metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
    metrics.update(method.extra_metrics)
    metrics["time/total_s"] = round(time.time() - started, 2)
    if trainer.is_global_zero:
        images = _plots(method, fit_datamodule, out_dir, method.device)
        csv_file = out_dir / "csv" / "metrics.csv"
        if csv_file.exists():
            curve = plots.training_curves(csv_file, out_dir / "plots" / "training_curves.png", title=cfg.run_name)
            if curve:
                images["training_curves"] = curve
        finish_run(loggers, metrics, out_dir, images)
    optimized = cfg.get("optimized_metric")
    return metrics.get(optimized) if optimized else None


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def _hydra_main(cfg: DictConfig):
    return train(cfg)


def main() -> None:
    run_hydra_app(_hydra_main, "advlab-train", "train")


if __name__ == "__main__":
    main()
