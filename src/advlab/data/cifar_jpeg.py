"""CIFAR-10 from its JPEG copy: two uncompressed zips ``train.zip`` (train/<class>/NNNN.jpg) and
``test.zip`` (test/<class>/NNNN.jpg) in ``zip_dir``.

First use: each zip is extracted (into a temp folder, then renamed) to ``<data_dir>/cifar10-jpeg/<split>/``,
read as a ``torchvision.datasets.ImageFolder`` (classes sorted alphabetically = CIFAR-10 label order),
decoded with ``torchvision.io`` into one uint8 tensor per split, and saved as a tensor cache
``<data_dir>/cifar10-jpeg/cifar10-jpeg-uint8.pt`` (temp file + rename; ``advlab.data.decoded_images``).
Later runs load the cache in about a second. A file lock makes concurrent runs build it once.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Optional

import torch
from torchvision.datasets import ImageFolder

from advlab.data.base import ArrayDataModule
from advlab.data.decoded_images import build_cache_once, decode_rgb, decode_stack, read_cache
from advlab.errors import ConfigError

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
CACHE_NAME = "cifar10-jpeg-uint8.pt"
CACHE_VERSION = 1


class CIFAR10JPEGDataModule(ArrayDataModule):
    name = "cifar10_jpeg"
    original_num_classes = 10
    planned_input_shape = (3, 32, 32)

    def __init__(self, data_dir: str = "data", zip_dir: str = "../shared/data/cifar10-jpeg", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.data_dir = str(data_dir)
        self.zip_dir = str(zip_dir)

    # ---------------------------------------------------------------- paths
    @property
    def root(self) -> Path:
        return Path(self.data_dir) / "cifar10-jpeg"

    @property
    def cache_path(self) -> Path:
        return self.root / CACHE_NAME

    def _zip(self, split: str) -> Path:
        return Path(self.zip_dir) / f"{split}.zip"

    # ---------------------------------------------------------------- checks
    def check(self) -> None:
        super().check()
        if self.cache_path.is_file():
            return
        for split in SPLITS:
            if not (self._zip(split).is_file() or (self.root / split).is_dir()):
                raise ConfigError(
                    "dataset.zip_dir",
                    f"no {split}.zip under {self.zip_dir} and no extracted {self.root / split}; set dataset.zip_dir "
                    "to the folder holding train.zip and test.zip (the shared copy: ../shared/data/cifar10-jpeg)",
                )

    # ---------------------------------------------------------------- build
    def _sources(self) -> dict[str, Optional[int]]:
        """Sizes of the zips the cache was built from (None: built from an extracted folder)."""
        return {s: (self._zip(s).stat().st_size if self._zip(s).is_file() else None) for s in SPLITS}

    def _cache_is_current(self) -> bool:
        head = read_cache(self.cache_path, CACHE_VERSION)
        if head is None:
            return False
        built_from = head.get("sources", {})
        now = self._sources()
        # zips that are present must be the ones the cache was built from
        return all(now[s] is None or built_from.get(s) == now[s] for s in SPLITS)

    def _prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        build_cache_once(self.cache_path, self._cache_is_current, self._build_cache)

    def _build_cache(self) -> dict[str, Any]:
        for split in SPLITS:
            self._extract(split)
        payload: dict[str, Any] = {"version": CACHE_VERSION, "sources": self._sources()}
        classes = None
        for split in SPLITS:
            x, y, names = self._decode_split(split)
            if classes is not None and names != classes:
                raise ValueError(f"{self.root}: train classes {classes} != test classes {names}")
            classes = names
            payload[f"x_{split}"], payload[f"y_{split}"] = x, y
        payload["classes"] = classes
        return payload

    def _extract(self, split: str) -> None:
        target = self.root / split
        if target.is_dir():
            return
        archive = self._zip(split)
        log.info("%s: extracting %s into %s", self.name, archive, target)
        tmp = Path(tempfile.mkdtemp(prefix=f".extract-{split}-", dir=self.root))
        try:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(tmp)
            src = tmp / split if (tmp / split).is_dir() else tmp
            src.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _decode_split(self, split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        folder = ImageFolder(str(self.root / split))
        paths = [path for path, _ in folder.samples]
        x = decode_stack(paths, lambda path: decode_rgb(path, folder.loader), f"decoding CIFAR-10 JPEG {split}")
        return x, torch.as_tensor(folder.targets, dtype=torch.int64), list(folder.classes)

    # ---------------------------------------------------------------- load
    def _load(self):
        self._prepare()
        data = torch.load(self.cache_path, map_location="cpu", weights_only=True)
        return data["x_train"], data["y_train"], data["x_test"], data["y_test"], list(data["classes"])
