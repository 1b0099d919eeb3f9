"""Ilyas et al.'s robust / non-robust datasets: the method=robust_dataset presets in real runs."""
from __future__ import annotations

import json

import pytest

from conftest import run_advlab

TINY = ["dataset.max_train=300", "source.max_epochs=3", "source.attack.steps=2", "derived.steps=30", "trainer.max_epochs=3",
        "eval_attack.steps=5", "callbacks=none"]


def _ok(run):
    assert run.returncode == 0, run.stderr[-3000:]
    return run.metrics


def test_robust_and_nonrobust_dataset_presets_run_and_reuse_the_cache(advlab_root):
    dr = run_advlab(advlab_root, "experiment=digits_robust_dataset", *TINY, "logger=wandb", run_dir=advlab_root / "dr")
    m = _ok(dr)
    assert "Training representation model" in dr.log and "Cache miss: building D_R dataset" in dr.log
    for key in ("test/acc", "test/adv_acc", "source/test/acc", "source/test/adv_acc", "dataset/source_agreement"):
        assert 0.0 <= m[key] <= 1.0, key
    assert m["test/adv_acc"] <= m["test/acc"]
    # the inversion moved every constructed image's representation towards its target's
    assert m["dataset/distance_final"] < m["dataset/distance_initial"]
    assert m["dataset/distance_reduction"] == pytest.approx(m["dataset/distance_initial"] / m["dataset/distance_final"])
    assert (dr.run_dir / "plots" / "robust_dataset.png").is_file()
    assert list((dr.run_dir / "wandb").glob("offline-run-*/files/media/images/plots/robust_dataset*.png"))

    dnr = run_advlab(advlab_root, "experiment=digits_nonrobust_dataset", *TINY, "logger=csv", run_dir=advlab_root / "dnr")
    n = _ok(dnr)
    assert "Cache miss: building D_NR dataset" in dnr.log
    assert n["dataset/distance_final"] < n["dataset/distance_initial"]

    # another model trained on the same D_R: both the representation model and the dataset come from the cache
    again = run_advlab(advlab_root, "experiment=digits_robust_dataset", *TINY, "trainer.max_epochs=1", "logger=csv", run_dir=advlab_root / "again")
    a = _ok(again)
    assert again.log.count("Cache hit") == 2 and "Inverting" not in again.log and "Training representation" not in again.log
    assert a["dataset/distance_final"] == m["dataset/distance_final"]


def test_robust_dataset_bad_input_is_one_line(advlab_root):
    run = run_advlab(advlab_root, "method=robust_dataset", "derived.steps=0", "logger=csv")
    assert run.returncode == 2 and "Traceback" not in run.log
    assert [ln for ln in run.stderr.splitlines() if ln.strip()] == ["advlab-train: error: derived.steps: must be an integer >= 1, got 0"]


@pytest.mark.slow
def test_digits_robust_dataset_is_more_robust_than_nonrobust(tmp_path):
    """Acceptance: the full digits presets, seeds 0 and 1 (seed draws the representation models, the
    start images and the trained model). D_R's models are more robust at the same ε on average, and
    both far above chance on clean data."""
    results = {}
    for preset in ("digits_robust_dataset", "digits_nonrobust_dataset"):
        sweep = tmp_path / preset
        run = run_advlab(tmp_path, "-m", f"experiment={preset}", "seed=0,1", "logger=csv", "callbacks=none", f"hydra.sweep.dir={sweep}", timeout=3600)
        assert run.returncode == 0, run.stderr[-3000:]
        results[preset] = [json.loads((sweep / job / "metrics.json").read_text()) for job in ("0", "1")]
    dr, dnr = results["digits_robust_dataset"], results["digits_nonrobust_dataset"]
    for m in dr + dnr:
        print({k: round(v, 4) for k, v in m.items()})
        assert m["test/acc"] > 0.8  # chance: 0.1
        assert m["dataset/distance_reduction"] > 10
    mean = lambda ms, key: sum(m[key] for m in ms) / len(ms)
    assert mean(dr, "test/adv_acc") > mean(dnr, "test/adv_acc") + 0.03
    assert mean(dr, "source/test/adv_acc") > mean(dnr, "source/test/adv_acc") + 0.1  # the AT representation model is the robust one


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["mnist_robust_dataset", "mnist_nonrobust_dataset"])
def test_mnist_robust_dataset_presets_run_on_the_shared_files(tmp_path, shared_dir, preset):
    from advlab.data import install_shared_mnist

    install_shared_mnist(shared_dir, tmp_path / "data")
    # a CPU-sized run: 1000 images, 12 epochs, 50 inversion steps; the AT source at half the preset's
    # ε (1 instead of 2) and 5 PGD steps, which it learns within 12 epochs; 50 inversion steps of 0.4
    # (the preset: 500 of 0.1) cover the L2 distance between two MNIST images (~10)
    small = ["dataset.max_train=1000", "dataset.batch_size=64", "source.max_epochs=12", "source.attack.eps=1.0", "source.attack.steps=5",
             "derived.steps=50", "derived.step_size=0.4", "trainer.max_epochs=12", "eval_attack.steps=10", "logger=csv"]
    m = _ok(run_advlab(tmp_path, f"experiment={preset}", *small, timeout=3600))
    print(preset, m)
    assert m["test/acc"] > 0.5 and m["dataset/distance_reduction"] > 2
