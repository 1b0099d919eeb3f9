"""Architectures: shapes, normalisation as a layer, the Kumano parametrisation."""
from __future__ import annotations

import pytest
import torch

from advlab.models import CNN, MLP, ResNet, WideMLP


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_image_models_adapt_to_input_shape_and_classes(shape):
    x = torch.rand(3, *shape)
    for model in (MLP(shape, 7, depth=2, width=32), WideMLP(shape, 7, width=64), CNN(shape, 7, channels=(8, 16), hidden=32),
                  ResNet(shape, 7, depth=18, width=8)):
        assert model(x).shape == (3, 7)


def test_vector_inputs_work_for_mlps():
    x = torch.randn(5, 20)
    assert MLP((20,), 2)(x).shape == (5, 2) and WideMLP((20,), 3, width=10)(x).shape == (5, 3)


def test_normalisation_is_the_first_layer():
    mean, std = torch.tensor([0.5]), torch.tensor([0.25])
    model = MLP((1, 4, 4), 3, mean=mean, std=std)
    plain = MLP((1, 4, 4), 3, normalize="none")
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k not in ("mean", "std")}, strict=False)
    x = torch.rand(2, 1, 4, 4)
    assert torch.allclose(model(x), plain((x - 0.5) / 0.25), atol=1e-6)
    centered = MLP((1, 4, 4), 3, normalize="center", mean=mean, std=std)
    assert float(centered.std.flatten()[0]) == 1.0 and float(centered.mean.flatten()[0]) == 0.5


def test_kumano_two_layer_parametrisation():
    d, m = 784, 4000
    net = WideMLP((1, 28, 28), 2, width=m, kumano=True, init_seed=0)
    w, b = net.hidden.weight.detach(), net.hidden.bias.detach()
    assert w.var().item() == pytest.approx(1 / d, rel=0.05)
    assert b.var().item() == pytest.approx(1.0, rel=0.1)
    assert net.readout_weight.var().item() == pytest.approx(1 / m, rel=0.1)
    # the readout is frozen: a buffer, not a parameter
    assert "readout_weight" not in dict(net.named_parameters())
    x = torch.rand(6, 1, 28, 28)
    logits = net(x)
    f = torch.relu(net.hidden(x.flatten(1))) @ net.readout_weight
    assert torch.allclose(logits, torch.cat([-f / 2, f / 2], 1), atol=1e-5)
    # cross-entropy on (−f/2, f/2) is the logistic loss log(1 + exp(−y f)), y = ±1
    y = torch.tensor([0, 1, 1, 0, 1, 0])
    ce = torch.nn.functional.cross_entropy(logits, y)
    sign = (2 * y - 1).float()
    assert ce.item() == pytest.approx(torch.nn.functional.softplus(-sign * f.squeeze(1)).mean().item(), rel=1e-5)
    assert torch.equal(WideMLP((1, 28, 28), 2, width=m, kumano=True, init_seed=0).hidden.weight, net.hidden.weight)
