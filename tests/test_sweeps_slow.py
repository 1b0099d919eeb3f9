"""Slow: the acceptance sweeps of the transferability issue at full size (`make test-slow`)."""
from __future__ import annotations

import re

import pytest

from advlab.report.sweep import load_sweep
from conftest import run_advlab

pytestmark = pytest.mark.slow
ARCHS = ["wide_mlp", "mlp", "cnn"]


def test_transfer_matrix_3x3_with_two_workers_trains_three_models_then_nothing(advlab_root):
    grid = ["arch@source.arch=" + ",".join(ARCHS), "arch@target.arch=" + ",".join(ARCHS), "hydra/launcher=joblib_local"]
    first = run_advlab(advlab_root, "-m", *grid, f"hydra.sweep.dir={advlab_root / 's1'}", module="advlab.apps.transfer", timeout=1800)
    assert first.returncode == 0, first.stderr[-3000:]
    logs = "".join(p.read_text() for p in (advlab_root / "s1").glob("[0-9]*/transfer.log"))
    assert len(re.findall(r"Cache miss: building (source|target) model", logs)) == 3
    jobs = load_sweep(advlab_root / "s1").jobs
    m = {(j.params["arch@source.arch"], j.params["arch@target.arch"]): j.metrics for j in jobs}
    for a in ARCHS:
        assert m[a, a]["transfer/target_acc"] == m[a, a]["source/adv_acc"]
        assert m[a, a]["source/clean_acc"] > 0.9  # 30 epochs on digits
        for b in ARCHS:  # white-box is the strongest: a transferred attack fools less
            assert m[a, b]["transfer/fool_rate"] <= m[a, a]["source/fool_rate"] + 1e-9
    assert (advlab_root / "s1" / "report" / "heatmap_transfer_target_acc.png").is_file()
    again = run_advlab(advlab_root, "-m", *grid, f"hydra.sweep.dir={advlab_root / 's2'}", module="advlab.apps.transfer", timeout=1800)
    assert again.returncode == 0
    assert "Cache miss" not in "".join(p.read_text() for p in (advlab_root / "s2").glob("[0-9]*/transfer.log"))


def test_a_job_failing_in_training_leaves_the_other_jobs_running(advlab_root):
    sweep = advlab_root / "s"
    run = run_advlab(advlab_root, "-m", "arch@target.arch=mlp", "target.optimizer.momentum=0.9,-1,0.5", "source.max_epochs=5",
                     "target.max_epochs=5", "hydra/launcher=joblib_local", "logger=csv", f"hydra.sweep.dir={sweep}",
                     module="advlab.apps.transfer", timeout=1800)
    assert run.returncode == 1
    assert [j.status for j in load_sweep(sweep).jobs] == ["ok", "failed", "ok"]
    assert "job 1 (target.optimizer.momentum=-1): ValueError: Invalid momentum value: -1" in run.stderr
    assert "| 1 | failed | `target.optimizer.momentum=-1` | ValueError: Invalid momentum value: -1" in (sweep / "report" / "report.md").read_text()
