"""CIFAR-10-C / CIFAR-100-C (advlab.data.corruptions) on a corruption layout the tests write: the severity
slices, advlab-eval's accuracy per corruption × severity against a count by hand (a fixed model and a
real advlab-train run), its files and W&B records, and the refusals (training, unknown corruptions or
severities, missing files, a model of other classes)."""
from __future__ import annotations

import csv
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from advlab.data.corruptions import CIFAR10CDataModule, CIFAR100CDataModule
from advlab.errors import ConfigError
from advlab.preflight.jobs import precheck
from conftest import run_advlab

EVAL = "advlab.apps.evaluate"
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
N = 4  # test images per severity in the written files (the release: 10000)
FILES = ("fog", "snow", "gaussian_noise")
SEVERITIES = (1, 2, 3, 4, 5)


def label(row: int, classes: int) -> int:
    """labels.npy of row `row`: the release repeats the N test labels for every severity."""
    return (3 * (row % N) + 1) % classes


def fixed_prediction(k: int, row: int, classes: int) -> int:
    """What the fixed model predicts for row `row` of the k-th file: the label on some rows, the next class on others."""
    y = label(row, classes)
    return y if (row // 2 + k) % 3 else (y + 1) % classes


def write_layout(data_dir: Path, folder: str = "CIFAR-10-C", classes: int = 10) -> Path:
    """<data_dir>/<folder>/<corruption>.npy (5·N, 32, 32, 3) uint8 and labels.npy (5·N,) uint8. Image `row` of
    file k is grey at the centre of its fixed prediction's band (k/C .. (k+1)/C of the pixel range), with
    its row and file index in the first pixel's red and green values."""
    root = data_dir / folder
    root.mkdir(parents=True)
    rows = len(SEVERITIES) * N
    np.save(root / "labels.npy", np.array([label(r, classes) for r in range(rows)], dtype=np.uint8))
    for k, name in enumerate(FILES):
        images = np.empty((rows, 32, 32, 3), dtype=np.uint8)
        for r in range(rows):
            images[r] = round(255 * (fixed_prediction(k, r, classes) + 0.5) / classes)
            images[r, 0, 0, :2] = (r, k)
        np.save(root / f"{name}.npy", images)
    return root


def fixed_model_weights(path: Path, classes: int = 10) -> Path:
    """advlab's MLP (one hidden unit: the mean pixel m) whose logits 2·t_c·m − t_c² put every image in the
    class c whose band centre t_c = (c + 0.5)/C is nearest to m."""
    from advlab.models import MLP

    model = MLP((3, 32, 32), classes, depth=1, width=1, normalize="none")
    centres = (torch.arange(classes, dtype=torch.float32) + 0.5) / classes
    with torch.no_grad():
        model.net[1].weight.fill_(1 / 3072)
        model.net[1].bias.zero_()
        model.net[3].weight.copy_(2 * centres[:, None])
        model.net[3].bias.copy_(-centres**2)
    torch.save(model.state_dict(), path)
    return path


def fixed_spec(path: Path) -> str:
    """The fixed model as an external spec on the command line."""
    return (f"+models.fixed={{method:external,weights:{path},"
            "arch:{_target_:advlab.models.MLP,depth:1,width:1,normalize:none}}")


def by_hand(selected: list[str], n: int, classes: int = 10) -> dict[tuple[str, int], float]:
    """The fixed model's accuracy on each (corruption, severity) set: the first n rows of the severity's block."""
    out = {}
    for name in selected:
        k = FILES.index(name)
        for s in SEVERITIES:
            rows = range((s - 1) * N, (s - 1) * N + n)
            out[name, s] = sum(fixed_prediction(k, r, classes) == label(r, classes) for r in rows) / n
    return out


def test_severity_s_is_rows_s_minus_1_times_n_on(tmp_path):
    write_layout(tmp_path)
    dm = CIFAR10CDataModule(data_dir=str(tmp_path), corruptions=["snow", "fog"], severities=[5, 2], n_examples=3)
    dm.setup()
    assert dm.test_groups == [("snow", 2), ("snow", 5), ("fog", 2), ("fog", 5)]
    assert dm.x_test.shape == (12, 3, 32, 32) and dm.x_test.dtype == torch.float32 and dm.num_classes == 10
    assert dm.class_names[:2] == ["airplane", "automobile"] and dm.input_shape == (3, 32, 32)
    pixels = (dm.x_test * 255).round().to(torch.uint8)
    for g, (name, s) in enumerate(dm.test_groups):
        rows = list(range((s - 1) * N, (s - 1) * N + 3))
        part = slice(3 * g, 3 * g + 3)
        assert pixels[part, 0, 0, 0].tolist() == rows and pixels[part, 1, 0, 0].tolist() == [FILES.index(name)] * 3
        assert dm.y_test[part].tolist() == [label(r, 10) for r in rows] and dm.test_group[part].tolist() == [g] * 3
    assert dm.x_train is dm.x_test and dm.x_val is dm.x_test  # evaluation only: no other split, no copy
    with pytest.raises(ConfigError, match=r"^dataset: training would train on dataset=cifar10_c, which is evaluation only"):
        dm.train_dataloader()
    # a class subset, as the clean model's training set had: kept and remapped in the given order
    sub = CIFAR10CDataModule(data_dir=str(tmp_path), corruptions=["fog"], severities=[1, 3], n_examples=4, classes=[4, 1])
    sub.setup()
    assert sub.y_test.tolist() == [1, 0, 1, 0] and sub.test_group.tolist() == [0, 0, 1, 1] and sub.class_names == ["deer", "automobile"]
    assert (sub.x_test[:, 0, 0, 0] * 255).round().tolist() == [0, 1, 8, 9]


def test_missing_or_foreign_files_are_one_line_naming_the_folder(tmp_path):
    dm = CIFAR10CDataModule(data_dir=str(tmp_path), corruptions=["fog", "frost"], n_examples=2)
    with pytest.raises(ConfigError, match=r"^dataset.data_dir: no CIFAR-10-C folder under .*CIFAR-10-C.tar .*labels.npy"):
        dm.check()
    root = write_layout(tmp_path)
    with pytest.raises(ConfigError, match=r"^dataset.data_dir: .*CIFAR-10-C lacks frost.npy; put Hendrycks"):
        dm.check()
    with pytest.raises(ConfigError, match=r"^dataset.n_examples: 5 is more than the 4 images per severity .*allowed: 1..4$"):
        CIFAR10CDataModule(data_dir=str(tmp_path), corruptions=["fog"], n_examples=5).check()
    with open(root / "snow.npy", "wb") as f:  # a pickle under a .npy name: never unpickled
        pickle.dump({"x": 1}, f)
    with pytest.raises(ConfigError, match=r"^dataset.data_dir: .*snow.npy: not a numpy array file"):
        CIFAR10CDataModule(data_dir=str(tmp_path), corruptions=["snow"], n_examples=2).check()
    np.save(root / "snow.npy", np.zeros((20, 32, 32), dtype=np.uint8))
    with pytest.raises(ConfigError, match=r"snow.npy: expected \(20, 32, 32, 3\) uint8 images"):
        CIFAR10CDataModule(data_dir=str(tmp_path), corruptions=["snow"], n_examples=2).check()
    np.save(root / "labels.npy", np.full(20, 12, dtype=np.uint8))  # CIFAR-100-C's labels under CIFAR-10-C's name
    with pytest.raises(ConfigError, match=r"^dataset.data_dir: .*labels.npy: labels 12..12, outside the 10 classes of cifar10_c \(0..9\)$"):
        CIFAR10CDataModule(data_dir=str(tmp_path), corruptions=["fog"], n_examples=2).check()


# the constructor's checks, as Hydra passes the values (`dataset.corruptions=fog` is a string); it names its bare
# parameters (the pre-flight names the node: below)
BAD = [
    ({"corruptions": ["fog", "smog"]}, "corruptions", "unknown value 'smog'; allowed: gaussian_noise, shot_noise"),
    ({"corruptions": "fog"}, "corruptions", "expected a list, e.g. [fog, snow]"),
    ({"corruptions": ["fog", "fog"]}, "corruptions", "lists a value twice"),
    ({"severities": [1, 6]}, "severities", "unknown value 6; allowed: 1, 2, 3, 4, 5"),
    ({"severities": [True]}, "severities", "unknown value True; allowed: 1, 2, 3, 4, 5"),
    ({"severities": []}, "severities", "must not be empty; allowed: 1, 2, 3, 4, 5"),
    ({"n_examples": 0}, "n_examples", ">= 1"),
]


def test_bad_settings_are_one_line_naming_the_key():
    for settings, key, message in BAD:
        with pytest.raises(ConfigError) as err:
            CIFAR10CDataModule(**settings)
        assert str(err.value).startswith(key + ":") and message in str(err.value), str(err.value)


@pytest.mark.parametrize("overrides,key,message", [
    (["dataset=cifar100_c", "dataset.severities=[0,5]"], "dataset.severities", "unknown value 0; allowed: 1, 2, 3, 4, 5"),
    (["dataset.corruptions=[fog,smog]"], "dataset.corruptions", "unknown value 'smog'; allowed: gaussian_noise, shot_noise"),
    (["+dataset.augment=true"], "dataset.augment", "allowed: data_dir, corruptions, severities, n_examples"),
    ([], "models.standard", "this model spec would train on dataset=cifar10_c, which is evaluation only"),  # eval's default specs
])
def test_bad_settings_and_trained_specs_are_caught_by_the_preflight(overrides, key, message):
    with pytest.raises(ConfigError) as err:  # the dataset's own errors come first: it is built before any model spec
        precheck(["dataset=cifar10_c", *overrides], "eval")  # as the app runs it first: exit 2, one line
    assert str(err.value).startswith(key + ":") and message in str(err.value), str(err.value)


def test_a_model_of_other_classes_is_refused_before_any_work(tmp_path):
    weights = fixed_model_weights(tmp_path / "fixed10.pt", classes=10)
    with pytest.raises(ConfigError, match=r"^models.fixed.weights: .*does not fit .*net.3.weight \[10, 1\] vs \[100, 1\]"):
        precheck(["dataset=cifar100_c", "models=null", fixed_spec(weights)], "eval")
    precheck(["dataset=cifar10_c", "models=null", fixed_spec(weights)], "eval")  # the same file on 10 classes: accepted


def test_training_on_a_corruption_set_exits_2_with_one_line(advlab_root):
    """advlab-train (the same pre-flight as advlab-eval's, whose refusals are checked above in-process)."""
    run = run_advlab(advlab_root, "dataset=cifar10_c", "logger=csv", env=ONE_THREAD)
    lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert run.returncode == 2 and lines == [
        "advlab-train: error: dataset: advlab-train would train on dataset=cifar10_c, which is evaluation only (Hendrycks & "
        "Dietterich's corrupted cifar10 test images); allowed: train on dataset=cifar10, then evaluate with advlab-eval "
        "dataset=cifar10_c models=null checkpoints=[<run dir>] (or a spec@models.<name>=external or robustbench model)"], run.stderr[-2000:]
    assert not (advlab_root / "cache").exists() and not (advlab_root / "run").exists()


def write_cifar10_batches(data_dir: Path, per_batch: int = 20) -> None:
    """torchvision's pickled CIFAR-10 layout, small: 5 training batches and a test batch of grey images
    (the brightness says the class, as in the corruption files), and batches.meta."""
    from advlab.data.torchvision_data import CIFAR10_CLASSES

    folder = data_dir / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{b}" for b in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, per_batch)
        data = np.repeat(np.round(255 * (labels + 0.5) / 10).astype(np.uint8)[:, None], 3072, axis=1)
        with open(folder / name, "wb") as f:
            pickle.dump({"labels": labels.tolist(), "data": data}, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(CIFAR10_CLASSES)}, f, protocol=2)


