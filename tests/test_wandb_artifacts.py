"""W&B Artifacts (`logger.wandb.log_artifacts=true`): the source model, the crafted dataset and the
final checkpoints of a run, with their cache keys, recorded by a real offline W&B run."""
from __future__ import annotations

import base64
import hashlib
import json

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

from advlab.runtime.resolvers import CONF_DIR
from advlab.runtime.wandb_artifacts import artifact_name, artifacts_logger, data_name
from conftest import run_advlab
from wandb_records import raw_records

# small but real: the default run (D_det on digits) with its checkpoints and the W&B logger
SMALL = ["trainer.max_epochs=2", "source.max_epochs=3", "attack.steps=10", "arch.width=256", "logger=wandb"]


def _wandb_logger(tmp_path, *overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        node = compose("train", overrides=["logger=wandb", "run_name=test", "experiment_name=test", *overrides]).logger.wandb
    return instantiate(node, save_dir=str(tmp_path))


def test_artifacts_are_off_unless_asked_for(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert artifacts_logger([_wandb_logger(tmp_path)]) is None
    on = _wandb_logger(tmp_path, "logger.wandb.log_artifacts=true")
    assert artifacts_logger([on]) is on


def test_artifact_names_say_what_and_which_data():
    assert artifact_name("source model", "digits") == "source-model-digits"
    assert artifact_name("checkpoints", "perturbation-wide_mlp-digits") == "checkpoints-perturbation-wide_mlp-digits"
    assert data_name({"attack": {"eps": 2}, "source": {"data": {"name": "mnist"}}}) == "mnist" and data_name({"x": 1}) is None


def _md5(path) -> str:
    return base64.b64encode(hashlib.md5(path.read_bytes()).digest()).decode()


def _artifacts(run_dir) -> dict:
    """{name: W&B ArtifactRecord} of the run's offline transaction log."""
    from wandb.proto import wandb_internal_pb2 as pb

    records = {}
    for data in raw_records(next((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))):
        record = pb.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "artifact":
            records[record.artifact.name] = record.artifact
    return records


def test_an_offline_run_records_its_source_model_dataset_and_checkpoints_with_their_cache_keys(advlab_root):
    env = {"WANDB_DATA_DIR": str(advlab_root / "wandb_data"), "WANDB_CACHE_DIR": str(advlab_root / "wandb_cache")}
    run = run_advlab(advlab_root, *SMALL, "logger.wandb.log_artifacts=true", env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    (model,), (dataset,) = (advlab_root / "cache" / "models").glob("*.pt"), (advlab_root / "cache" / "datasets").glob("*.pt")
    run_name = OmegaConf.load(run.run_dir / "config_resolved.yaml").run_name
    checkpoints = f"checkpoints-{run_name}"
    assert run_name == "perturbation-wide_mlp-digits"
    records = _artifacts(run.run_dir)
    assert set(records) == {"source-model-digits", "perturbation-dataset-digits", checkpoints}
    for name, kind, path in (("source-model-digits", "model", model), ("perturbation-dataset-digits", "dataset", dataset)):
        record, sidecar = records[name], path.with_suffix(".json")
        meta = json.loads(record.metadata)
        assert record.type == kind and meta["cache_key"] == path.stem and f"key-{path.stem}" in record.aliases
        assert meta["spec"] == json.loads(sidecar.read_text())["spec"]
        assert {e.path: e.digest for e in record.manifest.contents} == {path.name: _md5(path), sidecar.name: _md5(sidecar)}
    record = records[checkpoints]
    meta = json.loads(record.metadata)
    assert meta["inputs"] == {"source-model-digits": model.stem, "perturbation-dataset-digits": dataset.stem}
    assert meta["metrics"]["test/acc"] == run.metrics["test/acc"]
    files = {name: run.run_dir / "checkpoints" / name for name in ("last.ckpt", "best.ckpt")}
    assert {e.path: e.digest for e in record.manifest.contents} == {name: _md5(f) for name, f in files.items()}
