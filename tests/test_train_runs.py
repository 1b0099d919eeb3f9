"""Real advlab-train runs (Hydra app in a subprocess) of every method on digits."""
from __future__ import annotations

import csv
import json

import pytest
import yaml

from conftest import FAST, run_advlab
from wandb_records import read_run


def _ok(run):
    assert run.returncode == 0, run.stderr[-3000:]
    return run.metrics


def test_standard_run_writes_outputs_and_evaluates_under_attack(advlab_root):
    run = run_advlab(advlab_root, "method=standard", "attack@eval_attack=pgd_linf", "eps=digits_linf", *FAST, "trainer.max_epochs=5")
    m = _ok(run)
    assert m["test/acc"] > 0.85  # digits are easy: 5 epochs of a width-256 MLP
    assert 0.0 <= m["test/adv_acc"] < m["test/acc"]  # the attack hurts, never helps
    for name in ("config_resolved.yaml", ".hydra/config.yaml", "metrics.json", "plots/eval_attack.png", "plots/training_curves.png"):
        assert (run.run_dir / name).is_file(), name
    assert "eps:\n  value: 0.1" in (run.run_dir / "config_resolved.yaml").read_text()


def test_adversarial_training_is_more_robust_than_standard(advlab_root):
    common = ["attack@eval_attack=pgd_linf", "attack=pgd_linf", "eps=digits_linf", *FAST, "trainer.max_epochs=6", "attack.steps=5"]
    std = _ok(run_advlab(advlab_root, "method=standard", *common, run_dir=advlab_root / "std"))
    adv = _ok(run_advlab(advlab_root, "method=adversarial", *common, run_dir=advlab_root / "adv"))
    assert adv["test/acc"] > 0.6
    assert adv["test/adv_acc"] > std["test/adv_acc"] + 0.1


def test_perturbation_learning_generalises_and_reports_its_metrics(advlab_root):
    run = run_advlab(advlab_root, "method=perturbation", *FAST, "trainer.max_epochs=8", "source.max_epochs=10", "attack.steps=20")
    m = _ok(run)
    for key in ("test/acc", "source/test/acc", "perturb/success_rate", "test/agreement"):
        assert key in m, key
    assert m["source/test/acc"] > 0.9
    assert 0.85 < m["source/val/acc"] <= 1.0 and 0.85 < m["source/train/acc"] <= 1.0  # read before testing: no NaN
    resolved = yaml.safe_load((run.run_dir / "config_resolved.yaml").read_text())
    assert resolved["source"]["arch"] == resolved["arch"]  # the architecture the source actually used, recorded
    assert (run.run_dir / "plots" / "source_training_curves.png").is_file()
    source_rows = list(csv.DictReader(open(run.run_dir / "source" / "metrics.csv")))
    assert [int(r["epoch"]) for r in source_rows] == list(range(10))  # source.max_epochs=10: its whole training
    assert m["perturb/success_rate"] > 0.9
    # trained only on mislabelled (det) examples, yet far above chance (0.1) on true labels
    assert m["test/acc"] > 0.4
    assert m["test/agreement"] > 0.4
    assert (run.run_dir / "plots" / "perturbation_dataset.png").is_file()


def test_perturbation_delta_only_on_uniform_noise_base_runs(advlab_root):
    run = run_advlab(advlab_root, "derived.train_on=delta", "derived.base=uniform", "derived.target_rule=uniform", *FAST)
    m = _ok(run)
    assert 0.0 <= m["perturb/success_rate"] <= 1.0 and 0.0 <= m["test/acc"] <= 1.0


