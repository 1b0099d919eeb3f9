"""Training methods, one LightningModule each. A method composes an attack, never reimplements one."""
from advlab.methods.adversarial import AdversarialTraining
from advlab.methods.base import ClassifierModule, StandardTraining
from advlab.methods.perturbation import PerturbationLearning, craft_dataset, make_targets
from advlab.methods.robust_dataset import RobustDataset
from advlab.methods.sparsity import SparsityTraining, softmax_slope_penalty

__all__ = ["ClassifierModule", "StandardTraining", "AdversarialTraining", "PerturbationLearning", "RobustDataset", "SparsityTraining",
           "craft_dataset", "make_targets", "softmax_slope_penalty"]
