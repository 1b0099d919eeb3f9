"""The ConvNet Kumano et al. (ICLR'24) train on MNIST and Fashion-MNIST (s-kumano/learning-from-adversarial-perturbations,
utils/classifiers/conv.py `ConvNet`): five 3×3 convolutions, two of them residual, global average pooling, a linear readout."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from advlab.errors import ConfigError
from advlab.models._layers import image_channels
from advlab.models.base import Classifier


class KumanoConvNet(Classifier):
    """conv(c→16, stride 2) → conv(16→128) → x + relu(conv(128→128, pad 1)) → conv(128→256) →
    x + relu(conv(256→256, pad 1)) → mean over the map (theirs: `avg_pool2d(x, 9)`, the whole 9×9 map of a
    28×28 input) → linear(256 → classes); ReLU after every convolution. 1,054,122 parameters for 10 classes."""

    def __init__(self, input_shape, num_classes, **kw):
        super().__init__(input_shape, num_classes, **kw)
        c = image_channels(self, "kumano_convnet")
        if min(self.input_shape[1:]) < 11:  # unpadded 3×3 convolutions: 11 px → 5 after the stride-2 one → 1 at the end
            raise ConfigError("arch", f"kumano_convnet needs inputs of at least 11×11 (theirs: 28×28), got {self.input_shape}; "
                                      "use arch=cnn")
        self.conv1 = nn.Conv2d(c, 16, kernel_size=3, stride=2)
        self.conv2 = nn.Conv2d(16, 128, kernel_size=3)
        self.conv3 = nn.Conv2d(128, 128, kernel_size=3, padding=1)
        self.conv4 = nn.Conv2d(128, 256, kernel_size=3)
        self.conv5 = nn.Conv2d(256, 256, kernel_size=3, padding=1)
        self.linear = nn.Linear(256, self.num_classes)

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        x = x + F.relu(self.conv3(x))
        x = F.relu(self.conv4(x))
        x = x + F.relu(self.conv5(x))
        return x.mean(dim=(2, 3))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.penultimate(x))
