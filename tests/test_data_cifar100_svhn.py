"""CIFAR-100 and SVHN: small files written here in the real formats (CIFAR-100's pickled train / test /
meta, SVHN's MATLAB .mat files), read through torchvision's own classes by the datamodules."""
from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
import torchvision

import advlab
from advlab.data.cifar100 import CIFAR100DataModule, SafeCIFAR100
from advlab.data.svhn import SVHNDataModule, SVHNSplit
from advlab.errors import ConfigError
from conftest import run_advlab

FINE_NAMES = [f"fine_{i:02d}" for i in range(100)]
COARSE_NAMES = [f"coarse_{j:02d}" for j in range(20)]


def coarse_of(fine: int) -> int:
    return (fine * 7) % 20  # not fine // 5: a mix-up of the two label lists cannot pass by accident


def cifar100_rows(n: int, first: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """N×3072 uint8 rows (R plane, G plane, B plane) with the image index in B's first pixel, black and
    white pixels present, and fine label = index mod 100."""
    rows = np.random.default_rng(seed).integers(1, 255, (n, 3072), dtype=np.uint8)
    idx = np.arange(first, first + n)
    rows[:, 2048] = idx
    rows[:, 0], rows[:, 1] = 0, 255
    return rows, [int(i % 100) for i in idx]


def write_cifar100(root: Path, n_train: int = 200, n_test: int = 50, meta: bool = True) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n, first in (("train", n_train, 0), ("test", n_test, 200)):
        rows, fine = cifar100_rows(n, first, seed=first)
        entry = {"filenames": [f"img_{first + i}.png" for i in range(n)], "batch_label": f"{name} batch",
                 "fine_labels": fine, "coarse_labels": [coarse_of(f) for f in fine], "data": rows}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)  # the release's protocol (it was written by Python 2)
    if meta:
        with open(folder / "meta", "wb") as f:
            pickle.dump({"fine_label_names": FINE_NAMES, "coarse_label_names": COARSE_NAMES}, f, protocol=2)
    return folder


