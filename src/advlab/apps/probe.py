"""advlab-probe: texture vs shape probes of several models (Zhang et al. 2022; RECIPES.md §6).

    advlab-probe                                   # NT vs AT cnn on digits (conf/probe.yaml)
    advlab-probe probe.mi.enabled=true             # per-layer mutual information at every level too
    advlab-probe probe.saturation=[2,4,1024] probe.patch_shuffle=[1,2]

Each model of `models` (a model spec, like advlab-train's `source`) is trained once and cached.
Clean test images and adversarial ones (the `attack`, crafted against each model) are transformed
by saturation (levels p) and patch shuffle (grids k×k); the accuracy at each level goes to
metrics.json, probe.json, W&B, and one figure for all models (plots/texture_shape.png). With
`probe.mi.enabled`, each level's per-layer information goes to probe.json, and the untransformed images'
to metrics.json (`<model>/mi/<clean|adversarial>/<estimator>/<layer>/I_XT`, `.../I_TY`).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from advlab.runtime.hydra_app import run_hydra_app
from advlab.preflight.app_keys import validate
from advlab.runtime.resolvers import CONF_DIR
from advlab.errors import ConfigError
from advlab.utils.io import write_json
from advlab.runtime.task_wrapper import task_wrapper

log = logging.getLogger("advlab.apps.probe")
UNTRANSFORMED = {("saturation", 2.0), ("patch_shuffle", 1)}  # the levels that leave an image as it is


def accuracy(model, x, y, batch_size: int, device) -> float:
    from advlab.models.base import predict

    return float((predict(model, x, batch_size, device) == y).float().mean())


def transforms(probe_cfg, shape):
    """[(probe, level, function x -> x')]; patch shuffles reuse one seed per level, so clean and
    adversarial images of the same index get the same permutation."""
    import torch

    from advlab.analysis.texture_shape import check_patch_grid, patch_shuffle, saturate

    out = [("saturation", float(p), lambda x, p=p: saturate(x, p)) for p in probe_cfg.saturation]
    for k in probe_cfg.patch_shuffle:
        check_patch_grid(int(k), shape)
        out.append(("patch_shuffle", int(k), lambda x, k=int(k): patch_shuffle(x, k, torch.Generator().manual_seed(int(probe_cfg.seed) + k))))
    return out


def mi_estimator(cfg: DictConfig):
    """The mutual-information estimator of `probe.mi` (None unless enabled); its errors name probe.mi.*
    (the pre-flight builds it, enabled or not)."""
    from advlab.analysis.information import estimator_from

    mi_cfg = cfg.probe.get("mi") or {}
    return estimator_from(mi_cfg, "probe.mi") if mi_cfg.get("enabled") else None


def _probe_model(name: str, model, inputs: dict, y, levels, estimator, layers, batch: int, device, metrics: dict) -> tuple[dict, list]:
    """One model's accuracy (and, with an estimator, per-layer information) at every probe level of
    every input kind: (results, information rows); the accuracies also go into `metrics`."""
    from advlab.analysis.activations import layer_outputs

    res, information = {"saturation": {}, "patch_shuffle": {}}, []
    for probe_name, level, fn in levels:
        entry = res[probe_name][level] = {}
        for kind, xi in inputs.items():
            xt = fn(xi)
            entry[kind] = accuracy(model, xt, y, batch, device)
            metrics[f"{name}/{probe_name}/{level:g}/{kind}_acc"] = entry[kind]
            if estimator is None:
                continue
            acts = layer_outputs(model, xt, layers, batch)
            for est, per_layer in estimator.measure(xt, y, acts).items():
                for layer, (i_xt, i_ty) in per_layer.items():
                    information.append({"probe": probe_name, "level": level, "input": kind, "estimator": est,
                                        "layer": layer, "I_XT": i_xt, "I_TY": i_ty})
                    if (probe_name, level) in UNTRANSFORMED:  # the original images' information, once, as metrics
                        metrics.setdefault(f"{name}/mi/{kind}/{est}/{layer}/I_XT", i_xt)
                        metrics.setdefault(f"{name}/mi/{kind}/{est}/{layer}/I_TY", i_ty)
    return res, information


@task_wrapper
def probe(cfg: DictConfig) -> None:
    started = time.time()
    validate(cfg)
    import torch

    from advlab.analysis.activations import resolve_layers
    from advlab.artifacts.models import Artifacts
    from advlab.artifacts.model_sources import with_arch
    from advlab.runtime.lifecycle import data_and_cache, finish_loggers, start_loggers

    out_dir = Path(cfg.paths.output_dir)
    datamodule, cache, bounds = data_and_cache(cfg)
    if not datamodule.is_image:
        raise ConfigError("dataset", "the texture / shape probes need image data; allowed: digits, mnist, fashion_mnist, cifar10, cifar10_jpeg")
    attack = instantiate(cfg.attack, bounds=bounds) if cfg.probe.adversarial else None
    levels = transforms(cfg.probe, tuple(datamodule.input_shape))
    estimator = mi_estimator(cfg)
    loggers = start_loggers(cfg, out_dir)

    n = cfg.probe.get("n_points") or len(datamodule.y_test)
    x, y = datamodule.x_test[:n], datamodule.y_test[:n]
    artifacts = Artifacts(cache, accelerator=cfg.get("accelerator"))
    device = artifacts.device
    batch = int(cfg.probe.batch_size)
    results, information, metrics = {}, {}, {}
    for name, spec in cfg.models.items():
        model, model_metrics, _ = artifacts.model(with_arch(spec, cfg.arch), datamodule, name=f"model {name}", where=f"models.{name}")
        inputs = {"clean": x}
        if attack is not None:
            inputs["adversarial"] = torch.cat([attack(model, x[i : i + batch].to(device), y[i : i + batch].to(device)).cpu() for i in range(0, len(x), batch)])
        mi_cfg = cfg.probe.get("mi") or {}
        layers = resolve_layers(model, mi_cfg.get("layers"), mi_cfg.get("hook_point", "post_activation")) if estimator is not None else []
        res, rows = _probe_model(name, model, inputs, y, levels, estimator, layers, batch, device, metrics)
        results[name] = res
        if rows:
            information[name] = rows
        metrics[f"{name}/test/acc"] = float(model_metrics["test/acc"])  # the whole test set
        metrics[f"{name}/clean_acc"] = accuracy(model, x, y, batch, device)  # the probed points
        if attack is not None:
            metrics[f"{name}/adversarial_acc"] = accuracy(model, inputs["adversarial"], y, batch, device)
        summary = ", ".join(f"{p}={lv:g}: {res[p][lv].get('clean', float('nan')):.3f}/{res[p][lv].get('adversarial', float('nan')):.3f}" for p, lv, _ in levels)
        log.info("%s (clean/adversarial accuracy) %s", name, summary)

    metrics["time/total_s"] = round(time.time() - started, 2)
    write_json(out_dir / "probe.json", {"n_points": len(y), "attack": repr(attack), "results": results, "information": information})
    write_json(out_dir / "metrics.json", metrics)
    finish_loggers(loggers, metrics, _plots(out_dir, results, information, levels, x, y, attack, datamodule))
    log.info("Run directory: %s", out_dir)


def _plots(out_dir: Path, results: dict, information: dict, levels, x, y, attack, datamodule) -> dict[str, Path]:
    """The probes' figures: accuracy per level, the transforms of the first images, the information plane."""
    from advlab.report.grids import image_rows
    from advlab.report.information import texture_shape, texture_shape_information

    title = f"Texture vs shape on {datamodule.name}" + (f", adversarial: {type(attack).__name__} ε={attack.eps:.3g}" if attack is not None else "")
    images = {"texture_shape": texture_shape(results, out_dir / "plots" / "texture_shape.png", title=title)}
    rows = [(f"{p} {lv:g}", fn(x[:8]), [str(int(c)) for c in y[:8]]) for p, lv, fn in levels]
    images["texture_shape_samples"] = image_rows(rows, out_dir / "plots" / "texture_shape_samples.png", title="Probe transforms of the first test images")
    if information:
        images["texture_shape_information"] = texture_shape_information(information, out_dir / "plots" / "texture_shape_information.png",
                                                                        n_points=len(y), num_classes=datamodule.num_classes)
    return images


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="probe")
def _hydra_main(cfg: DictConfig):
    return probe(cfg)


def main() -> None:
    run_hydra_app(_hydra_main, "advlab-probe", "probe")


if __name__ == "__main__":
    main()
