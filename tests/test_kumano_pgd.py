"""Kumano et al.'s (ICLR'24) PGD (attack=kumano_pgd): the closed form on a linear model, and a cross-check
against the authors' own loop (s-kumano/learning-from-adversarial-perturbations, utils/attacks.py
`PGD.__call__`, `PGDL2._project`; `PGDLinf` is `PGDL2` with p = ∞), restated here in a few lines."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from advlab.attacks import PGD
from advlab.attacks.kumano_pgd import KumanoPGD
from advlab.errors import ConfigError


class Linear2(nn.Module):
    """Two classes, logits (−s/2, s/2) with s = w·x + b: the targeted margin's input gradient is ±w everywhere."""

    def __init__(self, w, b=0.0):
        super().__init__()
        self.w, self.b = nn.Parameter(w), b

    def forward(self, x):
        s = x.flatten(1) @ self.w + self.b
        return torch.stack([-s / 2, s / 2], dim=1)


def test_linf_on_a_linear_model_is_eps_times_w_over_its_max_not_eps_sign_w():
    torch.manual_seed(0)
    d, eps = 20, 0.3
    w = torch.randn(d, dtype=torch.float64)
    model = Linear2(w)
    x = torch.zeros(4, d, dtype=torch.float64)
    t = torch.ones(4, dtype=torch.long)  # towards class 1: δ follows +w
    delta = KumanoPGD(eps=eps, norm="linf", steps=10, targeted=True, bounds=None, loss="margin")(model, x, t) - x
    # steps of α = ε/5 along u = w/‖w‖∞ add up to 2ε·u; the renorm brings δ back to ε·u (up to its 1e-7)
    expected = eps * w / w.abs().max()
    assert torch.allclose(delta, expected.expand_as(delta), atol=1e-6)
    assert float(delta.abs().amax()) == pytest.approx(eps, abs=1e-6)
    # PGD's sign steps with clipping: ε·sign(w), every pixel at ±ε — denser and larger in L2
    sign = PGD(eps=eps, norm="linf", steps=10, rel_step_size=0.2, random_start=False, targeted=True, bounds=None,
               loss="margin")(model, x, t) - x
    assert torch.allclose(sign, (eps * w.sign()).expand_as(sign))
    assert float(delta.norm(dim=1)[0]) == pytest.approx(eps * float(w.norm() / w.abs().max()), rel=1e-6)
    assert float(delta.norm(dim=1)[0]) < float(sign.norm(dim=1)[0]) == pytest.approx(eps * d**0.5)


def test_one_step_below_the_budget_is_alpha_along_the_normalised_gradient():
    """Before δ reaches the ball's surface nothing is rescaled: after one step δ = α·w/‖w‖_p exactly."""
    w = torch.tensor([3.0, -1.0, 0.5, 0.0], dtype=torch.float64)
    model = Linear2(w)
    x = torch.full((1, 4), 0.5, dtype=torch.float64)
    t = torch.zeros(1, dtype=torch.long)  # towards class 0: δ follows −w
    for norm, scale in (("linf", 3.0), ("l2", float(w.norm()))):
        attack = KumanoPGD(eps=1.0, norm=norm, steps=1, rel_step_size=0.2, targeted=True, loss="margin", keep_best=False)
        assert torch.allclose(attack(model, x, t) - x, -0.2 * w / scale)


def _authors_pgd(model, imgs, targets, eps, steps, p):
    """Their loop: steps+1 evaluations, best = lowest targeted CE (strictly lower replaces), the step
    x − (ε/5)·normalize(∇, p), δ.renorm(p, dim=0, maxnorm=ε), clamp to [0, 1]."""
    orig, advs = imgs.clone(), imgs.clone()
    best_advs = best_losses = None
    for i in range(steps + 1):
        advs = advs.detach().requires_grad_(True)
        losses = F.cross_entropy(model(advs), targets, reduction="none")
        if best_advs is None:
            best_advs, best_losses = advs.detach().clone(), losses.detach().clone()
        else:
            replace = best_losses > losses.detach()
            best_advs[replace], best_losses[replace] = advs.detach()[replace], losses.detach()[replace]
        if i == steps:
            return best_advs
        (grads,) = torch.autograd.grad(losses.sum(), advs)
        with torch.no_grad():
            advs = advs - eps / 5 * F.normalize(grads.flatten(1), p=p).view(grads.shape)
            diff = (advs - orig).renorm(p=p, dim=0, maxnorm=eps)
            advs = torch.clamp(orig + diff, 0, 1)


@pytest.mark.parametrize("norm,p,eps", [("linf", float("inf"), 0.3), ("l2", 2.0, 2.0)])
def test_matches_the_authors_loop_on_a_small_network(norm, p, eps):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 24), nn.Tanh(), nn.Linear(24, 5)).double().eval()
    x = torch.rand(12, 1, 6, 6, dtype=torch.float64)
    t = torch.randint(0, 5, (12,))
    ours = KumanoPGD(eps=eps, norm=norm, steps=15, targeted=True)(model, x, t)
    theirs = _authors_pgd(model, x, t, eps, 15, p)
    assert torch.allclose(ours, theirs, atol=1e-10)
    assert float((ours - x).flatten(1).norm(p=p, dim=1).max()) <= eps + 1e-9


def test_the_yaml_is_their_mnist_setting_and_checks_its_keys():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from advlab.runtime.resolvers import CONF_DIR

    node = OmegaConf.load(CONF_DIR / "attack" / "kumano_pgd.yaml")
    node.eps, node.seed = 0.3, 0
    attack = instantiate(node)
    assert isinstance(attack, KumanoPGD) and attack.steps == 100 and attack.alpha == pytest.approx(0.06)
    assert attack.random_start is False and attack.keep_best is True and attack.norm == "linf"
    with pytest.raises(ConfigError, match="^norm: "):
        KumanoPGD(eps=0.3, norm="l1")


def test_their_convnet_has_their_shapes_and_parameter_count():
    from advlab.models.kumano_convnet import KumanoConvNet

    net = KumanoConvNet((1, 28, 28), 10, normalize="none")
    # conv 1·16·9+16, 16·128·9+128, 128·128·9+128, 128·256·9+256, 256·256·9+256; linear 256·10+10
    assert sum(p.numel() for p in net.parameters()) == 160 + 18_560 + 147_584 + 295_168 + 590_080 + 2_570 == 1_054_122
    x = torch.rand(3, 1, 28, 28)
    assert net.penultimate(x).shape == (3, 256) and net(x).shape == (3, 10)
    h = F.relu(net.conv4(F.relu(net.conv2(F.relu(net.conv1(x))))))
    assert h.shape[-2:] == (9, 9)  # their avg_pool2d(x, 9) is the mean over the whole map
    with pytest.raises(ConfigError, match="at least 11×11"):
        KumanoConvNet((1, 8, 8), 10)
