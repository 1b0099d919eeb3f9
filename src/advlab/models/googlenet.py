"""GoogLeNet (Inception v1) from torchvision's `Inception` and `BasicConv2d` blocks, for small
images: torchvision's nine Inception modules and widths (times `width_mult`), the ImageNet stem
(7×7 stride-2 conv, two max-pools) replaced by stride-1 3×3 / 1×1 / 3×3 convs without pooling, the
two inner max-pools padded so 1×1 maps pass, no auxiliary classifiers, no `transform_input`.
`stem_stride` 2 (first conv) halves every later resolution: 4× cheaper, for CPU runs.
torchvision's GoogLeNet class hard-codes its widths, hence the rebuild; `width_mult` 1.0 gives
exactly torchvision's channel counts."""
from __future__ import annotations

from torch import nn
from torchvision.models.googlenet import BasicConv2d, Inception

from advlab.models._layers import image_channels, positive, probability
from advlab.models.base import Classifier

# torchvision's (ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj) of 3a … 5b; "M": 3×3/2 max-pool
_INCEPTION = [
    (64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64), "M",
    (192, 96, 208, 16, 48, 64), (160, 112, 224, 24, 64, 64), (128, 128, 256, 24, 64, 64),
    (112, 144, 288, 32, 64, 64), (256, 160, 320, 32, 128, 128), "M",
    (256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128),
]


class GoogLeNet(Classifier):
    def __init__(self, input_shape, num_classes, width_mult: float = 1.0, dropout: float = 0.2, stem_stride: int = 1, **kw):
        super().__init__(input_shape, num_classes, **kw)
        cin = image_channels(self, "googlenet")
        m = positive("width_mult", width_mult, integer=False)

        def s(c):
            return max(1, int(round(c * m)))

        layers = [BasicConv2d(cin, s(64), kernel_size=3, stride=positive("stem_stride", stem_stride), padding=1), BasicConv2d(s(64), s(64), kernel_size=1),
                  BasicConv2d(s(64), s(192), kernel_size=3, padding=1)]
        c = s(192)
        for spec in _INCEPTION:
            if spec == "M":
                layers.append(nn.MaxPool2d(3, 2, padding=1))
                continue
            ch = [s(v) for v in spec]
            layers.append(Inception(c, *ch))
            c = ch[0] + ch[2] + ch[4] + ch[5]
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(probability("dropout", dropout)))
        self.fc = nn.Linear(c, self.num_classes)

    def penultimate(self, x):
        return self.body(x)

    def features(self, x):
        return self.fc(self.penultimate(x))
