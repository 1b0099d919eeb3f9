"""WideResNet (src/advlab/models/wide_resnet.py), the architecture of Zhang et al.'s CIFAR-10 / STL-10 runs:
parameter counts against the published ones, the pre-activation block's two shortcuts, theirs module names."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from advlab.analysis.activations import resolve_layers
from advlab.errors import ConfigError
from advlab.models.wide_resnet import WideBasicBlock, WideResNet

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _closed_form_count(depth: int, width: int, classes: int, cin: int = 3) -> int:
    """Weights of a WRN counted by hand: the stem, per block two 3×3 convolutions and two BatchNorms (the
    first of the input's width), a 1×1 shortcut where the width changes, the final BatchNorm and fc."""
    n, widths = (depth - 4) // 6, [16, 16 * width, 32 * width, 64 * width]
    total = 9 * cin * 16
    for cin_g, cout in zip(widths[:-1], widths[1:]):
        for i in range(n):
            c = cin_g if i == 0 else cout
            total += 2 * c + 9 * c * cout + 2 * cout + 9 * cout * cout + (c * cout if c != cout else 0)
    return total + 2 * widths[-1] + widths[-1] * classes + classes


def test_parameter_counts_are_the_published_ones():
    # Zhang et al.'s WRN-10-1 (their Models/CIFAR10.py gives 77,850) and Madry / TRADES' WRN-34-10
    # (46.16 M, the size reported for the WRN-34-10 of Madry et al. / TRADES)
    assert _params(WideResNet((3, 32, 32), 10)) == _closed_form_count(10, 1, 10) == 77_850
    assert _params(WideResNet((3, 32, 32), 10, depth=34, width=10)) == _closed_form_count(34, 10, 10) == 46_160_474
    assert _params(WideResNet((1, 28, 28), 10, depth=16, width=2)) == _closed_form_count(16, 2, 10, cin=1)


def test_pre_activation_block_adds_the_input_or_a_1x1_convolution_of_its_activation():
    torch.manual_seed(0)
    x = torch.randn(4, 16, 8, 8)
    same = WideBasicBlock(16, 16, 1, slope=0.1, drop_rate=0.0).eval()
    assert same.convShortcut is None
    nn.init.zeros_(same.conv2.weight)  # the residual branch off: the block is the identity
    assert torch.equal(same(x), x)
    wider = WideBasicBlock(16, 32, 2, slope=0.1, drop_rate=0.0).eval()
    nn.init.zeros_(wider.conv2.weight)
    activated = F.leaky_relu(wider.bn1(x), 0.1)  # theirs: the shortcut sees relu1(bn1(x)), not x
    assert torch.allclose(wider(x), F.conv2d(activated, wider.convShortcut.weight, stride=2), atol=1e-6)
    assert wider(x).shape == (4, 32, 4, 4)


def test_logits_are_fc_of_the_mean_of_the_activated_last_map():
    torch.manual_seed(0)
    model = WideResNet((3, 32, 32), 10).eval()
    x = torch.rand(3, 3, 32, 32)
    last = model.block3(model.block2(model.block1(model.conv1(x))))
    assert last.shape[-2:] == (8, 8)  # theirs: avg_pool2d(out, 8) pools exactly this map
    pooled = F.avg_pool2d(F.leaky_relu(model.bn1(last), 0.1), 8).flatten(1)
    assert torch.allclose(model(x), model.fc(pooled), atol=1e-5)


def test_their_hooked_modules_exist_under_their_names():
    model = WideResNet((3, 32, 32), 10)
    theirs = ["conv1", "block1.layer.0.relu1", "block2.layer.0.relu1", "block3.layer.0.relu1", "fc"]
    assert resolve_layers(model, theirs) == theirs
    assert isinstance(dict(model.named_modules())["block2.layer.0.relu1"], nn.LeakyReLU)


@pytest.mark.parametrize("kw,key", [({"depth": 12}, "depth"), ({"width": 0}, "width"), ({"slope": 1.5}, "slope"),
                                    ({"drop_rate": 1.0}, "drop_rate")])
def test_bad_sizes_are_config_errors_naming_the_key(kw, key):
    with pytest.raises(ConfigError, match=rf"^{key}:"):
        WideResNet((3, 32, 32), 10, **kw)
