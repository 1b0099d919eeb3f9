"""LeNet-5 as Zhang et al. (2022) train it on MNIST (their Models/MNIST.py, `LeNet_1_28_28`).

conv1 5×5 (6 maps, no padding) - ReLU - 2×2 max-pool - conv2 5×5 (16 maps) - ReLU - 2×2 max-pool -
fc1 (120) - ReLU - fc2 (84) - ReLU - fc3 (the logits). On 28×28 inputs fc1 sees 16·4·4 = 256 features,
as theirs (32×32: 16·5·5 = 400, their CIFAR-10 LeNet's). Images under 16×16 pixels (digits' 8×8) are
too small for unpadded 5×5 convolutions: `padding: null` (the default) pads them by 2 ("same"
convolutions) and leaves larger ones unpadded, as the authors'. The parameter
names (conv1, conv2, fc1, fc2, fc3) are theirs; ReLU and pooling are modules here (theirs are
functional) so that post-activation hooks (`act1`, `pool1`, ...) exist beside the pre-activation
ones (`conv1`, ...): the forward computation is the same. Their inputs are raw [0, 1] pixels:
`conf/arch/lenet.yaml` sets `normalize: none`.
"""
from __future__ import annotations

from torch import nn

from advlab.errors import ConfigError, check_number
from advlab.models._layers import image_channels
from advlab.models.base import Classifier


class LeNet(Classifier):
    def __init__(self, input_shape, num_classes, padding: int | None = None, **kw):
        super().__init__(input_shape, num_classes, **kw)
        c = image_channels(self, "lenet")
        _, h, w = self.input_shape
        pad = (0 if min(h, w) >= 16 else 2) if padding is None else check_number("padding", padding, 0, integer=True)
        for _ in range(2):  # 5×5 convolution, then 2×2 pooling
            h, w = (h + 2 * pad - 4) // 2, (w + 2 * pad - 4) // 2
        if h < 1 or w < 1:
            raise ConfigError("padding", f"{pad} is too little for {tuple(self.input_shape[1:])} images (two 5×5 convolutions, two 2×2 pools)")
        self.padding = pad
        self.conv1, self.act1, self.pool1 = nn.Conv2d(c, 6, 5, padding=pad), nn.ReLU(), nn.MaxPool2d(2)
        self.conv2, self.act2, self.pool2 = nn.Conv2d(6, 16, 5, padding=pad), nn.ReLU(), nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1, self.act3 = nn.Linear(16 * h * w, 120), nn.ReLU()
        self.fc2, self.act4 = nn.Linear(120, 84), nn.ReLU()
        self.fc3 = nn.Linear(84, self.num_classes)

    def penultimate(self, x):
        x = self.pool1(self.act1(self.conv1(x)))
        x = self.flatten(self.pool2(self.act2(self.conv2(x))))
        return self.act4(self.fc2(self.act3(self.fc1(x))))

    def features(self, x):
        return self.fc3(self.penultimate(x))
