"""CIFAR-style ResNets (3×3 stem, stride 1, no max-pool): ResNet-18 and ResNet-50."""
from __future__ import annotations

from torch import nn
from torch.nn import functional as F

from advlab.errors import ConfigError
from advlab.models._layers import image_channels, positive
from advlab.models.base import Classifier


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride):
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


_DEPTHS = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)), 50: (Bottleneck, (3, 4, 6, 3))}


class ResNet(Classifier):
    """`depth` in {18, 34, 50}; `width` is the stem width (64 in the papers; smaller for CPU runs)."""

    def __init__(self, input_shape, num_classes, depth: int = 18, width: int = 64, **kw):
        super().__init__(input_shape, num_classes, **kw)
        if isinstance(depth, bool) or depth not in _DEPTHS:
            raise ConfigError("depth", f"unknown ResNet depth {depth}; allowed: {', '.join(map(str, _DEPTHS))}")
        image_channels(self, "resnet")
        block, counts = _DEPTHS[int(depth)]
        w = positive("width", width)
        self.stem = nn.Sequential(nn.Conv2d(self.input_shape[0], w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        layers, cin = [], w
        for i, n in enumerate(counts):
            planes = w * 2**i
            for j in range(n):
                layers.append(block(cin, planes, 2 if (j == 0 and i > 0) else 1))
                cin = planes * block.expansion
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, self.num_classes)

    def penultimate(self, x):
        return F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1).flatten(1)

    def features(self, x):
        return self.fc(self.penultimate(x))
