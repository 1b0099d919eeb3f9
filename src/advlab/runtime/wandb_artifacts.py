"""W&B Artifacts of what a run builds, on request: `logger.wandb.log_artifacts=true` (default false).

At the end of a run with the W&B logger:

* every model and dataset the run took from advlab's artifact cache or built into it (the source
  model, crafted and other derived datasets) is an artifact named by its role and data
  (`source-model-digits`, `perturbation-dataset-digits`), of type `model` or `dataset`: the cached
  file and its sidecar, with the cache key, the kind and the spec in its metadata and
  `key-<cache key>` among its aliases. Each cache key it is built for is a version of it;
* the run's final checkpoints (checkpoints/last.ckpt, best.ckpt) are `checkpoints-<run name>`, type
  `model`, with the cache keys of the models and datasets the run used and its test metrics.

W&B versions an artifact by its content: the same file logged again is the same version. Offline
(advlab's default W&B mode) the artifacts are records of the offline run (`run-<id>.wandb` in the
run directory's wandb/), uploaded with it by `wandb sync`; W&B copies their files to its staging
directory (under WANDB_DATA_DIR), so a run can be synced after its cache entries or checkpoints change.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

log = logging.getLogger(__name__)

CHECKPOINTS = ("last.ckpt", "best.ckpt")


def artifacts_logger(loggers):
    """The run's W&B logger when it has `log_artifacts` on, else None."""
    return next((lg for lg in loggers if type(lg).__name__ == "WandbLogger" and getattr(lg, "log_artifacts", False)), None)


def artifact_name(*parts: str) -> str:
    """A W&B artifact name (letters, digits, `-`, `_`, `.`) from words: `source model`, `digits` → `source-model-digits`."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "-".join(p for p in parts if p)).strip("-")


def data_name(spec) -> str | None:
    """The dataset a cache spec was built from: its `data.name`, also that of the spec it derives from."""
    if isinstance(spec, dict):
        data = spec.get("data")
        if isinstance(data, dict) and isinstance(data.get("name"), str):
            return data["name"]
        return next((name for v in spec.values() if (name := data_name(v))), None)
    return None


def cache_entry_artifact(path: Path, kind: str, what: str):
    """(artifact, aliases) of one cache entry: its `.pt` file and `.json` sidecar, keyed metadata."""
    import wandb

    sidecar = path.with_suffix(".json")
    meta = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    key = path.stem
    metadata = {"cache_key": key, "kind": kind, "what": what, "spec": meta.get("spec"),
                **{k: meta[k] for k in ("sha256", "created", "build_seconds") if k in meta}}
    artifact = wandb.Artifact(artifact_name(what, data_name(meta.get("spec"))), type="model" if kind == "models" else "dataset",
                              description=f"advlab {what} (artifact cache {kind}/{path.name})", metadata=metadata)
    artifact.add_file(str(path), name=path.name)
    if sidecar.is_file():
        artifact.add_file(str(sidecar), name=sidecar.name)
    return artifact, [f"key-{key}"]


def checkpoints_artifact(out_dir: Path, run_name: str, inputs: dict[str, str], metrics: dict):
    """The run's final checkpoints as one artifact, or None when it wrote none (fast_dev_run)."""
    import wandb

    files = [Path(out_dir) / "checkpoints" / name for name in CHECKPOINTS]
    files = [f for f in files if f.is_file()]
    if not files:
        return None
    tested = {k: v for k, v in metrics.items() if k.startswith("test/") and isinstance(v, (int, float))}
    artifact = wandb.Artifact(artifact_name("checkpoints", run_name), type="model", description=f"advlab run {run_name}: final checkpoints",
                              metadata={"run_name": run_name, "inputs": inputs, "metrics": tested})
    for f in files:
        artifact.add_file(str(f), name=f.name)
    return artifact


def log_run_artifacts(loggers, cache, out_dir: Path, metrics: dict, run_name: str) -> list[str]:
    """Log the cache entries the run used (`cache.used`) and its final checkpoints as W&B artifacts,
    when the W&B logger has `log_artifacts` on. Returns the names logged."""
    wb = artifacts_logger(loggers)
    if wb is None:
        return []
    run, logged, inputs = wb.experiment, [], {}
    for path, (kind, what) in getattr(cache, "used", {}).items():
        if not Path(path).is_file():  # removed meanwhile (`advlab-cache clear` from another shell)
            continue
        artifact, aliases = cache_entry_artifact(Path(path), kind, what)
        run.log_artifact(artifact, aliases=aliases)
        inputs[artifact.name] = Path(path).stem
        logged.append(artifact.name)
    artifact = checkpoints_artifact(out_dir, run_name, inputs, metrics)
    if artifact is not None:
        run.log_artifact(artifact)
        logged.append(artifact.name)
    log.info("W&B artifacts: %s", ", ".join(logged) or "none (no cache entries or checkpoints)")
    return logged
