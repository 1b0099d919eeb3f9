"""MNIST, Fashion-MNIST and CIFAR-10 through torchvision's dataset classes and file formats.

MNIST / Fashion-MNIST: IDX files in torchvision's layout ``<data_dir>/<MNIST|FashionMNIST>/raw/``
(decompressed, or ``.gz`` next to them: those are decompressed in place on first use).

- ``official_split=True``: ``torchvision.datasets.MNIST(root=data_dir, train=True/False)``. torchvision's
  ``_check_exists`` requires all four files (train and t10k) for either split.
- ``official_split=False``: only the official *test* files (t10k) are used, split seeded and stratified
  into train / test by ``test_fraction``. torchvision's class refuses a folder holding only the t10k
  files (see above), so they are read with torchvision's own IDX readers
  (``torchvision.datasets.mnist.read_image_file`` / ``read_label_file``).

CIFAR-10: the pickled batches in ``<data_dir>/cifar-10-batches-py``. When they match the official md5
sums (torchvision's ``CIFAR10.train_list`` / ``test_list`` / ``meta``), they are read by
``SafeCIFAR10``, torchvision's ``CIFAR10`` with its unrestricted unpickling replaced by an unpickler that admits
numpy arrays only (a planted batch is refused, one line naming it, instead of running its code).
torchvision refuses other files (its integrity check is md5-based); files in the same format but not
byte-identical to the release are read by the same class without the md5 check, with a warning.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision import datasets as tvd
from torchvision.datasets.mnist import read_image_file, read_label_file
from torchvision.datasets.utils import check_integrity
from torchvision.datasets.vision import VisionDataset

from advlab.data._io import ensure_decompressed
from advlab.data.base import ArrayDataModule, check_fraction, stratified_split
from advlab.errors import ConfigError
from advlab.utils.safe_io import load_array_pickle

log = logging.getLogger(__name__)

MNIST_TRAIN_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"]
MNIST_TEST_FILES = ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


class _IDXDataModule(ArrayDataModule):
    """Shared implementation of the MNIST-format datamodules."""

    tv_class: type = tvd.MNIST
    original_num_classes = 10
    planned_input_shape = (1, 28, 28)

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = False,
        official_split: bool = True,
        test_fraction: float = 0.2,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.data_dir = str(data_dir)
        self.download = bool(download)
        self.official_split = bool(official_split)
        self.test_fraction = check_fraction("dataset.test_fraction", test_fraction, allow_zero=False)

    @property
    def raw_dir(self) -> Path:
        # torchvision: raw_folder = <root>/<class name>/raw
        return Path(self.data_dir) / self.tv_class.__name__ / "raw"

    def _needed_files(self) -> list[str]:
        return (MNIST_TRAIN_FILES + MNIST_TEST_FILES) if self.official_split else list(MNIST_TEST_FILES)

    def _missing_files(self) -> list[str]:
        raw = self.raw_dir
        return [f for f in self._needed_files() if not ((raw / f).is_file() or (raw / f"{f}.gz").is_file())]

    def check(self) -> None:
        super().check()
        if self.download:
            return
        missing = self._missing_files()
        if not missing:
            return
        what = self.tv_class.__name__
        if len(missing) == len(self._needed_files()):
            head = f"no {what} files under {self.raw_dir}"
        else:
            head = f"{what} files missing under {self.raw_dir}: {', '.join(missing)}"
        hint = "set dataset.download=true"
        if self.official_split and not any(f.startswith("t10k") for f in missing):
            hint += ", or dataset.official_split=false to split the t10k (test) files only"
        if what == "MNIST":
            hint += (
                ", or install the shared t10k files with `advlab-data --shared ../shared "
                f"--data {self.data_dir}` and use dataset.official_split=false"
            )
        raise ConfigError("dataset.data_dir", f"{head}; {hint}")

    def _describe_extra(self) -> dict[str, Any]:
        d: dict[str, Any] = {"official_split": self.official_split}
        if not self.official_split:
            d["test_fraction"] = self.test_fraction
        return d

    def _prepare(self) -> None:
        if self.download and self._missing_files():
            # downloads all four files (skipped by torchvision when they are already there)
            self.tv_class(root=self.data_dir, train=False, download=True)

    def _load(self):
        self._prepare()
        ensure_decompressed(self.raw_dir, self._needed_files())
        names = list(self.tv_class.classes)
        if self.official_split:
            train = self.tv_class(root=self.data_dir, train=True, download=False)
            test = self.tv_class(root=self.data_dir, train=False, download=False)
            return train.data.unsqueeze(1), train.targets, test.data.unsqueeze(1), test.targets, names
        x = read_image_file(str(self.raw_dir / MNIST_TEST_FILES[0])).unsqueeze(1)
        y = read_label_file(str(self.raw_dir / MNIST_TEST_FILES[1]))
        if len(x) != len(y):
            raise ValueError(f"{self.raw_dir}: {len(x)} images but {len(y)} labels")
        tr, te = stratified_split(y, self.test_fraction, self.seed)
        return x[tr], y[tr], x[te], y[te], names


class MNISTDataModule(_IDXDataModule):
    """MNIST via ``torchvision.datasets.MNIST`` (files under ``<data_dir>/MNIST/raw``), (1, 28, 28)."""

    name = "mnist"
    tv_class = tvd.MNIST


class FashionMNISTDataModule(_IDXDataModule):
    """Fashion-MNIST via ``torchvision.datasets.FashionMNIST`` (``<data_dir>/FashionMNIST/raw``), (1, 28, 28)."""

    name = "fashion_mnist"
    tv_class = tvd.FashionMNIST


class CIFAR10DataModule(ArrayDataModule):
    """CIFAR-10 via ``torchvision.datasets.CIFAR10`` (``<data_dir>/cifar-10-batches-py``), (3, 32, 32)."""

    name = "cifar10"
    original_num_classes = 10
    planned_input_shape = (3, 32, 32)

    def __init__(self, data_dir: str = "data", download: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.data_dir = str(data_dir)
        self.download = bool(download)

    @property
    def batches_dir(self) -> Path:
        return Path(self.data_dir) / tvd.CIFAR10.base_folder

    def _batch_files(self) -> list[str]:
        return [name for name, _ in tvd.CIFAR10.train_list + tvd.CIFAR10.test_list]

    def check(self) -> None:
        super().check()
        if self.download:
            return
        missing = [f for f in self._batch_files() if not (self.batches_dir / f).is_file()]
        if missing:
            head = (
                f"no CIFAR-10 batches under {self.batches_dir}"
                if len(missing) == len(self._batch_files())
                else f"CIFAR-10 batches missing under {self.batches_dir}: {', '.join(missing)}"
            )
            raise ConfigError(
                "dataset.data_dir",
                f"{head}; set dataset.download=true, or use the JPEG copy (CIFAR10JPEGDataModule, dataset.zip_dir)",
            )

    def official_files(self) -> bool:
        """Whether the batches are byte-identical to the official release (torchvision's md5 check)."""
        files = tvd.CIFAR10.train_list + tvd.CIFAR10.test_list + [[tvd.CIFAR10.meta["filename"], tvd.CIFAR10.meta["md5"]]]
        return all(check_integrity(os.path.join(self.batches_dir, f), md5) for f, md5 in files)

    def _prepare(self) -> None:
        if self.download:
            tvd.CIFAR10(root=self.data_dir, train=False, download=True)  # checks md5s, fetches if needed

    def _load(self):
        self._prepare()
        official = self.official_files()
        if not official:
            log.warning(
                "%s: the CIFAR-10 batches do not match the official md5 sums, which torchvision's CIFAR10 "
                "requires; reading them without the md5 check (same layout)",
                self.batches_dir,
            )
        train = SafeCIFAR10(root=self.data_dir, train=True, check_md5=official)
        test = SafeCIFAR10(root=self.data_dir, train=False, check_md5=official)
        as_chw = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).contiguous()  # noqa: E731
        return as_chw(train.data), train.targets, as_chw(test.data), test.targets, list(train.classes)


