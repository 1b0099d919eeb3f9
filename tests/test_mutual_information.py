"""The mutual-information callback in real advlab-train runs, and the NT vs AT information-plane preset."""
from __future__ import annotations

import csv
import json
import math

import pytest

from conftest import run_advlab

ESTIMATORS = {"kde_upper", "kde_lower", "binning", "renyi"}
LAYERS = {"body.4", "body.9", "head.2", "head.3"}


def test_information_plane_multirun_measures_only_at_the_scheduled_epochs(advlab_root):
    sweep = advlab_root / "sweep"
    run = run_advlab(advlab_root, "-m", "experiment=infoplane_digits_cnn", "trainer.max_epochs=3", "attack.steps=2",
                     "callbacks.mutual_information.epochs=[0,-1]", "callbacks.mutual_information.n_points=100",
                     "callbacks.mutual_information.attack.steps=3", "logger=wandb", f"hydra.sweep.dir={sweep}")
    assert run.returncode == 0, run.stderr[-3000:]
    assert (sweep / "information_plane.png").is_file()  # NT and AT side by side, drawn when the sweep ends
    methods = []
    for job in (sweep / "0", sweep / "1"):
        methods.append("AdversarialTraining" if "advlab.methods.AdversarialTraining" in (job / "config_resolved.yaml").read_text() else "StandardTraining")
        history = json.loads((job / "mi_history.json").read_text())
        rows = history["rows"]
        assert history["meta"]["n_points"] == 100 and history["meta"]["epochs"] == [0, 2]
        # only the scheduled epochs (0 and the last, 2), every input × estimator × layer once
        assert sorted({r["epoch"] for r in rows}) == [0, 2]
        assert len(rows) == 2 * 2 * len(ESTIMATORS) * len(LAYERS)
        expected = {(i, e, layer) for i in ("clean", "adversarial") for e in ESTIMATORS for layer in LAYERS}
        assert {(r["input"], r["estimator"], r["layer"]) for r in rows} == expected
        log = (job / "train.log").read_text()
        assert "Mutual information at epoch 0" in log and "Mutual information at epoch 2" in log and "Mutual information at epoch 1" not in log
        cap_x, cap_y = math.log2(100), math.log2(history["meta"]["num_classes"])
        for r in rows:  # saturation caps, and I(T;Y) <= I(X;T) (Y is a function of X) for KDE and binning
            assert -1e-9 <= r["I_XT"] <= cap_x + 1e-6 and -1e-9 <= r["I_TY"] <= cap_y + 1e-6, r
            if r["estimator"] != "renyi":
                assert r["I_TY"] <= r["I_XT"] + 1e-9, r
        assert len(list(csv.DictReader(open(job / "mi_history.csv")))) == len(rows)
        metrics = json.loads((job / "metrics.json").read_text())
        last = {(r["input"], r["estimator"], r["layer"]): r for r in rows if r["epoch"] == 2}
        assert metrics["mi/adversarial/kde_upper/head.3/I_TY"] == pytest.approx(last["adversarial", "kde_upper", "head.3"]["I_TY"])
        assert metrics["mi/seconds_per_call"] > 0
        lightning_csv = list(csv.DictReader(open(job / "csv" / "metrics.csv")))
        logged = [row for row in lightning_csv if row.get("mi/clean/binning/body.4/I_XT")]
        assert sorted(int(float(row["epoch"])) for row in logged) == [0, 2]
        assert (job / "plots" / "information_plane.png").is_file()
        wandb_log = next((job / "wandb").glob("offline-run-*/run-*.wandb")).read_bytes()
        assert b"mi/clean/renyi/head.2/I_XT" in wandb_log and b"information_plane" in wandb_log
    assert methods == ["StandardTraining", "AdversarialTraining"]


def test_mi_callback_bad_input_is_one_line(advlab_root):
    run = run_advlab(advlab_root, "method=standard", "callbacks=mi", "callbacks.mutual_information.estimators=[kde]", "logger=csv")
    assert run.returncode == 2 and "Traceback" not in run.log
    assert [ln for ln in run.stderr.splitlines() if ln.strip()] == [
        "advlab-train: error: callbacks.mutual_information.estimators: unknown estimator 'kde'; allowed: kde_upper, kde_lower, binning, renyi"]


@pytest.mark.slow
def test_the_callback_does_not_change_training(advlab_root):
    common = ["method=standard", "arch=cnn", "trainer.max_epochs=4", "logger=csv", "seed=3"]
    plain = run_advlab(advlab_root, *common, "callbacks=default", run_dir=advlab_root / "plain")
    with_mi = run_advlab(advlab_root, *common, "callbacks=mi", "callbacks.mutual_information.epochs=[0,1,2,3]", run_dir=advlab_root / "mi")
    assert plain.returncode == 0 and with_mi.returncode == 0, with_mi.stderr[-2000:]
    a, b = plain.metrics, with_mi.metrics
    for key in ("test/acc", "val/acc", "train/acc"):
        assert a[key] == b[key], key  # same weights: the callback uses its own generators, eval mode, no gradients
