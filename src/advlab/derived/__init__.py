"""Datasets derived from a source model: a builder takes the source model and a datamodule and
returns the datamodule to train on, with its metrics, figures and test-time callbacks
(`DerivedData`). The training on it is plain `StandardTraining`.

- `PerturbationDataset` (perturbation.py): Ilyas et al.'s D_det / D_rand, Kumano et al.'s settings.
- `RobustDataset` (robust.py): Ilyas et al.'s D_R / D_NR by representation inversion.

A run chooses one with the `derived` config group (conf/derived/: `derived=perturbation
derived.target_rule=rand`); method=perturbation and method=robust_dataset choose theirs by default.
`split_method` moves the keys that sat in the method node before (one release, deprecated).
"""
from advlab.derived.base import DerivedData, SourceAgreement, SourceModel, split_method
from advlab.derived.perturbation import PerturbationDataset, craft_dataset, make_targets
from advlab.derived.robust import RobustDataset

__all__ = ["DerivedData", "PerturbationDataset", "RobustDataset", "SourceAgreement", "SourceModel", "craft_dataset",
           "split_method", "make_targets"]
