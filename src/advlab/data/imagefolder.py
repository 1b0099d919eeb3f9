"""Any ImageNet-style class-folder tree at a chosen resolution: ImageNet, Restricted ImageNet,
Imagenette, Tiny-ImageNet, a folder of your own.

Layout: ``<root>/<train_dir>/<class>/**/*.{jpg,jpeg,png,...}`` read with torchvision's
``ImageFolder`` (class folders sorted, so ImageNet's wnid folders get the standard 0..999 indices);
the test split ``<root>/<val_dir>/<class>/...`` the same way (``val_layout: folders``), or
Tiny-ImageNet's ``<val_dir>/images/*.JPEG`` labelled by ``<val_dir>/val_annotations.txt`` (one
``<file>\\t<wnid>\\t<box>`` line per image; ``val_layout: annotations``). Class folders are matched by
name between the splits. ``class_subset`` / ``class_groups`` choose and merge folders
(``advlab.data.imagefolder_classes``); ``max_per_class`` / ``max_test_per_class`` keep a seeded
subset of each class (``subset_seed``), for CPU-sized runs.

Every image is decoded, its shorter side resized to ``resize`` (default: ``resolution``) and the
central ``resolution``² square cut out: the usual ImageNet evaluation transform. It keeps the aspect
ratio (shapes are not stretched), keeps the centre where these photos put the object, and is
deterministic, so the decoded tensors can be cached; random crops and flips are the training
augmentation's job (``augment``). The uint8 tensors go to one cache file per setting under
``cache_dir`` (``advlab.data.decoded_images``: temp file + rename, ``weights_only`` loading, a file
lock), rebuilt when a selected file's path, size or mtime, the selection or the resolution changes.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, has_file_allowed_extension

from advlab.data.base import ArrayDataModule
from advlab.data.decoded_images import build_cache_once, decode_rgb, decode_stack, read_cache, resize_center_crop
from advlab.data.imagefolder_classes import parse_groups, parse_subset, planned_class_count, plain, resolve_classes
from advlab.errors import ConfigError, check_number

log = logging.getLogger(__name__)

CACHE_VERSION = 1
VAL_LAYOUTS = ("folders", "annotations")
ANNOTATIONS_FILE = "val_annotations.txt"  # Tiny-ImageNet: <val_dir>/val_annotations.txt, images in <val_dir>/images/
ANNOTATED_IMAGES = "images"
EXTENSIONS = ", ".join(IMG_EXTENSIONS)
Samples = list[tuple[str, int]]


class SelectedImageFolder(ImageFolder):
    """torchvision's ImageFolder over the selected class folders only, each labelled by the selection
    (merged classes: several folders, one label)."""

    def __init__(self, root: str, classes: list[str], class_to_idx: dict[str, int], allow_empty: bool = False) -> None:
        self._selected = (list(classes), dict(class_to_idx))
        super().__init__(root, allow_empty=allow_empty)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        return self._selected


@dataclass
class FolderPlan:
    """What will be decoded: class names, the (path, label) samples of each split, and a digest of
    the settings and of every selected file's path, size and mtime (the cache is current iff it matches)."""

    class_names: list[str]
    samples: dict[str, Samples]
    fingerprint: str


def has_image(folder: Path) -> bool:
    """Whether ``folder`` (or a folder below it) holds a file ImageFolder would read; stops at the first."""
    for _, _, files in os.walk(folder, followlinks=True):
        if any(has_file_allowed_extension(f, IMG_EXTENSIONS) for f in files):
            return True
    return False


def capped(samples: Samples, cap: Optional[int], seed: int) -> Samples:
    """At most ``cap`` samples of each label, a seeded random choice (kept in file order)."""
    if cap is None:
        return samples
    by_label: dict[int, list[int]] = {}
    for i, (_, label) in enumerate(samples):
        by_label.setdefault(label, []).append(i)
    generator = torch.Generator().manual_seed(seed)
    keep: list[int] = []
    for label in sorted(by_label):
        idx = by_label[label]
        order = torch.randperm(len(idx), generator=generator)[:cap]
        keep.extend(idx[int(j)] for j in order)
    return [samples[i] for i in sorted(keep)]


