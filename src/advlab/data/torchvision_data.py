"""MNIST, Fashion-MNIST and CIFAR-10 (and the pickled-CIFAR base) through torchvision's dataset classes and file formats.

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
The safe reading is one mixin, ``SafeCIFARLoading``, parametrised by torchvision's class attributes
(``base_folder``, ``train_list``, ``test_list``, ``meta``), and the datamodule one base,
``PickledCIFARDataModule``: CIFAR-100 (``advlab.data.cifar100``) is the same two with its own class.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional, Sequence

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
        self.test_fraction = check_fraction("test_fraction", test_fraction, allow_zero=False)

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


def _str_keys(entry):
    """Batches pickled by Python 3 (not the release's Python 2) may have bytes keys."""
    if not isinstance(entry, dict):
        return entry
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}


def read_batch(path: Path, label_keys: Sequence[str] = ("labels", "fine_labels"),
               title: str = "CIFAR-10") -> tuple[np.ndarray, list[int]]:
    """(data N×3072 uint8, labels) of one pickled CIFAR batch, read with the array-only unpickler;
    the labels are the first of ``label_keys`` the batch holds (torchvision: labels, else fine_labels)."""
    entry = _str_keys(load_array_pickle(path, key="dataset.data_dir"))
    entry = entry if isinstance(entry, dict) else {}
    labels = next((entry[k] for k in label_keys if k in entry), None)
    data = entry.get("data")
    if not isinstance(data, np.ndarray) or labels is None or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 \
            or len(data) != len(labels):
        shape = getattr(data, "shape", None)
        raise ConfigError("dataset.data_dir", f"{path}: not a {title} batch (data {shape}, "
                                              f"{'/'.join(label_keys)} {None if labels is None else len(labels)})")
    return data.astype(np.uint8, copy=False), [int(v) for v in labels]


class SafeCIFARLoading:
    """Mixed in ahead of torchvision's CIFAR10 / CIFAR100 (whose ``base_folder``, ``train_list``,
    ``test_list``, ``meta``, ``_check_integrity`` and ``download`` it uses): the same attributes (data
    N×32×32×3 uint8, targets, classes), with torchvision's unrestricted unpickling replaced by an
    unpickler that admits numpy arrays only, so a planted batch cannot run code. ``check_md5=False``
    also reads batches that are not byte-identical to the release."""

    title = "CIFAR-10"
    #: the batch keys holding the labels, the first present wins (torchvision's order)
    label_keys: tuple[str, ...] = ("labels", "fine_labels")
    #: class names when a hand-made copy has no meta file (None: the meta file is required)
    fallback_classes: Optional[tuple[str, ...]] = None

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
            rows, labels = read_batch(Path(self.root) / self.base_folder / name, self.label_keys, self.title)
            data.append(rows)
            self.targets.extend(labels)
        self.data = np.vstack(data).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))  # HWC, as torchvision
        self._load_meta()
        bad = sorted({t for t in self.targets if not 0 <= t < len(self.classes)})
        if bad:
            raise ConfigError("dataset.data_dir", f"{Path(self.root) / self.base_folder}: labels {bad[:5]} outside "
                                                  f"0..{len(self.classes) - 1} ({len(self.classes)} class names)")

    def _load_meta(self) -> None:
        path = Path(self.root) / self.base_folder / self.meta["filename"]
        if self.check_md5 and not check_integrity(str(path), self.meta["md5"]):
            raise RuntimeError("Dataset metadata file not found or corrupted. You can use download=True to download it")
        if path.is_file() or not self.fallback_classes:
            meta = _str_keys(load_array_pickle(path, key="dataset.data_dir"))
            names = meta.get(self.meta["key"]) if isinstance(meta, dict) else None
            if not isinstance(names, (list, tuple)):
                raise ConfigError("dataset.data_dir", f"{path}: not a {self.title} meta file (no list {self.meta['key']})")
            self.classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        else:  # only without the md5 check: hand-made batches may come without their meta file
            self.classes = list(self.fallback_classes)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)


class SafeCIFAR10(SafeCIFARLoading, tvd.CIFAR10):
    """torchvision's CIFAR10 read with the array-only unpickler (see ``SafeCIFARLoading``)."""

    fallback_classes = CIFAR10_CLASSES


class PickledCIFARDataModule(ArrayDataModule):
    """A CIFAR datamodule on torchvision's pickled layout (``<data_dir>/<dataset_class.base_folder>``),
    read by ``dataset_class`` (a torchvision class with ``SafeCIFARLoading`` mixed in), (3, 32, 32)."""

    planned_input_shape = (3, 32, 32)
    dataset_class: type = SafeCIFAR10  # a SafeCIFARLoading class (torchvision's, made safe)
    missing_hint = "set dataset.download=true"

    def __init__(self, data_dir: str = "data", download: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.data_dir = str(data_dir)
        self.download = bool(download)

    @property
    def batches_dir(self) -> Path:
        return Path(self.data_dir) / self.dataset_class.base_folder

    def _batch_files(self) -> list[str]:
        return [name for name, _ in self.dataset_class.train_list + self.dataset_class.test_list]

    def _required_files(self) -> list[str]:
        # the meta file gives the class names; only a dataset with built-in names can do without it
        meta = [] if self.dataset_class.fallback_classes else [self.dataset_class.meta["filename"]]
        return self._batch_files() + meta

    def _dataset_kwargs(self) -> dict[str, Any]:
        """What ``dataset_class`` takes besides root / train / check_md5 (CIFAR-100: the label kind)."""
        return {}

    def check(self) -> None:
        super().check()
        if self.download:
            return
        required = self._required_files()
        missing = [f for f in required if not (self.batches_dir / f).is_file()]
        if missing:
            head = (
                f"no {self.dataset_class.title} batches under {self.batches_dir}"
                if len(missing) == len(required)
                else f"{self.dataset_class.title} files missing under {self.batches_dir}: {', '.join(missing)}"
            )
            raise ConfigError("dataset.data_dir", f"{head}; {self.missing_hint}")

    def official_files(self) -> bool:
        """Whether the batches are byte-identical to the official release (torchvision's md5 check)."""
        tv = self.dataset_class
        files = tv.train_list + tv.test_list + [[tv.meta["filename"], tv.meta["md5"]]]
        return all(check_integrity(os.path.join(self.batches_dir, f), md5) for f, md5 in files)

    def _prepare(self) -> None:
        if self.download:  # torchvision checks the md5s and fetches the archive if needed
            self.dataset_class(root=self.data_dir, train=False, download=True, **self._dataset_kwargs())

    def _load(self):
        self._prepare()
        official = self.official_files()
        if not official:
            log.warning(
                "%s: the %s batches do not match the official md5 sums, which torchvision's class requires; "
                "reading them without the md5 check (same layout)",
                self.batches_dir, self.dataset_class.title,
            )
        train = self.dataset_class(root=self.data_dir, train=True, check_md5=official, **self._dataset_kwargs())
        test = self.dataset_class(root=self.data_dir, train=False, check_md5=official, **self._dataset_kwargs())
        as_chw = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).contiguous()  # noqa: E731
        return as_chw(train.data), train.targets, as_chw(test.data), test.targets, list(train.classes)


class CIFAR10DataModule(PickledCIFARDataModule):
    """CIFAR-10 via ``torchvision.datasets.CIFAR10`` (``<data_dir>/cifar-10-batches-py``), (3, 32, 32)."""

    name = "cifar10"
    original_num_classes = 10
    dataset_class = SafeCIFAR10
    missing_hint = "set dataset.download=true, or use the JPEG copy (CIFAR10JPEGDataModule, dataset.zip_dir)"
