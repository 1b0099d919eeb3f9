"""Attack transfer: the metric arithmetic, and real Hydra multiruns of advlab-transfer in subprocesses
(joblib launcher, 2 workers) with the artifact cache, the sweep report and W&B offline runs."""
from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest
import torch
import yaml

from advlab.analysis.attack_transfer import evaluation_split, transfer_metrics, untargeted
from advlab.attacks import PGD
from advlab.report.sweep import load_sweep
from conftest import run_advlab

TINY = ["source.max_epochs=3", "target.max_epochs=3", "attack.steps=5"]


def test_transfer_metrics_from_predictions():
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    source_clean = torch.tensor([0, 1, 2, 3, 0, 1, 2, 0])      # 7/8 right
    source_adv = torch.tensor([1, 1, 0, 0, 0, 2, 2, 0])        # right: 1, 4, 6 -> 3/8
    target_clean = torch.tensor([0, 1, 2, 0, 0, 1, 2, 3])      # wrong only at 3 -> 7/8
    target_adv = torch.tensor([0, 0, 2, 3, 1, 1, 2, 3])        # right: 0, 2, 3, 5, 6, 7 -> 6/8
    m = transfer_metrics(y, source_clean, source_adv, target_clean, target_adv)
    assert m["source/clean_acc"] == 7 / 8 and m["target/clean_acc"] == 7 / 8
    assert m["source/adv_acc"] == 3 / 8
    assert m["transfer/target_acc"] == 6 / 8  # example 3 counts (true label), though the target was wrong clean
    # target right clean at {0,1,2,4,5,6,7}; fooled at 1 and 4 -> 2/7
    assert m["transfer/fool_rate"] == pytest.approx(2 / 7)
    # source right clean at {0..6}; fooled at 0, 2, 3, 5 -> 4/7
    assert m["source/fool_rate"] == pytest.approx(4 / 7)
    # identical models: the transfer numbers are the white-box numbers
    same = transfer_metrics(y, source_clean, source_adv, source_clean, source_adv)
    assert same["transfer/target_acc"] == same["source/adv_acc"] and same["transfer/fool_rate"] == same["source/fool_rate"]


def test_untargeted_copy_leaves_the_crafting_attack_alone():
    attack = PGD(eps=0.1, norm="linf", steps=3, targeted=True, seed=3)
    copy = untargeted(attack)
    assert attack.targeted and not copy.targeted and copy.eps == attack.eps and copy.seed == 3


def _job_logs(sweep: Path) -> str:
    return "".join(p.read_text() for p in sweep.glob("[0-9]*/transfer.log"))


def _wandb_log(run_dir: Path) -> bytes:
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, run_dir
    return next(runs[0].glob("run-*.wandb")).read_bytes()


def test_transfer_subset_is_seeded_and_spans_a_split_stored_class_by_class():
    from types import SimpleNamespace

    y = torch.arange(10).repeat_interleave(100)  # an ImageFolder-like split: class 0 first, then 1, ...
    data = SimpleNamespace(x_test=torch.arange(1000.0).view(-1, 1), y_test=y)
    x1, y1 = evaluation_split(data, 300)
    x2, y2 = evaluation_split(data, 300)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and len(y1) == 300
    assert torch.equal(y1, y[x1.view(-1).long()])  # images keep their labels
    assert bool((x1.view(-1).diff() > 0).all())  # in the stored order, no repeats
    assert torch.bincount(y1, minlength=10).min() >= 15  # every class, not a prefix of the first three
    assert evaluation_split(data, None)[0] is data.x_test and evaluation_split(data, 5000)[0] is data.x_test