class ImageFolderDataModule(ArrayDataModule):
    """An ImageNet-style class-folder tree (see the module docstring); images (3, resolution, resolution)."""

    name = "imagefolder"

    def __init__(
        self,
        root: str = "data/imagefolder",
        train_dir: str = "train",
        val_dir: str = "val",
        val_layout: str = "folders",
        resolution: int = 64,
        resize: Optional[int] = None,
        class_subset: Any = None,
        class_groups: Any = None,
        max_per_class: Optional[int] = None,
        max_test_per_class: Optional[int] = None,
        subset_seed: int = 0,
        cache_dir: str = "data/imagefolder-cache",
        name: str = "imagefolder",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        for key, value in (("root", root), ("train_dir", train_dir), ("val_dir", val_dir), ("cache_dir", cache_dir)):
            if not isinstance(value, (str, os.PathLike)) or not str(value):
                raise ConfigError(key, f"must be a folder path, got {value!r}")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ConfigError("name", f"must be a short name of letters, digits, _ . - (it names the cache file), got {name!r}")
        if val_layout not in VAL_LAYOUTS:
            raise ConfigError("val_layout", f"unknown layout {val_layout!r}; allowed: {', '.join(VAL_LAYOUTS)} "
                                                    f"(annotations: Tiny-ImageNet's <val_dir>/images + {ANNOTATIONS_FILE})")
        self.root, self.train_dir, self.val_dir, self.cache_dir = str(root), str(train_dir), str(val_dir), str(cache_dir)
        self.name, self.val_layout = name, val_layout
        self.resolution = check_number("resolution", resolution, 1, integer=True)
        self.resize = check_number("resize", resize, self.resolution, integer=True, allow_none=True)
        self.class_subset = parse_subset(class_subset)
        self.class_groups = parse_groups(class_groups)
        if self.class_subset is not None and self.class_groups is not None:
            raise ConfigError("class_groups", "set class_subset or class_groups, not both (a group of one folder keeps it alone)")
        self.max_per_class = check_number("max_per_class", max_per_class, 1, integer=True, allow_none=True)
        self.max_test_per_class = check_number("max_test_per_class", max_test_per_class, 1, integer=True, allow_none=True)
        self.subset_seed = check_number("subset_seed", subset_seed, 0, integer=True)
        self.planned_input_shape = (3, self.resolution, self.resolution)
        self.augment_padding = max(4, self.resolution // 8)  # CIFAR's 4 px at 32 px, the same share of larger images
        self._plan: Optional[FolderPlan] = None

    # ---------------------------------------------------------------- paths
    @property
    def train_path(self) -> Path:
        return Path(self.root) / self.train_dir

    @property
    def val_path(self) -> Path:
        return Path(self.root) / self.val_dir

    @property
    def cache_path(self) -> Path:
        digest = hashlib.sha256(json.dumps(self._settings(), sort_keys=True).encode()).hexdigest()[:16]
        return Path(self.cache_dir) / f"{self.name}-{self.resolution}px-{digest}.pt"

    def _settings(self) -> dict[str, Any]:
        """Everything besides the files themselves that decides the decoded tensors."""
        return {
            "root": os.path.abspath(self.root), "train_dir": self.train_dir, "val_dir": self.val_dir,
            "val_layout": self.val_layout, "resolution": self.resolution, "resize": self.resize,
            "class_subset": self.class_subset, "class_groups": self.class_groups, "max_per_class": self.max_per_class,
            "max_test_per_class": self.max_test_per_class, "subset_seed": self.subset_seed,
        }

    # ---------------------------------------------------------------- checks (no decoding)
    def class_folders(self) -> list[str]:
        """The sorted class folders of the training folder (torchvision's ``find_classes``)."""
        if not Path(self.root).is_dir():
            raise ConfigError("dataset.root", f"no folder {self.root}; set dataset.root to the folder holding "
                                              f"{self.train_dir}/<class>/<images> and {self.val_dir}/...")
        if not self.train_path.is_dir():
            there = sorted(p.name for p in Path(self.root).iterdir() if p.is_dir())[:5]
            raise ConfigError("dataset.train_dir", f"no folder {self.train_path}; allowed: a folder of {self.root} "
                                                   f"holding one folder per class ({self.root} holds: {', '.join(there) or 'no folders'})")
        try:
            return find_classes(str(self.train_path))[0]
        except FileNotFoundError:
            raise ConfigError("dataset.root", f"{self.train_path} holds no class folders; expected {self.train_path}/<class>/<images>") from None

    def selection(self) -> tuple[list[str], dict[str, int]]:
        """(class names, {folder: label}) over the training folder's classes."""
        return resolve_classes(self.class_folders(), self.class_subset, self.class_groups, str(self.train_path))

    def check(self) -> None:
        super().check()
        _, mapping = self.selection()
        empty = [f for f in mapping if not has_image(self.train_path / f)]
        if empty:
            what = "holds no images" if len(empty) == len(mapping) else f"has class folders without images ({', '.join(empty[:5])})"
            raise ConfigError("dataset.root", f"{self.train_path} {what}; allowed: files ending in {EXTENSIONS}")
        if not self.val_path.is_dir():
            raise ConfigError("dataset.val_dir", f"no folder {self.val_path}; set dataset.val_dir to the test split's folder")
        if self.val_layout == "annotations":
            for need in (self.val_path / ANNOTATIONS_FILE, self.val_path / ANNOTATED_IMAGES):
                if not need.exists():
                    raise ConfigError("dataset.val_layout", f"annotations: no {need}; allowed: folders (<val_dir>/<class>/...) "
                                                            f"or annotations (<val_dir>/{ANNOTATED_IMAGES} + {ANNOTATIONS_FILE})")
        elif not any(has_image(self.val_path / f) for f in mapping if (self.val_path / f).is_dir()):
            hint = "; set dataset.val_layout=annotations" if (self.val_path / ANNOTATIONS_FILE).is_file() else ""
            raise ConfigError("dataset.val_dir", f"{self.val_path} holds no images in folders of the selected classes{hint}")

    def planned_shape(self) -> Optional[tuple[tuple[int, ...], int]]:
        """(3, resolution, resolution) and the class count: from the selection where it says, else from
        the training folder's listing (None where the folder is not there, e.g. on a login node)."""
        n = planned_class_count(self.class_subset, self.class_groups)
        if n is None:
            try:
                n = len(self.class_folders())
            except ConfigError:
                return None
        return tuple(self.planned_input_shape), len(self.classes) if self.classes is not None else n

    # ---------------------------------------------------------------- what to decode
    def plan(self) -> FolderPlan:
        """The classes, each split's samples and their fingerprint (listed once per datamodule)."""
        if self._plan is None:
            names, mapping = self.selection()
            train = SelectedImageFolder(str(self.train_path), names, mapping).samples
            test = self._annotated_samples(mapping) if self.val_layout == "annotations" else \
                SelectedImageFolder(str(self.val_path), names, mapping, allow_empty=True).samples
            samples = {"train": capped(train, self.max_per_class, self.subset_seed),
                       "test": capped(test, self.max_test_per_class, self.subset_seed + 1)}
            self._plan = FolderPlan(names, samples, self._fingerprint(samples))
            counts = torch.bincount(torch.as_tensor([label for _, label in samples["train"]]), minlength=len(names))
            log.info("%s: %d classes from %d folders; training images per class %s", self.name, len(names), len(mapping),
                     ", ".join(f"{n} {int(c)}" for n, c in list(zip(names, counts))[:12]) + (" ..." if len(names) > 12 else ""))
        return self._plan

    def _annotated_samples(self, mapping: dict[str, int]) -> Samples:
        """Tiny-ImageNet's test split: ``<file>\\t<class folder>[\\t...]`` lines of val_annotations.txt."""
        table = self.val_path / ANNOTATIONS_FILE
        samples = []
        for n, line in enumerate(table.read_text().splitlines(), 1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 2:
                raise ConfigError("dataset.val_layout", f"{table}:{n}: expected '<file>\\t<class folder>\\t...', got {line[:60]!r}")
            file, folder = fields[0].strip(), fields[1].strip()
            if folder in mapping:
                samples.append((str(self.val_path / ANNOTATED_IMAGES / file), mapping[folder]))
        return sorted(samples)

    def _fingerprint(self, samples: dict[str, Samples]) -> str:
        digest = hashlib.sha256(json.dumps(self._settings(), sort_keys=True).encode())
        for split, items in samples.items():
            if not items:
                raise ConfigError("dataset.val_dir" if split == "test" else "dataset.root", f"no {split} images of the selected classes")
            for path, label in items:
                try:
                    stat = os.stat(path)
                except OSError as err:  # listed (val_annotations.txt) but not there, or gone since the listing
                    key = "dataset.val_layout" if self.val_layout == "annotations" and split == "test" else "dataset.root"
                    raise ConfigError(key, f"{path}: {err.strerror}") from None
                rel = os.path.relpath(path, self.root)
                digest.update(f"{split}\0{rel}\0{label}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()

    # ---------------------------------------------------------------- decode, cache, load
    def _cache_is_current(self) -> bool:
        head = read_cache(self.cache_path, CACHE_VERSION)
        return head is not None and head.get("fingerprint") == self.plan().fingerprint

    def _build_cache(self) -> dict[str, Any]:
        plan = self.plan()
        shorter = self.resize or self.resolution
        payload: dict[str, Any] = {"version": CACHE_VERSION, "fingerprint": plan.fingerprint, "classes": plan.class_names}
        for split, items in plan.samples.items():
            decode = lambda path: resize_center_crop(decode_rgb(path), shorter, self.resolution)  # noqa: E731
            payload[f"x_{split}"] = decode_stack([p for p, _ in items], decode, f"decoding {self.name} {split}")
            payload[f"y_{split}"] = torch.as_tensor([label for _, label in items], dtype=torch.int64)
        return payload

    def _prepare(self) -> None:
        build_cache_once(self.cache_path, self._cache_is_current, self._build_cache)

    def _load(self):
        self._prepare()
        data = torch.load(self.cache_path, map_location="cpu", weights_only=True)
        return data["x_train"], data["y_train"], data["x_test"], data["y_test"], list(data["classes"])

    def _describe_extra(self) -> dict[str, Any]:
        # the files' digest too: a model cached for this folder is not reused once its images change
        return {**plain(self._settings()), "content": self.plan().fingerprint}
