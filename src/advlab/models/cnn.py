"""A small ConvNet: two conv blocks (conv-relu-conv-relu-maxpool) and a two-layer head."""
from __future__ import annotations

from torch import nn

from advlab.errors import ConfigError
from advlab.models._layers import image_channels, positive
from advlab.models.base import Classifier


class CNN(Classifier):
    def __init__(self, input_shape, num_classes, channels=(32, 64), hidden: int = 256, **kw):
        super().__init__(input_shape, num_classes, **kw)
        image_channels(self, "cnn")
        c, h, w = self.input_shape
        hidden, blocks = positive("hidden", hidden), []
        if isinstance(channels, (str, int)) or not len(channels):
            raise ConfigError("channels", f"expected a non-empty list of channel counts, got {channels!r}")
        for i, out in enumerate(channels):
            out = positive(f"channels[{i}]", out)
            blocks += [nn.Conv2d(c, out, 3, padding=1), nn.ReLU(), nn.Conv2d(out, out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c, h, w = out, h // 2, w // 2
        if h < 1 or w < 1:
            raise ConfigError("channels", f"{len(channels)} pooling blocks are too many for {self.input_shape[1:]} inputs")
        self.body = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(), nn.Linear(hidden, self.num_classes))

    def penultimate(self, x):
        return self.head[:-1](self.body(x))

    def features(self, x):
        return self.head[-1](self.penultimate(x))
