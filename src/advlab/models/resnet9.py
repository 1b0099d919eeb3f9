"""ResNet-9 of the DAWNBench / airbench line (Page, "How to train your ResNet"): prep conv, three
stages with early 2×2 max-pool downsampling, residual pairs after stages 1 and 3, global max-pool,
a bias-free linear readout times a fixed logit scale (0.125 in Page's recipe)."""
from __future__ import annotations

from torch import nn

from advlab.models._layers import SafePool, conv_bn, image_channels, positive
from advlab.models.base import Classifier


class Residual(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn(channels, channels), conv_bn(channels, channels))

    def forward(self, x):
        return x + self.body(x)


class ResNet9(Classifier):
    """`width`: prep channels (64 in Page's recipe; stages use 2w, 4w, 8w). `logit_scale` multiplies
    the logits (Page: 0.125; 1.0 turns it off)."""

    def __init__(self, input_shape, num_classes, width: int = 64, logit_scale: float = 0.125, **kw):
        super().__init__(input_shape, num_classes, **kw)
        cin = image_channels(self, "resnet9")
        w = positive("width", width)
        self.logit_scale = positive("logit_scale", logit_scale, integer=False)
        self.body = nn.Sequential(
            conv_bn(cin, w),
            conv_bn(w, 2 * w), SafePool("max"), Residual(2 * w),
            conv_bn(2 * w, 4 * w), SafePool("max"),
            conv_bn(4 * w, 8 * w), SafePool("max"), Residual(8 * w),
            nn.AdaptiveMaxPool2d(1), nn.Flatten(),
        )
        self.fc = nn.Linear(8 * w, self.num_classes, bias=False)

    def penultimate(self, x):
        return self.body(x)

    def features(self, x):
        return self.fc(self.penultimate(x)) * self.logit_scale