def test_transfer_sweep_with_parallel_jobs_trains_each_model_once(advlab_root):
    archs = ["wide_mlp", "mlp"]
    sweep = advlab_root / "sweep1"
    run = run_advlab(advlab_root, "-m", "arch@source.arch=wide_mlp,mlp", "arch@target.arch=wide_mlp,mlp", *TINY, "logger=csv",
                     "hydra/launcher=joblib_local", f"hydra.sweep.dir={sweep}", module="advlab.apps.transfer", timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    # exactly two models trained (each source is also a target), each source's test set crafted once
    assert len(list((advlab_root / "cache" / "models").glob("*.pt"))) == 2
    assert len(list((advlab_root / "cache" / "adversarial").glob("*.pt"))) == 2
    logs = _job_logs(sweep)
    assert len(re.findall(r"Cache miss: building (source|target) model", logs)) == 2, logs
    assert len(re.findall(r"Cache miss: building adversarial test set", logs)) == 2

    # Hydra's job numbering is what the report recomputes from multirun.yaml
    loaded = load_sweep(sweep)
    assert [j.status for j in loaded.jobs] == ["ok"] * 4
    for job in loaded.jobs:
        assert yaml.safe_load((sweep / str(job.num) / ".hydra" / "overrides.yaml").read_text())[-len(job.overrides):] == job.overrides
    metrics = {(j.params["arch@source.arch"], j.params["arch@target.arch"]): j.metrics for j in loaded.jobs}
    for a in archs:  # the diagonal is the white-box accuracy of each source
        assert metrics[a, a]["transfer/target_acc"] == metrics[a, a]["source/adv_acc"]
        assert metrics[a, a]["transfer/same_model"] == 1.0
        assert metrics[a, a]["source/adv_acc"] < metrics[a, a]["source/clean_acc"]
    for s in archs:
        for t in archs:
            m = metrics[s, t]
            assert 0 <= m["transfer/target_acc"] <= 1 and m["transfer/n"] == 360
            # the same source gives the same white-box numbers whatever the target
            assert m["source/adv_acc"] == metrics[s, archs[0]]["source/adv_acc"]
            assert m["target/clean_acc"] == metrics[t, t]["source/clean_acc"]

    # the report: a 2 x 2 matrix whose numbers are the jobs' numbers
    report = sweep / "report"
    rows = list(csv.DictReader(open(report / "transfer_matrix.csv")))
    acc = {(r["source"], r["target"]): r for r in rows if r["metric"] == "transfer/target_acc"}
    assert set(acc) == {(s, t) for s in archs for t in archs}
    for (s, t), r in acc.items():
        assert float(r["mean"]) == pytest.approx(metrics[s, t]["transfer/target_acc"], abs=1e-12)
        assert r["std"] == "" and r["n"] == "1"
    md = (report / "report.md").read_text()
    assert "| source.arch \\ target.arch | wide_mlp | mlp |" in md
    assert f"| wide_mlp | {metrics['wide_mlp', 'wide_mlp']['transfer/target_acc']:.3f} |" in md
    assert (report / "heatmap_transfer_target_acc.png").stat().st_size > 5000

    # the same sweep again: nothing is trained or crafted, same numbers
    sweep2 = advlab_root / "sweep2"
    again = run_advlab(advlab_root, "-m", "arch@source.arch=wide_mlp,mlp", "arch@target.arch=wide_mlp,mlp", *TINY, "logger=wandb",
                       f"hydra.sweep.dir={sweep2}", module="advlab.apps.transfer", timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Cache miss" not in _job_logs(sweep2)
    assert len(list((advlab_root / "cache" / "models").glob("*.pt"))) == 2
    for job in load_sweep(sweep2).jobs:
        s, t = job.params["arch@source.arch"], job.params["arch@target.arch"]
        assert job.metrics["transfer/target_acc"] == metrics[s, t]["transfer/target_acc"]

    # W&B (second sweep): four job runs and one report run, all offline, in the sweep's group; the table in the report's files
    groups = {yaml.safe_load((sweep2 / str(i) / "config_resolved.yaml").read_text())["logger"]["wandb"]["group"] for i in range(4)}
    assert len(groups) == 1
    group = groups.pop()
    assert group.startswith("transfer-digits-")
    for i in range(4):
        assert group.encode() in _wandb_log(sweep2 / str(i))
    report_log = _wandb_log(sweep2 / "report")
    assert group.encode() in report_log and b"report" in report_log
    assert b"charts/transfer_target_acc" in report_log  # the matrix as a native W&B heatmap
    tables = list((sweep2 / "report" / "wandb").glob("offline-run-*/files/media/table/transfer_matrix_*.table.json"))
    assert tables
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["panel", "source", "target", "metric", "mean", "std", "n", "expected"] and len(table["data"]) == len(rows)


def test_a_failing_job_does_not_stop_the_sweep_and_is_named(advlab_root):
    # the second job's dataset files do not exist under this root: it fails at its start, the first runs on
    sweep = advlab_root / "sweep"
    run = run_advlab(advlab_root, "-m", "dataset=digits,mnist", "source.max_epochs=2", "target.max_epochs=2", "attack.steps=3",
                     "logger=csv", f"hydra.sweep.dir={sweep}", module="advlab.apps.transfer")
    assert run.returncode == 1
    assert "1 of 2 jobs failed or are missing: job 1 (dataset=mnist): ConfigError: dataset.data_dir" in run.stderr
    assert (sweep / "0" / "metrics.json").is_file()
    assert not (sweep / "1" / "metrics.json").exists()
    assert (sweep / "1" / "error.txt").read_text().startswith("ConfigError")
    md = (sweep / "report" / "report.md").read_text()
    assert "## Failed or missing jobs" in md and "| 1 | failed | `dataset=mnist` |" in md
    jobs = list(csv.DictReader(open(sweep / "report" / "jobs.csv")))
    assert [j["status"] for j in jobs] == ["ok", "failed"]
    assert math.isfinite(float(jobs[0]["transfer/target_acc"])) and jobs[1]["transfer/target_acc"] == ""


def test_cross_architecture_perturbation_sweep_gives_matrix_and_scatter(advlab_root):
    from conftest import FAST

    sweep = advlab_root / "sweep"
    run = run_advlab(advlab_root, "-m", "method=perturbation", "derived.measure_transfer=true", "derived.transfer_eps=0.5",
                     "derived.transfer_images=37", "arch@source.arch=wide_mlp,mlp",
                     "arch=wide_mlp,mlp", *[o for o in FAST if not o.startswith("arch.")], f"hydra.sweep.dir={sweep}", timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    jobs = load_sweep(sweep).jobs
    metrics = {(j.params["arch@source.arch"], j.params["arch"]): j.metrics for j in jobs}
    assert len(metrics) == 4
    for (s, t), m in metrics.items():
        assert m["transfer/same_model"] == float(s == t)
        assert m["transfer/n"] == 37  # the seeded subset of the test split, not all of it
        if s == t:  # the transfer target is the source itself: white-box numbers
            assert m["transfer/fool_rate"] == m["source/fool_rate"]
    # two models only: each source doubles as the standard model of its architecture
    assert len(list((advlab_root / "cache" / "models").glob("*.pt"))) == 2
    report = sweep / "report"
    rows = [r for r in csv.DictReader(open(report / "perturbation_matrix.csv")) if r["metric"] == "test/acc"]
    assert {(r["source"], r["target"]) for r in rows} == set(metrics)
    for r in rows:
        assert float(r["mean"]) == pytest.approx(metrics[r["source"], r["target"]]["test/acc"], abs=1e-12)
    md = (report / "report.md").read_text()
    assert "## Transfer rate vs perturbation-learning accuracy" in md
    assert (report / "ilyas_scatter.png").stat().st_size > 5000


def test_the_batch_is_transfer_batch_size_and_the_old_top_level_key_works_one_release(advlab_root):
    """advlab-transfer's batch is `transfer.batch_size`; the top-level `batch_size` it was before still
    works for one release, with one line naming the new form (advlab.errors.moved_keys)."""
    quick = ["source.max_epochs=1", "target.max_epochs=1", "attack.steps=2", "dataset.max_train=300", "logger=csv"]
    new = run_advlab(advlab_root, *quick, "transfer.batch_size=100", module="advlab.apps.transfer", run_dir=advlab_root / "new")
    assert new.returncode == 0, new.log[-3000:]
    assert "deprecated" not in new.log
    old = run_advlab(advlab_root, *quick, "batch_size=100", module="advlab.apps.transfer", run_dir=advlab_root / "old")
    assert old.returncode == 0, old.log[-3000:]
    lines = [ln for ln in old.log.splitlines() if "deprecated" in ln]
    assert len(lines) == 1 and lines[0].endswith("batch_size is deprecated: use transfer.batch_size=100"), lines
    assert old.metrics["transfer/target_acc"] == new.metrics["transfer/target_acc"]
