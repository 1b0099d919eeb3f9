"""A small ConvNet: two conv blocks (conv-relu-conv-relu-maxpool) and a two-layer head."""
from __future__ import annotations

from torch import nn

from advlab.errors import ConfigError
from advlab.models.base import Classifier


class CNN(Classifier):
    def __init__(self, input_shape, num_classes, channels=(32, 64), hidden: int = 256, **kw):
        super().__init__(input_shape, num_classes, **kw)
        if len(self.input_shape) != 3:
            raise ConfigError("arch", f"cnn needs image inputs (C,H,W); this dataset has shape {self.input_shape}; use arch=mlp or arch=wide_mlp")
        c, h, w = self.input_shape
        blocks = []
        for out in channels:
            blocks += [nn.Conv2d(c, out, 3, padding=1), nn.ReLU(), nn.Conv2d(out, out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c, h, w = out, h // 2, w // 2
        if h < 1 or w < 1:
            raise ConfigError("arch.channels", f"{len(channels)} pooling blocks are too many for {self.input_shape[1:]} inputs")
        self.body = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, int(hidden)), nn.ReLU(), nn.Linear(int(hidden), self.num_classes))

    def penultimate(self, x):
        return self.head[:-1](self.body(x))

    def features(self, x):
        return self.head[-1](self.penultimate(x))
