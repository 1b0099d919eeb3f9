"""Sweep reports on hand-made sweep directories (arithmetic, failed and missing jobs), the launcher and
sweep configs, and the W&B sweep definitions."""
from __future__ import annotations

import csv
import itertools
import json
import math
import random
import statistics
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from advlab.preflight.jobs import precheck
from advlab.runtime.resolvers import CONF_DIR
from advlab.errors import ConfigError
from advlab.report.sweep import load_sweep, mean_std
from advlab.apps.report import main as report_main
from advlab.report.sweep_report import write_report

REPO = Path(__file__).resolve().parents[1]
ARCHS = ["wide_mlp", "cnn", "mlp"]  # deliberately not alphabetical: the report keeps the sweep's order
SEEDS = [0, 1, 2]


def _hand_made_sweep(root: Path, failed=(), missing=(), task="transfer") -> tuple[Path, dict]:
    """A sweep dir as Hydra writes it: multirun.yaml, job dirs 0..n-1 with .hydra/overrides.yaml."""
    sweep = root / "sweep"
    sweep.mkdir()
    task_overrides = [f"arch@source.arch={','.join(ARCHS)}", f"arch@target.arch={','.join(ARCHS)}",
                      f"seed={','.join(map(str, SEEDS))}", "attack.steps=7"]
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({
        "hydra": {"overrides": {"task": task_overrides}, "sweeper": {"params": None}, "mode": "MULTIRUN"},
        "task_name": task, "seed": 0}))
    rng = random.Random(0)
    values = {}
    for num, (s, t, seed) in enumerate(itertools.product(ARCHS, ARCHS, SEEDS)):
        if num in missing:
            continue
        job = sweep / str(num)
        (job / ".hydra").mkdir(parents=True)
        overrides = [f"arch@source.arch={s}", f"arch@target.arch={t}", f"seed={seed}", "attack.steps=7"]
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        if num in failed:
            (job / "error.txt").write_text("RuntimeError: out of memory\n\nTraceback ...\n")
            continue
        m = {"transfer/target_acc": rng.random(), "transfer/fool_rate": rng.random(), "source/adv_acc": rng.random(),
             "source/clean_acc": 0.9, "target/clean_acc": 0.8, "time/total_s": 1.0}
        (job / "metrics.json").write_text(json.dumps(m))
        values[s, t, seed] = m
    return sweep, values


def test_mean_std_is_the_sample_standard_deviation():
    assert mean_std([1.0, 2.0, 4.0]) == pytest.approx((7 / 3, statistics.stdev([1.0, 2.0, 4.0])))
    mean, std = mean_std([0.5])
    assert mean == 0.5 and math.isnan(std)
    assert mean_std([0.2, float("nan"), 0.4]) == pytest.approx((0.3, statistics.stdev([0.2, 0.4])))


def test_pearson_matches_numpy():
    import numpy as np

    from advlab.report.sweep_report import pearson

    xs, ys = [0.1, 0.4, 0.35, 0.8], [0.5, 0.7, 0.6, 0.95]
    assert pearson(xs, ys) == pytest.approx(np.corrcoef(xs, ys)[0, 1])
    assert math.isnan(pearson([1, 1], [2, 3]))


def test_report_numbers_are_mean_and_std_of_the_jobs_metrics(tmp_path):
    sweep, values = _hand_made_sweep(tmp_path)
    report = write_report(sweep, wandb_mode="off")
    assert report.failed == []
    rows = list(csv.DictReader(open(report.out_dir / "transfer_matrix.csv")))
    assert {r["metric"] for r in rows} == {"transfer/target_acc", "transfer/fool_rate", "source/adv_acc"}
    assert len(rows) == 3 * len(ARCHS) ** 2
    for r in rows:
        expected = [values[r["source"], r["target"], seed][r["metric"]] for seed in SEEDS]
        assert float(r["mean"]) == pytest.approx(statistics.mean(expected), abs=1e-12)
        assert float(r["std"]) == pytest.approx(statistics.stdev(expected), abs=1e-12)
        assert r["n"] == r["expected"] == "3"
    md = (report.out_dir / "report.md").read_text()
    # rows and columns in the sweep's order; a cell is mean ± std with 3 decimals
    assert "| source.arch \\ target.arch | wide_mlp | cnn | mlp |" in md
    first = [values["wide_mlp", "cnn", seed]["transfer/target_acc"] for seed in SEEDS]
    assert f"{statistics.mean(first):.3f} ± {statistics.stdev(first):.3f}" in md.split("### transfer/fool_rate")[0]
    for metric in ("transfer_target_acc", "transfer_fool_rate"):
        assert (report.out_dir / f"heatmap_{metric}.png").stat().st_size > 5000
    summary = list(csv.DictReader(open(report.out_dir / "summary.csv")))
    assert len({r["configuration"] for r in summary}) == len(ARCHS) ** 2  # the seed is averaged over


