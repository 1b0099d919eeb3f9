"""Fully connected networks: a deep MLP and the wide two-layer network of Kumano et al. (NeurIPS'24)."""
from __future__ import annotations

import torch
from torch import nn

from advlab.models._layers import positive
from advlab.models.base import Classifier


class MLP(Classifier):
    """`depth` hidden layers of `width` ReLU units."""

    def __init__(self, input_shape, num_classes, depth: int = 2, width: int = 256, **kw):
        super().__init__(input_shape, num_classes, **kw)
        depth, width = positive("depth", depth), positive("width", width)
        layers, d = [nn.Flatten()], self.in_features
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.ReLU()]
            d = width
        layers.append(nn.Linear(d, self.num_classes))
        self.net = nn.Sequential(*layers)

    def penultimate(self, x):
        return self.net[:-1](x)

    def features(self, x):
        return self.net[-1](self.penultimate(x))


class WideMLP(Classifier):
    """Two-layer network f(x) = Σ_k a_k relu(w_k·x + b_k) of width m.

    `kumano=True` uses the parametrisation of Kumano et al. (NeurIPS 2024): w ~ N(0, 1/d),
    b ~ N(0, 1), readout a ~ N(0, 1/m) frozen (a buffer, so no optimiser ever sees it). For a
    2-class task the readout is the scalar f and the logits are (−f/2, f/2): cross-entropy is then
    exactly the logistic loss log(1 + exp(−y f)) with y = ±1, and argmax = sign f.
    """

    def __init__(self, input_shape, num_classes, width: int = 1000, kumano: bool = False, init_seed: int | None = None, **kw):
        super().__init__(input_shape, num_classes, **kw)
        m, d = positive("width", width), self.in_features
        self.kumano = bool(kumano)
        self.hidden = nn.Linear(d, m)
        if not self.kumano:
            self.readout = nn.Linear(m, self.num_classes)
            return
        gen = torch.Generator().manual_seed(int(init_seed)) if init_seed is not None else None
        with torch.no_grad():
            self.hidden.weight.copy_(torch.randn(m, d, generator=gen) / d**0.5)
            self.hidden.bias.copy_(torch.randn(m, generator=gen))
        outputs = 1 if self.num_classes == 2 else self.num_classes
        self.register_buffer("readout_weight", torch.randn(m, outputs, generator=gen) / m**0.5)

    def penultimate(self, x):
        return torch.relu(self.hidden(x.flatten(1)))

    def features(self, x):
        h = self.penultimate(x)
        if not self.kumano:
            return self.readout(h)
        out = h @ self.readout_weight
        if self.num_classes == 2:
            return torch.cat([-out / 2, out / 2], dim=1)
        return out