def test_advlab_eval_reports_the_accuracy_per_corruption_and_severity(advlab_root):
    """A real advlab-train run on CIFAR-10 files and the fixed model, evaluated on the written CIFAR-10-C:
    every (corruption, severity) accuracy equals the count by hand on that severity's rows, and the means
    follow; the files, the W&B records, and an attack on the corrupted points."""
    data = advlab_root / "data"
    write_cifar10_batches(data)
    write_layout(data)
    train = run_advlab(advlab_root, "dataset=cifar10", "dataset.augment=false", "method=standard", "arch=mlp", "arch.width=16",
                       "trainer.max_epochs=1", "callbacks=default", "logger=csv", run_dir=advlab_root / "train", env=ONE_THREAD)
    assert train.returncode == 0, train.stderr[-3000:]
    weights = fixed_model_weights(advlab_root / "fixed.pt")
    run = run_advlab(advlab_root, "dataset=cifar10_c", "dataset.corruptions=[snow,fog]", "dataset.n_examples=3", "models=null",
                     fixed_spec(weights), f"checkpoints=[{train.run_dir}]", "analyses=[robustness]", "robustness.run=[fgsm_linf]",
                     "robustness.eps.linf=[0,0.01]", "max_points=6", "logger=wandb", module=EVAL, env=ONE_THREAD)
    assert run.returncode == 0, run.stderr[-3000:]
    models = run.metrics["models"]
    trained = next(name for name in models if name != "fixed")
    expected = {"fixed": by_hand(["snow", "fog"], 3), trained: checkpoint_by_hand(train.run_dir, data, ["snow", "fog"], 3)}
    for name, sets in expected.items():
        c_acc = models[name]["corruption_accuracy"]
        assert c_acc["corruptions"] == ["snow", "fog"] and c_acc["severities"] == [1, 2, 3, 4, 5] and c_acc["n_per_set"] == 3
        for (corruption, s), acc in sets.items():
            assert c_acc["per_set"][corruption][str(s)]["mean"] == pytest.approx(acc)
        for corruption in ("snow", "fog"):
            assert c_acc["per_corruption"][corruption]["mean"] == pytest.approx(np.mean([sets[corruption, s] for s in SEVERITIES]))
        assert c_acc["per_severity"]["3"]["mean"] == pytest.approx((sets["snow", 3] + sets["fog", 3]) / 2)
        assert c_acc["mean"]["mean"] == pytest.approx(np.mean(list(sets.values())))
        assert models[name]["clean_acc"]["mean"] == pytest.approx(c_acc["mean"]["mean"])  # equal sets: the mean over every image
    assert 0 < models["fixed"]["corruption_accuracy"]["mean"]["mean"] < 1 and len(set(expected["fixed"].values())) > 1
    robust = models["fixed"]["robustness"]["fgsm_linf"]["mean"]  # the attacks ran on the first 6 corrupted points
    assert robust[0] == pytest.approx(np.mean([expected["fixed"]["snow", 1]] + [expected["fixed"]["snow", 2]]))
    check_files(run.run_dir, len(expected) * 2 * 5, ["fixed", trained])
    log = next((run.run_dir / "wandb").glob("offline-run-*/run-*.wandb")).read_bytes()
    for key in (b"corruption_accuracy", b"charts/corruption_accuracy_fixed", b"fixed/corruption_accuracy/mean/mean",
                b"fixed/corruption_accuracy/per_set/fog/5/mean"):
        assert key in log, key
    assert "corruption acc" in run.log and list((run.run_dir / "wandb").rglob("corruption_accuracy*.png"))


