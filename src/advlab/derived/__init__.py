"""Datasets derived from a source model: a builder takes the source model and a datamodule and
returns the datamodule to train on, with its metrics, figures and test-time callbacks
(`DerivedData`). The training on it is plain `StandardTraining`.

- `PerturbationDataset` (perturbation.py): Ilyas et al.'s D_det / D_rand, Kumano et al.'s settings.
- `RobustDataset` (robust.py): Ilyas et al.'s D_R / D_NR by representation inversion.

A method config selects one with `derived: <class path>` next to the builder's options
(conf/method/perturbation.yaml); `derived_builder` splits such a node into the training and the builder.
"""
from advlab.derived.base import DerivedData, SourceAgreement, SourceModel, derived_builder
from advlab.derived.perturbation import PerturbationDataset, craft_dataset, make_targets
from advlab.derived.robust import RobustDataset

__all__ = ["DerivedData", "PerturbationDataset", "RobustDataset", "SourceAgreement", "SourceModel", "craft_dataset",
           "derived_builder", "make_targets"]
