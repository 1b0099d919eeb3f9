"""Training methods, one LightningModule each. A method composes an attack, never reimplements one."""
from advlab.methods.adversarial import AdversarialTraining
from advlab.methods.base import ClassifierModule, StandardTraining
from advlab.methods.perturbation import PerturbationLearning, craft_dataset, make_targets
from advlab.methods.robust_dataset import RobustDataset

__all__ = ["ClassifierModule", "StandardTraining", "AdversarialTraining", "PerturbationLearning", "RobustDataset", "craft_dataset", "make_targets"]
