"""SVHN (Street View House Numbers, cropped digits) through ``torchvision.datasets.SVHN``: the MATLAB files
``<data_dir>/train_32x32.mat``, ``test_32x32.mat`` and, with ``extra=True``, ``extra_32x32.mat``
(torchvision's layout: the official files side by side in the root).

torchvision reads them with scipy's ``loadmat`` (a MATLAB v5 parser: plain arrays, no code is run),
transposes ``X`` (32×32×3×N) to N×3×32×32 and maps the label 10, SVHN's digit 0, to 0, so the labels
are the digits. Its md5 check passes on the release's files only; same-format files that are not
byte-identical (a subset, a hand-made copy) are read by the same class without it, with a warning.
``extra=True`` appends the 531,131 extra training images (easier ones) to the training split.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from scipy.io.matlab import MatReadError
from torchvision import datasets as tvd
from torchvision.datasets.utils import download_url

from advlab.data.base import ArrayDataModule
from advlab.errors import ConfigError

log = logging.getLogger(__name__)

SVHN_CLASSES = tuple(str(d) for d in range(10))
_UNREADABLE = (MatReadError, ValueError, KeyError, IndexError, TypeError, OSError, EOFError, NotImplementedError)


class SVHNSplit(tvd.SVHN):
    """torchvision's SVHN; ``check_md5=False`` reads a file in the same format that is not the release's
    (torchvision's integrity check is md5-based), instead of refusing it."""

    def __init__(self, root, split: str = "train", check_md5: bool = True, **kwargs: Any) -> None:
        self.check_md5 = check_md5  # before torchvision's __init__, which calls _check_integrity
        super().__init__(root, split=split, **kwargs)

    def _check_integrity(self) -> bool:
        if self.check_md5:
            return super()._check_integrity()
        return os.path.isfile(os.path.join(self.root, self.filename))


class SVHNDataModule(ArrayDataModule):
    """SVHN via ``torchvision.datasets.SVHN`` (``<data_dir>/{train,test,extra}_32x32.mat``), (3, 32, 32),
    classes "0".."9". ``extra=True`` adds the extra split to training.

    ``augment`` stays false by default: the base's augmentation is a random crop *and* a horizontal flip,
    and a mirrored digit is not that digit (2, 3, 4, 5, 7, 9 become other shapes).
    """

    name = "svhn"
    original_num_classes = 10
    planned_input_shape = (3, 32, 32)

    def __init__(self, data_dir: str = "data", download: bool = False, extra: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.data_dir = str(data_dir)
        self.download = bool(download)
        self.extra = bool(extra)

    def _splits(self) -> list[str]:
        return ["train", "test"] + (["extra"] if self.extra else [])

    def _path(self, split: str) -> Path:
        return Path(self.data_dir) / tvd.SVHN.split_list[split][1]

    def _missing_files(self) -> list[str]:
        return [self._path(s).name for s in self._splits() if not self._path(s).is_file()]

    def check(self) -> None:
        super().check()
        missing = self._missing_files()
        if self.download or not missing:
            return
        head = f"no SVHN files under {self.data_dir}" if len(missing) == len(self._splits()) else \
            f"SVHN files missing under {self.data_dir}"
        hint = "" if self.extra else " (extra_32x32.mat only with dataset.extra=true)"
        raise ConfigError("dataset.data_dir", f"{head}: {', '.join(missing)}; set dataset.download=true, or put the "
                                              f"official .mat files from http://ufldl.stanford.edu/housenumbers/ there{hint}")

    def _describe_extra(self) -> dict[str, Any]:
        return {"extra": self.extra}

    def _prepare(self) -> None:
        if not self.download:
            return
        for split in self._splits():
            if not self._path(split).is_file():  # a present file is kept, whether or not it is the release's
                url, filename, md5 = tvd.SVHN.split_list[split]
                download_url(url, self.data_dir, filename, md5)

    def read_split(self, split: str) -> tuple[np.ndarray, np.ndarray, bool]:
        """(images N×3×32×32 uint8, labels 0..9, whether the file is the release's) of one split."""
        path = self._path(split)
        try:
            try:
                ds, official = SVHNSplit(self.data_dir, split=split), True
            except RuntimeError:  # torchvision's md5 check: not the release's bytes
                ds, official = SVHNSplit(self.data_dir, split=split, check_md5=False), False
        except _UNREADABLE as err:
            what = f"no variable {err}" if isinstance(err, KeyError) else " ".join(str(err).split())[:200] or type(err).__name__
            raise ConfigError("dataset.data_dir", f"{path}: cannot be read as an SVHN .mat file ({what})") from None
        x, y = ds.data, np.asarray(ds.labels).reshape(-1)
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (3, 32, 32) or len(x) != len(y):
            raise ConfigError("dataset.data_dir", f"{path}: not an SVHN file (X must be uint8 32×32×3×N and y N labels; "
                                                  f"read {x.dtype} images {tuple(x.shape)} as N×C×H×W, {len(y)} labels)")
        bad = sorted(set(np.unique(y[(y < 0) | (y > 9)]).tolist()))
        if bad:
            raise ConfigError("dataset.data_dir", f"{path}: labels {bad[:5]} are not SVHN's 1..10 (10 is the digit 0)")
        return x, y.astype(np.int64), official  # x: torchvision's transposed view of the file's array

    def _load(self):
        self._prepare()
        if self.augment:
            log.warning("dataset.augment=true on SVHN: the horizontal flip mirrors digits into other shapes")
        parts = {split: self.read_split(split) for split in self._splits()}
        unofficial = [self._path(s).name for s, (_, _, official) in parts.items() if not official]
        if unofficial:
            log.warning("%s: %s do not match the official md5 sums, which torchvision's SVHN requires; "
                        "reading them without the md5 check (same format)", self.data_dir, ", ".join(unofficial))
        train = [parts[s][:2] for s in self._splits() if s != "test"]  # train, then extra
        x_train = np.empty((sum(len(y) for _, y in train), 3, 32, 32), np.uint8)  # C order (concatenate keeps strides)
        np.concatenate([x for x, _ in train], out=x_train)  # one copy, also of a single split
        y_train = np.concatenate([y for _, y in train])
        x_test, y_test, _ = parts["test"]
        return x_train, y_train, np.ascontiguousarray(x_test), y_test, list(SVHN_CLASSES)
