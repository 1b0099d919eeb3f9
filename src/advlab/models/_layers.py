"""Small layers shared by the CIFAR-style architectures."""
from __future__ import annotations

from torch import nn
from torch.nn import functional as F

from advlab.errors import ConfigError, check_number


class SafePool(nn.Module):
    """2×2 max/avg pooling that passes inputs through once they are smaller than the window, so
    the same architecture runs on 32×32, 28×28 and 8×8 images."""

    def __init__(self, kind: str = "max"):
        super().__init__()
        self.kind = kind

    def forward(self, x):
        if min(x.shape[-2:]) < 2:
            return x
        return F.max_pool2d(x, 2) if self.kind == "max" else F.avg_pool2d(x, 2)


def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """3×3 conv (no bias), BatchNorm, ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def image_channels(model, name: str) -> int:
    """The input's channel count; ConfigError for vector data."""
    if len(model.input_shape) != 3:
        raise ConfigError("arch", f"{name} needs image inputs (C,H,W); this dataset has shape {model.input_shape}; use arch=mlp or arch=wide_mlp")
    return model.input_shape[0]


def positive(key: str, value, integer: bool = True):
    """An architecture's size knob (`arch.<key>`): an integer (or a number) > 0 (advlab.errors.check_number)."""
    return check_number(key, value, 0, integer=integer, strict=True)


def probability(key: str, value) -> float:
    """A dropout rate: a number in [0, 1), else ConfigError naming `arch.<key>`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigError(key, f"expected a number in [0, 1), got {value!r}")
    return float(value)