class Planted:
    """Unpickling this runs `touch <marker>`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


# ------------------------------------------------------------------------------------------------
# CIFAR-100
# ------------------------------------------------------------------------------------------------
def test_cifar100_fine_labels_through_torchvision_class(tmp_path, caplog):
    write_cifar100(tmp_path)
    with pytest.raises(RuntimeError, match="corrupted"):  # torchvision's class: md5 check, these are not the release
        torchvision.datasets.CIFAR100(root=str(tmp_path), train=False)
    dm = CIFAR100DataModule(data_dir=str(tmp_path), val_fraction=0.0)
    assert dm.planned_shape() == ((3, 32, 32), 100) and not dm.official_files()
    with caplog.at_level(logging.WARNING):
        dm.setup()
    assert any("md5" in r.getMessage() and "CIFAR-100" in r.getMessage() for r in caplog.records)
    assert dm.num_classes == 100 and dm.class_names == FINE_NAMES and dm.input_shape == (3, 32, 32)
    assert (len(dm.x_train), len(dm.x_test)) == (200, 50)
    rows, fine = cifar100_rows(50, 200, seed=200)
    assert torch.equal(dm.x_test, torch.from_numpy(rows.reshape(50, 3, 32, 32)).float() / 255)  # CHW, [0, 1]
    assert dm.y_test.tolist() == fine and float(dm.x_test.min()) == 0.0 and float(dm.x_test.max()) == 1.0
    idx = torch.round(dm.x_train[:, 2, 0, 0] * 255).long()  # shuffled by the base: the index pixel finds each one
    assert sorted(idx.tolist()) == list(range(200)) and torch.equal(dm.y_train, idx % 100)
    raw = SafeCIFAR100(str(tmp_path), train=False, check_md5=False)
    assert isinstance(raw, torchvision.datasets.CIFAR100)
    img, target = raw[3]  # torchvision's own __getitem__: a PIL image in HWC layout
    assert target == fine[3] and np.array_equal(np.asarray(img), rows[3].reshape(3, 32, 32).transpose(1, 2, 0))


def test_cifar100_coarse_labels_are_the_20_superclasses(tmp_path):
    write_cifar100(tmp_path)
    dm = CIFAR100DataModule(data_dir=str(tmp_path), val_fraction=0.0, label="coarse")
    assert dm.planned_shape() == ((3, 32, 32), 20)
    dm.setup()
    assert dm.num_classes == 20 and dm.class_names == COARSE_NAMES
    fine = torch.round(dm.x_test[:, 2, 0, 0] * 255).long() % 100
    assert dm.y_test.tolist() == [coarse_of(f) for f in fine.tolist()]
    assert dm.describe()["label"] == "coarse"  # another cache key than the fine labels'
    assert CIFAR100DataModule(data_dir=str(tmp_path), label="fine").describe()["label"] == "fine"
    sub = CIFAR100DataModule(data_dir=str(tmp_path), val_fraction=0.0, label="coarse", classes=[7, 0])
    sub.setup()
    assert sub.class_names == ["coarse_07", "coarse_00"] and set(sub.y_test.tolist()) == {0, 1}


@pytest.mark.parametrize("kwargs,key,text", [
    ({"label": "medium"}, "label", "allowed: fine, coarse"),  # the constructor's bare parameter (check()'s below name dataset.*)
    ({"classes": [3, 100]}, "dataset.classes", "[100] not in the labels 0..99"),
    ({"label": "coarse", "classes": [0, 20]}, "dataset.classes", "[20] not in the labels 0..19"),
])
def test_cifar100_settings_refused_before_reading(tmp_path, kwargs, key, text):
    write_cifar100(tmp_path)
    with pytest.raises(ConfigError) as err:
        CIFAR100DataModule(data_dir=str(tmp_path), **kwargs).check()
    assert err.value.key == key and text in str(err.value) and "\n" not in str(err.value)


def test_cifar100_missing_files_name_data_dir(tmp_path):
    with pytest.raises(ConfigError) as err:
        CIFAR100DataModule(data_dir=str(tmp_path)).check()
    msg = str(err.value)
    assert err.value.key == "dataset.data_dir" and "\n" not in msg
    assert f"no CIFAR-100 batches under {tmp_path / 'cifar-100-python'}" in msg and "dataset.download=true" in msg
    write_cifar100(tmp_path, meta=False)  # the class names come from the meta file: it is required
    with pytest.raises(ConfigError, match=r"^dataset\.data_dir: CIFAR-100 files missing under .*: meta;"):
        CIFAR100DataModule(data_dir=str(tmp_path)).check()
    CIFAR100DataModule(data_dir=str(tmp_path), download=True).check()  # download=true: fetching is allowed


def test_cifar100_planted_pickle_is_refused(tmp_path):
    folder = write_cifar100(tmp_path)
    marker = tmp_path / "ran"
    rows, fine = cifar100_rows(4, 0, seed=0)
    with open(folder / "train", "wb") as f:
        pickle.dump({"data": rows, "fine_labels": fine, "coarse_labels": fine, "x": Planted(marker)}, f, protocol=2)
    dm = CIFAR100DataModule(data_dir=str(tmp_path), val_fraction=0.0)
    dm.check()  # all files are there: only reading reveals the pickle
    with pytest.raises(ConfigError) as err:
        dm.setup()
    text = str(err.value)
    assert text.startswith(f"dataset.data_dir: {folder / 'train'}: refused: ") and "system" in text and "\n" not in text
    assert not marker.exists()


def test_cifar100_labels_outside_the_meta_classes(tmp_path):
    folder = write_cifar100(tmp_path)
    with open(folder / "meta", "wb") as f:  # 50 fine names for labels up to 99
        pickle.dump({"fine_label_names": FINE_NAMES[:50], "coarse_label_names": COARSE_NAMES}, f, protocol=2)
    with pytest.raises(ConfigError, match=r"^dataset\.data_dir: .*labels \[50, 51, 52, 53, 54\] outside 0\.\.49"):
        CIFAR100DataModule(data_dir=str(tmp_path)).setup()


# ------------------------------------------------------------------------------------------------
# SVHN
# ------------------------------------------------------------------------------------------------
SVHN_SIZES = {"train": 30, "test": 20, "extra": 12}
SVHN_FIRST = {"train": 0, "test": 100, "extra": 200}


def svhn_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    """X (32, 32, 3, N) uint8 as SVHN stores it, index in pixel (h=0, w=0, c=1); y (N, 1) in 1..10."""
    n, first = SVHN_SIZES[split], SVHN_FIRST[split]
    x = np.random.default_rng(first).integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    x[0, 0, 1, :] = np.arange(first, first + n) % 256
    x[1, 5, 2, :] = 255  # row 1, column 5, blue: finds a transposed H/W or channel axis
    x[5, 1, 2, :] = 0
    digits = np.arange(first, first + n) % 10
    y = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(-1, 1)  # SVHN: 10 is the digit 0
    return x, y


def write_svhn(root: Path, splits=("train", "test", "extra")) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for split in splits:
        x, y = svhn_arrays(split)
        scipy.io.savemat(root / f"{split}_32x32.mat", {"X": x, "y": y})


def svhn_index(x: torch.Tensor) -> list[int]:
    return torch.round(x[:, 1, 0, 0] * 255).long().tolist()


def test_svhn_through_torchvision_class(tmp_path, caplog):
    write_svhn(tmp_path, ("train", "test"))
    with pytest.raises(RuntimeError, match="corrupted"):  # torchvision's class: md5 check
        torchvision.datasets.SVHN(root=str(tmp_path), split="test")
    dm = SVHNDataModule(data_dir=str(tmp_path), val_fraction=0.0)
    assert dm.planned_shape() == ((3, 32, 32), 10) and dm.augment is False
    with caplog.at_level(logging.WARNING):
        dm.setup()
    assert any("md5" in r.getMessage() and "test_32x32.mat" in r.getMessage() for r in caplog.records)
    assert dm.class_names == [str(d) for d in range(10)] and dm.input_shape == (3, 32, 32)
    x, y = svhn_arrays("test")
    assert torch.equal(dm.x_test, torch.from_numpy(x.transpose(3, 2, 0, 1).copy()).float() / 255)
    assert bool((dm.x_test[:, 2, 1, 5] == 1).all()) and bool((dm.x_test[:, 2, 5, 1] == 0).all())
    assert dm.y_test.tolist() == [int(v) % 10 for v in y[:, 0]]  # 10 -> 0, 1..9 stay
    assert dm.y_test.tolist()[:3] == [0, 1, 2] and int(y[0, 0]) == 10
    assert sorted(svhn_index(dm.x_train)) == list(range(30)) and dm.y_train.tolist() == [i % 10 for i in svhn_index(dm.x_train)]
    raw = SVHNSplit(str(tmp_path), split="test", check_md5=False)
    assert isinstance(raw, torchvision.datasets.SVHN) and raw[0][1] == 0 and raw[1][1] == 1


def test_svhn_extra_split_joins_training(tmp_path):
    write_svhn(tmp_path)
    plain = SVHNDataModule(data_dir=str(tmp_path), val_fraction=0.0)
    extra = SVHNDataModule(data_dir=str(tmp_path), val_fraction=0.0, extra=True)
    plain.setup()
    extra.setup()
    assert (len(plain.x_train), len(extra.x_train)) == (30, 42) and len(extra.x_test) == 20
    index = svhn_index(extra.x_train)
    assert sorted(index) == list(range(30)) + list(range(200, 212))
    assert extra.y_train.tolist() == [i % 10 for i in index] and extra.x_train.is_contiguous()
    assert torch.equal(extra.x_test, plain.x_test)
    assert plain.describe()["extra"] is False and extra.describe()["extra"] is True


def test_svhn_missing_files_name_data_dir(tmp_path):
    with pytest.raises(ConfigError) as err:
        SVHNDataModule(data_dir=str(tmp_path)).check()
    msg = str(err.value)
    assert err.value.key == "dataset.data_dir" and "\n" not in msg and "dataset.download=true" in msg
    assert msg.startswith(f"dataset.data_dir: no SVHN files under {tmp_path}: train_32x32.mat, test_32x32.mat;")
    write_svhn(tmp_path, ("train", "test"))
    SVHNDataModule(data_dir=str(tmp_path)).check()  # extra_32x32.mat is needed only with extra=true
    with pytest.raises(ConfigError, match=r"^dataset\.data_dir: SVHN files missing under .*: extra_32x32\.mat;"):
        SVHNDataModule(data_dir=str(tmp_path), extra=True).check()


def test_svhn_unreadable_or_wrong_files(tmp_path):
    write_svhn(tmp_path, ("train", "test"))
    x, y = svhn_arrays("test")
    scipy.io.savemat(tmp_path / "test_32x32.mat", {"X": x, "y": np.full_like(y, 11)})
    with pytest.raises(ConfigError, match=r"^dataset\.data_dir: .*test_32x32\.mat: labels \[11\] are not SVHN's 1\.\.10"):
        SVHNDataModule(data_dir=str(tmp_path)).setup()
    (tmp_path / "test_32x32.mat").write_bytes(b"not a MATLAB file" * 20)
    with pytest.raises(ConfigError, match=r"^dataset\.data_dir: .*test_32x32\.mat: cannot be read as an SVHN \.mat file"):
        SVHNDataModule(data_dir=str(tmp_path)).setup()


# ------------------------------------------------------------------------------------------------
# the real CLI: the refusal, and a tiny training run that ends with a 100-output model
# ------------------------------------------------------------------------------------------------
def test_cli_cifar100_missing_files_one_line(tmp_path):
    run = run_advlab(tmp_path, "dataset=cifar100", f"dataset.data_dir={tmp_path / 'nowhere'}", "logger=csv")
    assert run.returncode == 2, run.log[-2000:]
    lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in run.log, run.stderr
    assert lines[0].startswith("advlab-train: error: dataset.data_dir: no CIFAR-100 batches under ")
    assert "dataset.download=true" in lines[0] and not (tmp_path / "cache").exists()


def test_cli_trains_a_100_class_model_on_cifar100_files(tmp_path):
    write_cifar100(tmp_path / "data")
    run = run_advlab(tmp_path, "dataset=cifar100", "method=standard", "arch=cnn", "arch.channels=[4,8]", "arch.hidden=16",
                     "dataset.val_fraction=0", "dataset.batch_size=100", "trainer.max_epochs=1", "logger=csv")
    assert run.returncode == 0, run.stderr[-3000:]
    loaded = advlab.load_run(run.run_dir)
    assert loaded.model.num_classes == 100 and loaded.datamodule.class_names == FINE_NAMES
    with torch.no_grad():
        logits = loaded.model(loaded.datamodule.x_test)
    assert logits.shape == (50, 100)
    acc = (logits.argmax(1) == loaded.datamodule.y_test).float().mean().item()
    assert acc == pytest.approx(run.metrics["test/acc"], abs=1e-6)  # the run's own test set and weights