def test_wandb_offline_run_contains_metrics(advlab_root):
    run = run_advlab(advlab_root, "method=standard", *FAST, "logger=wandb", "tags=[ci]")
    metrics = _ok(run)
    runs = list((run.run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((run.run_dir / "wandb").iterdir())
    # wandb >= 0.2x keeps an offline run's history, config and summary in its binary transaction log
    log = next(runs[0].glob("run-*.wandb")).read_bytes()
    for name in (b"train/loss_epoch", b"val/acc", b"test/acc", b"time/total_s"):
        assert name in log, name
    assert b"standard-digits" in log  # the W&B group: experiment_name
    record = read_run(next(runs[0].glob("run-*.wandb")))
    # the final metrics go to the summary only: no second `final/*` history row
    assert not [k for row in record["history"] for k in row if k.startswith("final/")]
    assert record["summary"]["test/acc"] == pytest.approx(metrics["test/acc"])
    # the config a dashboard filters by: the choices at the top, no `_target_` / path / logger noise
    config = {k: v.get("value", v) if isinstance(v, dict) else v for k, v in record["config"].items()}
    assert (config["dataset"], config["arch"], config["method"]) == ("digits", "wide_mlp", "standard")
    assert config["source"]["arch"] == "wide_mlp"
    assert "_target_" not in json.dumps(config) and "paths" not in config and "logger" not in config
    # quiet logs: no tqdm refreshes off a terminal, third-party warnings at most once
    assert len(run.stdout) <= 5000 and "%|" not in run.log
    for noise in ("anonymous setting", "litlogger", "LeafSpec"):
        assert noise not in run.log, noise
    assert list((runs[0] / "files" / "media" / "images").rglob("training_curves*.png"))
    assert "wandb sync" not in run.stderr  # a clean close: no crash report


def test_second_run_reuses_cached_source_and_dataset(advlab_root):
    first = run_advlab(advlab_root, *FAST, run_dir=advlab_root / "a")
    second = run_advlab(advlab_root, *FAST, run_dir=advlab_root / "b")
    m1, m2 = _ok(first), _ok(second)
    assert "Cache miss: building source model" in first.log and "Training source model" in first.log
    assert "Training source model" not in second.log
    assert second.log.count("Cache hit") == 2  # source model and perturbation dataset
    untimed = lambda m: {k: v for k, v in m.items() if not k.startswith("time/")}  # noqa: E731
    assert untimed(m1) == untimed(m2) and "time/total_s" in m1  # identical results, hit or miss


def test_concurrent_runs_train_the_source_once(advlab_root):
    procs = [run_advlab(advlab_root, *FAST, run_dir=advlab_root / f"p{i}", wait=False) for i in range(2)]
    logs = []
    for proc, run_dir in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        logs.append(out + err)
    assert sum(log.count("Training source model") for log in logs) == 1
    assert sum(log.count("Cache miss: building perturbation dataset") for log in logs) == 1
    assert not list((advlab_root / "cache").rglob("*.tmp"))


def test_multirun_over_groups_and_free_eps(advlab_root):
    sweep = advlab_root / "sweep"
    run = run_advlab(advlab_root, "-m", "method=standard", "arch=wide_mlp,mlp", "attack@eval_attack=fgsm", "eps.value=0.05,0.2", *FAST,
                     f"hydra.sweep.dir={sweep}")
    assert run.returncode == 0, run.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert len(jobs) == 4
    results = {}
    for job in jobs:
        cfg = (job / "config_resolved.yaml").read_text()
        arch = "WideMLP" if "advlab.models.WideMLP" in cfg else "MLP"
        eps = 0.05 if "value: 0.05" in cfg else 0.2
        results[arch, eps] = json.loads((job / "metrics.json").read_text())
    assert len(results) == 4
    for arch in ("WideMLP", "MLP"):  # same model and data, larger ε: never more robust
        assert results[arch, 0.2]["test/adv_acc"] <= results[arch, 0.05]["test/adv_acc"]
        assert results[arch, 0.2]["test/acc"] == results[arch, 0.05]["test/acc"]


def test_a_failing_run_still_closes_its_wandb_run(advlab_root):
    run = run_advlab(advlab_root, "method=standard", *FAST, "logger=wandb", "optimizer._target_=torch.optim.NoSuchOptimizer")
    assert run.returncode != 0 and not (run.run_dir / "metrics.json").exists()
    debug = next((run.run_dir / "wandb").glob("offline-run-*/logs/debug.log")).read_text()
    assert "finishing run" in debug and "exitcode: 1" in debug


def test_a_finished_run_asked_to_go_further_continues(standard_cnn_run, tmp_path):
    import shutil

    from conftest import STANDARD_CNN

    run_dir = tmp_path / "run"
    shutil.copytree(standard_cnn_run.run_dir, run_dir)
    assert "trainer.max_epochs=6" in STANDARD_CNN
    # the same run directory, asked to go further: continues at epoch 6 instead of starting over
    args = [a for a in STANDARD_CNN if not a.startswith(("trainer.max_epochs", "logger"))]
    second = run_advlab(tmp_path, *args, "logger=csv", "trainer.max_epochs=8", run_dir=run_dir)
    _ok(second)
    assert "Resuming from" in second.log and "(6 epochs done)" in second.log
    rows = list(csv.DictReader(open(run_dir / "csv" / "metrics.csv")))
    # one history: the resumed run appends epochs 6 and 7 to the first run's 0..5
    assert sorted(int(float(r["epoch"])) for r in rows if r.get("train/loss_epoch")) == list(range(8))
    ckpt = __import__("torch").load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 7
