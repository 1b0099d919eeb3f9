"""CIFAR-10-C and CIFAR-100-C (Hendrycks & Dietterich, ICLR 2019): the CIFAR test images under common
corruptions, for evaluation only.

The release (zenodo records 2535967 and 3555552) is one folder, ``<data_dir>/CIFAR-10-C`` (or
``CIFAR-100-C``), of numpy files: ``<corruption>.npy`` of shape (5·N, 32, 32, 3) uint8, the N test
images at severity 1, then at severity 2, ... 5 (N = 10,000), and ``labels.npy`` (5·N,), the labels
of those rows. Severity s of a corruption is rows (s − 1)·N … s·N − 1.

The test split is, for each selected corruption (in the order given) and severity (ascending), the
first ``n_examples`` images of that severity's block: the same clean test images under every
corruption and severity, as RobustBench's ``load_cifar10c`` takes them. ``test_groups`` lists the
(corruption, severity) sets in row order and ``test_group`` says which set each row is of (advlab-eval
reports the accuracy per set: advlab.analysis.corruption_accuracy). The files are opened memory-mapped
with ``allow_pickle=False`` (they are data): only the selected rows are read.

Evaluation only: these are corrupted copies of a test set, so nothing trains on them. The training
and validation splits are the test split itself (the same tensors, no copy; the normalisation
statistics and the noise of advlab-eval's ``off_support`` read them), and serving training batches
is refused, as the pre-flight refuses any run or model spec that would train on them
(``refuse_training``).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from advlab.data.arrays import as_float_images, channel_statistics
from advlab.data.base import ArrayDataModule
from advlab.data.torchvision_data import CIFAR10_CLASSES
from advlab.errors import ConfigError, check_number

log = logging.getLogger(__name__)

# The corruption names of the release, as RobustBench names them (robustbench/data.py: CORRUPTIONS, and
# CIFAR_100_CORRUPTIONS adds the four extra ones); in the paper's order: noise, blur, weather, digital.
STANDARD_CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
# the held-out set of the paper (its appendix): in the release too, not in the benchmark's mean
EXTRA_CORRUPTIONS = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
CORRUPTIONS = STANDARD_CORRUPTIONS + EXTRA_CORRUPTIONS
SEVERITIES = (1, 2, 3, 4, 5)
IMAGE_SHAPE = (32, 32, 3)  # one row of a corruption file (HWC)

# CIFAR-100's fine labels (its meta file's `fine_label_names`, in label order): the release has no meta file
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle", "bowl", "boy", "bridge",
    "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach",
    "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster",
    "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree",
    "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear",
    "pickup_truck", "pine_tree", "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider", "squirrel",
    "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor", "train",
    "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)


def _choices(key: str, value: Any, allowed: Sequence, example: str) -> list:
    """A non-empty list of distinct values out of `allowed` (one-line ConfigError otherwise)."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ConfigError(key, f"expected a list, e.g. {example}, got {value!r}; allowed: {', '.join(map(str, allowed))}")
    items = list(value)
    if not items:
        raise ConfigError(key, f"must not be empty; allowed: {', '.join(map(str, allowed))}")
    for item in items:
        if isinstance(item, bool) or item not in allowed:
            raise ConfigError(key, f"unknown value {item!r}; allowed: {', '.join(map(str, allowed))}")
    if len(set(items)) != len(items):
        raise ConfigError(key, f"lists a value twice: {items}")
    return items