def checkpoint_by_hand(run_dir: Path, data: Path, selected: list[str], n: int) -> dict[tuple[str, int], float]:
    """The trained run's accuracy on each set, from its checkpoint and the .npy rows read here."""
    from advlab.artifacts.model_sources import load_checkpoint

    model, _ = load_checkpoint(run_dir / "checkpoints" / "last.ckpt", run_dir / "config_resolved.yaml", {}, torch.device("cpu"))
    labels = np.load(data / "CIFAR-10-C" / "labels.npy")
    out = {}
    for name in selected:
        images = np.load(data / "CIFAR-10-C" / f"{name}.npy")
        for s in SEVERITIES:
            rows = slice((s - 1) * N, (s - 1) * N + n)
            x = torch.from_numpy(images[rows]).permute(0, 3, 1, 2).float() / 255
            with torch.no_grad():
                out[name, s] = float((model(x).argmax(1) == torch.from_numpy(labels[rows].astype(np.int64))).float().mean())
    return out


def check_files(run_dir: Path, n_rows: int, names: list[str]) -> None:
    rows = list(csv.DictReader(open(run_dir / "corruption_accuracy.csv")))
    assert len(rows) == n_rows and {r["model"] for r in rows} == set(names) and {r["n"] for r in rows} == {"3"}
    table = (run_dir / "corruption_accuracy.md").read_text()
    assert all(f"## {name} (mean" in table for name in names) and "| fog |" in table and "| **mean** |" in table
    for f in ("plots/corruption_accuracy.png", "robustness.csv", "metrics.json"):
        assert (run_dir / f).is_file(), f