def test_report_names_failed_and_missing_jobs_and_counts_what_is_left(tmp_path):
    # job 4 = (wide_mlp, cnn, seed 1) failed; job 26 = (mlp, mlp, seed 2) never ran
    sweep, values = _hand_made_sweep(tmp_path, failed={4}, missing={26})
    loaded = load_sweep(sweep)
    assert [(j.num, j.status) for j in loaded.jobs if j.status != "ok"] == [(4, "failed"), (26, "missing")]
    report = write_report(sweep, wandb_mode="off")
    md = (report.out_dir / "report.md").read_text()
    assert "**2 failed or missing**" in md
    assert "| 4 | failed | `source.arch=wide_mlp, target.arch=cnn, seed=1` | RuntimeError: out of memory |" in md
    assert "| 26 | missing | `source.arch=mlp, target.arch=mlp, seed=2` | never ran (no job directory) |" in md
    rows = {(r["source"], r["target"], r["metric"]): r for r in csv.DictReader(open(report.out_dir / "transfer_matrix.csv"))}
    cell = rows["wide_mlp", "cnn", "transfer/target_acc"]
    kept = [values["wide_mlp", "cnn", s]["transfer/target_acc"] for s in (0, 2)]
    assert (cell["n"], cell["expected"]) == ("2", "3") and float(cell["mean"]) == pytest.approx(statistics.mean(kept))
    assert "(n=2/3)" in md
    assert report.failures().startswith("2 of 27 jobs failed or are missing: job 4 (source.arch=wide_mlp, target.arch=cnn, seed=1)")


def test_report_of_a_sweep_with_an_empty_cell_logs_to_wandb(tmp_path, monkeypatch):
    """Reproduces a crash seen on an interrupted CIFAR-10 sweep: when every seed of a (source, target)
    cell is missing, the W&B Table got "" in a numeric column and `wandb.Table` raised. The empty cell
    is now None (W&B's missing value); the other cells' numbers are logged."""
    from wandb_records import read_run

    monkeypatch.setenv("WANDB_SILENT", "true")
    sweep, values = _hand_made_sweep(tmp_path, failed={3, 4, 5})  # every seed of (wide_mlp, cnn)
    report = write_report(sweep, wandb_mode="offline")
    assert report.failed and "| wide_mlp | " in (sweep / "report" / "report.md").read_text()
    run_file = next((sweep / "report" / "wandb").glob("offline-run-*/run-*.wandb"))
    keys = {key for row in read_run(run_file)["history"] for key in row}
    assert any("matrix" in key for key in keys) and any(key.startswith("charts/") for key in keys), sorted(keys)


def test_report_cli_exit_codes(tmp_path, capsys):
    assert report_main([str(tmp_path), "--wandb", "off"]) == 2
    assert "advlab-report: error: sweep_dir:" in capsys.readouterr().err
    sweep, _ = _hand_made_sweep(tmp_path, failed={0})
    assert report_main([str(sweep), "--wandb", "off"]) == 1
    assert "1 of 27 jobs failed" in capsys.readouterr().err


def test_report_of_a_config_defined_sweep_uses_hydra_sweeper_params(tmp_path):
    sweep = tmp_path / "s"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({
        "hydra": {"overrides": {"task": ["seed=5"]}, "sweeper": {"params": {"arch@source.arch": "a,b", "eps.value": "0.1,0.2"}}},
        "task_name": "transfer"}))
    jobs = load_sweep(sweep).jobs
    # Hydra's order: config params first, then the command line's; a CLI value replaces a param of the same key
    assert [j.overrides for j in jobs] == [["arch@source.arch=a", "eps.value=0.1", "seed=5"], ["arch@source.arch=a", "eps.value=0.2", "seed=5"],
                                           ["arch@source.arch=b", "eps.value=0.1", "seed=5"], ["arch@source.arch=b", "eps.value=0.2", "seed=5"]]
    assert all(j.status == "missing" for j in jobs)


# -- launchers, trainer, sweep presets, W&B sweep files ----------------------------------------------

def _compose(config_name: str, overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name, overrides=overrides, return_hydra_config=True)


