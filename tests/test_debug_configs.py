"""`debug=` configs (conf/debug/, as lightning-hydra-template's): each runs advlab-train's default run
(D_det perturbation learning on digits) end to end in seconds and does what its name says."""
from __future__ import annotations

import csv
import json
import time

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from advlab.runtime.resolvers import CONF_DIR, group_options
from conftest import run_advlab

DEBUG = ("default", "fast_dev_run", "overfit", "limit", "profiler")


def _compose(app: str, *overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(app, overrides=list(overrides), return_hydra_config=True)


@pytest.mark.parametrize("app", ["train", "transfer"])
@pytest.mark.parametrize("name", DEBUG)
def test_debug_configs_make_every_model_quick_on_the_cpu(app, name):
    assert set(group_options("debug")) == set(DEBUG)
    cfg = _compose(app, f"debug={name}")
    t = cfg.trainer
    assert t.accelerator == "cpu" and t.devices == 1 and t.deterministic is True and t.detect_anomaly is True
    assert t.max_epochs == {"overfit": 20, "limit": 3}.get(name, 1) and cfg.source.max_epochs == 1 and cfg.model_defaults.max_epochs == 1
    assert list(cfg.logger) == ["csv"] and "/debug/" in cfg.hydra.run.dir and cfg.hydra.verbose == ["advlab"]
    if app == "transfer":
        assert cfg.target.max_epochs == 1  # a spec that sets none follows model_defaults


def _csv_rows(run_dir) -> list[dict]:
    path = run_dir / "csv" / "metrics.csv"
    return list(csv.DictReader(open(path))) if path.is_file() else []


# default and fast_dev_run in the default suite; the other three add ~1 min of CPU: slow
@pytest.mark.parametrize("name", [n if n in ("default", "fast_dev_run") else pytest.param(n, marks=pytest.mark.slow) for n in DEBUG])
def test_debug_config_runs_the_default_run_in_seconds(name, advlab_root):
    started = time.time()
    run = run_advlab(advlab_root, f"debug={name}", timeout=120)
    seconds = time.time() - started
    assert run.returncode == 0, run.stderr[-3000:]
    metrics, rows = run.metrics, _csv_rows(run.run_dir)
    assert 0.0 <= metrics["test/acc"] <= 1.0 and metrics["perturb/success_rate"] > 0
    epochs = {int(r["epoch"]) for r in rows if r.get("val/acc")}
    checkpoints = run.run_dir / "checkpoints"
    if name == "fast_dev_run":  # one batch of each split: no logged rows, no checkpoints
        assert not rows and not checkpoints.exists()
    elif name == "overfit":  # twenty epochs on one batch of 128: learnt by heart
        assert epochs == set(range(20)) and metrics["train/acc"] >= 0.95
    elif name == "limit":  # three epochs of three training batches each: the epochs end at steps 3, 6, 9
        assert epochs == {0, 1, 2} and [int(r["step"]) + 1 for r in rows if r.get("train/acc")] == [3, 6, 9]
    else:
        assert epochs == {0} and (checkpoints / "last.ckpt").is_file()
    if name == "profiler":
        report = (run.run_dir / "fit-profile.txt").read_text()
        assert "run_training_epoch" in report and "run_training_batch" in report
    source = json.loads(next((advlab_root / "cache" / "models").glob("*.json")).read_text())
    assert source["spec"]["max_epochs"] == 1 and source["spec"]["trainer"]["deterministic"] is True  # keyed apart from full runs
    # wall time is reported, not asserted (timings belong in benchmarks, not unit tests)
    print(f"debug={name}: {seconds:.1f} s wall (time/total_s {metrics['time/total_s']})")
