"""advlab-transfer: adversarial examples crafted on a source model, evaluated on a target model.

    advlab-transfer arch@source.arch=cnn arch@target.arch=wide_mlp attack=mifgsm eps.value=0.1
    advlab-transfer -m arch@source.arch=wide_mlp,mlp,cnn arch@target.arch=wide_mlp,mlp,cnn seed=0,1,2
    advlab-transfer sweep=transfer_matrix hydra/launcher=joblib_local    # a ready grid, 2 parallel jobs

Both models are model specs (conf/spec/), trained once and cached; so is the crafted adversarial test
set, shared by every target of a sweep.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from advlab.runtime.hydra_app import run_hydra_app
from advlab.preflight.app_keys import validate
from advlab.runtime.resolvers import CONF_DIR
from advlab.errors import ConfigError
from advlab.runtime.lifecycle import app_batch_size, data_and_cache, finish_run, start_loggers
from advlab.runtime.task_wrapper import task_wrapper

log = logging.getLogger("advlab.apps.transfer")


def _training_data(spec, datamodule, role: str):
    """The datamodule a spec's model is trained on: its own `dataset` node, or the run's dataset."""
    if spec.get("dataset") is None:
        return datamodule
    own = instantiate(spec.dataset)
    own.check()
    own.setup()
    if own.input_shape != datamodule.input_shape or own.num_classes != datamodule.num_classes:
        raise ConfigError(f"{role}.dataset", f"its inputs {own.input_shape} / {own.num_classes} classes differ from the evaluated "
                          f"dataset's {datamodule.input_shape} / {datamodule.num_classes}; allowed: a dataset of the same shape")
    return own


def _spec(spec):
    """The model spec without the `dataset` node (it enters the cache key through the datamodule), its
    interpolations (`${seed}`, an ensemble member's too) resolved in the run's config it is taken out of."""
    return {k: v for k, v in OmegaConf.to_container(spec, resolve=True).items() if k != "dataset"}


@task_wrapper
def transfer(cfg: DictConfig) -> float | None:
    started = time.time()
    validate(cfg)
    from omegaconf import OmegaConf

    from advlab.analysis.attack_transfer import adversarial_test_set, evaluate_transfer
    from advlab.artifacts.model_sources import spec_model  # an ensemble spec (conf/spec/ensemble.yaml) or one model
    from advlab.artifacts.models import Artifacts
    from advlab.report import plots
    from advlab.runtime.wandb_artifacts import log_run_artifacts

    out_dir = Path(cfg.paths.output_dir)
    datamodule, cache, bounds = data_and_cache(cfg)
    attack = instantiate(cfg.attack, bounds=bounds)
    batch = app_batch_size(cfg)  # transfer.batch_size (crafting and evaluation)
    if attack.targeted:
        raise ConfigError("attack.targeted", "attack transfer uses untargeted attacks; allowed: false")
    source_data = _training_data(cfg.source, datamodule, "source")
    target_data = _training_data(cfg.target, datamodule, "target")
    loggers = start_loggers(cfg, out_dir)

    artifacts = Artifacts(cache, trainer=cfg.trainer)
    source_spec, target_spec = (OmegaConf.create(_spec(s)) for s in (cfg.source, cfg.target))
    source, source_metrics, source_key = spec_model(artifacts, source_spec, source_data, name="source model", where="source")
    target, target_metrics, target_key = spec_model(artifacts, target_spec, target_data, name="target model", where="target")
    x_adv, _ = adversarial_test_set(artifacts, source, source_key, attack, datamodule, batch_size=batch)
    metrics, preds = evaluate_transfer(source, target, datamodule.x_test, x_adv, datamodule.y_test, batch_size=batch, device=artifacts.device)
    metrics["transfer/same_model"] = float(source_key == target_key)
    metrics["time/total_s"] = round(time.time() - started, 2)
    log.info("Transfer %s (%s, eps=%g): source adv acc %.4f, target clean %.4f -> %.4f, fool rate %.4f",
             cfg.run_name, type(attack).__name__, attack.eps,
             metrics["source/adv_acc"], metrics["target/clean_acc"], metrics["transfer/target_acc"], metrics["transfer/fool_rate"])

    names = datamodule.class_names
    k = min(8, len(x_adv))
    top = [f"y={names[int(a)]} s:{names[int(b)]} t:{names[int(c)]}" for a, b, c in
           zip(datamodule.y_test[:k], preds["source_clean"][:k], preds["target_clean"][:k])]
    bottom = [f"s:{names[int(b)]} t:{names[int(c)]}" for b, c in zip(preds["source_adv"][:k], preds["target_adv"][:k])]
    images = {"transfer_examples": plots.adversarial_grid(
        datamodule.x_test[:k], x_adv[:k], top, bottom, out_dir / "plots" / "transfer_examples.png",
        title=f"{cfg.run_name}: {type(attack).__name__} ε={attack.eps:g} (s: source, t: target predictions)")}
    finish_run(loggers, metrics, out_dir, images)
    log_run_artifacts(loggers, cache, out_dir, metrics, cfg.run_name)  # logger.wandb.log_artifacts
    optimized = cfg.get("optimized_metric")
    return metrics.get(optimized) if optimized else None


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="transfer")
def _hydra_main(cfg: DictConfig):
    return transfer(cfg)


def main() -> None:
    run_hydra_app(_hydra_main, "advlab-transfer", "transfer")


if __name__ == "__main__":
    main()