def test_launcher_configs_compose():
    joblib = _compose("transfer", ["hydra/launcher=joblib_local"]).hydra.launcher
    assert joblib._target_.endswith("JoblibLauncher") and joblib.n_jobs == 2
    slurm = _compose("train", ["hydra/launcher=slurm", "trainer=gpu", "hydra.launcher.partition=gpu"])
    launcher = slurm.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.partition, launcher.timeout_min) == (1, 1, "gpu", 240)
    assert slurm.trainer.accelerator == "gpu" and slurm.trainer.devices == 1
    ddp = _compose("train", ["trainer=ddp"]).trainer
    assert "ddp" in str(ddp.strategy) and ddp.accelerator == "gpu"


def test_end_of_sweep_report_is_a_hydra_callback():
    callbacks = _compose("transfer", []).hydra.callbacks
    assert callbacks.sweep_report._target_ == "advlab.report.callback.SweepReport"


@pytest.mark.parametrize("app,preset", [("transfer", "transfer_matrix"), ("transfer", "transfer_eps"),
                                        ("train", "cross_arch_perturbation"), ("train", "perturbation_eps")])
def test_sweep_presets_define_multiruns_that_pass_the_preflight_check(app, preset):
    cfg = _compose(app, [f"sweep={preset}"])
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN" and len(cfg.hydra.sweeper.params) >= 2
    precheck([f"sweep={preset}"], app)  # composes one job per swept value


def test_a_bad_value_inside_a_sweep_preset_is_caught_before_any_job(tmp_path):
    preset = CONF_DIR / "sweep" / "transfer_matrix.yaml"
    text = preset.read_text().replace("resnet18", "resnet7")
    with pytest.raises(ConfigError, match="resnet7"):
        bad = yaml.safe_load(text)["hydra"]["sweeper"]["params"]
        precheck([f"{k}={v}" for k, v in bad.items()], "transfer")


@pytest.mark.parametrize("path", sorted((REPO / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_wandb_sweep_files_expand_to_valid_hydra_overrides(path):
    spec = yaml.safe_load(path.read_text())
    assert spec["method"] in ("grid", "random", "bayes") and spec["metric"]["name"]
    command = spec["command"]
    assert "${args_no_hyphens}" in command and spec["program"] in command
    app = {"advlab-train": "train", "advlab-transfer": "transfer"}[spec["program"]]
    fixed = [c for c in command if not c.startswith("${") and c != spec["program"]]
    params = {k: v["values"] for k, v in spec["parameters"].items()}
    # what an agent runs: ${args_no_hyphens} = key=value per parameter; every value once
    for key, values in params.items():
        for value in values:
            args = fixed + [f"{k}={value if k == key else vs[0]}" for k, vs in params.items()]
            assert not any(a.startswith("-") for a in args)
            precheck(args, app)


def test_native_wandb_charts_hold_the_numbers():
    from advlab.report.wandb_charts import matrix_charts, robustness_charts

    header = ["model", "member", "attack", "norm", "eps", "robust_acc", "attack_alone_acc", "ce_acc", "margin_acc"]
    rows = [["a", "seed=0", "pgd", "linf", 0.0, 1.0, 1, 1, 1], ["a", "seed=1", "pgd", "linf", 0.0, 0.8, 1, 1, 1],
            ["a", "seed=0", "pgd", "linf", 0.1, 0.4, 1, 1, 1], ["a", "seed=1", "pgd", "linf", 0.1, 0.2, 1, 1, 1],
            ["b", "seed=0", "pgd", "linf", 0.1, 0.7, 1, 1, 1]]
    chart = robustness_charts(header, rows)["charts/robustness_pgd"]
    points = {(r[1], r[0]): r[2] for r in chart.table.data}  # W&B columns: x, line, y
    assert points[("a", 0.0)] == pytest.approx(0.9) and points[("a", 0.1)] == pytest.approx(0.3)  # mean over members
    assert points[("b", 0.1)] == pytest.approx(0.7)
    mheader = ["panel", "source", "target", "metric", "mean", "std", "n", "expected"]
    mrows = [["", "cnn", "mlp", "transfer/target_acc", 0.5, 0.1, 3, 3], ["", "cnn", "cnn", "transfer/target_acc", float("nan"), 0, 0, 3]]
    heat = matrix_charts(mheader, mrows)["charts/transfer_target_acc"]
    assert heat.table.data == [["cnn", "mlp", 0.5]]  # NaN cells (no finished job) are left out
