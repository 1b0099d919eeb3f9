"""Wide residual network (Zagoruyko & Komodakis 2016) in the form Zhang et al. (2022) train on CIFAR-10 and
STL-10 (wowotou1998/exploring-adv-by-mutual-info, Models/CIFAR10.py `WideResNet`, itself xternalz's
WideResNet-pytorch): pre-activation basic blocks with LeakyReLU(0.1), a 1×1 shortcut convolution on the
activated input where the width or the stride changes, global average pooling and a linear readout.

The module names are theirs (`conv1`, `block1.layer.0.relu1`, …, `fc`), so their hooked layers can be named
in a config (`probe.mi.layers`)."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from advlab.errors import ConfigError
from advlab.models._layers import image_channels, positive, probability
from advlab.models.base import Classifier


class WideBasicBlock(nn.Module):
    """x → bn1 → relu1 = y → conv1 → bn2 → relu2 → (dropout) → conv2, plus x (same width and stride) or
    a 1×1 convolution of y."""

    def __init__(self, cin: int, cout: int, stride: int, slope: float, drop_rate: float):
        super().__init__()
        self.bn1, self.relu1 = nn.BatchNorm2d(cin), nn.LeakyReLU(slope)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.relu2 = nn.BatchNorm2d(cout), nn.LeakyReLU(slope)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.drop_rate = drop_rate
        # their name, so their state dicts load as they are; theirs tests only the widths (`In_equal_Out`):
        # a strided block always changes the width in a WRN
        self.convShortcut = None if cin == cout and stride == 1 else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x):
        y = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(y)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return self.conv2(out) + (x if self.convShortcut is None else self.convShortcut(y))


class NetworkBlock(nn.Module):
    """`repeat` blocks; the first changes the width and takes the stride."""

    def __init__(self, repeat: int, cin: int, cout: int, stride: int, slope: float, drop_rate: float):
        super().__init__()
        self.layer = nn.Sequential(*(WideBasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1, slope, drop_rate)
                                     for i in range(repeat)))

    def forward(self, x):
        return self.layer(x)


class WideResNet(Classifier):
    """WRN-`depth`-`width`: a 3×3 stem of 16 channels, three groups of (depth − 4) / 6 blocks at 16·width,
    32·width and 64·width channels (strides 1, 2, 2), bn → LeakyReLU(`slope`) → mean over the map → fc.
    Zhang et al.: depth 10, width 1 (77,850 parameters for 10 classes). Weights initialised as theirs:
    convolutions N(0, 2 / (k² · out channels)), BatchNorm (1, 0), linear bias 0.

    Theirs pools with `avg_pool2d(out, 8)`, the whole 8×8 map of a 32-px input; the mean over the map is
    the same there and also runs on 28-px and 8-px images."""

    def __init__(self, input_shape, num_classes, depth: int = 10, width: int = 1, slope: float = 0.1,
                 drop_rate: float = 0.0, **kw):
        super().__init__(input_shape, num_classes, **kw)
        cin = image_channels(self, "wide_resnet")
        depth, width = positive("depth", depth), positive("width", width)
        if (depth - 4) % 6:
            raise ConfigError("depth", f"a WideResNet has depth 6n + 4 (10, 16, 22, 28, 34, 40), got {depth}")
        slope = probability("slope", slope)  # 0 is a ReLU
        drop_rate = probability("drop_rate", drop_rate)
        repeat, channels = (depth - 4) // 6, [16, 16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(cin, channels[0], 3, 1, 1, bias=False)
        self.block1 = NetworkBlock(repeat, channels[0], channels[1], 1, slope, drop_rate)
        self.block2 = NetworkBlock(repeat, channels[1], channels[2], 2, slope, drop_rate)
        self.block3 = NetworkBlock(repeat, channels[2], channels[3], 2, slope, drop_rate)
        self.bn1, self.relu = nn.BatchNorm2d(channels[3]), nn.LeakyReLU(slope)
        self.fc = nn.Linear(channels[3], self.num_classes)
        self._init_as_theirs()

    def _init_as_theirs(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.data.normal_(0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                m.bias.data.zero_()

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.relu(self.bn1(out)).mean(dim=(2, 3))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.penultimate(x))

