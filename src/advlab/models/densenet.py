"""DenseNet-121 from torchvision's builder (block config 6-12-24-16, bottleneck 4×growth), with the
ImageNet stem (7×7 stride-2 conv + max-pool) replaced by one 3×3 stride-1 conv and transition
pooling that stops once the image is 1×1. Size knobs: `growth_rate` (32 = paper),
`num_init_features` (64 = paper) and `stem_stride` (1; 2 halves the resolution of every block: 4×
cheaper, for CPU runs)."""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models import DenseNet as _TorchvisionDenseNet

from advlab.models._layers import SafePool, image_channels, positive, probability
from advlab.models.base import Classifier


class DenseNet(Classifier):
    def __init__(self, input_shape, num_classes, growth_rate: int = 32, num_init_features: int = 64,
                 block_config=(6, 12, 24, 16), bn_size: int = 4, drop_rate: float = 0.0, stem_stride: int = 1, **kw):
        super().__init__(input_shape, num_classes, **kw)
        cin = image_channels(self, "densenet")
        k, f0 = positive("growth_rate", growth_rate), positive("num_init_features", num_init_features)
        net = _TorchvisionDenseNet(k, tuple(positive("block_config", b) for b in block_config), f0, positive("bn_size", bn_size),
                                   probability("drop_rate", drop_rate), self.num_classes)
        net.features.conv0 = nn.Conv2d(cin, f0, 3, positive("stem_stride", stem_stride), 1, bias=False)
        net.features.pool0 = nn.Identity()
        for name, module in net.features.named_children():
            if name.startswith("transition"):
                module.pool = SafePool("avg")
        self.body = net.features
        self.fc = net.classifier

    def penultimate(self, x):
        return torch.flatten(nn.functional.adaptive_avg_pool2d(torch.relu(self.body(x)), 1), 1)

    def features(self, x):
        return self.fc(self.penultimate(x))
