"""scikit-learn's 8×8 handwritten digits (1,797 images, 10 classes), bundled with scikit-learn."""
from __future__ import annotations

from typing import Any, Optional

import torch

from advlab.data.base import ArrayDataModule, check_fraction, stratified_split


class DigitsDataModule(ArrayDataModule):
    """``sklearn.datasets.load_digits``: pixel values 0..16 scaled by 1/16, shape (1, 8, 8).

    The data has no official test split: a seeded stratified ``test_fraction`` of it is the test
    split (same ``seed`` as the validation carve-out). ``data_dir`` is accepted for a uniform config
    interface and unused (the data ships inside scikit-learn).
    """

    name = "digits"
    original_num_classes = 10
    planned_input_shape = (1, 8, 8)

    def __init__(self, test_fraction: float = 0.2, data_dir: Optional[str] = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.test_fraction = check_fraction("test_fraction", test_fraction, allow_zero=False)
        self.data_dir = data_dir

    def _describe_extra(self) -> dict[str, Any]:
        return {"test_fraction": self.test_fraction}

    def _load(self):
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = torch.as_tensor(bunch.images, dtype=torch.float32).div_(16.0).unsqueeze(1)
        y = torch.as_tensor(bunch.target, dtype=torch.int64)
        tr, te = stratified_split(y, self.test_fraction, self.seed)
        names = [str(int(n)) for n in bunch.target_names]
        return x[tr], y[tr], x[te], y[te], names