def _str_keys(entry):
    """Batches pickled by Python 3 (not the release's Python 2) may have bytes keys."""
    if not isinstance(entry, dict):
        return entry
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}


def read_batch(path: Path) -> tuple[np.ndarray, list[int]]:
    """(data N×3072 uint8, labels) of one pickled CIFAR batch, read with the array-only unpickler."""
    entry = _str_keys(load_array_pickle(path, key="dataset.data_dir"))
    labels = entry.get("labels", entry.get("fine_labels")) if isinstance(entry, dict) else None
    data = entry.get("data") if isinstance(entry, dict) else None
    if not isinstance(data, np.ndarray) or labels is None or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 \
            or len(data) != len(labels):
        shape = getattr(data, "shape", None)
        raise ConfigError("dataset.data_dir", f"{path}: not a CIFAR-10 batch (data {shape}, labels {None if labels is None else len(labels)})")
    return data.astype(np.uint8, copy=False), [int(v) for v in labels]


class SafeCIFAR10(tvd.CIFAR10):
    """torchvision's CIFAR10 (same attributes: data N×32×32×3 uint8, targets, classes) with its
    unrestricted unpickling replaced by an unpickler that admits numpy arrays only, so a planted batch cannot
    run code. ``check_md5=False`` also reads batches that are not byte-identical to the release."""

    def __init__(self, root, train: bool = True, transform=None, target_transform=None,
                 download: bool = False, check_md5: bool = True) -> None:
        VisionDataset.__init__(self, root, transform=transform, target_transform=target_transform)
        self.train, self.check_md5 = train, check_md5
        if download:
            self.download()
        if check_md5 and not self._check_integrity():
            raise RuntimeError("Dataset not found or corrupted. You can use download=True to download it")
        data, self.targets = [], []
        for name, _ in self.train_list if train else self.test_list:
            rows, labels = read_batch(Path(self.root) / self.base_folder / name)
            data.append(rows)
            self.targets.extend(labels)
        self.data = np.vstack(data).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))  # HWC, as torchvision
        self._load_meta()

    def _load_meta(self) -> None:
        path = Path(self.root) / self.base_folder / self.meta["filename"]
        if self.check_md5 and not check_integrity(str(path), self.meta["md5"]):
            raise RuntimeError("Dataset metadata file not found or corrupted. You can use download=True to download it")
        if path.is_file():
            names = _str_keys(load_array_pickle(path, key="dataset.data_dir"))[self.meta["key"]]
            self.classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        else:  # only without the md5 check: hand-made batches may come without batches.meta
            self.classes = list(CIFAR10_CLASSES)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
