"""Training methods, one LightningModule each. A method composes an attack, never reimplements one."""
from advlab.methods.adversarial import AdversarialTraining
from advlab.methods.base import ClassifierModule, StandardTraining
from advlab.methods.perturbation import PerturbationLearning, craft_dataset, make_targets

__all__ = ["ClassifierModule", "StandardTraining", "AdversarialTraining", "PerturbationLearning", "craft_dataset", "make_targets"]
