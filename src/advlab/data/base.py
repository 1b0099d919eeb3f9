"""In-memory datamodules: every split is a pair of tensors, batches are one fancy-index each.

``ArrayDataModule`` holds ``x`` (float32 in [0, 1] for images, shape (N, C, H, W); (N, D) for vector
data) and ``y`` (int64 in 0..num_classes-1) for the train / val / test splits. Subclasses only
implement ``_load()``; the base applies the class subset, the seeded validation split and
``max_train``, puts a test split that comes sorted by class (class folders) in class-interleaved order,
computes the normalisation statistics and serves the loaders (``advlab.data.loader``;
augmentation in ``advlab.data.augment``, array conversions and setting checks in ``advlab.data.arrays``).
"""
from __future__ import annotations

import copy
import logging
import numbers
from typing import Any, Optional, Sequence

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from advlab.data.arrays import (as_float_images, as_labels, centring_shift, channel_statistics, check_fraction, interleaved_by_class,
                                is_sorted_by_class, stratified_split)
from advlab.data.augment import crop_flip, random_crop_flip
from advlab.data.loader import BatchTensorDataset, make_loader
from advlab.errors import ConfigError, check_number

# the names other modules import from here (subclasses, benchmarks)
__all__ = ["ArrayDataModule", "BatchTensorDataset", "check_fraction", "crop_flip", "make_loader",
           "random_crop_flip", "stratified_split"]

log = logging.getLogger(__name__)

Split = tuple[torch.Tensor, torch.Tensor]


