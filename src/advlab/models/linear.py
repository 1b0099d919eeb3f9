"""Softmax regression: the "shallow softmax classifier" of Goodfellow et al. (2015), one linear map
from the (normalised) pixels to the logits."""
from __future__ import annotations

from torch import nn

from advlab.models.base import Classifier


class SoftmaxRegression(Classifier):
    """Logits W·x + b of the flattened input: its representation is the input itself, the readout
    the one Linear layer (the input gradient of CE is Wᵀ(softmax − onehot(y)) / std, in closed form)."""

    def __init__(self, input_shape, num_classes, **kw):
        super().__init__(input_shape, num_classes, **kw)
        self.linear = nn.Linear(self.in_features, self.num_classes)

    def penultimate(self, x):
        return x.flatten(1)

    def features(self, x):
        return self.linear(self.penultimate(x))
