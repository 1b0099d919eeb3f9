"""MobileNetV2 from torchvision's builder for small images: the first conv at stride 1 and the
second bottleneck stage at stride 1 (as in the common CIFAR adaption), so 32×32 inputs are
downsampled 8× instead of 32×; `width_mult` as in torchvision (1.0 = paper); `stem_stride` 2 halves
every later resolution (16× in all: 4× cheaper, for CPU runs)."""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models import MobileNetV2 as _TorchvisionMobileNetV2
from torchvision.ops.misc import Conv2dNormActivation

from advlab.models._layers import image_channels, positive, probability
from advlab.models.base import Classifier

# torchvision's (expansion t, channels c, repeats n, stride s), stage 2 at stride 1
_SETTING = [[1, 16, 1, 1], [6, 24, 2, 1], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]


class MobileNetV2(Classifier):
    def __init__(self, input_shape, num_classes, width_mult: float = 1.0, dropout: float = 0.2, stem_stride: int = 1, **kw):
        super().__init__(input_shape, num_classes, **kw)
        cin = image_channels(self, "mobilenet_v2")
        m = positive("width_mult", width_mult, integer=False)
        net = _TorchvisionMobileNetV2(self.num_classes, m, _SETTING, dropout=probability("dropout", dropout))
        stem_out = net.features[0][0].out_channels
        net.features[0] = Conv2dNormActivation(cin, stem_out, stride=positive("stem_stride", stem_stride), norm_layer=nn.BatchNorm2d, activation_layer=nn.ReLU6)
        self.body = net.features
        self.head = net.classifier  # dropout, linear

    def penultimate(self, x):
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.body(x), 1), 1)

    def features(self, x):
        return self.head(self.penultimate(x))