class CorruptionDataModule(ArrayDataModule):
    """A corruption benchmark's selected (corruption, severity) sets as the test split (see the module).

    Args:
        data_dir: the folder holding the release's folder (``folder``).
        corruptions: names out of ``CORRUPTIONS``; default the 15 of the benchmark.
        severities: out of 1..5; default all.
        n_examples: images per (corruption, severity): the first ones of each severity's block.
        eval_batch_size, classes, num_workers: as ``ArrayDataModule``'s (``classes`` keeps and remaps a
            subset of the labels, as for the clean set a model was trained on). Nothing here is random:
            no seed.
    """

    #: the release's folder under data_dir, its zenodo record, the clean dataset it corrupts
    folder: str = ""
    zenodo: str = ""
    clean: str = ""
    release_classes: tuple[str, ...] = ()
    planned_input_shape = (3, 32, 32)
    evaluation_only = True

    def __init__(self, data_dir: str = "data", corruptions: Sequence[str] = STANDARD_CORRUPTIONS,
                 severities: Sequence[int] = SEVERITIES, n_examples: int = 200, eval_batch_size: int = 512,
                 classes: Optional[Sequence[int]] = None, num_workers: int = 0) -> None:
        super().__init__(eval_batch_size=eval_batch_size, val_fraction=0.0, classes=classes, num_workers=num_workers)
        self.data_dir = str(data_dir)
        self.corruptions = [str(c) for c in _choices("corruptions", corruptions, CORRUPTIONS, "[fog, snow]")]
        self.severities = sorted(int(s) for s in _choices("severities", severities, SEVERITIES, "[1, 5]"))
        self.n_examples = check_number("n_examples", n_examples, 1, integer=True)
        self.test_groups = [(c, s) for c in self.corruptions for s in self.severities]
        self.test_group: Optional[torch.Tensor] = None
        self._per_severity: Optional[int] = None

    @property
    def root(self) -> Path:
        return Path(self.data_dir) / self.folder

    def _describe_extra(self) -> dict[str, Any]:
        return {"corruptions": list(self.corruptions), "severities": list(self.severities), "n_examples": self.n_examples}

    # ---------------------------------------------------------------- evaluation only
    def refuse_training(self, key: str = "dataset", what: str = "this run") -> None:
        """Raise the one-line ConfigError at `key`: `what` would train on this evaluation-only set."""
        raise ConfigError(key, f"{what} would train on dataset={self.name}, which is evaluation only (Hendrycks & Dietterich's "
                               f"corrupted {self.clean} test images); allowed: train on dataset={self.clean}, then evaluate with "
                               f"advlab-eval dataset={self.name} models=null checkpoints=[<run dir>] (or a spec@models.<name>=external "
                               "or robustbench model)")

    def train_dataloader(self):
        self.refuse_training("dataset", "training")

    def with_train(self, *args: Any, **kwargs: Any):
        self.refuse_training("dataset", "a derived training set")

    # ---------------------------------------------------------------- files
    def _hint(self) -> str:
        return (f"put Hendrycks & Dietterich's {self.folder}.tar (zenodo.org/record/{self.zenodo}) there, extracted: "
                f"{self.root}/<corruption>.npy and {self.root}/labels.npy; or set dataset.data_dir to the folder holding {self.folder}/")

    def _open(self, name: str) -> np.ndarray:
        """A release file, memory-mapped (nothing read but its header) and never unpickled."""
        path = self.root / name
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise ConfigError("dataset.data_dir", f"{path}: not a numpy array file ({' '.join(str(err).split())})") from None
        if not isinstance(array, np.ndarray):  # an .npz archive
            raise ConfigError("dataset.data_dir", f"{path}: not a single numpy array (.npy)")
        return array

    def check(self) -> None:
        """Before any work: the folder, every selected file, their shapes and the labels (headers and the
        small label file only)."""
        super().check()
        if not self.root.is_dir():
            raise ConfigError("dataset.data_dir", f"no {self.folder} folder under {self.data_dir}; {self._hint()}")
        needed = [f"{c}.npy" for c in self.corruptions] + ["labels.npy"]
        missing = [f for f in needed if not (self.root / f).is_file()]
        if missing:
            raise ConfigError("dataset.data_dir", f"{self.root} lacks {', '.join(missing)}; {self._hint()}")
        labels = self._open("labels.npy")
        rows = len(labels) if labels.ndim == 1 else 0
        if rows == 0 or rows % len(SEVERITIES) or labels.dtype.kind not in "iu":
            raise ConfigError("dataset.data_dir", f"{self.root / 'labels.npy'}: expected 5·N integer labels (one per row of the "
                                                  f"corruption files), got shape {labels.shape} {labels.dtype}")
        for corruption in self.corruptions:
            images = self._open(f"{corruption}.npy")
            if images.shape != (rows, *IMAGE_SHAPE) or images.dtype != np.uint8:
                raise ConfigError("dataset.data_dir", f"{self.root / (corruption + '.npy')}: expected ({rows}, 32, 32, 3) uint8 images "
                                                      f"(as many rows as labels.npy), got {images.shape} {images.dtype}")
        lo, hi, n = int(labels.min()), int(labels.max()), len(self.release_classes)
        if lo < 0 or hi >= n:
            raise ConfigError("dataset.data_dir", f"{self.root / 'labels.npy'}: labels {lo}..{hi}, outside the {n} classes of "
                                                  f"{self.name} (0..{n - 1})")
        self._per_severity = rows // len(SEVERITIES)
        if self.n_examples > self._per_severity:
            raise ConfigError("dataset.n_examples", f"{self.n_examples} is more than the {self._per_severity} images per severity "
                                                    f"in {self.root}; allowed: 1..{self._per_severity}")

    # ---------------------------------------------------------------- load
    def _read(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 images (G·n, 3, 32, 32), labels) of the selected sets, in `test_groups` order."""
        n, per = self.n_examples, self._per_severity
        labels = self._open("labels.npy")
        x = torch.empty((len(self.test_groups) * n, 3, 32, 32), dtype=torch.uint8)
        y = torch.empty(len(self.test_groups) * n, dtype=torch.int64)
        for corruption in self.corruptions:
            images = self._open(f"{corruption}.npy")
            for severity in self.severities:
                g = self.test_groups.index((corruption, severity))
                start = (severity - 1) * per
                x[g * n:(g + 1) * n] = torch.from_numpy(np.array(images[start:start + n])).permute(0, 3, 1, 2)
                y[g * n:(g + 1) * n] = torch.from_numpy(np.array(labels[start:start + n], dtype=np.int64))
        return x, y

    def setup(self, stage: Optional[str] = None) -> None:
        if self._loaded:
            return
        self.check()
        x, y = self._read()
        group = torch.arange(len(self.test_groups)).repeat_interleave(self.n_examples)
        names = list(self.release_classes)
        if self.classes is not None:
            lut = torch.full((len(names),), -1, dtype=torch.int64)
            lut[torch.as_tensor(self.classes)] = torch.arange(len(self.classes))
            keep = lut[y] >= 0
            if not bool(keep.any()):
                raise ConfigError("dataset.n_examples", f"the first {self.n_examples} images per severity hold none of the classes "
                                                        f"{self.classes}; allowed: a larger n_examples")
            x, y, group, names = x[keep], lut[y][keep], group[keep], [names[c] for c in self.classes]
        self.x_test, self.y_test, self.test_group = as_float_images(x, "x_test"), y, group
        # evaluation only: the other splits are the test split (the same tensors; training batches are refused)
        self.x_train, self.y_train, self.x_val, self.y_val = self.x_test, self.y_test, self.x_test, self.y_test
        self._class_names = names
        self._mean, self._std = channel_statistics(self.x_test)
        self._make_datasets()
        self._loaded = True
        log.info("%s: %d corruptions × severities %s × %d images = %d test images (memory-mapped from %s), %d classes",
                 self.name, len(self.corruptions), self.severities, self.n_examples, len(y), self.root, len(names))


class CIFAR10CDataModule(CorruptionDataModule):
    """CIFAR-10-C (``<data_dir>/CIFAR-10-C``), 10 classes."""

    name = "cifar10_c"
    folder = "CIFAR-10-C"
    zenodo = "2535967"
    clean = "cifar10"
    release_classes = tuple(CIFAR10_CLASSES)
    original_num_classes = 10


class CIFAR100CDataModule(CorruptionDataModule):
    """CIFAR-100-C (``<data_dir>/CIFAR-100-C``), 100 classes (the fine labels)."""

    name = "cifar100_c"
    folder = "CIFAR-100-C"
    zenodo = "3555552"
    clean = "cifar100"
    release_classes = CIFAR100_CLASSES
    original_num_classes = 100
