"""Training methods, one LightningModule each. A method composes an attack, never reimplements one.
Training on a dataset derived from a source model (perturbation learning, D_R / D_NR) is
`StandardTraining` on what a builder of `advlab.derived` returns."""
from advlab.methods.adversarial import AdversarialTraining
from advlab.methods.base import ClassifierModule, StandardTraining
from advlab.methods.fast_adversarial import FastAdversarialTraining
from advlab.methods.mart import MART
from advlab.methods.sparsity import SparsityTraining, softmax_slope_penalty
from advlab.methods.trades import TRADES

__all__ = ["MART", "TRADES", "AdversarialTraining", "ClassifierModule", "FastAdversarialTraining", "SparsityTraining",
           "StandardTraining", "softmax_slope_penalty"]
