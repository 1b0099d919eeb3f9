"""VGG-16 with BatchNorm (torchvision's configuration "D") for small images: the 13 conv layers of
torchvision's `vgg16_bn`, channels scaled by `width` (64 = torchvision), pooling that stops once the
image is 1×1, and the CIFAR-style head (global average pool + one linear layer) instead of the
ImageNet 7×7×4096 classifier."""
from __future__ import annotations

from torch import nn
from torchvision.models.vgg import cfgs

from advlab.models._layers import SafePool, image_channels, positive
from advlab.models.base import Classifier


class VGG(Classifier):
    def __init__(self, input_shape, num_classes, config: str = "D", width: int = 64, **kw):
        super().__init__(input_shape, num_classes, **kw)
        c = image_channels(self, "vgg")
        w = positive("width", width)
        layers = []
        for v in cfgs[config]:
            if v == "M":
                layers.append(SafePool("max"))
                continue
            out = max(1, int(v) * w // 64)
            layers += [nn.Conv2d(c, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            c = out
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(c, self.num_classes)

    def penultimate(self, x):
        return self.body(x)

    def features(self, x):
        return self.fc(self.penultimate(x))
