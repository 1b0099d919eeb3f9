"""CIFAR-100 through ``torchvision.datasets.CIFAR100``: the pickled ``train`` / ``test`` / ``meta`` files
in ``<data_dir>/cifar-100-python`` (torchvision's layout, the official archive extracted).

Read exactly as CIFAR-10 (``advlab.data.torchvision_data``): torchvision's class with its unpickling
replaced by the array-only one, the md5 check when the files are the release's, a warning otherwise.
``label`` chooses the labels: ``fine`` (100 classes, the benchmark) or ``coarse`` (the 20 superclasses);
the class names are the meta file's ``fine_label_names`` / ``coarse_label_names``.
"""
from __future__ import annotations

from typing import Any

from torchvision import datasets as tvd

from advlab.data.torchvision_data import PickledCIFARDataModule, SafeCIFARLoading
from advlab.errors import ConfigError

#: label kind -> number of classes
LABEL_KINDS = {"fine": 100, "coarse": 20}


class SafeCIFAR100(SafeCIFARLoading, tvd.CIFAR100):
    """torchvision's CIFAR100 read with the array-only unpickler; ``label="coarse"`` reads the batches'
    ``coarse_labels`` and the meta file's ``coarse_label_names`` (torchvision reads the fine ones only)."""

    title = "CIFAR-100"

    def __init__(self, root, train: bool = True, transform=None, target_transform=None,
                 download: bool = False, check_md5: bool = True, label: str = "fine") -> None:
        if not isinstance(label, str) or label not in LABEL_KINDS:
            raise ValueError(f"label must be one of {sorted(LABEL_KINDS)}, got {label!r}")
        self.label = label
        self.label_keys = (f"{label}_labels",)
        self.meta = {**tvd.CIFAR100.meta, "key": f"{label}_label_names"}  # same file and md5, other list
        super().__init__(root, train=train, transform=transform, target_transform=target_transform,
                         download=download, check_md5=check_md5)


class CIFAR100DataModule(PickledCIFARDataModule):
    """CIFAR-100 via ``torchvision.datasets.CIFAR100`` (``<data_dir>/cifar-100-python``), (3, 32, 32);
    100 fine classes, or the 20 superclasses with ``label="coarse"``."""

    name = "cifar100"
    dataset_class = SafeCIFAR100
    missing_hint = (
        "set dataset.download=true, or extract the official cifar-100-python.tar.gz into dataset.data_dir "
        "(torchvision's layout: cifar-100-python/train, test, meta)"
    )

    def __init__(self, data_dir: str = "data", download: bool = False, label: str = "fine", **kwargs: Any) -> None:
        super().__init__(data_dir=data_dir, download=download, **kwargs)
        if not isinstance(label, str) or label not in LABEL_KINDS:
            raise ConfigError("label", f"must be fine (100 classes) or coarse (20 superclasses), got {label!r}; "
                                               "allowed: fine, coarse")
        self.label = label
        self.original_num_classes = LABEL_KINDS[label]  # what check() holds `classes` to, planned_shape() reports

    def _dataset_kwargs(self) -> dict[str, Any]:
        return {"label": self.label}

    def _describe_extra(self) -> dict[str, Any]:
        return {"label": self.label}