class ArrayDataModule(pl.LightningDataModule):
    """Base class of every advlab datamodule (see the module docstring).

    Args:
        batch_size: training batch size.
        eval_batch_size: validation / test batch size.
        val_fraction: fraction of the (class-subset) training split carved out, seeded, as the
            validation split. ``0`` means no carve-out: the validation split *is* the test split.
        seed: seeds the validation carve-out, the training order and the augmentation (and, for
            datasets without an official test split, that split too).
        classes: optional list of original label ints to keep; labels are remapped to 0..k-1 in the
            given order and ``class_names`` follow.
        num_workers: DataLoader workers (0 is fastest for in-memory tensors).
        augment: random 4-pixel-padded crop + horizontal flip of training batches (images only),
            applied in ``on_after_batch_transfer``, i.e. on the training device.
        max_train: keep only the first ``max_train`` training examples after the seeded shuffle
            (applied after the validation carve-out, so the validation split does not change).
    """

    name: str = "array"
    #: number of classes of the raw data when known before loading (to validate ``classes`` early)
    original_num_classes: Optional[int] = None
    #: shape of one input when known before loading (the pre-flight builds the architectures for it)
    planned_input_shape: Optional[tuple[int, ...]] = None
    #: value range of the inputs; None for unbounded data
    default_bounds: Optional[tuple[float, float]] = (0.0, 1.0)
    augment_padding: int = 4

    def __init__(
        self,
        batch_size: int = 128,
        eval_batch_size: int = 512,
        val_fraction: float = 0.1,
        seed: int = 0,
        classes: Optional[Sequence[int]] = None,
        num_workers: int = 0,
        augment: bool = False,
        max_train: Optional[int] = None,
        center: bool = False,
        center_constant: Optional[float] = None,
    ) -> None:
        super().__init__()
        self.batch_size = check_number("batch_size", batch_size, 1, integer=True)
        self.eval_batch_size = check_number("eval_batch_size", eval_batch_size, 1, integer=True)
        self.val_fraction = check_fraction("val_fraction", val_fraction, allow_zero=True)
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise ConfigError("seed", f"must be an integer, got {seed!r}")
        self.seed = int(seed)
        self.classes = self._check_classes(classes)
        if isinstance(num_workers, bool) or not isinstance(num_workers, numbers.Integral) or num_workers < 0:
            raise ConfigError("num_workers", f"must be an integer >= 0, got {num_workers!r}")
        self.num_workers = int(num_workers)
        self.augment = bool(augment)
        self.max_train = check_number("max_train", max_train, 1, integer=True, allow_none=True)
        self.center = bool(center)
        # a number subtracted from every pixel (Kumano et al.'s code: MNIST's 0.1307); the per-pixel mean image is `center`
        self.center_constant = check_number("center_constant", center_constant, allow_none=True)
        if self.center and self.center_constant is not None:
            raise ConfigError("center_constant", "give at most one centring: center=true (the training mean image) "
                                                         "or center_constant (a number); the other must be false / null")

        self._bounds: Optional[tuple[float, float]] = self.default_bounds
        self._loaded = False
        self._train_tag: Optional[str] = None
        self._class_names: list[str] = []
        self._mean: Optional[torch.Tensor] = None
        self._std: Optional[torch.Tensor] = None
        self._loader_generator: Optional[torch.Generator] = None
        self._augment_generator: Optional[torch.Generator] = None
        self.x_train = self.y_train = self.x_val = self.y_val = self.x_test = self.y_test = None
        self.train_dataset = self.val_dataset = self.test_dataset = None

    # ---------------------------------------------------------------- subclass interface
    def _load(self) -> tuple[Any, Any, Any, Any, Sequence[str]]:
        """Return ``(x_train, y_train, x_test, y_test, class_names)``; x as uint8 or float in [0, 1]."""
        raise NotImplementedError

    def _prepare(self) -> None:
        """Download / extract / cache on disk (runs in ``prepare_data``, once per node). Default: nothing."""

    def _describe_extra(self) -> dict[str, Any]:
        return {}

    def check(self) -> None:
        """Cheap check, before any work, that the data can be had; raises ``ConfigError`` otherwise."""
        if self.classes is not None and self.original_num_classes is not None:
            self._check_class_range(self.original_num_classes)

    def planned_shape(self) -> Optional[tuple[tuple[int, ...], int]]:
        """(input shape, number of classes), known without loading any data; None where unknown."""
        if self.planned_input_shape is None or self.original_num_classes is None:
            return None
        return tuple(self.planned_input_shape), len(self.classes) if self.classes is not None else self.original_num_classes

    # ---------------------------------------------------------------- metadata
    def describe(self) -> dict[str, Any]:
        """The plain values that determine the data content (for cache keys).

        ``augment`` is included too: it does not change the stored tensors, but it changes what a model
        trained on this datamodule sees, and models are cached by this description.
        """
        d: dict[str, Any] = {
            "name": self.name,
            "classes": None if self.classes is None else list(self.classes),
            "val_fraction": self.val_fraction,
            "seed": self.seed,
            "max_train": self.max_train,
            "augment": self.augment,
            "center": self.center,
        }
        if self.center_constant is not None:  # left out at its default: the keys of earlier data stay
            d["center_constant"] = self.center_constant
        d.update(self._describe_extra())
        if self._train_tag is not None:
            d["train"] = self._train_tag
        return d

    @property
    def input_shape(self) -> tuple[int, ...]:
        self._ensure_setup()
        return tuple(self.x_test.shape[1:])

    @property
    def num_classes(self) -> int:
        self._ensure_setup()
        return len(self._class_names)

    @property
    def class_names(self) -> list[str]:
        self._ensure_setup()
        return list(self._class_names)

    @property
    def mean(self) -> torch.Tensor:
        """Per-channel mean of the training split, shape (C,) for images, (1,) for vector data."""
        self._ensure_setup()
        return self._mean

    @property
    def std(self) -> torch.Tensor:
        """Per-channel std (population) of the training split; a channel with zero spread gets 1."""
        self._ensure_setup()
        return self._std

    @property
    def bounds(self) -> Optional[tuple[float, float]]:
        return self._bounds

    @property
    def is_image(self) -> bool:
        self._ensure_setup()
        return self.x_test.dim() == 4

    # ---------------------------------------------------------------- lightning hooks
    def prepare_data(self) -> None:
        if self._loaded:  # already in memory (e.g. a with_train copy): nothing to fetch
            return
        self.check()
        self._prepare()

    def setup(self, stage: Optional[str] = None) -> None:
        if self._loaded:
            return
        self.check()
        x_tr, y_tr, x_te, y_te, names = self._load()
        x_tr, x_te = as_float_images(x_tr, "x_train"), as_float_images(x_te, "x_test")
        y_tr, y_te = as_labels(y_tr), as_labels(y_te)
        names = [str(n) for n in names]
        self._check_splits(x_tr, y_tr, x_te, y_te, names)
        if self.classes is not None:
            self._check_class_range(len(names))
            x_tr, y_tr = self._subset(x_tr, y_tr, len(names))
            x_te, y_te = self._subset(x_te, y_te, len(names))
            names = [names[c] for c in self.classes]
        if is_sorted_by_class(y_te):  # class-folder order: any first N test points would be a few classes
            order = interleaved_by_class(y_te)
            x_te, y_te = x_te[order], y_te[order]

        n = len(y_tr)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        n_val = int(round(self.val_fraction * n))
        if self.val_fraction > 0 and n_val == 0:
            n_val = 1
        if n - n_val < 1:
            raise ConfigError("dataset.val_fraction", f"{self.val_fraction} leaves no training example out of {n}")
        val_idx, train_idx = perm[:n_val], perm[n_val:]
        if self.max_train is not None:
            train_idx = train_idx[: self.max_train]

        self.x_train, self.y_train = x_tr[train_idx], y_tr[train_idx]
        if n_val:
            self.x_val, self.y_val = x_tr[val_idx], y_tr[val_idx]
        else:  # val_fraction == 0: the test split doubles as the validation split
            self.x_val, self.y_val = x_te, y_te
        self.x_test, self.y_test = x_te, y_te
        shift = centring_shift(self.x_train, self.center, self.center_constant)
        if shift is not None:
            # Kumano et al.: the data space itself is centred (on the training mean image, or by a constant),
            # so it is unbounded and attacks there are not clipped.
            self.pixel_mean, self.x_train, self.x_test = shift, self.x_train - shift, self.x_test - shift
            self.x_val = self.x_test if not n_val else self.x_val - shift
            self._bounds = None
        self._class_names = names
        self._mean, self._std = channel_statistics(self.x_train)
        self._make_datasets()
        self._loaded = True
        log.info(
            "%s: train %d, val %d%s, test %d, input %s, %d classes",
            self.name, len(self.y_train), len(self.y_val), "" if n_val else " (= test)",
            len(self.y_test), tuple(self.x_test.shape[1:]), len(names),
        )

    def _check_splits(self, x_tr, y_tr, x_te, y_te, names: list[str]) -> None:
        for x, y, split in ((x_tr, y_tr, "train"), (x_te, y_te, "test")):
            if x.dim() not in (2, 4) or len(x) != len(y):
                raise ValueError(f"{self.name}: bad {split} split, x {tuple(x.shape)} y {tuple(y.shape)}")
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(names)):
                raise ValueError(f"{self.name}: {split} labels outside 0..{len(names) - 1}")
        self._check_bounds(x_tr, "x_train", 0.0)
        self._check_bounds(x_te, "x_test", 0.0)
        if x_tr.shape[1:] != x_te.shape[1:]:
            raise ValueError(f"{self.name}: train inputs {tuple(x_tr.shape[1:])} != test inputs {tuple(x_te.shape[1:])}")
        if self.augment and x_tr.dim() != 4:
            raise ConfigError("dataset.augment", f"random crop/flip needs image data; {self.name} is vector data, set it to false")

    def _generators(self) -> dict[str, torch.Generator]:
        """The training order's and the augmentation's streams (created on first use)."""
        if self._loader_generator is None:
            self._loader_generator = torch.Generator().manual_seed(self.seed)
        if self._augment_generator is None:
            self._augment_generator = torch.Generator().manual_seed(self.seed + 1)
        return {"loader": self._loader_generator, "augment": self._augment_generator}

    # Lightning stores these in every checkpoint: a resumed run shuffles and augments its next epoch
    # exactly as the uninterrupted run would have.
    def state_dict(self) -> dict[str, Any]:
        return {name: g.get_state() for name, g in self._generators().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, g in self._generators().items():
            if name in state:
                g.set_state(state[name])

    def train_dataloader(self) -> DataLoader:
        self._ensure_setup()
        return make_loader(
            self.train_dataset, self.batch_size, shuffle=True, num_workers=self.num_workers,
            generator=self._generators()["loader"],
        )

    def val_dataloader(self) -> DataLoader:
        self._ensure_setup()
        return make_loader(self.val_dataset, self.eval_batch_size, shuffle=False, num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        self._ensure_setup()
        return make_loader(self.test_dataset, self.eval_batch_size, shuffle=False, num_workers=self.num_workers)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        trainer = getattr(self, "trainer", None)
        if self.augment and trainer is not None and trainer.training:
            x = batch[0]
            if x.dim() == 4:
                x = random_crop_flip(x, self.augment_padding, generator=self._generators()["augment"])
                batch = type(batch)([x, *batch[1:]]) if isinstance(batch, (list, tuple)) else batch
        return batch

    # ---------------------------------------------------------------- derived datamodules
    def with_train(self, x: Any, y: Any, tag: Optional[str] = None, check_bounds: bool = True, **overrides: Any) -> "ArrayDataModule":
        """A datamodule with this one's metadata, val and test splits, whose training split is (x, y).

        Nothing is reloaded. ``mean``/``std``, ``bounds``, ``class_names`` stay those of the clean
        data; ``max_train`` is not applied to (x, y). ``y`` holds the labels to train on (for crafted
        datasets: the target labels). ``tag`` names the new training data in ``describe()["train"]``.
        ``overrides`` may change ``batch_size``, ``eval_batch_size``, ``augment``, ``num_workers``, ``seed``.
        """
        self._ensure_setup()
        x = as_float_images(x.detach() if isinstance(x, torch.Tensor) else x, "x").cpu()
        y = as_labels(y.detach() if isinstance(y, torch.Tensor) else y).cpu()
        if tuple(x.shape[1:]) != self.input_shape or len(x) != len(y):
            raise ValueError(
                f"with_train: expected x of shape (N, {', '.join(map(str, self.input_shape))}) and N labels, "
                f"got x {tuple(x.shape)}, y {tuple(y.shape)}"
            )
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise ValueError(f"with_train: labels must lie in 0..{self.num_classes - 1}")
        if check_bounds:  # off for inputs that are not images, e.g. perturbations δ alone
            self._check_bounds(x, "with_train: x", 1e-5)
        allowed = {"batch_size", "eval_batch_size", "augment", "num_workers", "seed"}
        unknown = set(overrides) - allowed
        if unknown:
            raise TypeError(f"with_train: unknown override(s) {sorted(unknown)}; allowed: {sorted(allowed)}")

        new = self.fresh()
        for key, value in overrides.items():
            setattr(new, key, value)
        new.x_train, new.y_train = x, y
        new._train_tag = tag or "custom"
        new._make_datasets()
        return new

    def fresh(self) -> "ArrayDataModule":
        """A copy sharing this one's data whose random streams (training order, augmentation) start
        over, as in a newly built datamodule: a model trained on it does not depend on what was
        trained on this one before (cached models must not depend on who built them)."""
        self._ensure_setup()
        new = copy.copy(self)
        new.trainer = None
        new._loader_generator = None
        new._augment_generator = None
        return new

    # ---------------------------------------------------------------- internals
    def _ensure_setup(self) -> None:
        if not self._loaded:
            self.setup()

    def _check_bounds(self, x: torch.Tensor, what: str, tol: float) -> None:
        if self._bounds is None or x.numel() == 0:
            return
        lo, hi = self._bounds
        if float(x.min()) < lo - tol or float(x.max()) > hi + tol:
            raise ValueError(f"{what}: values in [{float(x.min()):.4g}, {float(x.max()):.4g}], outside the bounds {self._bounds}")

    def _make_datasets(self) -> None:
        self.train_dataset = BatchTensorDataset(self.x_train, self.y_train)
        self.val_dataset = BatchTensorDataset(self.x_val, self.y_val)
        self.test_dataset = BatchTensorDataset(self.x_test, self.y_test)

    @staticmethod
    def _check_classes(classes: Any) -> Optional[list[int]]:
        if classes is None:
            return None
        try:
            items = list(classes)
        except TypeError:
            items = None
        if (
            items is None
            or not items
            or any(isinstance(c, bool) or not isinstance(c, numbers.Integral) for c in items)
        ):
            raise ConfigError("classes", f"must be null or a non-empty list of label ints, e.g. [1, 2]; got {classes!r}")
        if len(set(items)) != len(items):
            raise ConfigError("classes", f"lists a class twice: {items}")
        if len(items) < 2:  # a classifier of one class learns nothing (and its attacks have no other class)
            raise ConfigError("classes", f"needs at least 2 classes, e.g. [1, 2]; got {items}")
        return [int(c) for c in items]

    def _check_class_range(self, n: int) -> None:
        bad = [c for c in self.classes if not 0 <= c < n]
        if bad:
            raise ConfigError("dataset.classes", f"{bad} not in the labels 0..{n - 1} of {self.name}")

    def _subset(self, x: torch.Tensor, y: torch.Tensor, n: int) -> Split:
        lut = torch.full((n,), -1, dtype=torch.int64)
        lut[torch.as_tensor(self.classes)] = torch.arange(len(self.classes))
        new = lut[y]
        keep = new >= 0
        return x[keep], new[keep]
