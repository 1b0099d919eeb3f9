"""advlab-eval: measure trained models the way Goodfellow et al. (2015) and Paknezhad et al. (2022) do.

    advlab-eval                                       # standard vs PGD-AT on digits
    advlab-eval experiment=paknezhad_digits           # standard / adversarial / sparsity, 3 seeds
    advlab-eval models=null checkpoints=[<advlab-train run dir>]

Models: named specs trained once per seed (then cached) and/or advlab-train checkpoints. Analyses,
all on the same test points: robust accuracy against ε (FGSM / PGD, L∞ / L2) with mean ± SEM over
seeds, DeepFool minimal perturbations (ρ), softmax statistics off the data support, and the logits
along the FGSM direction with a linearity score; optionally (``masking``) the gradient-masking
checks. Each is an object of advlab.analysis.protocol built from conf/analysis/<name>.yaml; `analyses`
chooses which run. On a corruption set (`dataset=cifar10_c | cifar100_c`) the accuracy per corruption ×
severity, per corruption and its mean (advlab.analysis.corruption_accuracy) come first, by themselves.
Writes metrics.json, CSV tables and plots to the run directory and logs them to W&B (offline by default).
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from advlab.runtime.hydra_app import run_hydra_app
from advlab.analysis.protocol import analysis_names
from advlab.preflight.app_keys import validate
from advlab.runtime.resolvers import CONF_DIR
from advlab.errors import ConfigError
from advlab.utils.io import write_json
from advlab.runtime.lifecycle import app_batch_size, data_and_cache, finish_loggers, start_loggers
from advlab.runtime.task_wrapper import task_wrapper

# torch, Lightning and the analyses are imported inside the task, so that bad input is reported at once.

log = logging.getLogger("advlab.apps.evaluate")


def _flatten(tree, prefix: str = "") -> dict[str, float]:
    """Scalars of a nested summary as "a/b/c" keys (for W&B and the CSV logger); lists are left out."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(_flatten(value, name))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


@task_wrapper
def evaluate(cfg: DictConfig) -> float | None:
    started = time.time()
    validate(cfg)
    from advlab.analysis.corruption_accuracy import corruption_analyses
    from advlab.artifacts.models import Artifacts
    from advlab.artifacts.model_sources import check_checkpoints, load_models, resolve_entries, validate_specs

    out_dir = Path(cfg.paths.output_dir)
    # Everything that can be checked is checked before any work: data, cache, analyses, models.
    datamodule, cache, bounds = data_and_cache(cfg)
    # a corruption set (dataset=cifar10_c, ...): its accuracy per corruption × severity first, then the chosen analyses
    analyses = corruption_analyses(datamodule) + [_build(cfg, name, bounds) for name in analysis_names(cfg, CONF_DIR) if name in cfg.analyses]
    entries = resolve_entries(cfg)
    run_datamodules = check_checkpoints(entries, cfg, datamodule)
    artifacts = Artifacts(cache, accelerator=cfg.get("accelerator"))
    validate_specs(entries, artifacts, datamodule)
    for analysis in analyses:
        analysis.prepare(datamodule)
    loggers = start_loggers(cfg, out_dir)

    models = load_models(entries, artifacts, datamodule, run_datamodules)
    points = _test_points(cfg, models, datamodule, artifacts.device)
    per_member: dict[str, list[dict]] = {m.name: [] for m in models}
    log.info("Evaluating %d models (%s) on %d test points (%s)", len(models), ", ".join(per_member), points.n, cfg.points)
    for m in models:
        correct = points.predictions[id(m)] == datamodule.y_test
        res = {"name": m.name, "member": m.member, "clean_acc": float(correct.float().mean()), "info": m.info,
               "points_acc": float(correct[points.index].float().mean())}
        for analysis in analyses:
            res[analysis.key] = analysis.run(m, points)
        per_member[m.name].append(res)
    summary = {name: _summarise(results, analyses, points) for name, results in per_member.items()}
    images = {}
    for analysis in analyses:
        images.update(analysis.write(out_dir, per_member, summary, points, loggers))
    metrics = {"points": points.summary, "models": summary, "time/total_s": round(time.time() - started, 2)}
    write_json(out_dir / "metrics.json", metrics)
    finish_loggers(loggers, {**_flatten({"points": points.summary, **summary}), "time/total_s": metrics["time/total_s"]}, images)
    for name, s in summary.items():  # the headline numbers in the log
        parts = [f"clean {s['clean_acc']['mean']:.3f}±{s['clean_acc']['sem']:.3f}"] + [p for a in analyses for p in a.headline(s)]
        log.info("%s [%d members, %d points]: %s", name, len(s["members"]), points.n, ", ".join(parts))
    log.info("Run directory: %s", out_dir)
    return None


def _build(cfg: DictConfig, name: str, bounds):
    """The analysis at `cfg.<name>` (its `_target_` and settings); nested nodes (attacks, a dataset) are
    the analysis' to build. A setting the class does not take is a one-line error."""
    try:
        return instantiate(cfg[name], _recursive_=False, bounds=bounds)
    except Exception as err:  # Hydra wraps the constructor's error
        if isinstance(err.__cause__, TypeError) and "keyword argument" in str(err.__cause__):
            raise ConfigError(name, str(err.__cause__)) from None
        raise


def _summarise(results: list[dict], analyses: list, points) -> dict:
    """Mean ± SEM over the members (seeds / runs) of one model."""
    from advlab.analysis.protocol import stat

    s = {"members": [r["member"] for r in results], "clean_acc": stat([r["clean_acc"] for r in results]),
         "sources": [r["info"]["source"] for r in results]}
    for analysis in analyses:
        s.update(analysis.summarise(results, points))
    return s


def _test_points(cfg: DictConfig, models: list, datamodule, device):
    """The test points every analysis uses (the predictions of every model, their index, a summary)."""
    import torch

    from advlab.analysis.protocol import Points
    from advlab.models.base import predict

    batch = app_batch_size(cfg)  # eval.batch_size
    x_test, y_test = datamodule.x_test, datamodule.y_test
    predictions = {id(m): predict(m.model, x_test, batch, device) for m in models}
    common = torch.stack([pred == y_test for pred in predictions.values()]).all(dim=0)
    index = common.nonzero().squeeze(1) if cfg.points == "common_correct" else torch.arange(len(y_test))
    if cfg.get("max_points"):
        index = index[: int(cfg.max_points)]
    if len(index) == 0:
        raise RuntimeError("no test point is classified correctly by every model: points=common_correct leaves nothing to evaluate")
    summary = {"mode": str(cfg.points), "n": len(index), "n_test": len(y_test), "n_common_correct": int(common.sum())}
    where = "test points every model classifies correctly" if cfg.points == "common_correct" else "all test points"
    return Points(x=x_test[index], y=y_test[index], index=index, predictions=predictions, summary=summary, datamodule=datamodule,
                  device=device, batch_size=batch,
                  title=f"{cfg.run_name}: {datamodule.name}", where=f"{where} (n={len(index)})")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="eval")
def _hydra_main(cfg: DictConfig):
    return evaluate(cfg)


def main() -> None:
    run_hydra_app(_hydra_main, "advlab-eval", "eval")


if __name__ == "__main__":
    main()