def test_a_run_of_other_classes_is_refused_on_cifar100_c(advlab_root):
    """A checkpoint's classes must be the corruption set's: a CIFAR-10 run on CIFAR-100-C, one line."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from advlab.artifacts.model_sources import check_checkpoints, resolve_entries
    from advlab.runtime.resolvers import CONF_DIR

    write_cifar10_batches(advlab_root / "data", per_batch=2)
    write_layout(advlab_root / "data", "CIFAR-100-C", classes=100)
    run_dir = advlab_root / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"")  # not read: the classes are compared first
    (run_dir / "config_resolved.yaml").write_text(
        f"dataset: {{_target_: advlab.data.CIFAR10DataModule, data_dir: {advlab_root / 'data'}, val_fraction: 0.1}}\n"
        "arch: {_target_: advlab.models.MLP, _partial_: true}\n")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("eval", overrides=["dataset=cifar100_c", f"dataset.data_dir={advlab_root / 'data'}", "dataset.corruptions=[fog]",
                                         "dataset.n_examples=2", "models=null", f"checkpoints=[{run_dir}]"])
    GlobalHydra.instance().clear()
    dm = CIFAR100CDataModule(data_dir=str(advlab_root / "data"), corruptions=["fog"], n_examples=2)
    dm.setup()
    with pytest.raises(ConfigError, match=r"^checkpoints\[0\]: .* was trained on cifar10 \(10 classes: airplane, automobile, bird, "
                                          r"\.\.\.; inputs \(3, 32, 32\)\), this evaluation's dataset is cifar100_c \(100 classes: apple.*dataset=cifar100\)$"):
        check_checkpoints(resolve_entries(cfg), cfg, dm)
